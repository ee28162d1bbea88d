package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

// statusExit runs `quorumca status` against n's control socket and
// returns its exit code.
func statusExit(t *testing.T, n *clustertest.Node) (int, string) {
	t.Helper()
	out, err := run(t, "status", "--host", "unix://"+n.Socket)
	if err != nil {
		out += err.Error()
	}
	return exitCode(err), out
}

func wantStatusExit(t *testing.T, what string, n *clustertest.Node, want int) {
	t.Helper()
	testkit.Eventually(t, what, func() error {
		if got, out := statusExit(t, n); got != want {
			return fmt.Errorf("status exits %d, want %d:\n%s", got, want, out)
		}
		return nil
	})
}

// TestStatusExitCodes: status exits 0 on a healthy manager and worker,
// and with its documented code when a flag is bad, no daemon runs, a worker was removed,
// a manager is locked, a manager has no leader, and a worker's
// certificate has expired.
func TestStatusExitCodes(t *testing.T) {
	if out, err := run(t, "status", "--format", "yaml"); exitCode(err) != exitError {
		t.Errorf("status with a bad flag exits %d (%v), want %d\n%s", exitCode(err), err, exitError, out)
	}
	if out, err := run(t, "status", "--data-dir", t.TempDir()); exitCode(err) != exitNoDaemon {
		t.Errorf("status with no daemon exits %d (%v), want %d\n%s", exitCode(err), err, exitNoDaemon, out)
	}

	c := clustertest.New(t, clustertest.Options{Managers: 3, Workers: 2, Init: manager.InitOptions{Autolock: true}})
	w0, w1 := c.Workers[0], c.Workers[1]
	wantStatusExit(t, "a healthy manager", c.Leader(), exitOK)
	wantStatusExit(t, "a healthy worker", w0, exitOK)

	if _, err := c.Ctl().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: w1.ID(), Force: true}); err != nil {
		t.Fatal(err)
	}
	wantStatusExit(t, "a removed worker", w1, exitRejoin)

	// A follower restarted with autolock on is locked; with the other
	// follower stopped, the leader has no majority.
	leader := c.Leader()
	var followers []*clustertest.Node
	for _, n := range c.Managers {
		if n != leader {
			followers = append(followers, n)
		}
	}
	testkit.Eventually(t, "the follower's keys sealed", testkit.True(func() bool {
		return followers[0].Manager().Credentials().NodeKey().KEK != nil
	}))
	followers[0].Stop()
	followers[0].Restart()
	wantStatusExit(t, "a locked manager", followers[0], exitLocked)
	followers[1].Stop()
	wantStatusExit(t, "a manager without a majority", leader, exitNoLeader)
	leader.Stop()
	followers[0].Stop()
	wantStatusExit(t, "a worker that reaches no manager", w0, exitNoLeader)
}

// TestStatusExitCertExpired: a worker whose certificate expired while it
// could reach no manager says so, with its own code. (The worker has a
// clock of its own, which the test moves past its certificate's expiry.)
func TestStatusExitCertExpired(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 1, Configure: func(name string, cfg *node.Config) {
		if name == "w0" {
			cfg.Manager.Now = clock.Now
		}
	}})
	w := c.Workers[0]
	wantStatusExit(t, "a healthy worker", w, exitOK)
	c.Leader().Stop()
	clock.Set(t, w.Credentials().NotAfter().Add(time.Minute))
	wantStatusExit(t, "a worker with an expired certificate", w, exitCertExpiry)
}
