package fsm_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// TestRemovedUntilLatestCertificate checks that a removal is remembered
// until the last certificate ever issued to the node expires, even when a
// later certificate was shorter than an earlier one, and that Prune keeps
// it before that instant and drops it from that instant on.
func TestRemovedUntilLatestCertificate(t *testing.T) {
	f := newFixture(t)
	joinedAt := t0.Add(time.Minute)
	tests := []struct {
		name   string
		nodeID string
		cmds   []fsm.Command // after init and the joins of idM2 and idW
		until  time.Time
	}{
		{
			name:   "worker, never renewed",
			nodeID: idW,
			until:  joinedAt.Add(f.expiry),
		},
		{
			name:   "worker renewed with a shorter certificate",
			nodeID: idW,
			cmds: []fsm.Command{
				{At: t0.Add(time.Hour), UpdateConfig: &fsm.UpdateConfig{CertExpiry: time.Hour}},
				f.renew(idW, ca.RoleWorker, t0.Add(2*time.Hour), time.Hour),
			},
			until: joinedAt.Add(f.expiry),
		},
		{
			name:   "worker renewed with a longer-lasting certificate",
			nodeID: idW,
			cmds:   []fsm.Command{f.renew(idW, ca.RoleWorker, t0.Add(30*24*time.Hour), f.expiry)},
			until:  t0.Add(30*24*time.Hour + f.expiry),
		},
		{
			// The first manager's certificate comes with Init, not Issue.
			name:   "first manager renewed with a shorter certificate",
			nodeID: f.managerID,
			cmds: []fsm.Command{
				{At: t0.Add(time.Hour), UpdateConfig: &fsm.UpdateConfig{CertExpiry: time.Hour}},
				f.renew(f.managerID, ca.RoleManager, t0.Add(2*time.Hour), time.Hour),
			},
			until: f.managerCert.NotAfter,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := apply(t, nil,
				f.initCmd(),
				f.join(idM2, ca.RoleManager, f.managerSecret, t0),
				f.join(idW, ca.RoleWorker, f.workerSecret, joinedAt))
			s = apply(t, s, tt.cmds...)
			if got := nodeOf(s, tt.nodeID).CertsValidUntil; !got.Equal(tt.until) {
				t.Errorf("CertsValidUntil of %s = %v, want %v", tt.nodeID, got, tt.until)
			}
			removedAt := t0.Add(3 * time.Hour)
			s = apply(t, s, fsm.Command{At: removedAt, RemoveNode: &fsm.RemoveNode{NodeID: tt.nodeID}})
			if got := s.Removed[tt.nodeID]; !got.Equal(tt.until) {
				t.Fatalf("Removed[%s] = %v, want %v", tt.nodeID, got, tt.until)
			}

			for _, p := range []struct {
				at   time.Time
				kept bool
			}{
				{removedAt, true},
				{tt.until.Add(-time.Nanosecond), true},
				{tt.until, false},
				{tt.until.Add(time.Hour), false},
			} {
				pruned := apply(t, s, fsm.Command{At: p.at, Prune: &fsm.Prune{}})
				// The removal's revocations of earlier, shorter-lived
				// certificates may go before the removal itself.
				dropped := len(pruned.Removed) != len(s.Removed) || len(pruned.Revoked) != len(s.Revoked)
				if got := s.NeedsPrune(p.at); got != dropped || (!p.kept && !got) {
					t.Errorf("NeedsPrune(%v) = %v, want %v (Prune dropped something: %v)", p.at, got, !p.kept || dropped, dropped)
				}
				if got := pruned.IsRemoved(tt.nodeID); got != p.kept {
					t.Errorf("after Prune at %v: IsRemoved(%s) = %v, want %v", p.at, tt.nodeID, got, p.kept)
				}
			}
		})
	}
}

// TestPrune checks what Prune drops, on a hand-built state, and that
// NeedsPrune says whether it drops anything.
func TestPrune(t *testing.T) {
	base := &fsm.State{
		Index:     3,
		ClusterID: "cluster",
		Nodes:     fsm.NewNodeMap(fsm.Node{ID: "m", Role: ca.RoleManager}),
		Removed: map[string]time.Time{
			"early": t0.Add(time.Hour),
			"late":  t0.Add(3 * time.Hour),
		},
		Tokens: map[string]fsm.ExtraToken{
			"forever": {ID: "forever", Role: ca.RoleWorker, UsesLeft: -1},
			"ttl":     {ID: "ttl", Role: ca.RoleWorker, UsesLeft: 5, ExpiresAt: t0.Add(2 * time.Hour)},
			"spent":   {ID: "spent", Role: ca.RoleManager, UsesLeft: 0, ExpiresAt: t0.Add(24 * time.Hour)},
		},
	}
	tests := []struct {
		at          time.Time
		wantRemoved []string
		wantTokens  []string
	}{
		{t0, []string{"early", "late"}, []string{"forever", "ttl"}},
		{t0.Add(time.Hour - time.Nanosecond), []string{"early", "late"}, []string{"forever", "ttl"}},
		{t0.Add(time.Hour), []string{"late"}, []string{"forever", "ttl"}},
		{t0.Add(2 * time.Hour), []string{"late"}, []string{"forever"}},
		{t0.Add(3 * time.Hour), nil, []string{"forever"}},
		{t0.Add(1000 * time.Hour), nil, []string{"forever"}},
	}
	for _, tt := range tests {
		t.Run(tt.at.Sub(t0).String(), func(t *testing.T) {
			saved := snapshot(t, base)
			got, err := fsm.Apply(base, 4, fsm.Command{At: tt.at, Prune: &fsm.Prune{}})
			if err != nil {
				t.Fatalf("Apply(prune at %v) = %v", tt.at, err)
			}
			want := withIndex(base, 4)
			want.Removed = map[string]time.Time{}
			for _, id := range tt.wantRemoved {
				want.Removed[id] = base.Removed[id]
			}
			want.Tokens = map[string]fsm.ExtraToken{}
			for _, id := range tt.wantTokens {
				want.Tokens[id] = base.Tokens[id]
			}
			if d := diff(got, want); d != "" {
				t.Errorf("Prune at %v:\n%s", tt.at, d)
			}
			dropped := len(got.Removed) != len(base.Removed) || len(got.Tokens) != len(base.Tokens)
			if n := base.NeedsPrune(tt.at); n != dropped {
				t.Errorf("NeedsPrune(%v) = %v, want %v (whether Prune drops anything)", tt.at, n, dropped)
			}
			if d := diff(base, saved); d != "" {
				t.Errorf("Prune changed its input:\n%s", d)
			}
		})
	}
}

