package integration

// The certificate lifecycle, end to end: renewal on schedule, a cert-expiry
// change reaching every node, promotion and demotion, removal and the
// pruning of the refusal list, join-token rotation and token policies, and
// the admin mutual-TLS access to the Control API. Each security refusal is
// its own named test.
//
// The daemons run on one injected clock (testkit.NewClusterClock) that
// stands still unless a test moves it, so that renewal schedules, token
// TTLs and liveness are driven by the test rather than by real hours.
// crypto/tls still checks certificate validity against the real clock; see
// testkit.NewClusterClock for what that asks of the tests.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

// newLifecycleCluster starts managers managers on one fake clock, with the
// given cert expiry (0: the default).
func newLifecycleCluster(t *testing.T, managers int, expiry time.Duration) *clustertest.Cluster {
	t.Helper()
	return clustertest.New(t, clustertest.Options{
		Managers: managers, Init: manager.InitOptions{CertExpiry: expiry}, Clock: testkit.NewClusterClock(),
	})
}

// checkJoinRefused fails unless a join with token is refused with
// PermissionDenied and leaves nothing in its data directory, and the
// cluster's nodes are unchanged.
func checkJoinRefused(t *testing.T, c *clustertest.Cluster, what, token string) {
	t.Helper()
	before := clustertest.NodeIDs(c.Leader().Manager().State())
	dir, _, err := c.TryJoin(token, c.Managers[0].Addr())
	if got := status.Code(err); got != codes.PermissionDenied {
		t.Errorf("join with %s = %v (code %s), want %s", what, err, got, codes.PermissionDenied)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("join with %s left %d entries in its data directory, want none", what, len(entries))
	}
	if after := clustertest.NodeIDs(c.Leader().Manager().State()); !slices.Equal(after, before) {
		t.Errorf("join with %s: nodes = %v, want unchanged %v", what, after, before)
	}
}

// adminCertificate asks n's control socket for an admin certificate for a
// fresh key, and returns it as a key pair with its parsed leaf.
func adminCertificate(t *testing.T, c *clustertest.Cluster, n *clustertest.Node, ttl time.Duration) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("ca.GenerateKey() = %v", err)
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		t.Fatalf("ca.MarshalKey() = %v", err)
	}
	csr, err := ca.NewCSR(rand.Reader, key, "")
	if err != nil {
		t.Fatalf("ca.NewCSR() = %v", err)
	}
	resp, err := n.Control().IssueAdminCertificate(testkit.Ctx(t), &api.IssueAdminCertificateRequest{Csr: csr, TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		t.Fatalf("Control.IssueAdminCertificate() = %v", err)
	}
	if !bytes.Equal(resp.GetBundle(), c.Bundle) {
		t.Errorf("Control.IssueAdminCertificate() bundle is not the cluster's")
	}
	pair, err := tls.X509KeyPair(resp.GetCertificate(), keyPEM)
	if err != nil {
		t.Fatalf("tls.X509KeyPair(admin certificate) = %v", err)
	}
	return pair, pair.Leaf
}

// TestRenewalBeforeExpiry follows a worker's certificate through its
// schedule: no renewal before half its validity, a renewal once the clock
// passes 80 %, with a fresh key and a later expiry, for the same identity,
// stored on disk and recorded in the cluster state.
func TestRenewalBeforeExpiry(t *testing.T) {
	c := newLifecycleCluster(t, 1, time.Hour)
	w := c.AddWorker("w0")
	old := w.Credentials().Leaf()
	oldID := w.Credentials().Identity()
	testkit.Eventually(t, "the renewer schedules the first renewal", func() error {
		if w.Renewer().RenewAt().IsZero() {
			return errors.New("Renewer().RenewAt() is zero")
		}
		return nil
	})

	// The renewal instant is drawn in 50-80 % of the validity.
	if at := w.Renewer().RenewAt(); at.Before(validityAt(old, 0.5)) || at.After(validityAt(old, 0.8)) {
		t.Errorf("Renewer().RenewAt() = %s, want within [%s, %s] (50-80 %% of %s..%s)", at, validityAt(old, 0.5), validityAt(old, 0.8), old.NotBefore, old.NotAfter)
	}

	// At 45 % (with a one-hour expiry and a one-hour backdate, a little
	// before the signing itself) nothing renews, heartbeat after heartbeat:
	// ten answered heartbeats, each followed by the renewer's look at its
	// schedule.
	c.Clock.Set(t, validityAt(old, 0.45))
	testkit.HoldsUntil(t, "at 45% of the validity", func() error {
		if n := w.Renewer().Renewals(); n != 0 {
			return fmt.Errorf("Renewer().Renewals() = %d, want 0", n)
		}
		if s := w.Credentials().Leaf().SerialNumber; s.Cmp(old.SerialNumber) != 0 {
			return fmt.Errorf("serial changed from %x to %x", old.SerialNumber, s)
		}
		return nil
	}, c.HeartbeatRounds(10))

	// Past 80 %, the worker renews by itself.
	c.Clock.Set(t, validityAt(old, 0.81))
	testkit.Eventually(t, "the worker renews past 80% of its validity", func() error {
		if s := w.Credentials().Leaf().SerialNumber; s.Cmp(old.SerialNumber) == 0 {
			return fmt.Errorf("serial still %x", s)
		}
		// The renewer counts a renewal once the new pair is in place.
		if w.Renewer().Renewals() == 0 {
			return errors.New("Renewer().Renewals() = 0")
		}
		return nil
	})
	leaf := w.Credentials().Leaf()
	if n := w.Renewer().Renewals(); n != 1 {
		t.Errorf("Renewer().Renewals() = %d, want 1", n)
	}
	if !leaf.NotAfter.After(old.NotAfter) {
		t.Errorf("renewed NotAfter = %s, want after the old %s", leaf.NotAfter, old.NotAfter)
	}
	if got := w.Credentials().Identity(); got != oldID {
		t.Errorf("renewed identity = %+v, want %+v", got, oldID)
	}
	if samePublicKey(leaf, old) {
		t.Errorf("renewed certificate has the old public key, want a fresh key per renewal")
	}
	if at := w.Renewer().RenewAt(); at.Before(validityAt(leaf, 0.5)) || at.After(validityAt(leaf, 0.8)) {
		t.Errorf("after renewal, Renewer().RenewAt() = %s, want within 50-80 %% of the new certificate", at)
	}

	// The files other programs read hold the new pair.
	disk, err := agent.LoadCredentials(w.Dir)
	if err != nil {
		t.Fatalf("agent.LoadCredentials(%s) = %v", w.Dir, err)
	}
	if got := disk.Leaf(); !got.Equal(leaf) {
		t.Errorf("%s holds serial %x, want the renewed %x", agent.CertDir(w.Dir), got.SerialNumber, leaf.SerialNumber)
	}
	if !samePublicKey(disk.Leaf(), leaf) {
		t.Errorf("the key on disk is not the renewed certificate's")
	}

	// The cluster recorded it.
	testkit.Eventually(t, "the state records the renewed certificate", func() error {
		n, ok := c.Leader().Manager().State().Node(oldID.NodeID)
		if !ok {
			return fmt.Errorf("node %s not in the state", oldID.NodeID)
		}
		if want := leaf.SerialNumber.Text(16); n.Cert.Serial != want {
			return fmt.Errorf("state serial %s, want %s", n.Cert.Serial, want)
		}
		return nil
	})

	// And the renewed certificate is the one that works now.
	conn := c.Dial(c.Managers[0].Addr(), w.Credentials().ClientTLS(agent.ManagerName))
	if err := heartbeatCall(testkit.Ctx(t), conn); err != nil {
		t.Errorf("CA.Heartbeat() with the renewed certificate = %v", err)
	}
}

