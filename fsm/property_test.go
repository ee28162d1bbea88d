package fsm_test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// gen makes random command sequences from a seed: mostly commands the
// current state accepts, some it refuses (stale secrets and roles, another
// CA, removed and unknown nodes, spent tokens), as a busy cluster's log
// would hold.
type gen struct {
	t            testing.TB
	f            *fixture
	rng          *rand.Rand
	src          *rand.ChaCha8 // for ca.NewID and ca.NewSecret
	at           time.Time
	serial       int
	tokenSecrets map[string]string
}

func newGen(t testing.TB, f *fixture, seed uint64) *gen {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	src := rand.NewChaCha8(key)
	return &gen{t: t, f: f, rng: rand.New(src), src: src, at: t0, tokenSecrets: map[string]string{}}
}

func (g *gen) id() string {
	id, err := ca.NewID(g.src)
	if err != nil {
		g.t.Fatalf("ca.NewID() = %v", err)
	}
	return id
}

func (g *gen) secret() string {
	s, err := ca.NewSecret(g.src)
	if err != nil {
		g.t.Fatalf("ca.NewSecret() = %v", err)
	}
	return s
}

func (g *gen) chance(percent int) bool { return g.rng.IntN(100) < percent }

func (g *gen) role() ca.Role {
	if g.chance(30) {
		return ca.RoleManager
	}
	return ca.RoleWorker
}

func pick[T any](g *gen, xs []T) (T, bool) {
	if len(xs) == 0 {
		var zero T
		return zero, false
	}
	return xs[g.rng.IntN(len(xs))], true
}

