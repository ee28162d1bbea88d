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
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/membership"
)

// TestRemovedNodeCannotHoldRotation: a removed node still holds the old
// gossip key, and uses it to make a node that is down look alive in
// gossip. The removal replaced the key; the forged member is not heard
// once the old key is dropped; and the rotation skips the down node after
// the grace all the same, because only heartbeats count.
func TestRemovedNodeCannotHoldRotation(t *testing.T) {
	rc := buildRotationCluster(t, 1, 3, time.Second, func(cfg *manager.Config) {
		fastRotation(cfg)
		cfg.GossipKeyGrace = time.Second
	}, waitFor)
	removed, down, alive := rc.workers[0], rc.workers[1], rc.workers[2]
	oldKey := rc.m(0).State().GossipKey
	gossipPeers := gossipAddrs(t, rc)

	// The second worker goes down; the first, with the gossip key it
	// holds, claims in gossip to be the second, alive. Then the first is
	// removed.
	removed.stop()
	down.stop()
	forged := rotForgeMember(t, down.id, oldKey, membership.Meta{Role: ca.RoleWorker, Serial: "01"}, gossipPeers)
	eventually(t, waitFor, "the manager hears the forged member", func() error {
		if _, ok := memberPeer(forged, rc.managers[0].m.NodeID()); !ok {
			return fmt.Errorf("the forged member does not see the manager")
		}
		return nil
	})
	ctx, cancel := rotCtx(t)
	defer cancel()
	if _, err := rc.anyCtl().RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: removed.id, Force: true}); err != nil {
		t.Fatalf("RemoveNode(%s) = %v", removed.id, err)
	}
	newKey := rc.m(0).State().GossipKey
	if string(newKey) == string(oldKey) {
		t.Fatalf("RemoveNode did not replace the gossip key")
	}

	// The manager moves to the new key, then stops reading the old one:
	// the forged member is no longer heard.
	eventually(t, waitFor, "the manager's gossip no longer hears the forged member", func() error {
		mem := rc.m(0).Gossip().Member()
		if mem == nil {
			return fmt.Errorf("gossip not started")
		}
		if mem.KeyID() != membership.KeyID(newKey) || mem.Keys() != 1 {
			return fmt.Errorf("gossip uses key %s with %d keys, want only %s", mem.KeyID(), mem.Keys(), membership.KeyID(newKey))
		}
		if _, ok := memberPeer(mem, down.id); ok {
			return fmt.Errorf("the forged member %s is still a peer", down.id)
		}
		return nil
	})

	// The worker still in the cluster hears of the new key in a heartbeat,
	// fetches it over mutual TLS and moves to it.
	eventually(t, waitFor, "the remaining worker moves to the new gossip key", func() error {
		mem := alive.w.Gossip().Member()
		if mem == nil || mem.KeyID() != membership.KeyID(newKey) {
			return fmt.Errorf("worker gossip is not on key %s", membership.KeyID(newKey))
		}
		if _, ok := memberPeer(mem, rc.managers[0].m.NodeID()); !ok {
			return fmt.Errorf("the worker does not see the manager in gossip")
		}
		return nil
	})

	// The rotation skips the down node after the grace.
	root := rc.rotate()
	got := rc.waitRotation(root, false)
	if n, ok := rotNode(got.GetRotation(), down.id); !ok || n.GetState() != "skipped" {
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
func gossipAddrs(t *testing.T, rc *rotationCluster) []string {
	t.Helper()
	var out []string
	for _, i := range rc.running() {
		if g := rc.managers[i].m.Gossip(); g != nil && g.Member() != nil {
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
	rc := newRotationCluster(t, 1, 0, 0)
	held := rc.holdRotation()
	id := held.Node.NodeID
	addr := rc.managers[rc.leader()].addr
	old := held.Credentials.Certificate()
	heartbeat := func(cert *tls.Certificate) error {
		conn := dialAPI(t, addr, clientTLS(cert, rc.roots()))
		ctx, cancel := rotCtx(t)
		defer cancel()
		_, err := api.NewCAClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{BundleDigest: agent.BundleDigest(held.Credentials.Bundle())})
		return err
	}
	root := rc.rotate()
	rc.waitConvergedExcept(id)

	// Renew, keeping the old certificate in use.
	key, err := ca.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.NewCSR(nil, key, "")
	if err != nil {
		t.Fatal(err)
	}
	conn := dialAPI(t, addr, clientTLS(old, rc.roots()))
	ctx, cancel := rotCtx(t)
	resp, err := api.NewCAClient(conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{Csr: csr})
	cancel()
	if err != nil {
		t.Fatalf("RenewNodeCertificate() = %v", err)
	}
	lcHolds(t, 6*rotHeartbeat, "the node serving its old certificate is not converged", func() error {
		if err := heartbeat(old); err != nil {
			return err
		}
		ca, err := rc.getCA()
		if err != nil {
			return err
		}
		n, _ := rotNode(ca.GetRotation(), id)
		if !ca.GetRotation().GetInProgress() || n.GetState() != "renewed" {
			return fmt.Errorf("node %s is %q (%s), want \"renewed\" with the rotation in progress", id, n.GetState(), rotationSummary(ca.GetRotation()))
		}
		return nil
	})
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
	rc.waitRotation(root, false)
}