// TestCertExpiryUpdateReachesEveryNode shortens the cluster's cert expiry
// from the default 90 days to 2h: every manager and worker renews at once
// into a certificate of the new validity. An expiry under the minimum is
// refused and changes nothing.
func TestCertExpiryUpdateReachesEveryNode(t *testing.T) {
	c := newLifecycleCluster(t, 3, 0)
	w0 := c.AddWorker("w0")
	w1 := c.AddWorker("w1")
	type holder struct {
		name    string
		creds   *agent.Credentials
		renewer *agent.Renewer
	}
	var nodes []holder
	for _, m := range c.Managers {
		nodes = append(nodes, holder{"manager " + m.ID(), m.Credentials(), m.Renewer()})
	}
	for _, w := range []*clustertest.Node{w0, w1} {
		nodes = append(nodes, holder{"worker " + w.Credentials().Identity().NodeID, w.Credentials(), w.Renewer()})
	}
	for _, n := range nodes {
		if got, want := n.creds.Leaf().NotAfter.Sub(n.creds.Leaf().NotBefore), ca.DefaultCertExpiry+testkit.Backdate; got != want {
			t.Fatalf("%s: validity %s before the update, want %s", n.name, got, want)
		}
	}

	const expiry = 2 * time.Hour
	// Through a follower: it forwards to the leader.
	resp, err := c.Follower().Control().Update(testkit.Ctx(t), &api.UpdateRequest{CertExpirySeconds: int64(expiry / time.Second)})
	if err != nil {
		t.Fatalf("Control.Update(cert expiry %s) = %v", expiry, err)
	}
	if got := time.Duration(resp.GetCertExpirySeconds()) * time.Second; got != expiry {
		t.Errorf("Control.Update() cert expiry = %s, want %s", got, expiry)
	}

	const slack = time.Minute
	testkit.Eventually(t, "every node holds a certificate of the new validity", func() error {
		for _, m := range c.Managers {
			if got := m.Manager().State().CertExpiry; got != expiry {
				return fmt.Errorf("manager %s: State().CertExpiry = %s", m.ID(), got)
			}
		}
		for _, n := range nodes {
			leaf := n.creds.Leaf()
			if v := leaf.NotAfter.Sub(leaf.NotBefore); v > expiry+testkit.Backdate+slack {
				return fmt.Errorf("%s: validity %s", n.name, v)
			}
			if n.renewer.Renewals() == 0 {
				return fmt.Errorf("%s: Renewer().Renewals() = 0", n.name)
			}
		}
		return nil
	})
	for _, n := range nodes {
		leaf := n.creds.Leaf()
		if v := leaf.NotAfter.Sub(leaf.NotBefore); v < expiry+testkit.Backdate-slack {
			t.Errorf("%s: validity %s, want about %s", n.name, v, expiry+testkit.Backdate)
		}
		if limit := c.Clock.Now().Add(expiry + slack); leaf.NotAfter.After(limit) {
			t.Errorf("%s: NotAfter %s, want at most %s", n.name, leaf.NotAfter, limit)
		}
	}

	// Each node renewed once, and then no more: its heartbeats now present
	// the new certificate, which is up to date. Ten heartbeats of every
	// node, each answered and acted on, show it.
	testkit.HoldsUntil(t, "after the renewal", func() error {
		for _, n := range nodes {
			if got := n.renewer.Renewals(); got != 1 {
				return fmt.Errorf("%s: Renewer().Renewals() = %d, want 1", n.name, got)
			}
		}
		return nil
	}, c.HeartbeatRounds(10))

	// Under the minimum: refused, and nothing changes.
	before := c.WaitSameState()
	_, err = c.Managers[0].Control().Update(testkit.Ctx(t), &api.UpdateRequest{CertExpirySeconds: int64(30 * time.Minute / time.Second)})
	wantCode(t, "Control.Update(cert expiry 30m)", err, codes.InvalidArgument)
	c.CheckStateUnchanged(t, "a refused update", before)
	for _, m := range c.Managers {
		if got := m.Manager().State().CertExpiry; got != expiry {
			t.Errorf("manager %s: State().CertExpiry = %s after a refused update, want %s", m.ID(), got, expiry)
		}
	}
}