// node picks a member, now and then a removed or unknown ID instead.
func (g *gen) node(s *fsm.State) fsm.Node {
	switch {
	case g.chance(5):
		return fsm.Node{ID: g.id(), Role: g.role()}
	case g.chance(5) && len(s.Removed) > 0:
		ids := make([]string, 0, len(s.Removed))
		for id := range s.Removed {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		id, _ := pick(g, ids)
		return fsm.Node{ID: id, Role: ca.RoleWorker}
	}
	n, _ := pick(g, s.SortedNodes())
	return n
}

func (g *gen) cert(s *fsm.State) fsm.CertInfo {
	g.serial++
	validity := s.CertExpiry
	if g.chance(10) {
		validity = ca.MinCertExpiry + time.Duration(g.rng.Int64N(int64(100*time.Hour)))
	}
	c := fsm.CertInfo{
		Serial:    fmt.Sprintf("%x", g.serial),
		NotBefore: g.at.Add(-time.Hour),
		NotAfter:  g.at.Add(validity).Truncate(time.Second),
		Issuer:    g.f.status,
	}
	if g.chance(4) {
		c.Issuer = g.f.other
	}
	return c
}

func (g *gen) tokenIDs(s *fsm.State) []string {
	ids := make([]string, 0, len(s.Tokens))
	for id := range s.Tokens {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// command returns the next command for s. The first is Init.
func (g *gen) command(s *fsm.State) fsm.Command {
	if !s.Initialized() {
		return g.f.initCmd()
	}
	g.at = g.at.Add(time.Duration(g.rng.Int64N(int64(3 * time.Hour))))
	c := fsm.Command{At: g.at}
	switch w := g.rng.IntN(100); {
	case w < 25: // join with a standing secret
		role := g.role()
		secret := s.Secret(role)
		if g.chance(10) {
			secret = g.secret() // rotated meanwhile
		}
		c.Issue = &fsm.Issue{
			Node: fsm.Node{ID: g.id(), Role: role, Addr: "10.1.0.1:2377", Cert: g.cert(s)},
			Join: true, SecretHash: fsm.HashSecret(secret),
		}
		if g.chance(3) {
			c.Issue.Node.ID = g.node(s).ID // in use or removed
		}
	case w < 32: // join with an extra token
		id, ok := pick(g, g.tokenIDs(s))
		if !ok || g.chance(10) {
			id = "tok-" + g.id()
		}
		role := s.Tokens[id].Role
		if role == "" || g.chance(10) {
			role = g.role()
		}
		c.Issue = &fsm.Issue{
			Node: fsm.Node{ID: g.id(), Role: role, Cert: g.cert(s)},
			Join: true, TokenID: id, SecretHash: fsm.HashSecret(g.tokenSecrets[id]),
		}
	case w < 50: // renew
		n := g.node(s)
		role := n.Role
		if g.chance(8) {
			role = ca.RoleManager
		}
		c.Issue = &fsm.Issue{Node: fsm.Node{ID: n.ID, Role: role, Cert: g.cert(s)}}
		if g.chance(20) {
			c.Issue.Node.Addr = "10.2.0.1:2377"
		}
	case w < 55:
		secret := g.secret()
		if g.chance(5) {
			secret = ""
		}
		c.RotateSecret = &fsm.RotateSecret{Role: g.role(), Secret: secret}
	case w < 62:
		n := g.node(s)
		role := ca.RoleManager
		if n.Role == ca.RoleManager {
			role = ca.RoleWorker
		}
		c.SetRole = &fsm.SetRole{NodeID: n.ID, Role: role}
	case w < 72:
		c.RemoveNode = &fsm.RemoveNode{NodeID: g.node(s).ID}
	case w < 80:
		c.Prune = &fsm.Prune{}
	case w < 84:
		d := ca.MinCertExpiry + time.Duration(g.rng.Int64N(int64(200*time.Hour)))
		if g.chance(20) {
			d = 0
		}
		c.UpdateConfig = &fsm.UpdateConfig{CertExpiry: d.Truncate(time.Second)}
	case w < 90:
		id := "tok-" + g.id()
		secret := g.secret()
		g.tokenSecrets[id] = secret
		tok := fsm.ExtraToken{ID: id, Role: g.role(), SecretHash: fsm.HashSecret(secret), UsesLeft: g.rng.IntN(4) - 1}
		if tok.UsesLeft == 0 {
			tok.UsesLeft = 2
		}
		if g.chance(50) {
			tok.ExpiresAt = g.at.Add(time.Duration(g.rng.Int64N(int64(10 * time.Hour))))
		}
		c.CreateToken = &fsm.CreateToken{Token: tok}
	case w < 94:
		id, ok := pick(g, g.tokenIDs(s))
		if !ok || g.chance(10) {
			id = "tok-none"
		}
		c.RevokeToken = &fsm.RevokeToken{ID: id}
	case w < 98:
		c.SetAddrs = &fsm.SetAddrs{NodeID: g.node(s).ID, Addr: "10.3.0.1:2377", RaftAddr: "10.3.0.1:2378"}
	default:
		c = g.f.initCmd()
		c.At = g.at
	}
	return c
}

// checkInvariants asserts what every reachable state satisfies.
func checkInvariants(t testing.TB, s *fsm.State) {
	t.Helper()
	if !s.Initialized() {
		t.Fatalf("state at %d is not initialized", s.Index)
	}
	if len(s.Managers()) == 0 {
		t.Fatalf("state at %d has no manager", s.Index)
	}
	for id, n := range s.Nodes.All() {
		if n.ID != id || (n.Role != ca.RoleManager && n.Role != ca.RoleWorker) {
			t.Fatalf("state at %d: Nodes[%s] = %+v, want its own ID and a node role", s.Index, id, n)
		}
		if s.IsRemoved(id) {
			t.Fatalf("state at %d: %s is both a member and removed", s.Index, id)
		}
		if n.CertsValidUntil.Before(n.Cert.NotAfter) {
			t.Fatalf("state at %d: %s CertsValidUntil %v is before its certificate's NotAfter %v", s.Index, id, n.CertsValidUntil, n.Cert.NotAfter)
		}
		if !n.Cert.Issuer.Equal(s.CAStatus) {
			t.Fatalf("state at %d: %s holds a certificate of another CA", s.Index, id)
		}
		if n.Role == ca.RoleWorker && n.RaftAddr != "" {
			t.Fatalf("state at %d: worker %s has Raft address %q", s.Index, id, n.RaftAddr)
		}
	}
	for id, tok := range s.Tokens {
		if tok.ID != id || tok.UsesLeft < -1 {
			t.Fatalf("state at %d: Tokens[%s] = %+v", s.Index, id, tok)
		}
	}
	if s.WorkerSecret == s.ManagerSecret {
		t.Fatalf("state at %d: worker and manager secrets are equal", s.Index)
	}
}

// TestProperties runs random command sequences and checks, at every step:
// Decode(Encode(c)) == c; restore(snapshot(s)) == s; Apply leaves its
// input as it was; a refused command changes only Index; NeedsPrune agrees
// with Prune; the invariants of checkInvariants. Then it replays the
// encoded log through two fresh Machines, which must reach the same states
// and results as each other and as Apply (determinism).
func TestProperties(t *testing.T) {
	f := newFixture(t)
	seeds, length := 32, 200
	if testing.Short() {
		seeds = 8
	}
	accepted := map[string]int{}
	total := 0
	for seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			g := newGen(t, f, uint64(seed))
			var (
				log     [][]byte
				states  []*fsm.State
				results []error
			)
			s := &fsm.State{}
			for i := uint64(1); i <= uint64(length); i++ {
				c := g.command(s)
				b := encode(t, c)
				dc, err := fsm.Decode(b)
				if err != nil {
					t.Fatalf("step %d: Decode(Encode(%s)) = %v", i, describe(c), err)
				}
				want := c
				want.Version = fsm.Version
				if d := diff(dc, want); d != "" {
					t.Fatalf("step %d: Decode(Encode(%s)) differs:\n%s", i, describe(c), d)
				}

				saved := snapshot(t, s)
				if d := diff(saved, s); d != "" {
					t.Fatalf("step %d: restore(snapshot(s)) differs from s:\n%s", i, d)
				}
				next, err := fsm.Apply(s, i, c)
				if d := diff(s, saved); d != "" {
					t.Fatalf("step %d: Apply(%s) changed its input:\n%s", i, describe(c), d)
				}
				if err != nil {
					if d := diff(next, withIndex(s, i)); d != "" {
						t.Fatalf("step %d: Apply(%s) refused with %v but changed the state:\n%s", i, describe(c), err, d)
					}
				} else {
					accepted[describe(c)]++
				}
				if next.Index != i {
					t.Fatalf("step %d: Apply(%s) Index = %d, want %d", i, describe(c), next.Index, i)
				}
				checkInvariants(t, next)

				pruned, err2 := fsm.Apply(next, i+1, fsm.Command{At: g.at, Prune: &fsm.Prune{}})
				if err2 != nil {
					t.Fatalf("step %d: Prune = %v", i, err2)
				}
				dropped := len(pruned.Removed) != len(next.Removed) || len(pruned.Tokens) != len(next.Tokens) ||
					len(pruned.Admins) != len(next.Admins) || len(pruned.Revoked) != len(next.Revoked)
				if got := next.NeedsPrune(g.at); got != dropped {
					t.Fatalf("step %d: NeedsPrune(%v) = %v, but Prune dropped something = %v", i, g.at, got, dropped)
				}

				log, states, results = append(log, b), append(states, next), append(results, err)
				s = next
			}
			total += len(log)

			m1, m2 := fsm.NewMachine(), fsm.NewMachine()
			for i, b := range log {
				index := uint64(i + 1)
				r1, r2 := machineApply(t, m1, index, b), machineApply(t, m2, index, b)
				if kind(r1.Err) != kind(r2.Err) || kind(r1.Err) != kind(results[i]) {
					t.Fatalf("entry %d: results %v and %v, Apply gave %v; want the same", index, r1.Err, r2.Err, results[i])
				}
				if d := diff(r1.State, r2.State); d != "" {
					t.Fatalf("entry %d: two machines replaying the same log differ:\n%s", index, d)
				}
				if d := diff(r1.State, states[i]); d != "" {
					t.Fatalf("entry %d: machine differs from Apply:\n%s", index, d)
				}
			}
			if d := diff(snapshot(t, m1.Snapshot()), m2.State()); d != "" {
				t.Errorf("restore(snapshot(machine)) differs from the other machine:\n%s", d)
			}
		})
	}
	// The sequences must exercise every operation's accept path, and mostly
	// be accepted: a generator whose commands were all refused would check
	// little.
	sum := 0
	for _, c := range oneOfEach(f) {
		op := describe(c)
		if accepted[op] == 0 {
			t.Errorf("no %s command was accepted in %d random commands", op, total)
		}
		sum += accepted[op]
	}
	if sum*2 < total {
		t.Errorf("%d of %d random commands accepted, want at least half", sum, total)
	}
	t.Logf("accepted %d of %d commands: %v", sum, total, accepted)
}
