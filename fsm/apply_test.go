package fsm_test

import (
	"errors"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// Node IDs and token IDs of the base world. Apply takes IDs as given, so
// they are readable rather than random.
const (
	idM2      = "manager-two"
	idW       = "worker-one"
	idR       = "removed-one"
	idS       = "spent-token-joiner"
	idNew     = "new-node"
	tokOnce   = "tok-once"
	tokSpent  = "tok-spent"
	tokTTL    = "tok-ttl"
	newSecret = "0123456789abcdefghijklmno"
)

// now is when the table's commands are applied, after the base world.
var now = t0.Add(10 * time.Minute)

// world is an initialized cluster with two managers (the fixture's and
// idM2), a worker idW, a removed node idR, and three extra tokens: tokOnce
// (worker, one use left), tokSpent (worker, used up) and tokTTL (manager,
// unlimited, expires an hour after t0).
type world struct {
	*fixture
	base         *fsm.State
	tokenSecrets map[string]string
}

func newWorld(t testing.TB) *world {
	t.Helper()
	f := newFixture(t)
	w := &world{fixture: f, tokenSecrets: map[string]string{
		tokOnce: "once-secret", tokSpent: "spent-secret", tokTTL: "ttl-secret",
	}}
	token := func(id string, role ca.Role, uses int, expires time.Time) fsm.Command {
		return fsm.Command{At: t0.Add(5 * time.Minute), CreateToken: &fsm.CreateToken{Token: fsm.ExtraToken{
			ID: id, Role: role, SecretHash: fsm.HashSecret(w.tokenSecrets[id]), UsesLeft: uses, ExpiresAt: expires,
		}}}
	}
	spend := f.join(idS, ca.RoleWorker, "", t0.Add(6*time.Minute))
	spend.Issue.TokenID, spend.Issue.SecretHash = tokSpent, fsm.HashSecret(w.tokenSecrets[tokSpent])
	w.base = apply(t, nil,
		f.initCmd(),
		f.join(idM2, ca.RoleManager, f.managerSecret, t0.Add(1*time.Minute)),
		f.join(idW, ca.RoleWorker, f.workerSecret, t0.Add(2*time.Minute)),
		f.join(idR, ca.RoleWorker, f.workerSecret, t0.Add(3*time.Minute)),
		fsm.Command{At: t0.Add(4 * time.Minute), RemoveNode: &fsm.RemoveNode{NodeID: idR}},
		token(tokOnce, ca.RoleWorker, 1, time.Time{}),
		token(tokSpent, ca.RoleWorker, 1, time.Time{}),
		token(tokTTL, ca.RoleManager, -1, t0.Add(time.Hour)),
		spend,
	)
	return w
}

// initWith is the fixture's Init with change applied.
func (f *fixture) initWith(change func(*fsm.Init)) fsm.Command {
	c := f.initCmd()
	change(c.Init)
	return c
}

// joinToken is the Issue command of a node joining with an extra token.
func (w *world) joinToken(id string, role ca.Role, tokenID string, at time.Time) fsm.Command {
	c := w.join(id, role, "", at)
	c.Issue.TokenID, c.Issue.SecretHash = tokenID, fsm.HashSecret(w.tokenSecrets[tokenID])
	return c
}

// applyCase is one command applied to the base world (or to the empty
// state), after setup.
type applyCase struct {
	name  string
	empty bool          // start from the empty state, not the base world
	setup []fsm.Command // applied first; each must be accepted
	cmd   fsm.Command
	want  error // nil: accepted
	// check asserts what an accepted command changed; required when want
	// is nil.
	check func(t *testing.T, before, after *fsm.State)
}

func applyCases(w *world) []applyCase {
	f := w.fixture
	nodeCheck := func(id string, fn func(t *testing.T, n fsm.Node)) func(t *testing.T, before, after *fsm.State) {
		return func(t *testing.T, before, after *fsm.State) {
			t.Helper()
			n, ok := after.Node(id)
			if !ok {
				t.Fatalf("Node(%s) = missing, want present", id)
			}
			fn(t, n)
		}
	}
	tokenCheck := func(id string, want int) func(t *testing.T, before, after *fsm.State) {
		return func(t *testing.T, before, after *fsm.State) {
			t.Helper()
			if got := after.Tokens[id].UsesLeft; got != want {
				t.Errorf("Tokens[%s].UsesLeft = %d, want %d", id, got, want)
			}
		}
	}
	var cases []applyCase
	add := func(c ...applyCase) { cases = append(cases, c...) }

	// Init.
	add(
		applyCase{name: "init/accepted", empty: true, cmd: f.initCmd(), check: func(t *testing.T, _, s *fsm.State) {
			if !s.Initialized() || s.ClusterID != f.clusterID {
				t.Errorf("ClusterID = %q, want %q", s.ClusterID, f.clusterID)
			}
			if !s.CAStatus.Equal(f.status) {
				t.Errorf("CAStatus = %v, want %v", s.CAStatus, f.status)
			}
			if s.CertExpiry != f.expiry || s.WorkerSecret != f.workerSecret || s.ManagerSecret != f.managerSecret {
				t.Errorf("CertExpiry, secrets = %s, %q, %q, want %s, %q, %q", s.CertExpiry, s.WorkerSecret, s.ManagerSecret, f.expiry, f.workerSecret, f.managerSecret)
			}
			if got := s.Managers(); len(got) != 1 || got[0].ID != f.managerID || s.Nodes.Len() != 1 {
				t.Fatalf("Managers() = %v, want only %s", got, f.managerID)
			}
			m := nodeOf(s, f.managerID)
			if !m.JoinedAt.Equal(t0) {
				t.Errorf("first manager JoinedAt = %v, want %v", m.JoinedAt, t0)
			}
			// Like any issued certificate, the first manager's bounds how
			// long its removal must be remembered.
			if !m.CertsValidUntil.Equal(f.managerCert.NotAfter) {
				t.Errorf("first manager CertsValidUntil = %v, want its certificate's NotAfter %v", m.CertsValidUntil, f.managerCert.NotAfter)
			}
			if !m.Cert.IssuedAt.Equal(t0) {
				t.Errorf("first manager Cert.IssuedAt = %v, want %v", m.Cert.IssuedAt, t0)
			}
		}},
		applyCase{name: "init/already initialized", cmd: f.initCmd(), want: fsm.ErrInitialized},
		applyCase{name: "init/no cluster ID", empty: true, cmd: f.initWith(func(in *fsm.Init) { in.ClusterID = "" }), want: fsm.ErrBadCommand},
		applyCase{name: "init/expiry under minimum", empty: true, cmd: f.initWith(func(in *fsm.Init) { in.CertExpiry = ca.MinCertExpiry - time.Second }), want: fsm.ErrBadCommand},
		applyCase{name: "init/no CA", empty: true, cmd: f.initWith(func(in *fsm.Init) { in.CA = ca.Material{} }), want: fsm.ErrBadCommand},
		applyCase{name: "init/CA certificate garbage", empty: true, cmd: f.initWith(func(in *fsm.Init) { in.CA.Cert = []byte("not PEM") }), want: fsm.ErrBadCommand},
		applyCase{name: "init/equal secrets", empty: true, cmd: f.initWith(func(in *fsm.Init) { in.WorkerSecret = in.ManagerSecret }), want: fsm.ErrBadCommand},
		applyCase{name: "init/no worker secret", empty: true, cmd: f.initWith(func(in *fsm.Init) { in.WorkerSecret = "" }), want: fsm.ErrBadCommand},
		applyCase{name: "init/first node a worker", empty: true, cmd: f.initWith(func(in *fsm.Init) { in.Manager.Role = ca.RoleWorker }), want: fsm.ErrBadCommand},
		applyCase{name: "init/first manager without ID", empty: true, cmd: f.initWith(func(in *fsm.Init) { in.Manager.ID = "" }), want: fsm.ErrBadCommand},
	)

	// Every other command needs Init first.
	for _, c := range []fsm.Command{
		f.join(idNew, ca.RoleWorker, f.workerSecret, now),
		{At: now, RotateSecret: &fsm.RotateSecret{Role: ca.RoleWorker, Secret: newSecret}},
		{At: now, SetRole: &fsm.SetRole{NodeID: idW, Role: ca.RoleManager}},
		{At: now, RemoveNode: &fsm.RemoveNode{NodeID: idW}},
		{At: now, Prune: &fsm.Prune{}},
		{At: now, UpdateConfig: &fsm.UpdateConfig{CertExpiry: 2 * time.Hour}},
		{At: now, CreateToken: &fsm.CreateToken{Token: fsm.ExtraToken{ID: "t", Role: ca.RoleWorker, UsesLeft: 1, SecretHash: fsm.HashSecret("s")}}},
		{At: now, RevokeToken: &fsm.RevokeToken{ID: tokOnce}},
		{At: now, SetAddrs: &fsm.SetAddrs{NodeID: idM2, Addr: "a:1", RaftAddr: "a:2"}},
	} {
		add(applyCase{name: "not initialized/" + describe(c), empty: true, cmd: c, want: fsm.ErrNotInitialized})
	}
	add(applyCase{name: "no operation", cmd: fsm.Command{At: now}, want: fsm.ErrBadCommand})

	// Issue: joins.
	joined := func(role ca.Role) func(t *testing.T, before, after *fsm.State) {
		return func(t *testing.T, before, after *fsm.State) {
			t.Helper()
			n, ok := after.Node(idNew)
			if !ok {
				t.Fatalf("Node(%s) = missing, want joined", idNew)
			}
			want := f.cert(now, f.expiry)
			if n.Role != role || !n.JoinedAt.Equal(now) || !n.Cert.IssuedAt.Equal(now) || n.Cert.Serial != want.Serial {
				t.Errorf("joined node = %+v, want role %s, joined and issued at %v, serial %s", n, role, now, want.Serial)
			}
			if !n.CertsValidUntil.Equal(want.NotAfter) {
				t.Errorf("joined node CertsValidUntil = %v, want %v", n.CertsValidUntil, want.NotAfter)
			}
			if after.Nodes.Len() != before.Nodes.Len()+1 {
				t.Errorf("len(Nodes) = %d, want %d", after.Nodes.Len(), before.Nodes.Len()+1)
			}
		}
	}
	otherIssuer := f.join(idNew, ca.RoleWorker, f.workerSecret, now)
	otherIssuer.Issue.Node.Cert.Issuer = f.other
	noSerial := f.join(idNew, ca.RoleWorker, f.workerSecret, now)
	noSerial.Issue.Node.Cert.Serial = ""
	add(
		applyCase{name: "join/worker with the worker secret", cmd: f.join(idNew, ca.RoleWorker, f.workerSecret, now), check: joined(ca.RoleWorker)},
		applyCase{name: "join/manager with the manager secret", cmd: f.join(idNew, ca.RoleManager, f.managerSecret, now), check: func(t *testing.T, before, after *fsm.State) {
			joined(ca.RoleManager)(t, before, after)
			if got, want := len(after.Managers()), len(before.Managers())+1; got != want {
				t.Errorf("len(Managers()) = %d, want %d", got, want)
			}
		}},
		applyCase{name: "join/worker with the manager secret", cmd: f.join(idNew, ca.RoleWorker, f.managerSecret, now), want: fsm.ErrStale},
		applyCase{name: "join/secret rotated mid-join",
			setup: []fsm.Command{{At: now, RotateSecret: &fsm.RotateSecret{Role: ca.RoleWorker, Secret: newSecret}}},
			cmd:   f.join(idNew, ca.RoleWorker, f.workerSecret, now), want: fsm.ErrStale},
		applyCase{name: "join/with the rotated secret",
			setup: []fsm.Command{{At: now, RotateSecret: &fsm.RotateSecret{Role: ca.RoleWorker, Secret: newSecret}}},
			cmd:   f.join(idNew, ca.RoleWorker, newSecret, now), check: joined(ca.RoleWorker)},
		applyCase{name: "join/node ID in use", cmd: f.join(idW, ca.RoleWorker, f.workerSecret, now), want: fsm.ErrNodeExists},
		applyCase{name: "join/removed node ID", cmd: f.join(idR, ca.RoleWorker, f.workerSecret, now), want: fsm.ErrRemoved},
		applyCase{name: "join/certificate from another CA", cmd: otherIssuer, want: fsm.ErrStale},
		applyCase{name: "join/no node ID", cmd: f.join("", ca.RoleWorker, f.workerSecret, now), want: fsm.ErrBadCommand},
		applyCase{name: "join/admin role", cmd: f.join(idNew, ca.RoleAdmin, f.workerSecret, now), want: fsm.ErrBadCommand},
		applyCase{name: "join/no serial", cmd: noSerial, want: fsm.ErrBadCommand},
	)

	// Issue: joins with extra tokens.
	wrongSecret := w.joinToken(idNew, ca.RoleWorker, tokOnce, now)
	wrongSecret.Issue.SecretHash = fsm.HashSecret(f.workerSecret)
	add(
		applyCase{name: "join token/one use left", cmd: w.joinToken(idNew, ca.RoleWorker, tokOnce, now), check: func(t *testing.T, before, after *fsm.State) {
			joined(ca.RoleWorker)(t, before, after)
			tokenCheck(tokOnce, 0)(t, before, after)
		}},
		applyCase{name: "join token/unlimited before expiry", cmd: w.joinToken(idNew, ca.RoleManager, tokTTL, t0.Add(time.Hour-time.Second)), check: func(t *testing.T, before, after *fsm.State) {
			tokenCheck(tokTTL, -1)(t, before, after)
			if _, ok := after.Node(idNew); !ok {
				t.Errorf("Node(%s) = missing, want joined", idNew)
			}
		}},
		applyCase{name: "join token/used up", cmd: w.joinToken(idNew, ca.RoleWorker, tokSpent, now), want: fsm.ErrTokenUnusable},
		applyCase{name: "join token/expired at its ExpiresAt", cmd: w.joinToken(idNew, ca.RoleManager, tokTTL, t0.Add(time.Hour)), want: fsm.ErrTokenUnusable},
		applyCase{name: "join token/revoked",
			setup: []fsm.Command{{At: now, RevokeToken: &fsm.RevokeToken{ID: tokOnce}}},
			cmd:   w.joinToken(idNew, ca.RoleWorker, tokOnce, now), want: fsm.ErrTokenUnusable},
		applyCase{name: "join token/never created", cmd: w.joinToken(idNew, ca.RoleWorker, "tok-none", now), want: fsm.ErrTokenUnusable},
		applyCase{name: "join token/wrong role", cmd: w.joinToken(idNew, ca.RoleManager, tokOnce, now), want: fsm.ErrTokenUnusable},
		applyCase{name: "join token/wrong secret", cmd: wrongSecret, want: fsm.ErrTokenUnusable},
	)

	// Issue: renewals.
	renewedOther := f.renew(idW, ca.RoleWorker, now, f.expiry)
	renewedOther.Issue.Node.Cert.Issuer = f.other
	withAddr := f.renew(idW, ca.RoleWorker, now, f.expiry)
	withAddr.Issue.Node.Addr = "10.9.9.9:2377"
	add(
		applyCase{name: "renew/worker", cmd: f.renew(idW, ca.RoleWorker, now, f.expiry), check: func(t *testing.T, before, after *fsm.State) {
			old, n := nodeOf(before, idW), nodeOf(after, idW)
			want := f.cert(now, f.expiry)
			want.IssuedAt, want.Index = now, after.Index // the entry that recorded it
			if d := diff(n.Cert, want); d != "" {
				t.Errorf("renewed Cert differs:\n%s", d)
			}
			if !n.JoinedAt.Equal(old.JoinedAt) || n.Addr != old.Addr || n.Role != old.Role {
				t.Errorf("renewed node = %+v, want JoinedAt %v, Addr %q, Role %s kept", n, old.JoinedAt, old.Addr, old.Role)
			}
			if !n.CertsValidUntil.Equal(want.NotAfter) {
				t.Errorf("CertsValidUntil = %v, want %v", n.CertsValidUntil, want.NotAfter)
			}
		}},
		applyCase{name: "renew/shorter certificate keeps CertsValidUntil", cmd: f.renew(idW, ca.RoleWorker, now, time.Hour), check: nodeCheck(idW, func(t *testing.T, n fsm.Node) {
			if want := nodeOf(w.base, idW).CertsValidUntil; !n.CertsValidUntil.Equal(want) {
				t.Errorf("CertsValidUntil = %v, want the earlier, longer %v", n.CertsValidUntil, want)
			}
			if want := now.Add(time.Hour); !n.Cert.NotAfter.Equal(want) {
				t.Errorf("Cert.NotAfter = %v, want %v", n.Cert.NotAfter, want)
			}
		})},
		applyCase{name: "renew/new address replaces", cmd: withAddr, check: nodeCheck(idW, func(t *testing.T, n fsm.Node) {
			if n.Addr != "10.9.9.9:2377" {
				t.Errorf("Addr = %q, want %q", n.Addr, "10.9.9.9:2377")
			}
		})},
		applyCase{name: "renew/unknown node", cmd: f.renew(idNew, ca.RoleWorker, now, f.expiry), want: fsm.ErrUnknownNode},
		applyCase{name: "renew/removed node", cmd: f.renew(idR, ca.RoleWorker, now, f.expiry), want: fsm.ErrRemoved},
		applyCase{name: "renew/role changed meanwhile",
			setup: []fsm.Command{{At: now, SetRole: &fsm.SetRole{NodeID: idW, Role: ca.RoleManager}}},
			cmd:   f.renew(idW, ca.RoleWorker, now, f.expiry), want: fsm.ErrStale},
		applyCase{name: "renew/in the new role",
			setup: []fsm.Command{{At: now, SetRole: &fsm.SetRole{NodeID: idW, Role: ca.RoleManager}}},
			cmd:   f.renew(idW, ca.RoleManager, now, f.expiry), check: nodeCheck(idW, func(t *testing.T, n fsm.Node) {
				if n.Role != ca.RoleManager || !n.Cert.IssuedAt.Equal(now) {
					t.Errorf("renewed node = %+v, want a manager issued at %v", n, now)
				}
			})},
		applyCase{name: "renew/certificate from another CA", cmd: renewedOther, want: fsm.ErrStale},
	)

	// RotateSecret.
	rotate := func(role ca.Role, secret string) fsm.Command {
		return fsm.Command{At: now, RotateSecret: &fsm.RotateSecret{Role: role, Secret: secret}}
	}
	add(
		applyCase{name: "rotate/worker", cmd: rotate(ca.RoleWorker, newSecret), check: func(t *testing.T, before, after *fsm.State) {
			if after.WorkerSecret != newSecret || after.ManagerSecret != before.ManagerSecret {
				t.Errorf("secrets = %q, %q, want %q, %q", after.WorkerSecret, after.ManagerSecret, newSecret, before.ManagerSecret)
			}
		}},
		applyCase{name: "rotate/manager", cmd: rotate(ca.RoleManager, newSecret), check: func(t *testing.T, before, after *fsm.State) {
			if after.ManagerSecret != newSecret || after.WorkerSecret != before.WorkerSecret {
				t.Errorf("secrets = %q, %q, want %q, %q", after.WorkerSecret, after.ManagerSecret, before.WorkerSecret, newSecret)
			}
		}},
		applyCase{name: "rotate/empty secret", cmd: rotate(ca.RoleWorker, ""), want: fsm.ErrBadCommand},
		applyCase{name: "rotate/worker to the manager secret", cmd: rotate(ca.RoleWorker, f.managerSecret), want: fsm.ErrBadCommand},
		applyCase{name: "rotate/manager to the worker secret", cmd: rotate(ca.RoleManager, f.workerSecret), want: fsm.ErrBadCommand},
		applyCase{name: "rotate/unknown role", cmd: rotate(ca.RoleAdmin, newSecret), want: fsm.ErrBadCommand},
	)

	// SetRole.
	setRole := func(id string, role ca.Role) fsm.Command {
		return fsm.Command{At: now, SetRole: &fsm.SetRole{NodeID: id, Role: role}}
	}
	add(
		applyCase{name: "set role/promote worker", cmd: setRole(idW, ca.RoleManager), check: func(t *testing.T, before, after *fsm.State) {
			if got := nodeOf(after, idW).Role; got != ca.RoleManager {
				t.Errorf("Role = %s, want %s", got, ca.RoleManager)
			}
			if got, want := len(after.Managers()), len(before.Managers())+1; got != want {
				t.Errorf("len(Managers()) = %d, want %d", got, want)
			}
		}},
		applyCase{name: "set role/demote manager clears its Raft address",
			setup: []fsm.Command{{At: now, SetAddrs: &fsm.SetAddrs{NodeID: idM2, Addr: "10.0.0.2:2377", RaftAddr: "10.0.0.2:2378"}}},
			cmd:   setRole(idM2, ca.RoleWorker), check: nodeCheck(idM2, func(t *testing.T, n fsm.Node) {
				if n.Role != ca.RoleWorker || n.RaftAddr != "" || n.Addr != "10.0.0.2:2377" {
					t.Errorf("demoted node = %+v, want a worker with Addr kept and no RaftAddr", n)
				}
			})},
		applyCase{name: "set role/unknown node", cmd: setRole(idNew, ca.RoleManager), want: fsm.ErrUnknownNode},
		applyCase{name: "set role/removed node", cmd: setRole(idR, ca.RoleManager), want: fsm.ErrUnknownNode},
		applyCase{name: "set role/unknown role", cmd: setRole(idW, ca.RoleAdmin), want: fsm.ErrBadCommand},
		applyCase{name: "set role/same role", cmd: setRole(idW, ca.RoleWorker), want: fsm.ErrBadCommand},
		applyCase{name: "set role/demote the last manager",
			setup: []fsm.Command{setRole(idM2, ca.RoleWorker)},
			cmd:   setRole(f.managerID, ca.RoleWorker), want: fsm.ErrLastManager},
	)

	// RemoveNode.
	remove := func(id string) fsm.Command { return fsm.Command{At: now, RemoveNode: &fsm.RemoveNode{NodeID: id}} }
	removed := func(id string) func(t *testing.T, before, after *fsm.State) {
		return func(t *testing.T, before, after *fsm.State) {
			t.Helper()
			if _, ok := after.Node(id); ok {
				t.Errorf("Node(%s) = present, want removed", id)
			}
			if !after.IsRemoved(id) {
				t.Fatalf("IsRemoved(%s) = false, want true", id)
			}
			if got, want := after.Removed[id], nodeOf(before, id).CertsValidUntil; !got.Equal(want) {
				t.Errorf("Removed[%s] = %v, want its CertsValidUntil %v", id, got, want)
			}
			if got, want := len(after.Removed), len(before.Removed)+1; got != want {
				t.Errorf("len(Removed) = %d, want %d", got, want)
			}
		}
	}
	add(
		applyCase{name: "remove/worker", cmd: remove(idW), check: removed(idW)},
		applyCase{name: "remove/manager", cmd: remove(idM2), check: removed(idM2)},
		applyCase{name: "remove/unknown node", cmd: remove(idNew), want: fsm.ErrUnknownNode},
		applyCase{name: "remove/removed node", cmd: remove(idR), want: fsm.ErrRemoved},
		applyCase{name: "remove/the last manager", setup: []fsm.Command{remove(idM2)}, cmd: remove(f.managerID), want: fsm.ErrLastManager},
		applyCase{name: "remove/the last manager, the other demoted", setup: []fsm.Command{setRole(idM2, ca.RoleWorker)}, cmd: remove(f.managerID), want: fsm.ErrLastManager},
	)

	// Prune (see also removed_test.go).
	prune := fsm.Command{At: now, Prune: &fsm.Prune{}}
	add(
		applyCase{name: "prune/drops the used-up token", cmd: prune, check: func(t *testing.T, before, after *fsm.State) {
			want := withIndex(before, after.Index)
			want.Tokens = map[string]fsm.ExtraToken{tokOnce: before.Tokens[tokOnce], tokTTL: before.Tokens[tokTTL]}
			if d := diff(after, want); d != "" {
				t.Errorf("Prune changed the state otherwise than dropping %s:\n%s", tokSpent, d)
			}
		}},
		applyCase{name: "prune/nothing due", setup: []fsm.Command{prune}, cmd: prune, check: func(t *testing.T, before, after *fsm.State) {
			if d := diff(after, withIndex(before, after.Index)); d != "" {
				t.Errorf("Prune with nothing due changed the state:\n%s", d)
			}
		}},
	)

	// UpdateConfig.
	update := func(d time.Duration) fsm.Command {
		return fsm.Command{At: now, UpdateConfig: &fsm.UpdateConfig{CertExpiry: d}}
	}
	add(
		applyCase{name: "update config/cert expiry", cmd: update(2 * time.Hour), check: func(t *testing.T, _, after *fsm.State) {
			if after.CertExpiry != 2*time.Hour {
				t.Errorf("CertExpiry = %s, want 2h", after.CertExpiry)
			}
		}},
		applyCase{name: "update config/zero keeps", cmd: update(0), check: func(t *testing.T, before, after *fsm.State) {
			if d := diff(after, withIndex(before, after.Index)); d != "" {
				t.Errorf("UpdateConfig{} changed the state:\n%s", d)
			}
		}},
		applyCase{name: "update config/under minimum", cmd: update(ca.MinCertExpiry - time.Minute), want: fsm.ErrBadCommand},
		applyCase{name: "update config/negative", cmd: update(-time.Hour), want: fsm.ErrBadCommand},
	)

	// CreateToken.
	create := func(change func(*fsm.ExtraToken)) fsm.Command {
		tok := fsm.ExtraToken{ID: "tok-new", Role: ca.RoleWorker, SecretHash: fsm.HashSecret("new"), UsesLeft: 3, ExpiresAt: now.Add(time.Hour)}
		change(&tok)
		return fsm.Command{At: now, CreateToken: &fsm.CreateToken{Token: tok}}
	}
	add(
		applyCase{name: "create token/accepted", cmd: create(func(*fsm.ExtraToken) {}), check: func(t *testing.T, before, after *fsm.State) {
			tok, ok := after.Tokens["tok-new"]
			if !ok || tok.UsesLeft != 3 || !tok.CreatedAt.Equal(now) || !tok.ExpiresAt.Equal(now.Add(time.Hour)) || tok.Role != ca.RoleWorker {
				t.Errorf("Tokens[tok-new] = %+v, %v, want 3 uses, created %v, expiring an hour later", tok, ok, now)
			}
			if len(after.Tokens) != len(before.Tokens)+1 {
				t.Errorf("len(Tokens) = %d, want %d", len(after.Tokens), len(before.Tokens)+1)
			}
		}},
		applyCase{name: "create token/no ID", cmd: create(func(t *fsm.ExtraToken) { t.ID = "" }), want: fsm.ErrBadCommand},
		applyCase{name: "create token/admin role", cmd: create(func(t *fsm.ExtraToken) { t.Role = ca.RoleAdmin }), want: fsm.ErrBadCommand},
		applyCase{name: "create token/zero uses", cmd: create(func(t *fsm.ExtraToken) { t.UsesLeft = 0 }), want: fsm.ErrBadCommand},
		applyCase{name: "create token/uses -2", cmd: create(func(t *fsm.ExtraToken) { t.UsesLeft = -2 }), want: fsm.ErrBadCommand},
		applyCase{name: "create token/no secret", cmd: create(func(t *fsm.ExtraToken) { t.SecretHash = [32]byte{} }), want: fsm.ErrBadCommand},
		applyCase{name: "create token/ID in use", cmd: create(func(t *fsm.ExtraToken) { t.ID = tokOnce }), want: fsm.ErrBadCommand},
	)

	// RevokeToken.
	revoke := func(id string) fsm.Command { return fsm.Command{At: now, RevokeToken: &fsm.RevokeToken{ID: id}} }
	add(
		applyCase{name: "revoke token/accepted", cmd: revoke(tokOnce), check: func(t *testing.T, before, after *fsm.State) {
			if _, ok := after.Tokens[tokOnce]; ok || len(after.Tokens) != len(before.Tokens)-1 {
				t.Errorf("Tokens = %v, want %s gone and the rest kept", after.Tokens, tokOnce)
			}
		}},
		applyCase{name: "revoke token/unknown", cmd: revoke("tok-none"), want: fsm.ErrUnknownToken},
		applyCase{name: "revoke token/twice", setup: []fsm.Command{revoke(tokOnce)}, cmd: revoke(tokOnce), want: fsm.ErrUnknownToken},
	)

	// SetAddrs.
	setAddrs := func(id, addr, raft string) fsm.Command {
		return fsm.Command{At: now, SetAddrs: &fsm.SetAddrs{NodeID: id, Addr: addr, RaftAddr: raft}}
	}
	add(
		applyCase{name: "set addrs/manager", cmd: setAddrs(idM2, "10.0.0.2:2377", "10.0.0.2:2378"), check: nodeCheck(idM2, func(t *testing.T, n fsm.Node) {
			if n.Addr != "10.0.0.2:2377" || n.RaftAddr != "10.0.0.2:2378" {
				t.Errorf("addresses = %q, %q, want 10.0.0.2:2377, 10.0.0.2:2378", n.Addr, n.RaftAddr)
			}
		})},
		applyCase{name: "set addrs/worker", cmd: setAddrs(idW, "a:1", "a:2"), want: fsm.ErrBadCommand},
		applyCase{name: "set addrs/unknown node", cmd: setAddrs(idNew, "a:1", "a:2"), want: fsm.ErrUnknownNode},
		applyCase{name: "set addrs/removed node", cmd: setAddrs(idR, "a:1", "a:2"), want: fsm.ErrUnknownNode},
		applyCase{name: "set addrs/no Raft address", cmd: setAddrs(idM2, "a:1", ""), want: fsm.ErrBadCommand},
	)
	return cases
}

// before returns the state a case starts from.
func (w *world) before(t *testing.T, tt applyCase) *fsm.State {
	t.Helper()
	s := w.base
	if tt.empty {
		s = &fsm.State{}
	}
	return apply(t, s, tt.setup...)
}

func TestApply(t *testing.T) {
	w := newWorld(t)
	for _, tt := range applyCases(w) {
		t.Run(tt.name, func(t *testing.T) {
			before := w.before(t, tt)
			index := before.Index + 7
			after, err := fsm.Apply(before, index, tt.cmd)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Apply(%s) = %v, want %v", describe(tt.cmd), err, tt.want)
			}
			if after == nil || after.Index != index {
				t.Fatalf("Apply(%d, %s) state = %+v, want Index %d", index, describe(tt.cmd), after, index)
			}
			if tt.want != nil {
				if d := diff(after, withIndex(before, index)); d != "" {
					t.Errorf("Apply(%s) refused with %v but changed the state:\n%s", describe(tt.cmd), err, d)
				}
				return
			}
			if tt.check == nil {
				t.Fatal("an accepted case needs a check")
			}
			tt.check(t, before, after)
		})
	}
}

