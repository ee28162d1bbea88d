package progress_test

import (
	"encoding/json"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/progress"
)

func TestLive(t *testing.T) {
	const period = time.Second
	tests := []struct {
		name               string
		heard, leaderSince time.Duration // after t0; -1 for zero
		now                time.Duration
		want               bool
	}{
		{"never heard, not leading", -1, -1, 10 * period, false},
		{"heard just now", 10 * period, -1, 10 * period, true},
		{"heard 2.9 periods ago", 0, -1, 2900 * time.Millisecond, true},
		{"heard 3 periods ago", 0, -1, 3 * period, false},
		{"never heard, leading for 2.9 periods", -1, 0, 2900 * time.Millisecond, true},
		{"never heard, leading for 3 periods", -1, 0, 3 * period, false},
		{"heard long ago, leading since just now", 0, 10 * period, 10 * period, true},
		{"heard long ago, leading for long", 0, 1 * period, 10 * period, false},
	}
	at := func(d time.Duration) time.Time {
		if d < 0 {
			return time.Time{}
		}
		return t0.Add(d)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := progress.Live(at(tt.heard), at(tt.now), period, at(tt.leaderSince)); got != tt.want {
				t.Errorf("Live(heard %v, now %v, %v, leader since %v) = %t, want %t", tt.heard, tt.now, period, tt.leaderSince, got, tt.want)
			}
		})
	}
}

// TestNoRotation: a state that never rotated has no progress, and the
// tracker passes through untouched, tracked or not.
func TestNoRotation(t *testing.T) {
	tr := progress.Tracker{Rotation: t0, DownSince: map[string]time.Time{"a": t0}}
	for _, st := range []*fsm.State{nil, {}, {ClusterID: "c", Nodes: fsm.NewNodeMap(fsm.Node{ID: "a", Role: ca.RoleManager})}} {
		for _, track := range []bool{false, true} {
			p, next := progress.Rotation(progress.Input{State: st, Tracker: tr, Track: track, Now: t0})
			if p != nil || !sameTracker(next, tr) {
				t.Errorf("Rotation(no rotation, track %t) = %+v, %v; want nil and the tracker given", track, p, next)
			}
		}
	}
}

// gen makes random inputs from a fixed seed: states with or without a
// rotation in progress or completed, observations right, stale or
// missing, trackers of this rotation, of another or none.
type gen struct{ rng *mrand.Rand }

func (g gen) pick(n int) int       { return g.rng.IntN(n) }
func (g gen) chance(pct int) bool  { return g.rng.IntN(100) < pct }
func (g gen) secs(n int) time.Time { return t0.Add(time.Duration(g.rng.IntN(n)) * time.Second) }