// TestPromoteThenDemote promotes a worker that joined with a worker token
// and demotes it again; its node switches daemon by itself on each, as
// `quorumca run` does: node.json, its certificate's role and the Raft
// voters follow.
func TestPromoteThenDemote(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := newLifecycleCluster(t, 3, 0)
	w := c.AddWorker("w0")
	id := w.Credentials().Identity().NodeID
	var voters []string
	for _, m := range c.Managers {
		voters = append(voters, m.ID())
	}

	// Promote: the worker renews into a manager certificate, its worker
	// daemon stops, and the node goes on as a manager.
	if _, err := c.Managers[0].Control().SetRole(testkit.Ctx(t), &api.SetRoleRequest{NodeId: id, Role: "manager"}); err != nil {
		t.Fatalf("Control.SetRole(%s, manager) = %v", id, err)
	}
	pm := waitRole(t, w, ca.RoleManager).Manager()
	testkit.WaitClosed(t, "the promoted manager serves", pm.Ready())
	if nc := w.NodeConfig(); nc.Role != ca.RoleManager {
		t.Fatalf("node.json role = %s after promotion, want %s", nc.Role, ca.RoleManager)
	}
	if got := pm.Credentials().Leaf().Subject.OrganizationalUnit; !slices.Equal(got, []string{string(ca.RoleManager)}) {
		t.Errorf("promoted node's certificate OU = %v, want [%s]", got, ca.RoleManager)
	}
	if got := pm.Credentials().Identity().NodeID; got != id || pm.NodeID() != id {
		t.Errorf("promoted node is %s (certificate %s), want the worker's ID %s", pm.NodeID(), got, id)
	}
	c.WaitVoters(append(slices.Clone(voters), id)...)
	testkit.Eventually(t, "the state records the promoted manager's addresses", func() error {
		n, _ := c.Leader().Manager().State().Node(id)
		if n.Role != ca.RoleManager || n.Addr != pm.Addr() || n.RaftAddr != pm.RaftAddr() {
			return fmt.Errorf("state has %s at %s / %s, want %s at %s / %s", n.Role, n.Addr, n.RaftAddr, ca.RoleManager, pm.Addr(), pm.RaftAddr())
		}
		return nil
	})

	// Demote: the manager renews into a worker certificate, its manager
	// daemon stops, and the node goes on as a worker, without Raft state.
	managerCert := pm.Credentials().Certificate()
	if _, err := c.Managers[0].Control().SetRole(testkit.Ctx(t), &api.SetRoleRequest{NodeId: id, Role: "worker"}); err != nil {
		t.Fatalf("Control.SetRole(%s, worker) = %v", id, err)
	}
	w2 := waitRole(t, w, ca.RoleWorker).Worker()
	if nc := w.NodeConfig(); nc.Role != ca.RoleWorker {
		t.Errorf("node.json role = %s after demotion, want %s", nc.Role, ca.RoleWorker)
	}
	if _, err := os.Stat(filepath.Join(w.Dir, manager.RaftDir)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the demoted node's %s/ is still there (%v), want it removed", manager.RaftDir, err)
	}
	testkit.Eventually(t, "the demoted node holds a worker certificate", func() error {
		if got := w2.Credentials().Leaf().Subject.OrganizationalUnit; !slices.Equal(got, []string{string(ca.RoleWorker)}) {
			return fmt.Errorf("OU = %v", got)
		}
		return nil
	})
	c.WaitVoters(voters...)
	if n, _ := c.Leader().Manager().State().Node(id); n.Role != ca.RoleWorker {
		t.Errorf("state role of %s = %s, want %s", id, n.Role, ca.RoleWorker)
	}
	// It goes on as a worker: heartbeats with its worker certificate say
	// it is up to date.
	conn := c.Dial(c.Managers[0].Addr(), w2.Credentials().ClientTLS(agent.ManagerName))
	hb, err := api.NewCAClient(conn).Heartbeat(testkit.Ctx(t), &api.HeartbeatRequest{})
	if err != nil {
		t.Fatalf("CA.Heartbeat() as the demoted worker = %v", err)
	}
	if hb.GetRole() != string(ca.RoleWorker) || hb.GetRenew() {
		t.Errorf("CA.Heartbeat() = role %s, renew %v; want %s, false", hb.GetRole(), hb.GetRenew(), ca.RoleWorker)
	}
	conn.Close()
	// The manager certificate it held before (still within its validity)
	// no longer opens the Control API.
	err = refusedAt(t, c.Managers[0].Addr(), clientTLS(managerCert, c.Roots()), "bad certificate", listNodesCall)
	if err != nil {
		t.Errorf("Control.ListNodes() with the demoted node's manager certificate: %v", err)
	}

	c.StopAll()
}

