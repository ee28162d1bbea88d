package progress_test

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/progress"
)

// t0 is the instant the scripts' clusters are made at.
var t0 = time.Date(2030, time.January, 1, 0, 0, 0, 0, time.UTC)

// The CAs of the scripts, one per rotation: the cluster starts on CA 0,
// its first rotation goes to CA 1. Certificates say which signed them, and
// nodes hold the bundle of one or another; progress only compares them.
func caOf(gen int) ca.TLSStatus {
	return ca.TLSStatus{IssuerSubject: fmt.Appendf(nil, "ca%d", gen), IssuerKeyHash: [32]byte{byte(gen + 1)}}
}

func bundleOf(gen int) []byte { return fmt.Appendf(nil, "root%d", gen) }

func caName(s ca.TLSStatus) string { return string(s.IssuerSubject) }

// TestScripts runs the scripts in testdata/ with cockroachdb/datadriven:
// rotations told step by step, as the leader sees them. Run with -rewrite
// to write the outputs the code gives now.
//
// Commands (durations are Go durations; times print as offsets from the
// cluster's creation):
//
//	cluster self=ID period=D [grace=D] managers=(ID,...) [workers=(ID,...)]
//	                          make the cluster: every node has a certificate of
//	                          ca0 and holds its bundle, root0; self leads from
//	                          now and has heard from no one
//	tick D                    advance the clock
//	rotate                    start a rotation to the next CA (ca1, ca2...): the
//	                          state signs with it
//	renew ID...               the state records a new certificate for each node,
//	                          of the CA that signs now
//	heartbeat ID... [serving=latest|previous] [bundle=old|new]
//	                          the leader hears from each node: it presents its
//	                          latest certificate (or the one before), and holds
//	                          the bundle given (new: of the latest CA; old: of
//	                          the one before), or the one it held
//	leader ID                 ID becomes the leader from now: it has heard from
//	                          no one, and its tracker is new
//	grace D                   update --rotation-grace
//	remove ID                 the node leaves the state
//	progress [track]          a look at the progress (a status call); with
//	                          track, the leader's look, which keeps the tracker
//	drive                     the leader's rotation step: a tracked look, and
//	                          the completion if it is done
func TestScripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("Glob(testdata/*.txt) = %v, %v, want scripts", files, err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			w := &world{}
			datadriven.RunTest(t, file, func(t *testing.T, d *datadriven.TestData) string {
				if d.Input != "" {
					t.Fatalf("%s: %s takes no input, got %q", d.Pos, d.Cmd, d.Input)
				}
				return w.run(t, d)
			})
		})
	}
}

// node is what a script knows of a node beside the state: the
// certificates it was issued, latest last, and the bundle it holds.
type node struct {
	certs  []fsm.CertInfo
	bundle []byte
}

// world is a cluster as a script drives it: the state, the nodes, and the
// leader's memory (its observations and tracker).
type world struct {
	now     time.Time
	st      *fsm.State
	nodes   map[string]*node
	self    string
	since   time.Time
	period  time.Duration
	obs     map[string]progress.Observation
	tracker progress.Tracker
	gen     int // of the latest CA
}

func rel(at time.Time) string { return "+" + at.Sub(t0).String() }