func (g gen) input() progress.Input {
	old, cur := caOf(0), caOf(1)
	st := &fsm.State{ClusterID: "c", CA: ca.Material{Bundle: bundleOf(0)}, CAStatus: old}
	if g.chance(50) {
		st.RotationGrace = time.Duration(1+g.pick(60)) * time.Second
	}
	started := g.secs(100)
	switch g.pick(3) {
	case 0: // never rotated
	case 1:
		st.Rotation = &fsm.Rotation{StartedAt: started, From: old, Bundle: bundleOf(1)}
		st.CAStatus = cur
	case 2:
		st.CA.Bundle = bundleOf(1)
		st.CAStatus = cur
		st.LastRotation = &fsm.RotationRecord{StartedAt: started, CompletedAt: started.Add(time.Minute)}
	}
	in := progress.Input{
		State: st, Observations: map[string]progress.Observation{}, Track: g.chance(50),
		Now: g.secs(400), HeartbeatPeriod: time.Duration(1+g.pick(5)) * time.Second,
	}
	if g.chance(70) {
		in.LeaderSince = g.secs(400)
	}
	n := g.pick(12)
	for i := range n {
		id := fmt.Sprintf("n%02d", g.pick(40))
		role := ca.RoleWorker
		if i == 0 || g.chance(25) {
			role = ca.RoleManager
		}
		issuer := old
		if g.chance(50) {
			issuer = st.CAStatus
		}
		cert := fsm.CertInfo{Serial: fmt.Sprintf("%s.%d", id, g.pick(3)), Issuer: issuer}
		st.Nodes = st.Nodes.With(fsm.Node{ID: id, Role: role, Cert: cert})
		if st.LastRotation != nil && g.chance(20) {
			st.LastRotation.Skipped = append(st.LastRotation.Skipped, id)
		}
		if g.chance(20) {
			continue // never heard
		}
		ob := progress.Observation{At: g.secs(400), Serial: cert.Serial, Issuer: issuer, Bundle: progress.BundleDigest(bundleOf(g.pick(2)))}
		if g.chance(30) {
			ob.Serial = fmt.Sprintf("%s.%d", id, g.pick(3))
		}
		if g.chance(20) {
			ob.Issuer = old
		}
		in.Observations[id] = ob
		if g.chance(10) {
			in.Self = id
		}
	}
	switch g.pick(3) {
	case 0: // a new term
	case 1:
		in.Tracker = progress.Tracker{Rotation: g.secs(100), DownSince: map[string]time.Time{}}
	case 2:
		in.Tracker = progress.Tracker{Rotation: started, DownSince: map[string]time.Time{}}
	}
	if in.Tracker.DownSince != nil {
		for range g.pick(6) {
			in.Tracker.DownSince[fmt.Sprintf("n%02d", g.pick(40))] = g.secs(400)
		}
	}
	return in
}

// deepCopy copies what Rotation must not change.
func deepCopy(t *testing.T, in progress.Input) (state []byte, obs map[string]progress.Observation, tracker progress.Tracker) {
	t.Helper()
	state, err := json.Marshal(in.State)
	if err != nil {
		t.Fatalf("json.Marshal(state) = %v", err)
	}
	tracker = in.Tracker
	if tracker.DownSince != nil {
		tracker.DownSince = maps.Clone(tracker.DownSince)
	}
	return state, maps.Clone(in.Observations), tracker
}

// TestRotationProperties checks, over random inputs, that Rotation is a
// deterministic function that changes none of its inputs, that its counts
// and verdict agree with its node states, and that those agree with the
// rules: converged is the certificate recorded and presented; down is
// three silent periods (never the looking manager, nor anyone early in a
// term); skipped is down for the grace, as tracked; done is nothing else.
func TestRotationProperties(t *testing.T) {
	g := gen{mrand.New(mrand.NewChaCha8([32]byte{'p', 'r', 'o', 'g'}))}
	const runs = 2000
	seen := map[progress.NodeState]int{}
	for run := range runs {
		in := g.input()
		state, obs, tracker := deepCopy(t, in)
		p, next := progress.Rotation(in)
		p2, next2 := progress.Rotation(in)
		where := fmt.Sprintf("run %d", run)

		if !reflect.DeepEqual(p, p2) || !reflect.DeepEqual(next, next2) {
			t.Fatalf("%s: Rotation is not deterministic:\n%+v\n%+v", where, p, p2)
		}
		// Brief is the same look without the list of nodes.
		brief := in
		brief.Brief = true
		if pb, nextb := progress.Rotation(brief); p != nil {
			full := *p
			full.Nodes = nil
			if !reflect.DeepEqual(pb, &full) || !reflect.DeepEqual(nextb, next) {
				t.Fatalf("%s: Rotation(Brief) = %+v, want %+v without its nodes", where, pb, p)
			}
		} else if pb != nil {
			t.Fatalf("%s: Rotation(Brief) = %+v, want nil", where, pb)
		}
		// Only is the same look of some nodes: theirs, in the same order.
		if p != nil {
			some := in
			some.Only = map[string]bool{}
			var want []progress.Node
			for i, n := range p.Nodes {
				if i%2 == 0 {
					some.Only[n.ID] = true
					want = append(want, n)
				}
			}
			ps, _ := progress.Rotation(some)
			if !reflect.DeepEqual(ps.Nodes, want) || ps.Counts.Total != len(want) {
				t.Fatalf("%s: Rotation(Only: every other node) = %+v (total %d), want %+v", where, ps.Nodes, ps.Counts.Total, want)
			}
		}
		after, _, _ := deepCopy(t, in)
		if string(after) != string(state) || !reflect.DeepEqual(in.Observations, obs) || !sameTracker(in.Tracker, tracker) {
			t.Fatalf("%s: Rotation changed its input", where)
		}
		if !in.Track && !sameTracker(next, in.Tracker) {
			t.Fatalf("%s: Rotation(Track: false) returned tracker %v, want %v", where, next, in.Tracker)
		}
		st := in.State
		if st.Rotation == nil && st.LastRotation == nil {
			if p != nil {
				t.Fatalf("%s: Rotation(no rotation) = %+v, want nil", where, p)
			}
			continue
		}
		checkProgress(t, where, in, p, next)
		for _, n := range p.Nodes {
			seen[n.State]++
		}
	}
	// The generator must reach every state, or the checks prove little.
	for _, s := range []progress.NodeState{progress.Converged, progress.Renewed, progress.Pending, progress.Down, progress.Skipped} {
		if seen[s] == 0 {
			t.Errorf("no node was ever %s in %d runs; the generator misses it", s, runs)
		}
	}
}