// waitRole waits until node n has stopped the daemon of its old role and
// runs that of role, without stopping itself, and returns its node.
func waitRole(t *testing.T, n *clustertest.Node, role ca.Role) *node.Node {
	t.Helper()
	nn := n.Node()
	testkit.Eventually(t, fmt.Sprintf("node %s switches to a %s", n.Name, role.Short()), func() error {
		select {
		case <-nn.Done():
			t.Fatalf("node %s stopped: %v, want it to switch to a %s", n.Name, nn.Err(), role.Short())
		default:
		}
		m, w := nn.Manager(), nn.Worker()
		if (role == ca.RoleManager) != (m != nil) || (role == ca.RoleWorker) != (w != nil) {
			return fmt.Errorf("runs a manager: %v, a worker: %v", m != nil, w != nil)
		}
		return nil
	})
	return nn
}

// TestDemoteLastManagerRefused: the only manager cannot be demoted; the
// refusal says why and nothing changes.
func TestDemoteLastManagerRefused(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	before := c.WaitSameState()
	_, err := m.Control().SetRole(testkit.Ctx(t), &api.SetRoleRequest{NodeId: m.ID(), Role: "worker"})
	wantCode(t, "Control.SetRole(last manager, worker)", err, codes.FailedPrecondition)
	if s, _ := status.FromError(err); !containsAny(s.Message(), "last manager") {
		t.Errorf("Control.SetRole(last manager, worker) message = %q, want it to say it is the last manager", s.Message())
	}
	c.CheckStateUnchanged(t, "demoting the last manager", before)
	c.WaitVoters(m.ID())
	if got := m.Credentials().Identity().Role; got != ca.RoleManager {
		t.Errorf("manager's certificate role = %s, want %s", got, ca.RoleManager)
	}
}

// TestSetRoleUnknownNode: promoting or demoting a node the cluster does
// not know is NotFound, and nothing changes.
func TestSetRoleUnknownNode(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	before := c.WaitSameState()
	unknown, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"manager", "worker"} {
		_, err := m.Control().SetRole(testkit.Ctx(t), &api.SetRoleRequest{NodeId: unknown, Role: role})
		wantCode(t, fmt.Sprintf("Control.SetRole(unknown node, %s)", role), err, codes.NotFound)
	}
	c.CheckStateUnchanged(t, "SetRole of an unknown node", before)
}

// TestRemoveLiveNodeNeedsForce: a worker that heartbeats is not removed
// without --force; with it, it is.
func TestRemoveLiveNodeNeedsForce(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	w := c.AddWorker("w0")
	id := w.Credentials().Identity().NodeID
	m := c.Managers[0]
	testkit.Eventually(t, "the worker is ready", func() error {
		resp, err := m.Control().ListNodes(testkit.Ctx(t), &api.ListNodesRequest{NodeId: id})
		if err != nil {
			return err
		}
		if s := resp.GetNodes()[0].GetStatus(); s != "ready" {
			return fmt.Errorf("status %q", s)
		}
		return nil
	})

	before := c.WaitSameState()
	_, err := m.Control().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: id})
	wantCode(t, "Control.RemoveNode(live worker)", err, codes.FailedPrecondition)
	if s, _ := status.FromError(err); !containsAny(s.Message(), "force") {
		t.Errorf("Control.RemoveNode(live worker) message = %q, want it to mention --force", s.Message())
	}
	c.CheckStateUnchanged(t, "removing a live node without force", before)

	if _, err := m.Control().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: id, Force: true}); err != nil {
		t.Fatalf("Control.RemoveNode(live worker, force) = %v", err)
	}
	st := m.Manager().State()
	if _, ok := st.Node(id); ok {
		t.Errorf("node %s still in the state after a forced removal", id)
	}
	if !st.IsRemoved(id) {
		t.Errorf("node %s not in State().Removed after a forced removal", id)
	}
	before = c.WaitSameState()
	_, err = m.Control().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: id, Force: true})
	wantCode(t, "Control.RemoveNode(already removed, force)", err, codes.NotFound)
	c.CheckStateUnchanged(t, "removing a removed node again", before)
}

// TestRemovedNodeRefusedByAllManagers removes a stopped worker: every
// manager then refuses its certificate, on the calls it made before.
func TestRemovedNodeRefusedByAllManagers(t *testing.T) {
	c := newLifecycleCluster(t, 3, 0)
	w := c.AddWorker("w0")
	id := w.Credentials().Identity().NodeID
	roots := c.Roots()

	// Control: before the removal, every manager takes its calls (Gossip
	// is answered by each; heartbeats and renewals by the leader, which
	// the others name). These connections stay open across the removal.
	open := map[*clustertest.Node]*grpc.ClientConn{}
	for _, m := range c.Managers {
		open[m] = c.Dial(m.Addr(), w.Credentials().ClientTLS(agent.ManagerName))
		// A follower takes the node's calls once it applied its join.
		testkit.Eventually(t, "control: CA.Gossip() at "+m.Addr()+" before the removal", func() error {
			return gossipCall(testkit.Ctx(t), open[m])
		})
	}

	w.Stop()
	// Three heartbeat periods of silence make it down: no --force needed.
	c.Clock.Advance(t, 4*testkit.HeartbeatPeriod)
	if _, err := c.Managers[0].Control().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: id}); err != nil {
		t.Fatalf("Control.RemoveNode(stopped worker) = %v", err)
	}

	old, err := agent.LoadCredentials(w.Dir)
	if err != nil {
		t.Fatalf("agent.LoadCredentials() = %v", err)
	}
	attack := clientTLS(old.Certificate(), roots)
	for _, m := range c.Managers {
		testkit.Eventually(t, "manager "+m.ID()+" refuses the removed node", func() error {
			if !m.Manager().State().IsRemoved(id) {
				return fmt.Errorf("State().Removed = %v", m.Manager().State().Removed)
			}
			if err := refusedAt(t, m.Addr(), attack, "bad certificate", heartbeatCall); err != nil {
				return fmt.Errorf("CA.Heartbeat(): %w", err)
			}
			if err := refusedAt(t, m.Addr(), attack, "bad certificate", renewCall); err != nil {
				return fmt.Errorf("CA.RenewNodeCertificate(): %w", err)
			}
			// A connection made before the removal is no way around it:
			// every call is checked again.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if err := renewCall(ctx, open[m]); status.Code(err) != codes.PermissionDenied {
				return fmt.Errorf("CA.RenewNodeCertificate() on a connection opened before the removal = %v, want %s", err, codes.PermissionDenied)
			}
			return nil
		})
		if _, ok := m.Manager().State().Node(id); ok {
			t.Errorf("manager %s still has node %s", m.ID(), id)
		}
	}
}

