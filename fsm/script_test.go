package fsm_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// TestScripts runs the scripts in testdata/ with cockroachdb/datadriven:
// multi-step stories of a cluster, in the style of etcd-io/raft's
// interaction tests. A case is a command line, a "----" line and the
// output the command must give, ended by a blank line; lines starting
// with # are comments. Run with -rewrite to write the outputs the code
// gives now.
//
// Commands (durations are Go durations; times print as offsets from the
// cluster's creation):
//
//	init [expiry=D]                       create the cluster; the first manager is "m1"
//	tick D                                advance the clock
//	join ID ROLE [secret=S] [expiry=D] [issuer=other]
//	                                      S: worker, manager (the current secrets),
//	                                      old-worker, old-manager (before the last rotate),
//	                                      or token:ID:SECRET
//	renew ID ROLE [expiry=D] [issuer=other]
//	rotate ROLE                           new join secret for ROLE
//	set-role ID ROLE | remove ID | prune | update expiry=D
//	token-create ID ROLE SECRET uses=N [ttl=D] | token-revoke ID
//	set-addrs ID ADDR RAFTADDR
//	recover KIND [lost=ID,ID] [after=N] [manager=ID]
//	                                      KIND: force-new-cluster or restore; after: the
//	                                      last index known committed; manager: the restored one
//	confirm ID...                         the nodes showed their certificates
//	revoke ID [prev=K] [reason=R]         revoke node ID's current certificate (or its
//	                                      K-th earlier one); R an RFC 5280 name
//	revoke-serial S                       revoke by serial (hex)
//	crls N                                publish a CRL set numbered N
//	index                                 print the index of the last command
//	state                                 print nodes, removals and tokens
//	snapshot                              check restore(snapshot(state)) == state
//
// Every command but state and snapshot prints "ok" or the fsm error it
// was refused with.
func TestScripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("Glob(testdata/*.txt) = %v, %v, want scripts", files, err)
	}
	f := newFixture(t)
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			r := &scriptRunner{f: f, clock: t0, s: &fsm.State{}, secrets: map[ca.Role][]string{}}
			datadriven.RunTest(t, file, func(t *testing.T, d *datadriven.TestData) string {
				if d.Input != "" {
					t.Fatalf("%s: %s: commands take no input, got %q", d.Pos, d.Cmd, d.Input)
				}
				r.t = t
				return r.run(d)
			})
		})
	}
}

type scriptRunner struct {
	t       *testing.T
	f       *fixture
	clock   time.Time
	s       *fsm.State
	secrets map[ca.Role][]string // every secret a role had, latest last
}

func (r *scriptRunner) fail(format string, args ...any) string {
	r.t.Helper()
	r.t.Fatalf(format, args...)
	return ""
}

func (r *scriptRunner) duration(s string) time.Duration {
	r.t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		r.fail("bad duration %q: %v", s, err)
	}
	return d
}

func (r *scriptRunner) role(s string) ca.Role {
	r.t.Helper()
	role, err := ca.ParseRole(s)
	if err != nil {
		if s == "admin" {
			return ca.RoleAdmin
		}
		r.fail("bad role %q: %v", s, err)
	}
	return role
}

func rel(at time.Time) string {
	if at.IsZero() {
		return "never"
	}
	return "+" + at.Sub(t0).String()
}