func (w *world) run(t *testing.T, d *datadriven.TestData) string {
	t.Helper()
	var ids []string
	opts := map[string][]string{}
	for _, a := range d.CmdArgs {
		if len(a.Vals) == 0 {
			ids = append(ids, a.Key)
		} else {
			opts[a.Key] = a.Vals
		}
	}
	opt := func(key string) string {
		if v := opts[key]; len(v) == 1 {
			return v[0]
		} else if len(v) > 1 {
			t.Fatalf("%s: %s takes one value", d.Pos, key)
		}
		return ""
	}
	duration := func(s string) time.Duration {
		dur, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s: bad duration %q: %v", d.Pos, s, err)
		}
		return dur
	}
	one := func() string {
		if len(ids) != 1 {
			t.Fatalf("%s: %s takes one node ID, got %q", d.Pos, d.Cmd, ids)
		}
		return ids[0]
	}
	nodeOf := func(id string) (*node, fsm.Node) {
		n, ok := w.st.Node(id)
		if !ok || w.nodes[id] == nil {
			t.Fatalf("%s: no node %s", d.Pos, id)
		}
		return w.nodes[id], n
	}
	if d.Cmd != "cluster" && w.st == nil {
		t.Fatalf("%s: %s before cluster", d.Pos, d.Cmd)
	}

	switch d.Cmd {
	case "cluster":
		w.now = t0
		w.self, w.since, w.period = opt("self"), t0, duration(opt("period"))
		w.gen = 0
		w.st = &fsm.State{ClusterID: "c", CertExpiry: time.Hour, CA: ca.Material{Bundle: bundleOf(0)}, CAStatus: caOf(0)}
		if g := opt("grace"); g != "" {
			w.st.RotationGrace = duration(g)
		}
		w.nodes = map[string]*node{}
		w.obs = map[string]progress.Observation{}
		w.tracker = progress.Tracker{}
		for _, role := range []ca.Role{ca.RoleManager, ca.RoleWorker} {
			for _, id := range opts[role.Short()+"s"] {
				w.nodes[id] = &node{bundle: bundleOf(0)}
				w.st.Nodes = w.st.Nodes.With(fsm.Node{ID: id, Role: role, JoinedAt: w.now})
				w.issue(id)
			}
		}
		if _, ok := w.st.Node(w.self); !ok {
			t.Fatalf("%s: self=%s is not a manager of the cluster", d.Pos, w.self)
		}
		return fmt.Sprintf("%d nodes; %s leads", w.st.Nodes.Len(), w.self)

	case "tick":
		w.now = w.now.Add(duration(one()))
		return "now " + rel(w.now)

	case "rotate":
		if w.st.Rotation != nil {
			t.Fatalf("%s: a rotation is in progress", d.Pos)
		}
		w.gen++
		next := *w.st
		next.Rotation = &fsm.Rotation{StartedAt: w.now, From: w.st.CAStatus, Bundle: bundleOf(w.gen)}
		next.CAStatus = caOf(w.gen)
		w.st = &next
		return fmt.Sprintf("rotation to %s started at %s", caName(next.CAStatus), rel(w.now))

	case "renew":
		var out []string
		for _, id := range ids {
			nodeOf(id)
			c := w.issue(id)
			out = append(out, fmt.Sprintf("%s: serial %s of %s", id, c.Serial, caName(c.Issuer)))
		}
		return strings.Join(out, "\n")

	case "heartbeat":
		var out []string
		for _, id := range ids {
			nd, _ := nodeOf(id)
			cert := nd.certs[len(nd.certs)-1]
			switch opt("serving") {
			case "", "latest":
			case "previous":
				if len(nd.certs) < 2 {
					t.Fatalf("%s: %s has no certificate before its latest", d.Pos, id)
				}
				cert = nd.certs[len(nd.certs)-2]
			default:
				t.Fatalf("%s: serving=%s: want latest or previous", d.Pos, opt("serving"))
			}
			switch opt("bundle") {
			case "":
			case "old":
				nd.bundle = bundleOf(w.gen - 1)
			case "new":
				nd.bundle = bundleOf(w.gen)
			default:
				t.Fatalf("%s: bundle=%s: want old or new", d.Pos, opt("bundle"))
			}
			w.obs[id] = progress.Observation{At: w.now, Serial: cert.Serial, Issuer: cert.Issuer, Bundle: progress.BundleDigest(nd.bundle)}
			out = append(out, fmt.Sprintf("%s: serial %s of %s, holds %s", id, cert.Serial, caName(cert.Issuer), nd.bundle))
		}
		return strings.Join(out, "\n")

	case "leader":
		id := one()
		nodeOf(id)
		w.self, w.since = id, w.now
		w.obs = map[string]progress.Observation{}
		w.tracker = progress.Tracker{}
		return fmt.Sprintf("%s leads since %s", id, rel(w.now))

	case "grace":
		next := *w.st
		next.RotationGrace = duration(one())
		w.st = &next
		return "grace " + next.Grace().String()

	case "remove":
		id := one()
		nodeOf(id)
		next := *w.st
		next.Nodes = next.Nodes.Without(id)
		w.st = &next
		delete(w.nodes, id)
		return "removed " + id

	case "progress":
		track := false
		for _, a := range ids {
			if a != "track" {
				t.Fatalf("%s: progress [track], got %q", d.Pos, a)
			}
			track = true
		}
		p := w.look(t, track)
		return describe(p, w.tracker, track)

	case "drive":
		p := w.look(t, true)
		out := describe(p, w.tracker, true)
		if p == nil || !p.Done {
			return out + "\nnot done"
		}
		next := *w.st
		next.CA.Bundle = w.st.Rotation.Bundle
		next.LastRotation = &fsm.RotationRecord{StartedAt: w.st.Rotation.StartedAt, CompletedAt: w.now, Skipped: slices.Sorted(slices.Values(p.Skipped))}
		next.Rotation = nil
		w.st = &next
		return out + "\ncompleted at " + rel(w.now)
	}
	t.Fatalf("%s: unknown command %s", d.Pos, d.Cmd)
	return ""
}