// TestRemovedListPruned: once the last certificate of a removed node has
// expired, every manager drops it from the refusal list.
func TestRemovedListPruned(t *testing.T) {
	c := newLifecycleCluster(t, 3, time.Hour)
	w := c.AddWorker("w0")
	id := w.Credentials().Identity().NodeID
	notAfter := w.Credentials().Leaf().NotAfter
	w.Stop()
	if _, err := c.Managers[0].Control().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: id, Force: true}); err != nil {
		t.Fatalf("Control.RemoveNode(%s, force) = %v", id, err)
	}
	var until time.Time
	testkit.Eventually(t, "every manager lists the removed node", func() error {
		for _, m := range c.Managers {
			u, ok := m.Manager().State().Removed[id]
			if !ok {
				return fmt.Errorf("manager %s: State().Removed = %v", m.ID(), m.Manager().State().Removed)
			}
			until = u
		}
		return nil
	})
	if !until.Equal(notAfter) {
		t.Errorf("State().Removed[%s] = %s, want the certificate's NotAfter %s", id, until, notAfter)
	}

	// A second before the certificate expires, the entry stays, reconcile
	// after reconcile. (Their ticker is inside the manager, on the real
	// clock: the span is three of its periods of real time.)
	c.Clock.Set(t, until.Add(-time.Second))
	testkit.HoldsFor(t, 3*testkit.ReconcilePeriod, "before the certificate expires", func() error {
		for _, m := range c.Managers {
			if !m.Manager().State().IsRemoved(id) {
				return fmt.Errorf("manager %s pruned %s early", m.ID(), id)
			}
		}
		return nil
	})

	c.Clock.Set(t, until.Add(time.Second))
	testkit.Eventually(t, "every manager prunes the expired removal", func() error {
		for _, m := range c.Managers {
			if m.Manager().State().IsRemoved(id) {
				return fmt.Errorf("manager %s: State().Removed = %v", m.ID(), m.Manager().State().Removed)
			}
		}
		return nil
	})
	for _, m := range c.Managers {
		if _, ok := m.Manager().State().Node(id); ok {
			t.Errorf("manager %s: the pruned node %s is a member again", m.ID(), id)
		}
	}
}

// TestJoinTokenRotateInvalidatesOld rotates the worker token: the old one
// is refused at once, the new one admits, and a node that joined before
// goes on heartbeating and renewing.
func TestJoinTokenRotateInvalidatesOld(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	w := c.AddWorker("w0")
	oldWorker := c.Token(m, "worker")
	oldManager := c.Token(m, "manager")

	resp, err := m.Control().JoinToken(testkit.Ctx(t), &api.JoinTokenRequest{Role: "worker", Rotate: true})
	if err != nil {
		t.Fatalf("Control.JoinToken(worker, rotate) = %v", err)
	}
	newWorker := resp.GetToken()
	if newWorker == oldWorker {
		t.Fatalf("Control.JoinToken(worker, rotate) returned the old token")
	}
	if got := c.Token(m, "worker"); got != newWorker {
		t.Errorf("Control.JoinToken(worker) after the rotation = %s..., want the rotated one", got[:20])
	}
	if got := c.Token(m, "manager"); got != oldManager {
		t.Errorf("the manager token changed with a worker rotation")
	}

	checkJoinRefused(t, c, "the rotated-out worker token", oldWorker)
	_, res, err := c.TryJoin(newWorker, m.Addr())
	if err != nil {
		t.Fatalf("join with the new worker token = %v", err)
	}
	if res.Node.Role != ca.RoleWorker {
		t.Errorf("join with the new worker token made a %s, want %s", res.Node.Role, ca.RoleWorker)
	}

	// The worker that joined before is unaffected.
	serial := w.Credentials().Leaf().SerialNumber
	if err := w.Renewer().Renew(testkit.Ctx(t)); err != nil {
		t.Fatalf("Renewer().Renew() of a worker that joined before the rotation = %v", err)
	}
	if w.Credentials().Leaf().SerialNumber.Cmp(serial) == 0 {
		t.Errorf("Renewer().Renew() kept serial %x", serial)
	}
	conn := c.Dial(m.Addr(), w.Credentials().ClientTLS(agent.ManagerName))
	if err := heartbeatCall(testkit.Ctx(t), conn); err != nil {
		t.Errorf("CA.Heartbeat() of a worker that joined before the rotation = %v", err)
	}
}

// createToken creates an extra join token on m.
func createToken(t *testing.T, m *clustertest.Node, req *api.CreateTokenRequest) *api.CreateTokenResponse {
	t.Helper()
	resp, err := m.Control().CreateToken(testkit.Ctx(t), req)
	if err != nil {
		t.Fatalf("Control.CreateToken(%v) = %v", req, err)
	}
	return resp
}