func (r *scriptRunner) run(d *datadriven.TestData) string {
	r.t.Helper()
	line := d.FullCmd()
	var args []string
	opts := map[string]string{}
	for _, a := range d.CmdArgs {
		switch len(a.Vals) {
		case 0:
			args = append(args, a.Key)
		case 1:
			opts[a.Key] = a.Vals[0]
		default:
			r.fail("%q: %s takes one value", line, a.Key)
		}
	}
	arg := func(i int) string {
		r.t.Helper()
		if i >= len(args) {
			r.fail("%q: missing argument %d", line, i+1)
		}
		return args[i]
	}
	expiry := func() time.Duration {
		if d, ok := opts["expiry"]; ok {
			return r.duration(d)
		}
		return r.s.CertExpiry
	}
	cert := func() fsm.CertInfo {
		c := r.f.cert(r.clock, expiry())
		if opts["issuer"] == "other" {
			c.Issuer = r.f.other
		}
		return c
	}
	// certOf is cert, with a serial of its own for node id.
	certOf := func(id string) fsm.CertInfo {
		c := cert()
		c.Serial += hex.EncodeToString([]byte(id))
		return c
	}
	c := fsm.Command{At: r.clock}
	switch d.Cmd {
	case "state":
		return r.dump()
	case "snapshot":
		if d := diff(snapshot(r.t, r.s), r.s); d != "" {
			return "differs:\n" + d
		}
		return "equal"
	case "tick":
		r.clock = r.clock.Add(r.duration(arg(0)))
		return "now " + rel(r.clock)
	case "init":
		c = r.f.initCmd()
		c.At = r.clock
		c.Init.Manager.ID = "m1"
		if d, ok := opts["expiry"]; ok {
			c.Init.CertExpiry = r.duration(d)
		}
		r.secrets[ca.RoleWorker] = []string{r.f.workerSecret}
		r.secrets[ca.RoleManager] = []string{r.f.managerSecret}
	case "join":
		role := r.role(arg(1))
		c.Issue = &fsm.Issue{Node: fsm.Node{ID: arg(0), Role: role, Cert: certOf(arg(0)), Hostname: opts["host"]}, Join: true}
		secret := opts["secret"]
		if secret == "" {
			secret = role.Short()
		}
		switch {
		case strings.HasPrefix(secret, "token:"):
			parts := strings.SplitN(secret, ":", 3)
			if len(parts) != 3 {
				r.fail("%q: want secret=token:ID:SECRET", line)
			}
			c.Issue.TokenID, c.Issue.SecretHash = parts[1], fsm.HashSecret(parts[2])
		case strings.HasPrefix(secret, "old-"):
			hist := r.secrets[r.role(strings.TrimPrefix(secret, "old-"))]
			if len(hist) < 2 {
				r.fail("%q: no secret before the current one", line)
			}
			c.Issue.SecretHash = fsm.HashSecret(hist[len(hist)-2])
		default:
			hist := r.secrets[r.role(secret)]
			if len(hist) == 0 {
				r.fail("%q: no %s secret yet", line, secret)
			}
			c.Issue.SecretHash = fsm.HashSecret(hist[len(hist)-1])
		}
	case "renew":
		c.Issue = &fsm.Issue{Node: fsm.Node{ID: arg(0), Role: r.role(arg(1)), Cert: certOf(arg(0))}}
	case "rotate":
		role := r.role(arg(0))
		secret := fmt.Sprintf("%s-secret-%d", role.Short(), len(r.secrets[role]))
		r.secrets[role] = append(r.secrets[role], secret)
		c.RotateSecret = &fsm.RotateSecret{Role: role, Secret: secret}
	case "set-role":
		c.SetRole = &fsm.SetRole{NodeID: arg(0), Role: r.role(arg(1))}
	case "remove":
		c.RemoveNode = &fsm.RemoveNode{NodeID: arg(0)}
	case "prune":
		c.Prune = &fsm.Prune{}
	case "update":
		c.UpdateConfig = &fsm.UpdateConfig{CertExpiry: expiry()}
	case "token-create":
		uses, err := strconv.Atoi(opts["uses"])
		if err != nil {
			r.fail("%q: uses=%q: %v", line, opts["uses"], err)
		}
		tok := fsm.ExtraToken{ID: arg(0), Role: r.role(arg(1)), SecretHash: fsm.HashSecret(arg(2)), UsesLeft: uses}
		if ttl, ok := opts["ttl"]; ok {
			tok.ExpiresAt = r.clock.Add(r.duration(ttl))
		}
		c.CreateToken = &fsm.CreateToken{Token: tok}
	case "token-revoke":
		c.RevokeToken = &fsm.RevokeToken{ID: arg(0)}
	case "set-addrs":
		c.SetAddrs = &fsm.SetAddrs{NodeID: arg(0), Addr: arg(1), RaftAddr: arg(2)}
	case "recover":
		rec := &fsm.Recover{Kind: arg(0), From: r.s.Index, GossipKey: bytes.Repeat([]byte{byte(r.s.Index + 1)}, fsm.GossipKeySize)}
		if lost := opts["lost"]; lost != "" {
			rec.Lost = strings.Split(lost, ",")
		}
		if after := opts["after"]; after != "" {
			n, err := strconv.ParseUint(after, 10, 64)
			if err != nil {
				r.fail("%q: after=%q: %v", line, after, err)
			}
			rec.UnconfirmedAfter = n
		}
		if id := opts["manager"]; id != "" {
			rec.Manager = &fsm.Node{ID: id, Role: ca.RoleManager, Cert: cert()}
		}
		c.Recover = rec
	case "confirm":
		c.ConfirmNodes = &fsm.ConfirmNodes{IDs: args}
	case "revoke":
		n, ok := r.s.Node(arg(0))
		if !ok {
			r.fail("%q: no node %s", line, arg(0))
		}
		cert := n.Cert
		if k, ok := opts["prev"]; ok {
			i, err := strconv.Atoi(k)
			if err != nil || i >= len(n.Prev) {
				r.fail("%q: node %s has no earlier certificate %s", line, n.ID, k)
			}
			cert = n.Prev[i]
		}
		reason := ca.ReasonUnspecified
		if name, ok := opts["reason"]; ok {
			var err error
			if reason, err = ca.ParseReason(name); err != nil {
				r.fail("%q: %v", line, err)
			}
		}
		c.RevokeCert = &fsm.RevokeCert{Serial: cert.Serial, Reason: reason}
	case "revoke-serial":
		c.RevokeCert = &fsm.RevokeCert{Serial: arg(0)}
	case "crls":
		n, err := strconv.ParseUint(arg(0), 10, 64)
		if err != nil {
			r.fail("%q: %v", line, err)
		}
		c.SetCRLs = &fsm.SetCRLs{CRLs: fsm.CRLSet{Number: n, ThisUpdate: r.clock, NextUpdate: r.clock.Add(time.Hour), Covers: "test", PEM: []byte("crl")}}
	case "index":
		return fmt.Sprintf("index %d", r.s.Index)
	default:
		return r.fail("%q: unknown command %s", line, d.Cmd)
	}
	next, err := fsm.Apply(r.s, r.s.Index+1, c)
	r.s = next
	if err != nil {
		return "refused: " + errorName(err)
	}
	return "ok"
}

