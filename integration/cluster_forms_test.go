package integration

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/node"
)

// TestClusterForms forms a cluster of three managers and two workers that
// join through a follower, and checks every node's identity on disk, the
// Raft voters, and that a worker reaches the managers over mutual TLS.
func TestClusterForms(t *testing.T) {
	// Registered first, so it runs last: after every node, connection and
	// directory of the test is gone.
	testkit.CheckGoroutines(t)

	c := clustertest.New(t, clustertest.Options{Managers: 3})
	f := c.Follower()
	via := f.Addr()

	// One worker without a daemon, one through node.Start with a worker
	// token (which runs the worker daemon).
	w1, w1Dir := c.JoinNoDaemon(via)
	w2n, err := c.Join("w2", node.Join{Token: c.WorkerToken, Addr: via})
	if err != nil {
		t.Fatalf("node.Start(join with the worker token through follower %s) = %v", via, err)
	}
	if m, w := w2n.Node().Manager(), w2n.Node().Worker(); m != nil || w == nil {
		t.Fatalf("node.Start(join with the worker token) runs manager %v, worker %v; want a worker and no manager", m, w)
	}
	w2 := w2n.Worker()

	// Every manager lists the three managers as voters, one of them the
	// leader, and that leader is a manager that says it leads.
	c.WaitVoters()
	var managerIDs []string
	for _, n := range c.Managers {
		managerIDs = append(managerIDs, n.ID())
	}
	slices.Sort(managerIDs)
	st, err := c.Managers[0].Status()
	if err != nil {
		t.Fatalf("Control.Status() on manager 0 = %v", err)
	}
	if got := clustertest.VoterIDs(st); !slices.Equal(got, managerIDs) {
		t.Errorf("Control.Status() voters = %v, want the managers %v", got, managerIDs)
	}
	if l := c.Leader(); st.GetLeaderId() != l.ID() {
		t.Errorf("Control.Status() leader = %s, want %s (the manager whose IsLeader() is true)", st.GetLeaderId(), l.ID())
	}
	if st.GetClusterId() != c.ClusterID {
		t.Errorf("Control.Status() cluster = %s, want %s", st.GetClusterId(), c.ClusterID)
	}

	nodes := c.WaitConverged()
	if len(nodes) != 5 {
		t.Errorf("State().Nodes = %v, want 5 nodes (3 managers, 2 workers)", nodes)
	}

	// Every node's identity, on disk and in the replicated state.
	dirs := []struct {
		name, dir string
		role      ca.Role
	}{
		{"manager0", c.Managers[0].Dir, ca.RoleManager},
		{"manager1", c.Managers[1].Dir, ca.RoleManager},
		{"manager2", c.Managers[2].Dir, ca.RoleManager},
		{"worker1", w1Dir, ca.RoleWorker},
		{"worker2", w2n.Dir, ca.RoleWorker},
	}
	for _, d := range dirs {
		t.Run("identity/"+d.name, func(t *testing.T) {
			checkNodeOnDisk(t, c, d.dir, d.role)
		})
	}

	// A worker opens mutual TLS to managers with its own credentials and
	// renews its certificate at the leader; a follower redirects it there
	// (the leader must see the node's own connection).
	leader := c.Leader()
	for _, w := range []*agent.Credentials{w1.Credentials, w2.Credentials()} {
		conn := c.Dial(f.Addr(), w.ClientTLS(agent.ManagerName))
		_, err := api.NewCAClient(conn).RenewNodeCertificate(t.Context(), &api.RenewNodeCertificateRequest{Csr: newCSR(t)})
		if addr, ok := api.LeaderRedirect(err); !ok || addr != leader.Addr() {
			t.Errorf("worker %s: CA.RenewNodeCertificate() through follower %s = %v, want a redirect to the leader at %s", w.Identity().NodeID, f.Name, err, leader.Addr())
		}
		for _, m := range []*clustertest.Node{leader, leader} {
			conn := c.Dial(m.Addr(), w.ClientTLS(agent.ManagerName))
			resp, err := api.NewCAClient(conn).RenewNodeCertificate(t.Context(), &api.RenewNodeCertificateRequest{Csr: newCSR(t)})
			if err != nil {
				t.Fatalf("worker %s: CA.RenewNodeCertificate() through manager %s = %v", w.Identity().NodeID, m.Name, err)
			}
			id, _, err := ca.VerifyPEM(resp.GetCertificate(), c.Bundle, time.Now())
			if err != nil {
				t.Fatalf("renewed certificate: VerifyPEM() = %v", err)
			}
			if want := w.Identity(); id != want {
				t.Errorf("renewed certificate names %+v, want %+v", id, want)
			}
			if resp.GetRole() != string(ca.RoleWorker) {
				t.Errorf("RenewNodeCertificate().Role = %q, want %q", resp.GetRole(), ca.RoleWorker)
			}
			leaf := parseLeaf(t, resp.GetCertificate())
			n, _ := c.Leader().Manager().State().Node(id.NodeID)
			if got, want := n.Cert.Serial, leaf.SerialNumber.Text(16); got != want {
				t.Errorf("leader's State().Node(%s).Cert.Serial = %s, want the renewed %s", id.NodeID, got, want)
			}
		}
	}

	// The worker daemon reaches every manager it was given over mutual TLS.
	wst, err := w2n.Status()
	if err != nil {
		t.Fatalf("worker Control.Status() = %v", err)
	}
	if len(wst.GetManagers()) != 3 {
		t.Errorf("worker Control.Status() lists %d managers, want 3", len(wst.GetManagers()))
	}
	for _, mg := range wst.GetManagers() {
		if mg.GetReachability() != "reachable" {
			t.Errorf("worker Control.Status(): manager %s is %s, want reachable", mg.GetAddr(), mg.GetReachability())
		}
	}
}

