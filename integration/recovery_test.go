package integration

// Recovering from a lost majority keeps the fleet's identities:
// force-new-cluster on a surviving manager.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

func forceNewCluster(cfg *node.Config) { cfg.Manager.ForceNewCluster = true }

// recovered waits until n's state records a recovery of kind, and returns
// the state.
func recovered(t *testing.T, n *clustertest.Node, kind string) *fsm.State {
	t.Helper()
	var st *fsm.State
	testkit.Eventually(t, "the recovery recorded", func() error {
		m := n.Node().Manager()
		if m == nil {
			return errors.New("no manager yet")
		}
		st = m.State()
		if st.Recovery == nil || st.Recovery.Kind != kind {
			return fmt.Errorf("recovery %+v", st.Recovery)
		}
		return nil
	})
	return st
}

// TestForceNewClusterKeepsIdentities: of 3 managers and 5 workers, two
// managers are lost with their data directories (the leader among them).
// The survivor, started with --force-new-cluster, leads alone with the
// same cluster, CA and nodes; the two lost are removed; every worker
// renews under its own node ID without rejoining; two new managers join
// with the same manager token; a root rotation then completes.
func TestForceNewClusterKeepsIdentities(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3, Workers: 5, Grace: testkit.Wait})
	ids := c.WaitConverged()
	leader := c.Leader()
	survivor := c.Follower()
	var lost []string
	for _, m := range c.Managers {
		if m != survivor {
			lost = append(lost, m.ID())
		}
	}
	slices.Sort(lost)
	if !slices.Contains(lost, leader.ID()) {
		t.Fatalf("the leader %s is not among the lost %v", leader.ID(), lost)
	}
	clusterID, bundle := c.ClusterID, string(survivor.Manager().State().CA.Bundle)
	serials := map[string]string{}
	for _, w := range c.Workers {
		serials[w.ID()] = w.Credentials().Leaf().SerialNumber.String()
	}
	for _, m := range c.Managers {
		if m != survivor {
			m.Stop()
			if err := os.RemoveAll(m.Dir); err != nil {
				t.Fatal(err)
			}
		}
	}
	survivor.Stop()
	survivor.RestartWith(forceNewCluster)

	st := recovered(t, survivor, fsm.RecoveryForceNewCluster)
	if !slices.Equal(st.Recovery.Lost, lost) || len(st.Recovery.Unconfirmed) != 0 {
		t.Errorf("recovery lost %v unconfirmed %v; want lost %v, nothing unconfirmed", st.Recovery.Lost, st.Recovery.Unconfirmed, lost)
	}
	if st.ClusterID != clusterID || string(st.CA.Bundle) != bundle {
		t.Errorf("after the recovery: cluster %s, bundle changed %v; want the same cluster and CA", st.ClusterID, string(st.CA.Bundle) != bundle)
	}
	want := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return slices.Contains(lost, id) })
	if got := clustertest.NodeIDs(st); !slices.Equal(got, want) {
		t.Errorf("nodes after the recovery %v, want %v (the lost managers removed, no one else)", got, want)
	}
	for _, id := range lost {
		if !st.IsRemoved(id) {
			t.Errorf("lost manager %s is not in the removed list", id)
		}
	}
	if !survivor.Node().Manager().IsLeader() {
		testkit.Eventually(t, "the survivor leads", testkit.True(func() bool { return survivor.Node().Manager().IsLeader() }))
	}

	for _, w := range c.Workers {
		w.Renewer().RenewSoon()
	}
	testkit.Eventually(t, "every worker renewed under its own ID", func() error {
		for _, w := range c.Workers {
			creds := w.Credentials()
			if creds.Identity().NodeID != w.ID() || creds.Identity().ClusterID != clusterID {
				return fmt.Errorf("worker %s holds %+v", w.Name, creds.Identity())
			}
			if creds.Leaf().SerialNumber.String() == serials[w.ID()] {
				return fmt.Errorf("worker %s has not renewed", w.Name)
			}
		}
		return nil
	})

	c.AddManager("m3")
	c.AddManager("m4")
	root := c.Rotate()
	c.WaitRotation(root, true)
}

// TestForceNewClusterMarksUnansweredJoins: with both followers stopped, a
// join reaches the leader, which signs it and appends it to its log, but
// cannot commit it: the joining node gets an error and no certificate.
// Forced into a new cluster, the leader commits that entry: the node it
// records is marked unconfirmed, and stays so, since no one holds its
// certificate. The survivor's record of what it had applied is made to lag
// (as after a power loss), so the nodes that did receive their
// certificates are marked too: each is confirmed when it heartbeats.
func TestForceNewClusterMarksUnansweredJoins(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3, Workers: 1})
	leader := c.Leader()
	known := c.WaitConverged()
	for _, m := range c.Managers {
		if m != leader {
			m.Stop()
		}
	}
	dir, _, err := c.TryJoin(c.WorkerToken, leader.Manager().Addr())
	if err == nil {
		t.Fatalf("a join committed with two managers of three stopped")
	}
	if _, err := agent.LoadCredentials(dir); err == nil {
		t.Fatalf("the failed join left a certificate in %s", dir)
	}
	leader.Stop()
	var lag [8]byte
	binary.BigEndian.PutUint64(lag[:], 1)
	if err := os.WriteFile(filepath.Join(leader.Dir, manager.RaftDir, "applied-index"), lag[:], 0o600); err != nil {
		t.Fatal(err)
	}
	leader.RestartWith(forceNewCluster)

	st := recovered(t, leader, fsm.RecoveryForceNewCluster)
	var phantom []string
	for _, id := range clustertest.NodeIDs(st) {
		if !slices.Contains(known, id) {
			phantom = append(phantom, id)
		}
	}
	if len(phantom) != 1 || !slices.Contains(st.Recovery.Unconfirmed, phantom[0]) {
		t.Fatalf("nodes not known before %v, unconfirmed %v; want the one the failed join recorded, unconfirmed", phantom, st.Recovery.Unconfirmed)
	}
	if len(st.Recovery.Unconfirmed) < 2 {
		t.Fatalf("unconfirmed %v; want the nodes recorded after the lagging applied index too", st.Recovery.Unconfirmed)
	}
	testkit.Eventually(t, "every node but the phantom confirmed", func() error {
		st := leader.Node().Manager().State()
		for _, n := range st.Nodes.All() {
			if n.Unconfirmed != (n.ID == phantom[0]) {
				return fmt.Errorf("node %s unconfirmed: %v", n.ID, n.Unconfirmed)
			}
		}
		return nil
	})
}
