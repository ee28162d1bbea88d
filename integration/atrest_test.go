package integration

// Secrets at rest across a cluster: a manager that restarts with autolock
// on is locked, signs nothing and votes nothing until it is given the
// cluster's unlock key.

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
)

// TestLockedManagerSignsAndVotesNothing: with autolock on, a restarted
// manager is locked: status says so, a join through it fails, and it
// does not vote: with one other manager stopped, the last one cannot
// commit. A wrong key is refused and changes nothing; the right one
// unlocks it, under the same identity, and the two commit again.
func TestLockedManagerSignsAndVotesNothing(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3, Init: manager.InitOptions{Autolock: true}})
	key, err := c.Ctl().UnlockKey(testkit.Ctx(t), &api.UnlockKeyRequest{})
	if err != nil {
		t.Fatalf("Control.UnlockKey() = %v", err)
	}
	// The leader stays; a follower is locked, the other stopped.
	m0 := c.Leader()
	var m1, m2 *clustertest.Node
	for _, n := range c.Managers {
		switch {
		case n == m0:
		case m2 == nil:
			m2 = n
		default:
			m1 = n
		}
	}
	testkit.Eventually(t, "the follower's keys sealed under the unlock key", testkit.True(func() bool {
		return m2.Manager().Credentials().NodeKey().KEK != nil
	}))
	id, addr := m2.ID(), m2.Addr()
	m2.Stop()
	m2.Restart()
	if !m2.Node().Locked() {
		t.Fatalf("m2 restarted with autolock on is not locked")
	}
	st, err := m2.Status()
	if err != nil || !strings.Contains(st.GetProblem(), "locked") || !strings.Contains(st.GetProblem(), "quorumca unlock") {
		t.Fatalf("Status() of the locked manager = %q, %v; want it to say locked and what to run", st.GetProblem(), err)
	}
	if _, _, err := c.TryJoin(c.WorkerToken, addr); err == nil {
		t.Errorf("a join through the locked manager succeeded")
	}

	// The leader alone with the locked m2: no majority, if m2 does not
	// vote (or acknowledge entries).
	m1.Stop()
	rotate := func() error {
		_, err := m0.Control().JoinToken(testkit.Ctx(t), &api.JoinTokenRequest{Role: "worker", Rotate: true})
		return err
	}
	if err := rotate(); err == nil {
		t.Fatalf("a write committed with one manager of three running and one locked: the locked manager voted")
	}

	wrong, _ := ca.NewUnlockKey(rand.Reader)
	if _, err := m2.Control().Unlock(testkit.Ctx(t), &api.UnlockRequest{UnlockKey: wrong}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Unlock(another key) = %v, want InvalidArgument", err)
	}
	if !m2.Node().Locked() {
		t.Fatalf("a wrong key unlocked m2")
	}
	if _, err := m2.Control().Unlock(testkit.Ctx(t), &api.UnlockRequest{UnlockKey: key.GetUnlockKey()}); err != nil {
		t.Fatalf("Unlock(the cluster's key) = %v", err)
	}
	testkit.Eventually(t, "m2 runs its manager", testkit.True(func() bool { return m2.Node().Manager() != nil }))
	if m2.ID() != id {
		t.Errorf("m2's node ID after the unlock = %s, want %s", m2.ID(), id)
	}
	testkit.Eventually(t, "a write commits on m0 and the unlocked m2", func() error {
		if err := rotate(); err != nil {
			return errors.New(status.Convert(err).Message())
		}
		return nil
	})
}