// checkNodeOnDisk checks the credentials stored in a node's data directory:
// the certificate verifies against the cluster's bundle and names the node
// ID, role and cluster ID; the key is 0600; the state agrees.
func checkNodeOnDisk(t *testing.T, c *clustertest.Cluster, dir string, role ca.Role) {
	t.Helper()
	nc, err := agent.LoadNodeConfig(dir)
	if err != nil {
		t.Fatalf("LoadNodeConfig(%s) = %v", dir, err)
	}
	creds, err := agent.LoadCredentials(dir)
	if err != nil {
		t.Fatalf("LoadCredentials(%s) = %v", dir, err)
	}
	certDir := agent.CertDir(dir)
	certPEM, err := os.ReadFile(filepath.Join(certDir, agent.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(filepath.Join(certDir, agent.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bundle, c.Bundle) {
		t.Errorf("%s differs from the cluster's bundle", agent.BundleFile)
	}
	id, _, err := ca.VerifyPEM(certPEM, c.Bundle, time.Now())
	if err != nil {
		t.Fatalf("VerifyPEM(%s) = %v", agent.CertFile, err)
	}
	want := ca.Identity{NodeID: nc.NodeID, Role: role, ClusterID: c.ClusterID}
	if id != want {
		t.Errorf("VerifyPEM(%s) = %+v, want %+v", agent.CertFile, id, want)
	}
	if got := creds.Identity(); got != want {
		t.Errorf("LoadCredentials().Identity() = %+v, want %+v", got, want)
	}
	leaf := creds.Leaf()
	if got := leaf.Subject.CommonName; got != nc.NodeID {
		t.Errorf("certificate CN = %q, want node ID %q", got, nc.NodeID)
	}
	if got := leaf.Subject.OrganizationalUnit; !slices.Equal(got, []string{string(role)}) {
		t.Errorf("certificate OU = %q, want [%q]", got, role)
	}
	if got := leaf.Subject.Organization; !slices.Equal(got, []string{c.ClusterID}) {
		t.Errorf("certificate O = %q, want [%q]", got, c.ClusterID)
	}
	fi, err := os.Stat(filepath.Join(certDir, agent.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("%s mode = %v, want 0600", agent.KeyFile, got)
	}
	for _, m := range c.RunningManagers() {
		n, ok := m.Manager().State().Node(nc.NodeID)
		if !ok {
			t.Errorf("manager %s: State().Node(%s) missing", m.Name, nc.NodeID)
			continue
		}
		if n.Role != role {
			t.Errorf("manager %s: State().Node(%s).Role = %s, want %s", m.Name, nc.NodeID, n.Role, role)
		}
		if n.Cert.Serial != leaf.SerialNumber.Text(16) {
			t.Errorf("manager %s: State().Node(%s).Cert.Serial = %s, want %s", m.Name, nc.NodeID, n.Cert.Serial, leaf.SerialNumber.Text(16))
		}
	}
}

func parseLeaf(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificates(certPEM)
	if err != nil {
		t.Fatalf("ParseCertificates() = %v", err)
	}
	return certs[0]
}

// waitAgreedLeader waits until every running manager's Control.Status
// names the same leader, and returns that leader's node ID.
func waitAgreedLeader(t *testing.T, c *clustertest.Cluster) string {
	t.Helper()
	var leader string
	testkit.Eventually(t, "the running managers agree on a leader", func() error {
		leader = ""
		for _, m := range c.RunningManagers() {
			st, err := m.Status()
			if err != nil {
				return fmt.Errorf("manager %s: Status() = %v", m.Name, err)
			}
			id := st.GetLeaderId()
			if id == "" {
				return fmt.Errorf("manager %s knows no leader", m.Name)
			}
			if leader != "" && id != leader {
				return fmt.Errorf("manager %s says %s leads, another %s", m.Name, id, leader)
			}
			leader = id
		}
		return nil
	})
	return leader
}

// TestLeaderFailover stops the leader: the two others elect a new one and
// joins keep succeeding through either; the stopped manager restarts from
// its data directory on the same addresses and catches up.
func TestLeaderFailover(t *testing.T) {
	testkit.CheckGoroutines(t) // its check runs last
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	old := c.Leader()
	oldID, oldAddr, oldRaftAddr := old.ID(), old.Manager().Addr(), old.Manager().RaftAddr()
	old.Stop()

	l := c.Leader()
	if got := waitAgreedLeader(t, c); got != l.ID() || got == oldID {
		t.Fatalf("survivors agree that %s leads, want the new leader %s (not the stopped %s)", got, l.ID(), oldID)
	}

	// Joins succeed through both survivors, the new leader and the
	// follower (which forwards to the new leader).
	var joined []string
	for _, m := range c.RunningManagers() {
		res, _ := c.JoinNoDaemon(m.Addr())
		joined = append(joined, res.Node.NodeID)
	}
	for _, id := range joined {
		if _, ok := l.Manager().State().Node(id); !ok {
			t.Errorf("new leader's State().Node(%s) missing after the join returned", id)
		}
	}

	// The stopped manager restarts on its old addresses, is the same node,
	// and catches up with what it missed.
	old.Restart()
	m := old.Manager()
	if m.NodeID() != oldID || m.Addr() != oldAddr || m.RaftAddr() != oldRaftAddr {
		t.Errorf("restarted manager is %s at %s/%s, want %s at %s/%s",
			m.NodeID(), m.Addr(), m.RaftAddr(), oldID, oldAddr, oldRaftAddr)
	}
	testkit.Eventually(t, "the restarted manager has the nodes that joined while it was down", func() error {
		for _, id := range joined {
			if _, ok := m.State().Node(id); !ok {
				return fmt.Errorf("State().Node(%s) missing", id)
			}
		}
		return nil
	})
	c.WaitVoters()
	nodes := c.WaitConverged()
	if len(nodes) != 5 {
		t.Errorf("State().Nodes = %v, want 5 (3 managers, 2 workers)", nodes)
	}

	// And it takes joins again (a follower now, or the leader).
	res, _ := c.JoinNoDaemon(m.Addr())
	testkit.Eventually(t, "the new worker on every manager", func() error {
		for _, mg := range c.RunningManagers() {
			if _, ok := mg.Manager().State().Node(res.Node.NodeID); !ok {
				return fmt.Errorf("manager %s: State().Node(%s) missing", mg.Name, res.Node.NodeID)
			}
		}
		return nil
	})
}

// TestLostQuorumFailsClearly stops two of three managers: a join through
// the survivor fails soon with Unavailable and a message about the quorum
// or the leader, while reads still answer.
func TestLostQuorumFailsClearly(t *testing.T) {
	for _, tc := range []struct {
		name      string
		wasLeader bool
	}{
		{"survivor was the leader", true},
		{"survivor was a follower", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testkit.CheckGoroutines(t) // its check runs last
			c := clustertest.New(t, clustertest.Options{Managers: 3})
			nodes := c.WaitConverged()
			survivor := c.Follower()
			if tc.wasLeader {
				survivor = c.Leader()
			}
			for _, m := range c.RunningManagers() {
				if m != survivor {
					m.Stop()
				}
			}
			addr := survivor.Addr()

			const bound = 15 * time.Second
			ctx, cancel := context.WithTimeout(t.Context(), bound)
			defer cancel()
			dir := t.TempDir()
			start := time.Now()
			_, err := agent.Join(ctx, agent.JoinConfig{DataDir: dir, Token: c.WorkerToken, Remote: addr, Timeout: bound, Logger: testkit.Logger()})
			elapsed := time.Since(start)
			if err == nil {
				t.Fatalf("agent.Join() through the survivor with 2 of 3 managers down = nil error, want Unavailable")
			}
			t.Logf("join failed after %s: %v", elapsed.Round(time.Millisecond), err)
			if ctx.Err() != nil {
				t.Errorf("agent.Join() returned only when its %s deadline passed (%v), want a failure before it", bound, err)
			}
			if got := status.Code(err); got != codes.Unavailable {
				t.Errorf("agent.Join() code = %v, want %v (%v)", got, codes.Unavailable, err)
			}
			if !containsAny(err.Error(), "quorum", "leader") {
				t.Errorf("agent.Join() = %q, want a message that names the quorum or the leader", err)
			}
			if names := dirEntries(t, dir); len(names) != 0 {
				t.Errorf("joiner's data dir holds %v after a failed join, want nothing", names)
			}
			if got := clustertest.NodeIDs(survivor.Manager().State()); !slices.Equal(got, nodes) {
				t.Errorf("survivor's State().Nodes = %v, want unchanged %v", got, nodes)
			}

			// Reads still answer: the root bundle over the API (as a joining
			// node asks) and on the control socket, and the status.
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(nil, c.Roots()))))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			rb, err := api.NewCAClient(conn).GetRootBundle(t.Context(), &api.GetRootBundleRequest{})
			if err != nil {
				t.Fatalf("CA.GetRootBundle() over the API without quorum = %v", err)
			}
			if !bytes.Equal(rb.GetBundle(), c.Bundle) {
				t.Errorf("CA.GetRootBundle() over the API = another bundle")
			}
			sock, err := grpc.NewClient("unix://"+survivor.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			rb, err = api.NewCAClient(sock).GetRootBundle(t.Context(), &api.GetRootBundleRequest{})
			if err != nil {
				t.Fatalf("CA.GetRootBundle() on the socket without quorum = %v", err)
			}
			if !bytes.Equal(rb.GetBundle(), c.Bundle) {
				t.Errorf("CA.GetRootBundle() on the socket = another bundle")
			}
			st, err := api.NewControlClient(sock).Status(t.Context(), &api.StatusRequest{})
			if err != nil {
				t.Fatalf("Control.Status() on the socket without quorum = %v", err)
			}
			if st.GetClusterId() != c.ClusterID || st.GetNodeId() != survivor.ID() || int(st.GetNodes()) != len(nodes) {
				t.Errorf("Control.Status() = cluster %s node %s with %d nodes, want %s %s %d",
					st.GetClusterId(), st.GetNodeId(), st.GetNodes(), c.ClusterID, survivor.ID(), len(nodes))
			}
			unreachable := 0
			for _, mg := range st.GetManagers() {
				if mg.GetReachability() == "unreachable" {
					unreachable++
				}
			}
			if unreachable != 2 {
				t.Errorf("Control.Status() lists %d unreachable managers, want the 2 stopped", unreachable)
			}
		})
	}
}

// TestRestartFromDataDir stops a one-manager cluster with two workers and
// starts it again from its data directory: the same cluster comes back,
// state and CA identical, nothing re-initialized.
func TestRestartFromDataDir(t *testing.T) {
	testkit.CheckGoroutines(t) // its check runs last
	c := clustertest.New(t, clustertest.Options{Managers: 1})
	w1, _ := c.JoinNoDaemon(c.Managers[0].Addr())
	c.JoinNoDaemon(c.Managers[0].Addr())

	m := c.Managers[0].Manager()
	before := m.State()
	if before.Nodes.Len() != 3 {
		t.Fatalf("State().Nodes = %v, want 3", clustertest.NodeIDs(before))
	}
	wantState := clustertest.StateJSON(t, before)
	wantSerial := m.Credentials().Leaf().SerialNumber
	wantBundle := m.Credentials().Bundle()
	wantNodeID, wantClusterID := m.NodeID(), m.ClusterID()

	c.Managers[0].Stop()
	c.Managers[0].Restart()
	m = c.Managers[0].Manager()

	testkit.Eventually(t, "the restarted manager leads and has replayed its log", func() error {
		if !m.IsLeader() {
			return fmt.Errorf("not the leader yet")
		}
		if got := m.State().Index; got < before.Index {
			return fmt.Errorf("State().Index = %d, want at least %d", got, before.Index)
		}
		return nil
	})
	after := m.State()
	if got := clustertest.StateJSON(t, after); got != wantState {
		t.Errorf("state after restart differs:\n got %s\nwant %s", got, wantState)
	}
	if after.Index != before.Index {
		t.Errorf("State().Index after restart = %d, want %d (no command applied on restart)", after.Index, before.Index)
	}
	if m.NodeID() != wantNodeID || m.ClusterID() != wantClusterID {
		t.Errorf("restarted as node %s of cluster %s, want %s of %s", m.NodeID(), m.ClusterID(), wantNodeID, wantClusterID)
	}
	if got := m.Credentials().Leaf().SerialNumber; got.Cmp(wantSerial) != 0 {
		t.Errorf("manager certificate serial after restart = %x, want the same %x (no re-issue)", got, wantSerial)
	}
	if !bytes.Equal(m.Credentials().Bundle(), wantBundle) || !bytes.Equal(after.CA.Bundle, wantBundle) {
		t.Errorf("CA bundle changed across the restart")
	}
	if got := c.Token(c.Managers[0], "worker"); got != c.WorkerToken {
		t.Errorf("worker token after restart = %s, want the same %s", got, c.WorkerToken)
	}

	// A worker's certificate from before the restart still opens mutual
	// TLS and renews.
	conn := c.Dial(m.Addr(), w1.Credentials.ClientTLS(agent.ManagerName))
	if _, err := api.NewCAClient(conn).RenewNodeCertificate(t.Context(), &api.RenewNodeCertificateRequest{Csr: newCSR(t)}); err != nil {
		t.Errorf("worker from before the restart: CA.RenewNodeCertificate() = %v", err)
	}
}