// TestApplyDoesNotChangeItsInput applies every case of TestApply and checks
// that the state it was given, maps included, is as a deep copy taken
// before shows it.
func TestApplyDoesNotChangeItsInput(t *testing.T) {
	w := newWorld(t)
	for _, tt := range applyCases(w) {
		t.Run(tt.name, func(t *testing.T) {
			before := w.before(t, tt)
			saved := snapshot(t, before)
			nodes, removed, tokens := before.Nodes.Len(), len(before.Removed), len(before.Tokens)
			fsm.Apply(before, before.Index+1, tt.cmd)
			if d := diff(before, saved); d != "" {
				t.Errorf("Apply(%s) changed its input state:\n%s", describe(tt.cmd), d)
			}
			if before.Nodes.Len() != nodes || len(before.Removed) != removed || len(before.Tokens) != tokens {
				t.Errorf("Apply(%s) input map sizes = %d, %d, %d, want %d, %d, %d", describe(tt.cmd),
					before.Nodes.Len(), len(before.Removed), len(before.Tokens), nodes, removed, tokens)
			}
		})
	}
}

// TestApplyNilState applies to a nil state as to the empty one.
func TestApplyNilState(t *testing.T) {
	f := newFixture(t)
	s, err := fsm.Apply(nil, 1, f.initCmd())
	if err != nil || !s.Initialized() || s.Index != 1 {
		t.Fatalf("Apply(nil, 1, init) = %+v, %v, want an initialized state at index 1", s, err)
	}
	s, err = fsm.Apply(nil, 2, fsm.Command{At: t0, Prune: &fsm.Prune{}})
	if !errors.Is(err, fsm.ErrNotInitialized) || s == nil || s.Index != 2 || s.Initialized() {
		t.Fatalf("Apply(nil, 2, prune) = %+v, %v, want the empty state at index 2 and %v", s, err, fsm.ErrNotInitialized)
	}
}