// issue records a new certificate for node id, of the CA the state signs
// with.
func (w *world) issue(id string) fsm.CertInfo {
	nd := w.nodes[id]
	c := fsm.CertInfo{Serial: fmt.Sprintf("%s.%d", id, len(nd.certs)+1), NotBefore: w.now, NotAfter: w.now.Add(w.st.CertExpiry), Issuer: w.st.CAStatus, IssuedAt: w.now}
	nd.certs = append(nd.certs, c)
	n, _ := w.st.Node(id)
	n.Cert = c
	next := *w.st
	next.Nodes = next.Nodes.With(n)
	w.st = &next
	return c
}

// look computes the progress as the leader does: its own observation is
// of its own credentials.
func (w *world) look(t *testing.T, track bool) *progress.Progress {
	t.Helper()
	obs := make(map[string]progress.Observation, len(w.obs)+1)
	for id, ob := range w.obs {
		obs[id] = ob
	}
	if self := w.nodes[w.self]; self != nil {
		c := self.certs[len(self.certs)-1]
		obs[w.self] = progress.Observation{At: w.now, Serial: c.Serial, Issuer: c.Issuer, Bundle: progress.BundleDigest(self.bundle)}
	}
	p, next := progress.Rotation(progress.Input{
		State: w.st, Observations: obs, Self: w.self, Tracker: w.tracker, Track: track,
		Now: w.now, HeartbeatPeriod: w.period, LeaderSince: w.since,
	})
	if !track && !sameTracker(next, w.tracker) {
		t.Errorf("Rotation(Track: false) returned tracker %v, want the one given, %v", next, w.tracker)
	}
	if track {
		w.tracker = next
	}
	return p
}

func sameTracker(a, b progress.Tracker) bool {
	if !a.Rotation.Equal(b.Rotation) || (a.DownSince == nil) != (b.DownSince == nil) || len(a.DownSince) != len(b.DownSince) {
		return false
	}
	for id, at := range a.DownSince {
		if bt, ok := b.DownSince[id]; !ok || !bt.Equal(at) {
			return false
		}
	}
	return true
}

// describe prints a progress, and the tracker after a tracked look.
func describe(p *progress.Progress, tr progress.Tracker, track bool) string {
	if p == nil {
		return "no rotation"
	}
	var b strings.Builder
	if p.InProgress {
		fmt.Fprintf(&b, "in progress since %s, grace %s, to %s\n", rel(p.StartedAt), p.Grace, p.NewBundle)
	} else {
		fmt.Fprintf(&b, "completed %s..%s, grace %s, to %s\n", rel(p.StartedAt), rel(p.CompletedAt), p.Grace, p.NewBundle)
	}
	c := p.Counts
	fmt.Fprintf(&b, "total %d converged %d trusting %d skipped %d", c.Total, c.Converged, c.Trusting, c.Skipped)
	if p.InProgress {
		fmt.Fprintf(&b, " done %t", p.Done)
	}
	for _, n := range p.Nodes {
		fmt.Fprintf(&b, "\n  %s %s %s", n.ID, n.Role.Short(), n.State)
		if !n.DownSince.IsZero() {
			fmt.Fprintf(&b, " since %s", rel(n.DownSince))
		}
		if n.TrustsNewRoot {
			b.WriteString(" trusts-new-root")
		}
	}
	if len(p.Skipped) > 0 {
		fmt.Fprintf(&b, "\nskip %s", strings.Join(p.Skipped, " "))
	}
	if track {
		b.WriteString("\ntracker:")
		if tr.DownSince == nil {
			b.WriteString(" none")
		} else {
			fmt.Fprintf(&b, " rotation %s", rel(tr.Rotation))
			for _, id := range slices.Sorted(maps.Keys(tr.DownSince)) {
				fmt.Fprintf(&b, ", %s down since %s", id, rel(tr.DownSince[id]))
			}
		}
	}
	return b.String()
}