// listedToken returns the token id as Control.ListTokens lists it.
func listedToken(t *testing.T, m *clustertest.Node, id string) (*api.Token, bool) {
	t.Helper()
	resp, err := m.Control().ListTokens(testkit.Ctx(t), &api.ListTokensRequest{})
	if err != nil {
		t.Fatalf("Control.ListTokens() = %v", err)
	}
	for _, tok := range resp.GetTokens() {
		if tok.GetId() == id {
			return tok, true
		}
	}
	return nil, false
}

// TestTokenTTLExpires: a token with a TTL admits until the clock passes
// it, and is refused after.
func TestTokenTTLExpires(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	created := c.Clock.Now()
	tok := createToken(t, m, &api.CreateTokenRequest{Role: "worker", TtlSeconds: 3600})
	listed, ok := listedToken(t, m, tok.GetId())
	if !ok {
		t.Fatalf("Control.ListTokens() lacks the new token %s", tok.GetId())
	}
	if want := created.Add(time.Hour).Unix(); listed.GetExpiresAt() != want {
		t.Errorf("token expires at %d, want %d", listed.GetExpiresAt(), want)
	}

	c.Clock.Set(t, created.Add(time.Hour-time.Second))
	if _, res, err := c.TryJoin(tok.GetToken(), m.Addr()); err != nil {
		t.Fatalf("join a second before the token's TTL = %v", err)
	} else if res.Node.Role != ca.RoleWorker {
		t.Errorf("join with a worker token made a %s", res.Node.Role)
	}

	c.Clock.Set(t, created.Add(time.Hour+time.Second))
	checkJoinRefused(t, c, "a token past its TTL", tok.GetToken())
	if _, ok := listedToken(t, m, tok.GetId()); ok {
		t.Errorf("Control.ListTokens() still lists the expired token %s", tok.GetId())
	}
}

// TestTokenUsesOnce: a one-use token admits one join and refuses the next.
func TestTokenUsesOnce(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	tok := createToken(t, m, &api.CreateTokenRequest{Role: "worker", Uses: 1})
	if listed, ok := listedToken(t, m, tok.GetId()); !ok || listed.GetUsesLeft() != 1 {
		t.Fatalf("Control.ListTokens() lists %v, want token %s with 1 use left", listed, tok.GetId())
	}
	if _, _, err := c.TryJoin(tok.GetToken(), m.Addr()); err != nil {
		t.Fatalf("first join with a one-use token = %v", err)
	}
	checkJoinRefused(t, c, "a used-up one-use token", tok.GetToken())
	if _, ok := listedToken(t, m, tok.GetId()); ok {
		t.Errorf("Control.ListTokens() still lists the used-up token %s", tok.GetId())
	}
}

// TestTokenRevokedRefused: a revoked token admits no one.
func TestTokenRevokedRefused(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	tok := createToken(t, m, &api.CreateTokenRequest{Role: "manager"})
	if _, err := m.Control().RevokeToken(testkit.Ctx(t), &api.RevokeTokenRequest{Id: tok.GetId()}); err != nil {
		t.Fatalf("Control.RevokeToken(%s) = %v", tok.GetId(), err)
	}
	checkJoinRefused(t, c, "a revoked token", tok.GetToken())
	if _, ok := listedToken(t, m, tok.GetId()); ok {
		t.Errorf("Control.ListTokens() still lists the revoked token %s", tok.GetId())
	}
}

// TestListTokensNeverShowsSecret: the token listing has no field for a
// secret, and carries none of the tokens' secrets.
func TestListTokensNeverShowsSecret(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	toks := []*api.CreateTokenResponse{
		createToken(t, m, &api.CreateTokenRequest{Role: "worker", TtlSeconds: 600, Uses: 3}),
		createToken(t, m, &api.CreateTokenRequest{Role: "manager"}),
	}
	resp, err := m.Control().ListTokens(testkit.Ctx(t), &api.ListTokensRequest{})
	if err != nil {
		t.Fatalf("Control.ListTokens() = %v", err)
	}
	if len(resp.GetTokens()) != len(toks) {
		t.Fatalf("Control.ListTokens() lists %d tokens, want %d", len(resp.GetTokens()), len(toks))
	}

	var fields []string
	fd := (&api.Token{}).ProtoReflect().Descriptor().Fields()
	for i := range fd.Len() {
		fields = append(fields, string(fd.Get(i).Name()))
	}
	sort.Strings(fields)
	if want := []string{"created_at", "expires_at", "id", "role", "uses_left"}; !slices.Equal(fields, want) {
		t.Errorf("api.Token fields = %v, want %v", fields, want)
	}
	if got := (&api.ListTokensResponse{}).ProtoReflect().Descriptor().Fields().Len(); got != 1 {
		t.Errorf("api.ListTokensResponse has %d fields, want 1 (tokens)", got)
	}

	wire, err := proto.Marshal(resp)
	if err != nil {
		t.Fatalf("proto.Marshal() = %v", err)
	}
	for _, tok := range toks {
		parsed, err := ca.ParseToken(tok.GetToken())
		if err != nil {
			t.Fatalf("ca.ParseToken() = %v", err)
		}
		if bytes.Contains(wire, []byte(parsed.Secret)) {
			t.Errorf("Control.ListTokens() answer contains the secret of token %s", tok.GetId())
		}
	}
}