func checkProgress(t *testing.T, where string, in progress.Input, p *progress.Progress, next progress.Tracker) {
	t.Helper()
	st := in.State
	if p.InProgress != (st.Rotation != nil) || p.Grace != st.Grace() {
		t.Fatalf("%s: InProgress %t, grace %v; want %t, %v", where, p.InProgress, p.Grace, st.Rotation != nil, st.Grace())
	}
	want := st.SortedNodes()
	if len(p.Nodes) != len(want) || p.Counts.Total != len(want) {
		t.Fatalf("%s: %d nodes, total %d; want %d", where, len(p.Nodes), p.Counts.Total, len(want))
	}
	var counts progress.Counts
	var skipped []string
	done := p.InProgress
	counts.Total = len(want)
	for i, n := range p.Nodes {
		sn := want[i]
		if n.ID != sn.ID || n.Role != sn.Role {
			t.Fatalf("%s: node %d is %s %s, want %s %s (managers first, then by ID)", where, i, n.ID, n.Role, sn.ID, sn.Role)
		}
		ob := in.Observations[n.ID]
		if n.TrustsNewRoot != (ob.Bundle == progress.BundleDigest(p.NewBundle)) {
			t.Errorf("%s: %s trusts the new root %t, its bundle says otherwise", where, n.ID, n.TrustsNewRoot)
		}
		if n.TrustsNewRoot {
			counts.Trusting++
		}
		switch n.State {
		case progress.Converged:
			if p.InProgress {
				counts.Converged++
			}
		case progress.Skipped:
			counts.Skipped++
			if p.InProgress {
				skipped = append(skipped, n.ID)
			}
		default:
			done = false
		}
		if !p.InProgress {
			if want := st.WasSkipped(n.ID); (n.State == progress.Skipped) != want || (!want && n.State != progress.Converged) || !n.DownSince.IsZero() {
				t.Errorf("%s: after completion %s is %s since %v; want converged or skipped (%t), no since", where, n.ID, n.State, n.DownSince, want)
			}
			continue
		}
		serves := sn.Cert.Issuer.Equal(st.CAStatus) && ob.Serial == sn.Cert.Serial && ob.Issuer.Equal(st.CAStatus)
		live := n.ID == in.Self || progress.Live(ob.At, in.Now, in.HeartbeatPeriod, in.LeaderSince)
		if (n.State == progress.Converged) != serves {
			t.Errorf("%s: %s is %s; serves the recorded certificate of the new CA: %t", where, n.ID, n.State, serves)
		}
		if !serves && (n.State == progress.Down || n.State == progress.Skipped) == live {
			t.Errorf("%s: %s is %s; live: %t", where, n.ID, n.State, live)
		}
		if !serves && live && (n.State == progress.Renewed) != sn.Cert.Issuer.Equal(st.CAStatus) {
			t.Errorf("%s: %s is %s; its recorded certificate is of the new CA: %t", where, n.ID, n.State, sn.Cert.Issuer.Equal(st.CAStatus))
		}
		ours := next.DownSince != nil && next.Rotation.Equal(st.Rotation.StartedAt)
		since, tracked := next.DownSince[n.ID]
		switch n.State {
		case progress.Skipped:
			if !ours || !tracked || !n.DownSince.Equal(since) || in.Now.Sub(since) < st.Grace() {
				t.Errorf("%s: %s skipped since %v, tracked %t since %v, grace %v", where, n.ID, n.DownSince, tracked, since, st.Grace())
			}
		case progress.Down:
			if n.DownSince.IsZero() != !(ours && tracked) || (!n.DownSince.IsZero() && (!n.DownSince.Equal(since) || in.Now.Sub(since) >= st.Grace())) {
				t.Errorf("%s: %s down since %v, tracked %t since %v, grace %v", where, n.ID, n.DownSince, ours && tracked, since, st.Grace())
			}
		default:
			if !n.DownSince.IsZero() {
				t.Errorf("%s: %s is %s but down since %v", where, n.ID, n.State, n.DownSince)
			}
		}
		if in.Track {
			if !ours {
				t.Fatalf("%s: a tracked look returned a tracker of rotation %v, want %v", where, next.Rotation, st.Rotation.StartedAt)
			}
			if tracked == live {
				t.Errorf("%s: the tracker holds %s down: %t; live: %t", where, n.ID, tracked, live)
			}
			// Down since the tracker of this rotation first saw it down,
			// or now.
			kept := in.Tracker.DownSince != nil && in.Tracker.Rotation.Equal(st.Rotation.StartedAt)
			want := in.Now
			if prev, ok := in.Tracker.DownSince[n.ID]; kept && ok {
				want = prev
			}
			if tracked && !since.Equal(want) {
				t.Errorf("%s: the tracker holds %s down since %v, want %v", where, n.ID, since, want)
			}
		}
	}
	if p.Counts != counts {
		t.Errorf("%s: counts %+v, want %+v from the node states", where, p.Counts, counts)
	}
	if !slices.Equal(p.Skipped, skipped) {
		t.Errorf("%s: skip %q, want %q", where, p.Skipped, skipped)
	}
	if p.Done != done {
		t.Errorf("%s: done %t, want %t", where, p.Done, done)
	}
}

// BenchmarkRotation is the leader's look at a rotation of 2,000 nodes,
// half of them converged, which it makes on every observation change and
// every reconcile tick.
func BenchmarkRotation(b *testing.B) {
	const nodes = 2000
	st := &fsm.State{ClusterID: "c", CA: ca.Material{Bundle: bundleOf(0)}, CAStatus: caOf(1),
		Rotation: &fsm.Rotation{StartedAt: t0, Bundle: bundleOf(1)}}
	obs := map[string]progress.Observation{}
	for i := range nodes {
		id := fmt.Sprintf("node%05d", i)
		issuer := caOf(i % 2)
		cert := fsm.CertInfo{Serial: id, Issuer: issuer}
		st.Nodes = st.Nodes.With(fsm.Node{ID: id, Role: ca.RoleWorker, Cert: cert})
		obs[id] = progress.Observation{At: t0, Serial: id, Issuer: issuer, Bundle: progress.BundleDigest(bundleOf(0))}
	}
	in := progress.Input{State: st, Observations: obs, Track: true, Now: t0.Add(time.Second), HeartbeatPeriod: time.Second}
	b.ReportAllocs()
	for b.Loop() {
		_, in.Tracker = progress.Rotation(in)
	}
}