// TestRenewalKeepsPreviousCertificates: a renewal keeps the node's earlier
// certificates that are still valid (Knows them), drops those that
// expired, and keeps no more than MaxPrevCerts.
func TestRenewalKeepsPreviousCertificates(t *testing.T) {
	f := newFixture(t)
	s := apply(t, nil, f.initCmd(), f.join(idW, ca.RoleWorker, f.workerSecret, t0))
	first := nodeOf(s, idW).Cert
	// A short-lived second certificate, then a long one.
	s = apply(t, s, f.renew(idW, ca.RoleWorker, t0.Add(time.Minute), 2*time.Hour))
	second := nodeOf(s, idW).Cert
	s = apply(t, s, f.renew(idW, ca.RoleWorker, t0.Add(2*time.Minute), f.expiry))
	n := nodeOf(s, idW)
	for _, c := range []fsm.CertInfo{first, second, n.Cert} {
		if !n.Knows(c.Serial) {
			t.Errorf("node does not know its certificate %s", c.Serial)
		}
	}
	if n.Knows("ffff") {
		t.Errorf("node knows a serial it never had")
	}
	// Three hours on, the second has expired: the next renewal drops it.
	s = apply(t, s, f.renew(idW, ca.RoleWorker, t0.Add(3*time.Hour), f.expiry))
	if n := nodeOf(s, idW); n.Knows(second.Serial) || !n.Knows(first.Serial) {
		t.Errorf("after the second expired: knows second %v, first %v; want false, true", n.Knows(second.Serial), n.Knows(first.Serial))
	}
	for i := range 2 * fsm.MaxPrevCerts {
		s = apply(t, s, f.renew(idW, ca.RoleWorker, t0.Add(4*time.Hour+time.Duration(i)*time.Minute), f.expiry))
	}
	if got := len(nodeOf(s, idW).Prev); got != fsm.MaxPrevCerts {
		t.Errorf("after many renewals the node keeps %d earlier certificates, want %d", got, fsm.MaxPrevCerts)
	}
}