// TestAdminCertAccepted issues an admin certificate on the control socket
// and uses it over mutual TLS with every manager (followers forward).
func TestAdminCertAccepted(t *testing.T) {
	c := newLifecycleCluster(t, 3, 0)
	pair, leaf := adminCertificate(t, c, c.Managers[0], 0)
	id, err := ca.IdentityOf(leaf)
	if err != nil {
		t.Fatalf("ca.IdentityOf(admin certificate) = %v", err)
	}
	if id.Role != ca.RoleAdmin || id.ClusterID != c.ClusterID {
		t.Errorf("admin certificate names %s of %s, want %s of %s", id.Role, id.ClusterID, ca.RoleAdmin, c.ClusterID)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("admin certificate ExtKeyUsage = %v, want client auth only", leaf.ExtKeyUsage)
	}
	if v := leaf.NotAfter.Sub(leaf.NotBefore); v > manager.DefaultAdminCertTTL+testkit.Backdate {
		t.Errorf("admin certificate validity = %s, want at most %s", v, manager.DefaultAdminCertTTL+testkit.Backdate)
	}
	if _, ok := c.Leader().Manager().State().Node(id.NodeID); ok {
		t.Errorf("an admin certificate made %s a node of the cluster", id.NodeID)
	}

	cfg := agent.BundleClientTLS(c.Roots(), agent.ManagerName)
	cfg.Certificates = []tls.Certificate{pair}
	for _, m := range c.Managers {
		ctl := api.NewControlClient(c.Dial(m.Addr(), cfg))
		resp, err := ctl.ListNodes(testkit.Ctx(t), &api.ListNodesRequest{})
		if err != nil {
			t.Errorf("Control.ListNodes() with an admin certificate at %s = %v", m.Addr(), err)
			continue
		}
		if len(resp.GetNodes()) != len(c.Managers) {
			t.Errorf("Control.ListNodes() at %s lists %d nodes, want %d", m.Addr(), len(resp.GetNodes()), len(c.Managers))
		}
	}
}

// TestManagerAPIRefusesWorkerCertificate: a worker's certificate cannot
// list nodes, nor promote itself.
func TestManagerAPIRefusesWorkerCertificate(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	w := c.AddWorker("w0")
	id := w.Credentials().Identity().NodeID
	m := c.Managers[0]
	before := c.WaitSameState()

	ctl := api.NewControlClient(c.Dial(m.Addr(), clientTLS(w.Credentials().Certificate(), c.Roots())))
	_, err := ctl.ListNodes(testkit.Ctx(t), &api.ListNodesRequest{})
	wantCode(t, "Control.ListNodes() with a worker certificate", err, codes.PermissionDenied)
	_, err = ctl.SetRole(testkit.Ctx(t), &api.SetRoleRequest{NodeId: id, Role: "manager"})
	wantCode(t, "Control.SetRole(self, manager) with a worker certificate", err, codes.PermissionDenied)
	_, err = ctl.IssueAdminCertificate(testkit.Ctx(t), &api.IssueAdminCertificateRequest{Csr: newCSR(t)})
	wantCode(t, "Control.IssueAdminCertificate() with a worker certificate", err, codes.PermissionDenied)
	_, err = ctl.CreateToken(testkit.Ctx(t), &api.CreateTokenRequest{Role: "manager"})
	wantCode(t, "Control.CreateToken(manager) with a worker certificate", err, codes.PermissionDenied)

	c.CheckStateUnchanged(t, "calls with a worker certificate", before)
	if n, _ := m.Manager().State().Node(id); n.Role != ca.RoleWorker {
		t.Errorf("worker %s is a %s now", id, n.Role)
	}
}

// TestManagerAPIRefusesForeignClusterCertificate: another cluster's admin
// certificate is refused, even by a client that trusts this cluster.
func TestManagerAPIRefusesForeignClusterCertificate(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	foreign := newLifecycleCluster(t, 1, 0)
	pair, _ := adminCertificate(t, foreign, foreign.Managers[0], 0)
	m := c.Managers[0]
	before := c.WaitSameState()

	attack := clientTLS(&pair, c.Roots())
	if err := refusedAt(t, m.Addr(), attack, "unknown certificate authority", listNodesCall); err != nil {
		t.Errorf("Control.ListNodes() with another cluster's admin certificate: %v", err)
	}
	if err := refusedAt(t, m.Addr(), attack, "unknown certificate authority", func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := api.NewControlClient(conn).JoinToken(ctx, &api.JoinTokenRequest{Role: "manager", Rotate: true})
		return err
	}); err != nil {
		t.Errorf("Control.JoinToken(manager, rotate) with another cluster's admin certificate: %v", err)
	}
	c.CheckStateUnchanged(t, "calls with another cluster's certificate", before)
}

// TestManagerAPIRefusesRemovedNodeCertificate: once a manager is removed,
// its manager certificate no longer opens the Control API of the others.
func TestManagerAPIRefusesRemovedNodeCertificate(t *testing.T) {
	c := newLifecycleCluster(t, 3, 0)
	gone := c.Follower()
	id := gone.ID()
	var rest []*clustertest.Node
	for _, m := range c.Managers {
		if m != gone {
			rest = append(rest, m)
		}
	}
	gone.Stop()
	creds, err := agent.LoadCredentials(gone.Dir)
	if err != nil {
		t.Fatalf("agent.LoadCredentials() = %v", err)
	}
	attack := clientTLS(creds.Certificate(), c.Roots())
	// Control: until the removal, its certificate is a manager's.
	for _, m := range rest {
		if err := listNodesCall(testkit.Ctx(t), c.Dial(m.Addr(), attack)); err != nil {
			t.Fatalf("control: Control.ListNodes() at %s with the manager's certificate before its removal = %v", m.Addr(), err)
		}
	}

	if _, err := rest[0].Control().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: id, Force: true}); err != nil {
		t.Fatalf("Control.RemoveNode(stopped manager, force) = %v", err)
	}
	for _, m := range rest {
		testkit.Eventually(t, "manager "+m.ID()+" refuses the removed manager's certificate", func() error {
			if err := refusedAt(t, m.Addr(), attack, "bad certificate", listNodesCall); err != nil {
				return fmt.Errorf("Control.ListNodes(): %w", err)
			}
			if err := refusedAt(t, m.Addr(), attack, "bad certificate", func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewControlClient(conn).CreateToken(ctx, &api.CreateTokenRequest{Role: "manager"})
				return err
			}); err != nil {
				return fmt.Errorf("Control.CreateToken(): %w", err)
			}
			return nil
		})
	}
	c.WaitVoters(rest[0].ID(), rest[1].ID())
	if n := len(c.Leader().Manager().State().Tokens); n != 0 {
		t.Errorf("State().Tokens has %d tokens, want none made by the removed manager", n)
	}
}