// TestRemovedStaysBounded is the "must not grow without bound" property:
// nodes join and are removed over and over while simulated time goes on
// and Prune runs, and the removal list never holds more than the removals
// of one cert-expiry window. Commands are built directly, with no signing
// in the loop.
func TestRemovedStaysBounded(t *testing.T) {
	const cycles = 50_000
	f := newFixture(t)
	expiry := ca.MinCertExpiry
	s := apply(t, nil, f.initWith(func(in *fsm.Init) { in.CertExpiry = expiry }))
	secret := fsm.HashSecret(f.workerSecret)
	rng := rand.New(rand.NewPCG(1, 2))

	step := func(c fsm.Command) {
		t.Helper()
		next, err := fsm.Apply(s, s.Index+1, c)
		if err != nil {
			t.Fatalf("Apply(%d, %s) = %v", s.Index+1, describe(c), err)
		}
		s = next
	}

	clock := t0
	cert := fsm.CertInfo{Serial: "1", Issuer: f.status}
	var removals []time.Time // when each node was removed, in order
	first := 0               // removals[first:] are within the current window
	most := 0
	for i := range cycles {
		id := fmt.Sprintf("node-%d", i)
		cert.NotBefore, cert.NotAfter = clock.Add(-time.Hour), clock.Add(expiry)
		step(fsm.Command{At: clock, Issue: &fsm.Issue{
			Node: fsm.Node{ID: id, Role: ca.RoleWorker, Cert: cert}, Join: true, SecretHash: secret,
		}})
		step(fsm.Command{At: clock, RemoveNode: &fsm.RemoveNode{NodeID: id}})
		removals = append(removals, clock)

		// Mostly short steps, now and then a pause past the expiry.
		if rng.IntN(1000) == 0 {
			clock = clock.Add(expiry + time.Duration(rng.Int64N(int64(expiry))))
		} else {
			clock = clock.Add(time.Second + time.Duration(rng.Int64N(int64(5*time.Minute))))
		}
		for first < len(removals) && !removals[first].After(clock.Add(-expiry)) {
			first++
		}
		window := len(removals) - first // removals in (clock-expiry, clock]

		if got, want := s.NeedsPrune(clock), len(s.Removed) > window; got != want {
			t.Fatalf("cycle %d: NeedsPrune(%v) = %v, want %v", i, clock, got, want)
		}
		step(fsm.Command{At: clock, Prune: &fsm.Prune{}})
		if len(s.Removed) > window {
			t.Fatalf("cycle %d: len(Removed) = %d, want at most the %d removals of the last %s", i, len(s.Removed), window, expiry)
		}
		if len(s.Removed) != window {
			t.Fatalf("cycle %d: len(Removed) = %d, want %d: a removal whose certificate is still valid was dropped", i, len(s.Removed), window)
		}
		most = max(most, len(s.Removed))
		if s.Nodes.Len() != 1 {
			t.Fatalf("cycle %d: len(Nodes) = %d, want only the first manager", i, s.Nodes.Len())
		}
	}
	// With steps of 2.5 minutes on average, an hour's window holds a few
	// dozen removals: nowhere near the number of cycles.
	if most == 0 || most > 200 {
		t.Errorf("largest removal list = %d, want between 1 and 200 (one window's removals)", most)
	}
	t.Logf("%d removals; largest removal list %d", cycles, most)
}

// TestRemovedNodeRefused checks the named security property: once removed,
// a node can neither renew nor join again under its ID, and is refused
// until its certificates expire.
func TestRemovedNodeRefused(t *testing.T) {
	w := newWorld(t)
	s := apply(t, w.base, fsm.Command{At: now, RemoveNode: &fsm.RemoveNode{NodeID: idW}})
	for _, c := range []fsm.Command{
		w.renew(idW, ca.RoleWorker, now, w.expiry),
		w.join(idW, ca.RoleWorker, w.workerSecret, now),
	} {
		if _, err := fsm.Apply(s, s.Index+1, c); !errors.Is(err, fsm.ErrRemoved) {
			t.Errorf("Apply(%s for removed %s) = %v, want %v", describe(c), idW, err, fsm.ErrRemoved)
		}
	}
	if !s.IsRemoved(idW) {
		t.Errorf("IsRemoved(%s) = false, want true", idW)
	}
}
