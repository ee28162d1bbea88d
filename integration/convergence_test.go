package integration

// A rotation counts on what the leader hears in authenticated heartbeats,
// never on gossip: any member holds the gossip key, and a removed node kept
// it until it was replaced.

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/membership"
	"github.com/quorumca/quorumca/node"
)

// TestRemovedNodeCannotHoldRotation: a removed node still holds the old
// gossip key, and uses it to make a node that is down look alive in
// gossip. The removal replaced the key; the forged member is not heard
// once the old key is dropped; and the rotation skips the down node after
// the grace all the same, because only heartbeats count.
func TestRemovedNodeCannotHoldRotation(t *testing.T) {
	rc := clustertest.New(t, clustertest.Options{
		Managers: 1, Workers: 3, Grace: time.Second,
		Configure: func(_ string, cfg *node.Config) { cfg.Manager.GossipKeyGrace = time.Second },
	})
	removed, down, alive := rc.Workers[0], rc.Workers[1], rc.Workers[2]
	oldKey := rc.Managers[0].Manager().State().GossipKey
	gossipPeers := gossipAddrs(t, rc)

	// The second worker goes down; the first, with the gossip key it
	// holds, claims in gossip to be the second, alive. Then the first is
	// removed.
	removed.Stop()
	down.Stop()
	forged := rotForgeMember(t, down.ID(), oldKey, membership.Meta{Role: ca.RoleWorker, Serial: "01"}, gossipPeers)
	testkit.Eventually(t, "the manager hears the forged member", func() error {
		if _, ok := memberPeer(forged, rc.Managers[0].ID()); !ok {
			return fmt.Errorf("the forged member does not see the manager")
		}
		return nil
	})
	ctx := testkit.Ctx(t)
	if _, err := rc.Ctl().RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: removed.ID(), Force: true}); err != nil {
		t.Fatalf("RemoveNode(%s) = %v", removed.ID(), err)
	}
	newKey := rc.Managers[0].Manager().State().GossipKey
	if string(newKey) == string(oldKey) {
		t.Fatalf("RemoveNode did not replace the gossip key")
	}

	// The manager moves to the new key, then stops reading the old one:
	// the forged member is no longer heard.
	testkit.Eventually(t, "the manager's gossip no longer hears the forged member", func() error {
		mem := rc.Managers[0].Manager().Gossip().Member()
		if mem == nil {
			return fmt.Errorf("gossip not started")
		}
		if mem.KeyID() != membership.KeyID(newKey) || mem.Keys() != 1 {
			return fmt.Errorf("gossip uses key %s with %d keys, want only %s", mem.KeyID(), mem.Keys(), membership.KeyID(newKey))
		}
		if _, ok := memberPeer(mem, down.ID()); ok {
			return fmt.Errorf("the forged member %s is still a peer", down.ID())
		}
		return nil
	})

	// The worker still in the cluster hears of the new key in a heartbeat,
	// fetches it over mutual TLS and moves to it.
	testkit.Eventually(t, "the remaining worker moves to the new gossip key", func() error {
		mem := alive.Worker().Gossip().Member()
		if mem == nil || mem.KeyID() != membership.KeyID(newKey) {
			return fmt.Errorf("worker gossip is not on key %s", membership.KeyID(newKey))
		}
		if _, ok := memberPeer(mem, rc.Managers[0].ID()); !ok {
			return fmt.Errorf("the worker does not see the manager in gossip")
		}
		return nil
	})

	// The rotation skips the down node after the grace.
	root := rc.Rotate()
	got := rc.WaitRotation(root, false)
	if n, ok := clustertest.RotationNode(got.GetRotation(), down.ID()); !ok || n.GetState() != "skipped" {
		t.Errorf("after the rotation, the down node is %v, want skipped", n)
	}
}

func memberPeer(m *membership.Member, id string) (membership.Peer, bool) {
	for _, p := range m.Peers() {
		if p.NodeID == id {
			return p, true
		}
	}
	return membership.Peer{}, false
}

// gossipAddrs returns the managers' gossip addresses, to join through.
func gossipAddrs(t *testing.T, rc *clustertest.Cluster) []string {
	t.Helper()
	var out []string
	for _, mg := range rc.RunningManagers() {
		if g := mg.Manager().Gossip(); g != nil && g.Member() != nil {
			out = append(out, g.Member().Addr())
		}
	}
	if len(out) == 0 {
		t.Fatalf("no manager gossips")
	}
	return out
}

// TestRenewedButServingOldCertificateNotConverged: a node that renewed
// during a rotation, but still presents its old certificate, is not
// counted as converged (the state records its new certificate; the
// leader never saw it presented). Once it heartbeats with the new one,
// the rotation completes.
func TestRenewedButServingOldCertificateNotConverged(t *testing.T) {
	rc := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 0})
	held := rc.HoldRotation()
	id := held.Node.NodeID
	addr := rc.Leader().Addr()
	old := held.Credentials.Certificate()
	heartbeat := func(cert *tls.Certificate) error {
		conn := rc.Dial(addr, clientTLS(cert, rc.Roots()))
		_, err := api.NewCAClient(conn).Heartbeat(testkit.Ctx(t), &api.HeartbeatRequest{BundleDigest: agent.BundleDigest(held.Credentials.Bundle())})
		return err
	}
	root := rc.Rotate()
	rc.WaitConvergedExcept(id)

	// Renew, keeping the old certificate in use.
	key, err := ca.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.NewCSR(nil, key, "")
	if err != nil {
		t.Fatal(err)
	}
	conn := rc.Dial(addr, clientTLS(old, rc.Roots()))
	resp, err := api.NewCAClient(conn).RenewNodeCertificate(testkit.Ctx(t), &api.RenewNodeCertificateRequest{Csr: csr})
	if err != nil {
		t.Fatalf("RenewNodeCertificate() = %v", err)
	}
	// Heartbeat after heartbeat with the old certificate, it stays
	// "renewed": the leader records each heartbeat before it answers, and
	// GetCA tells the progress from what it recorded.
	notConverged := func() error {
		if err := heartbeat(old); err != nil {
			return err
		}
		ca, err := rc.GetCA()
		if err != nil {
			return err
		}
		n, _ := clustertest.RotationNode(ca.GetRotation(), id)
		if !ca.GetRotation().GetInProgress() || n.GetState() != "renewed" {
			return fmt.Errorf("node %s is %q (%s), want \"renewed\" with the rotation in progress", id, n.GetState(), clustertest.RotationSummary(ca.GetRotation()))
		}
		return nil
	}
	for i := range 6 {
		if err := notConverged(); err != nil {
			t.Fatalf("the node serving its old certificate is not converged: heartbeat %d: %v", i+1, err)
		}
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(resp.GetCertificate(), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := heartbeat(&pair); err != nil {
		t.Fatalf("Heartbeat() with the new certificate = %v", err)
	}
	rc.WaitRotation(root, false)
}