func errorName(err error) string {
	names := map[error]string{
		fsm.ErrNotInitialized: "ErrNotInitialized", fsm.ErrInitialized: "ErrInitialized",
		fsm.ErrNodeExists: "ErrNodeExists", fsm.ErrUnknownNode: "ErrUnknownNode",
		fsm.ErrBadCommand: "ErrBadCommand", fsm.ErrStale: "ErrStale", fsm.ErrRemoved: "ErrRemoved",
		fsm.ErrLastManager: "ErrLastManager", fsm.ErrTokenUnusable: "ErrTokenUnusable",
		fsm.ErrUnknownToken: "ErrUnknownToken", fsm.ErrRotating: "ErrRotating",
		fsm.ErrUnknownCert: "ErrUnknownCert",
	}
	if n, ok := names[kind(err)]; ok {
		return n
	}
	return err.Error()
}

// dump prints the parts of the state scripts look at, in a stable order.
func (r *scriptRunner) dump() string {
	s := r.s
	var out []string
	out = append(out, fmt.Sprintf("cert expiry %s", s.CertExpiry))
	for _, n := range s.SortedNodes() {
		line := fmt.Sprintf("node %s %s cert %s..%s valid-until %s", n.ID, n.Role.Short(), rel(n.Cert.IssuedAt), rel(n.Cert.NotAfter), rel(n.CertsValidUntil))
		if n.RaftAddr != "" {
			line += " raft " + n.RaftAddr
		}
		if n.Hostname != "" {
			line += " host " + n.Hostname
		}
		if n.Unconfirmed {
			line += " unconfirmed"
		}
		out = append(out, line)
	}
	var removed []string
	for id, until := range s.Removed {
		removed = append(removed, fmt.Sprintf("removed %s until %s", id, rel(until)))
	}
	slices.Sort(removed)
	out = append(out, removed...)
	var revoked []string
	for _, rev := range s.Revoked {
		revoked = append(revoked, fmt.Sprintf("revoked %s cert until %s at %s reason %s", rev.NodeID, rel(rev.NotAfter), rel(rev.At), ca.ReasonName(rev.Reason)))
	}
	slices.Sort(revoked)
	out = append(out, revoked...)
	var tokens []string
	for id, tok := range s.Tokens {
		tokens = append(tokens, fmt.Sprintf("token %s %s uses %d expires %s", id, tok.Role.Short(), tok.UsesLeft, rel(tok.ExpiresAt)))
	}
	slices.Sort(tokens)
	out = append(out, tokens...)
	if rec := s.Recovery; rec != nil {
		out = append(out, fmt.Sprintf("recovery %s at %s index %d from %d lost %v unconfirmed %v", rec.Kind, rel(rec.At), rec.Index, rec.From, rec.Lost, rec.Unconfirmed))
	}
	return strings.Join(out, "\n")
}