// TestManagerAPIRefusesExpiredCertificate: an admin certificate of this
// cluster that has expired is refused at the handshake. The managers'
// TLS checks validity against the real clock, so the test signs, with the
// cluster's own CA, a certificate that expired two hours ago.
func TestManagerAPIRefusesExpiredCertificate(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	signer, err := ca.NewSigner(m.Manager().State().CA)
	if err != nil {
		t.Fatalf("ca.NewSigner(cluster CA) = %v", err)
	}
	sign := func(now time.Time) *tls.Certificate {
		t.Helper()
		key, err := ca.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, err := ca.MarshalKey(key)
		if err != nil {
			t.Fatal(err)
		}
		nodeID, err := ca.NewID(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id := ca.Identity{NodeID: nodeID, Role: ca.RoleAdmin, ClusterID: c.ClusterID}
		issued, err := signer.SignKey(rand.Reader, now, key.Public(), id, time.Hour)
		if err != nil {
			t.Fatalf("SignKey(admin, %s) = %v", now, err)
		}
		pair, err := tls.X509KeyPair(issued.PEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &pair
	}

	// Control: an admin certificate the cluster issued and recorded, valid
	// now, is accepted.
	valid, _ := adminCertificate(t, c, m, time.Hour)
	if err := listNodesCall(testkit.Ctx(t), c.Dial(m.Addr(), clientTLS(&valid, c.Roots()))); err != nil {
		t.Fatalf("control: Control.ListNodes() with a valid admin certificate = %v", err)
	}
	before := c.WaitSameState()
	expired := sign(time.Now().Add(-3 * time.Hour))
	if !expired.Leaf.NotAfter.Before(time.Now()) {
		t.Fatalf("certificate NotAfter %s, want in the past", expired.Leaf.NotAfter)
	}
	attack := clientTLS(expired, c.Roots())
	if err := refusedAt(t, m.Addr(), attack, "expired certificate", listNodesCall); err != nil {
		t.Errorf("Control.ListNodes() with an expired admin certificate: %v", err)
	}
	if err := refusedAt(t, m.Addr(), attack, "expired certificate", func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := api.NewControlClient(conn).CreateToken(ctx, &api.CreateTokenRequest{Role: "manager"})
		return err
	}); err != nil {
		t.Errorf("Control.CreateToken() with an expired admin certificate: %v", err)
	}
	c.CheckStateUnchanged(t, "calls with an expired certificate", before)
}

// TestBadLifecycleInputChangesNothing: bad arguments to the lifecycle
// calls get the code that says so, and change nothing.
func TestBadLifecycleInputChangesNothing(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	w := c.AddWorker("w0")
	id := w.Credentials().Identity().NodeID
	m := c.Managers[0]
	ctl := m.Control()
	unknown, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	before := c.WaitSameState()

	for _, tc := range []struct {
		call string
		do   func(context.Context) error
		want codes.Code
	}{
		{"SetRole(worker, admin)", func(ctx context.Context) error {
			_, err := ctl.SetRole(ctx, &api.SetRoleRequest{NodeId: id, Role: "admin"})
			return err
		}, codes.InvalidArgument},
		{"SetRole(worker, quorumca-admin)", func(ctx context.Context) error {
			_, err := ctl.SetRole(ctx, &api.SetRoleRequest{NodeId: id, Role: string(ca.RoleAdmin)})
			return err
		}, codes.InvalidArgument},
		{"SetRole(worker, worker)", func(ctx context.Context) error {
			_, err := ctl.SetRole(ctx, &api.SetRoleRequest{NodeId: id, Role: "worker"})
			return err
		}, codes.InvalidArgument},
		{"RemoveNode(unknown)", func(ctx context.Context) error {
			_, err := ctl.RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: unknown, Force: true})
			return err
		}, codes.NotFound},
		{"RevokeToken(unknown)", func(ctx context.Context) error {
			_, err := ctl.RevokeToken(ctx, &api.RevokeTokenRequest{Id: unknown[:12]})
			return err
		}, codes.NotFound},
		{"CreateToken(admin)", func(ctx context.Context) error {
			_, err := ctl.CreateToken(ctx, &api.CreateTokenRequest{Role: "admin"})
			return err
		}, codes.InvalidArgument},
		{"CreateToken(worker, uses -1)", func(ctx context.Context) error {
			_, err := ctl.CreateToken(ctx, &api.CreateTokenRequest{Role: "worker", Uses: -1})
			return err
		}, codes.InvalidArgument},
		{"Update(cert expiry 59m)", func(ctx context.Context) error {
			_, err := ctl.Update(ctx, &api.UpdateRequest{CertExpirySeconds: 59 * 60})
			return err
		}, codes.InvalidArgument},
	} {
		wantCode(t, "Control."+tc.call, tc.do(testkit.Ctx(t)), tc.want)
	}
	c.CheckStateUnchanged(t, "bad lifecycle input", before)
}
