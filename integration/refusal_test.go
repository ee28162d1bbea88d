package integration

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

// Each test here is one security property: a refusal, and proof that
// nothing was written by the refused attempt.

// wrongSecret returns token with its digest kept and a fresh random secret.
func wrongSecret(t *testing.T, token string) string {
	t.Helper()
	tok, err := ca.ParseToken(token)
	if err != nil {
		t.Fatalf("ParseToken() = %v", err)
	}
	if tok.Secret, err = ca.NewSecret(rand.Reader); err != nil {
		t.Fatalf("NewSecret() = %v", err)
	}
	return tok.String()
}

// TestJoinWrongToken joins with a well-formed token that pins the right
// bundle but carries a wrong secret: PermissionDenied, and nothing is
// written, neither in the cluster nor in the joiner's data directory.
func TestJoinWrongToken(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	nodes := c.WaitConverged()
	leader, follower := c.Leader().Addr(), c.Follower().Addr()
	bad := wrongSecret(t, c.WorkerToken)
	oldWorkerToken := c.WorkerToken

	for _, tc := range []struct {
		name  string
		token func() string
		join  func(t *testing.T, dir, token string) error
	}{
		{
			name:  "agent.Join through a follower",
			token: func() string { return bad },
			join: func(t *testing.T, dir, token string) error {
				_, err := agent.Join(t.Context(), agent.JoinConfig{DataDir: dir, Token: token, Remote: follower, Logger: testkit.Logger()})
				return err
			},
		},
		{
			name:  "node.Start(join) through the leader",
			token: func() string { return bad },
			join: func(t *testing.T, dir, token string) error {
				cfg := clustertest.Config(t, "bad")
				cfg.DataDir = dir
				cfg.Join = &node.Join{Token: token, Addr: leader}
				n, err := node.Start(t.Context(), cfg)
				if n != nil {
					n.Stop()
				}
				return err
			},
		},
		{
			// Rotating the worker token revokes the old one.
			name: "old worker token after rotation",
			token: func() string {
				resp, err := c.Managers[0].Control().JoinToken(t.Context(), &api.JoinTokenRequest{Role: "worker", Rotate: true})
				if err != nil {
					t.Fatalf("Control.JoinToken(worker, rotate) = %v", err)
				}
				if resp.GetToken() == oldWorkerToken {
					t.Fatalf("Control.JoinToken(worker, rotate) returned the old token")
				}
				nodes = c.WaitConverged()
				return oldWorkerToken
			},
			join: func(t *testing.T, dir, token string) error {
				_, err := agent.Join(t.Context(), agent.JoinConfig{DataDir: dir, Token: token, Remote: follower, Logger: testkit.Logger()})
				return err
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			token := tc.token()
			dir := t.TempDir()
			err := tc.join(t, dir, token)
			if err == nil {
				t.Fatalf("join with a wrong secret = nil error, want PermissionDenied")
			}
			if got := status.Code(err); got != codes.PermissionDenied {
				t.Errorf("join with a wrong secret: code = %v, want %v (%v)", got, codes.PermissionDenied, err)
			}
			if !errors.Is(err, agent.ErrJoinRefused) {
				t.Errorf("join with a wrong secret = %v, want it to wrap agent.ErrJoinRefused", err)
			}
			if strings.Contains(err.Error(), mustSecret(t, token)) {
				t.Errorf("join error %q repeats the token's secret", err)
			}
			if names := dirEntries(t, dir); len(names) != 0 {
				t.Errorf("joiner's data dir holds %v after a refused join, want nothing (no %s, no %s/)", names, agent.NodeFile, agent.CertificatesDir)
			}
			c.CheckNodesUnchanged(t, nodes)
		})
	}
}

func mustSecret(t *testing.T, token string) string {
	t.Helper()
	tok, err := ca.ParseToken(token)
	if err != nil {
		t.Fatalf("ParseToken() = %v", err)
	}
	return tok.Secret
}

// TestJoinTokenDigestMismatch joins with a token that pins another root
// bundle (and the right secret): the joining node refuses, writes nothing,
// and the cluster records nothing. A counting proxy in front of the manager
// shows that a join, refused or not, opens one connection only (no second
// one that nobody checked). That the token never goes over a connection
// the bundle does not vouch for is shown against a server that counts the
// calls it gets (agent's TestEnrollDigestMismatchSendsNoToken).
func TestJoinTokenDigestMismatch(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	nodes := c.WaitConverged()
	via := c.Follower().Addr()

	otherCluster, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.GenerateRoot(rand.Reader, time.Now(), otherCluster)
	if err != nil {
		t.Fatalf("GenerateRoot() = %v", err)
	}
	real, err := ca.ParseToken(c.WorkerToken)
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := ca.NewToken(other.Bundle, real.Secret)
	if err != nil {
		t.Fatal(err)
	}

	p := testkit.NewProxy(t, via)
	dir := t.TempDir()
	_, err = agent.Join(t.Context(), agent.JoinConfig{DataDir: dir, Token: pinned.String(), Remote: p.Addr(), Logger: testkit.Logger()})
	if !errors.Is(err, ca.ErrDigestMismatch) {
		t.Fatalf("agent.Join(token pinning another bundle) = %v, want ca.ErrDigestMismatch", err)
	}
	if got := p.Accepted(); got != 1 {
		t.Errorf("joiner opened %d connections to the manager, want 1 (the bundle fetch)", got)
	}
	if names := dirEntries(t, dir); len(names) != 0 {
		t.Errorf("joiner's data dir holds %v after a refused join, want nothing", names)
	}
	c.CheckNodesUnchanged(t, nodes)

	// Control: the right token through another proxy joins, over one
	// connection.
	p2 := testkit.NewProxy(t, via)
	res, err := agent.Join(t.Context(), agent.JoinConfig{DataDir: t.TempDir(), Token: c.WorkerToken, Remote: p2.Addr(), Logger: testkit.Logger()})
	if err != nil {
		t.Fatalf("agent.Join(right token) through the proxy = %v", err)
	}
	if got := p2.Accepted(); got != 1 {
		t.Errorf("a successful join opened %d connections, want 1 (bundle, then CSR, on the same connection)", got)
	}
	if _, ok := c.Leader().Manager().State().Node(res.Node.NodeID); !ok {
		t.Errorf("leader's State().Node(%s) missing after the control join", res.Node.NodeID)
	}
}

// TestWorkerTokenNeverYieldsManager joins with the worker token while
// advertising API and Raft addresses, as a manager would: the node is a
// worker, and not a Raft voter.
func TestWorkerTokenNeverYieldsManager(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	st, err := c.Managers[0].Status()
	if err != nil {
		t.Fatal(err)
	}
	voters := clustertest.VoterIDs(st)
	via := c.Follower().Addr()

	for _, tc := range []struct {
		name string
		join func(t *testing.T) (*agent.Credentials, string)
	}{
		{
			name: "agent.Join with Addr and RaftAddr",
			join: func(t *testing.T) (*agent.Credentials, string) {
				// Real listeners, so that the addresses are dialable.
				apiLn, raftLn := listen(t), listen(t)
				dir := t.TempDir()
				res, err := agent.Join(t.Context(), agent.JoinConfig{
					DataDir: dir, Token: c.WorkerToken, Remote: via,
					Addr: apiLn.Addr().String(), RaftAddr: raftLn.Addr().String(), Logger: testkit.Logger(),
				})
				if err != nil {
					t.Fatalf("agent.Join(worker token, Addr, RaftAddr) = %v", err)
				}
				return res.Credentials, dir
			},
		},
		{
			name: "node.Start(join)",
			join: func(t *testing.T) (*agent.Credentials, string) {
				n, err := c.Join("wt", node.Join{Token: c.WorkerToken, Addr: via})
				if err != nil {
					t.Fatalf("node.Start(join with the worker token) = %v", err)
				}
				if n.Node().Manager() != nil {
					t.Fatalf("node.Start(join with the worker token) runs a manager")
				}
				return n.Worker().Credentials(), n.Dir
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			creds, dir := tc.join(t)
			id := creds.Identity()
			if id.Role != ca.RoleWorker {
				t.Errorf("Identity().Role = %s, want %s", id.Role, ca.RoleWorker)
			}
			if ou := creds.Leaf().Subject.OrganizationalUnit; !slices.Equal(ou, []string{string(ca.RoleWorker)}) {
				t.Errorf("certificate OU = %q, want [%q]", ou, ca.RoleWorker)
			}
			nc, err := agent.LoadNodeConfig(dir)
			if err != nil {
				t.Fatal(err)
			}
			if nc.Role != ca.RoleWorker {
				t.Errorf("node.json role = %s, want %s", nc.Role, ca.RoleWorker)
			}
			n, ok := c.Leader().Manager().State().Node(id.NodeID)
			if !ok {
				t.Fatalf("leader's State().Node(%s) missing", id.NodeID)
			}
			if n.Role != ca.RoleWorker || n.RaftAddr != "" {
				t.Errorf("State().Node(%s) = role %s, Raft address %q; want %s and none", id.NodeID, n.Role, n.RaftAddr, ca.RoleWorker)
			}
			for _, m := range c.RunningManagers() {
				st, err := m.Status()
				if err != nil {
					t.Fatal(err)
				}
				for _, mg := range st.GetManagers() {
					if mg.GetNodeId() == id.NodeID {
						t.Errorf("manager %s: the worker %s is in the Raft configuration (voter %v)", m.Name, id.NodeID, mg.GetVoter())
					}
				}
				if got := clustertest.VoterIDs(st); !slices.Equal(got, voters) {
					t.Errorf("manager %s: voters = %v, want unchanged %v", m.Name, got, voters)
				}
			}
		})
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// checkRaftRefused dials a Raft transport with cfg and fails unless the
// manager refuses the connection: the handshake fails, or the first read
// ends at once (EOF or an alert) instead of waiting for an RPC.
func checkRaftRefused(t *testing.T, addr string, cfg *tls.Config) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		t.Logf("handshake with %s refused: %v", addr, err)
		return
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := conn.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("Raft transport at %s answered %d bytes to a refused peer, want the connection closed", addr, n)
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("Raft transport at %s kept the connection open for 5s, want it closed at once", addr)
	default:
		t.Logf("connection to %s closed: %v", addr, err)
	}
}

// checkRaftAccepted is checkRaftRefused's control: a manager of the
// cluster gets a connection that stays open, waiting for its RPC.
func checkRaftAccepted(t *testing.T, addr string, cfg *tls.Config) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("control: handshake with %s as a manager = %v", addr, err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("control: a manager's connection to %s ended with %v, want it kept open (a read timeout)", addr, err)
	}
}

// checkVotersUnchanged fails unless every running manager reports the
// Raft configuration want.
func checkVotersUnchanged(t *testing.T, c *clustertest.Cluster, want []raftMember) {
	t.Helper()
	for _, m := range c.RunningManagers() {
		st, err := m.Status()
		if err != nil {
			t.Fatalf("manager %s: Status() = %v", m.Name, err)
		}
		if got := members(st); !slices.Equal(got, want) {
			t.Errorf("manager %s: Raft configuration = %+v, want unchanged %+v", m.Name, got, want)
		}
	}
}

// TestRaftTransportRefusesWorkerCert dials every manager's Raft address
// with a worker's valid certificate: the connection is closed, and the
// voters are unchanged.
func TestRaftTransportRefusesWorkerCert(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	res, _ := c.JoinNoDaemon(c.Managers[0].Addr())
	st, err := c.Leader().Status()
	if err != nil {
		t.Fatal(err)
	}
	before := members(st)

	attack := clientTLS(res.Credentials.Certificate(), c.Roots())
	for i, n := range c.Managers {
		checkRaftRefused(t, n.RaftAddr(), attack)
		// The same client with a manager's certificate is let in: the
		// refusal is about the role.
		checkRaftAccepted(t, n.RaftAddr(), clientTLS(c.Managers[(i+1)%3].Credentials().Certificate(), c.Roots()))
	}
	checkVotersUnchanged(t, c, before)
}

// TestRaftTransportRefusesForeignCluster dials every manager's Raft
// address with the manager certificate of another cluster: the connection
// is refused, and the voters are unchanged.
func TestRaftTransportRefusesForeignCluster(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	foreign := clustertest.New(t, clustertest.Options{Managers: 1})
	st, err := c.Leader().Status()
	if err != nil {
		t.Fatal(err)
	}
	before := members(st)

	// The attacker trusts this cluster's roots, so that only the server's
	// check of the client certificate can end the connection.
	attack := clientTLS(foreign.Managers[0].Manager().Credentials().Certificate(), c.Roots())
	for _, n := range c.Managers {
		checkRaftRefused(t, n.RaftAddr(), attack)
	}
	checkVotersUnchanged(t, c, before)
	// And the other way round.
	checkRaftRefused(t, foreign.Managers[0].RaftAddr(), clientTLS(c.Managers[0].Manager().Credentials().Certificate(), foreign.Roots()))
}

// checkCode fails unless err is a gRPC error with one of the codes.
func checkCode(t *testing.T, call string, err error, want ...codes.Code) {
	t.Helper()
	if err == nil {
		t.Errorf("%s = nil error, want %v", call, want)
		return
	}
	if got := status.Code(err); !slices.Contains(want, got) {
		t.Errorf("%s: code = %v, want %v (%v)", call, got, want, err)
	}
}

// adminCalls are the Control calls only managers may make over the API;
// each call's error is checked.
func adminCalls(ctx context.Context, ctl api.ControlClient) map[string]error {
	out := map[string]error{}
	_, out["Control.Status"] = ctl.Status(ctx, &api.StatusRequest{})
	_, out["Control.JoinToken(manager)"] = ctl.JoinToken(ctx, &api.JoinTokenRequest{Role: "manager"})
	_, out["Control.JoinToken(worker, rotate)"] = ctl.JoinToken(ctx, &api.JoinTokenRequest{Role: "worker", Rotate: true})
	_, out["Control.AddVoter"] = ctl.AddVoter(ctx, &api.AddVoterRequest{RaftAddr: "127.0.0.1:1"})
	return out
}

// checkAdminUnchanged fails unless the join tokens, nodes and voters are
// as they were.
func checkAdminUnchanged(t *testing.T, c *clustertest.Cluster, nodes []string, voters []raftMember) {
	t.Helper()
	if got := c.Token(c.Managers[0], "worker"); got != c.WorkerToken {
		t.Errorf("worker token changed")
	}
	if got := c.Token(c.Managers[0], "manager"); got != c.ManagerToken {
		t.Errorf("manager token changed")
	}
	c.CheckNodesUnchanged(t, nodes)
	checkVotersUnchanged(t, c, voters)
}

// TestManagerAPIRefusesWorkerCert makes the managers-only calls over the
// API with a worker's certificate: PermissionDenied, through the leader and
// a follower, and nothing changes.
func TestManagerAPIRefusesWorkerCert(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	res, _ := c.JoinNoDaemon(c.Managers[0].Addr())
	nodes := c.WaitConverged()
	st, err := c.Managers[0].Status()
	if err != nil {
		t.Fatal(err)
	}
	voters := members(st)

	for _, m := range []*clustertest.Node{c.Leader(), c.Follower()} {
		addr := m.Addr()
		ctl := api.NewControlClient(c.Dial(addr, res.Credentials.ClientTLS(agent.ManagerName)))
		for call, err := range adminCalls(t.Context(), ctl) {
			checkCode(t, call+" with a worker certificate at "+addr, err, codes.PermissionDenied)
		}
		// Control: a manager's certificate over the same API is served.
		mgr := api.NewControlClient(c.Dial(addr, c.Managers[(slices.Index(c.Managers, m)+1)%3].Credentials().ClientTLS(agent.ManagerName)))
		if _, err := mgr.Status(t.Context(), &api.StatusRequest{}); err != nil {
			t.Errorf("control: Control.Status() with a manager certificate at %s = %v", addr, err)
		}
	}
	checkAdminUnchanged(t, c, nodes, voters)
}

// TestManagerAPIRefusesForeignCert calls the API with the manager
// certificate of another cluster: every call that needs a certificate
// fails, and nothing changes.
func TestManagerAPIRefusesForeignCert(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	foreign := clustertest.New(t, clustertest.Options{Managers: 1})
	nodes := c.WaitConverged()
	st, err := c.Managers[0].Status()
	if err != nil {
		t.Fatal(err)
	}
	voters := members(st)

	// The attacker trusts this cluster's roots, so that only the server's
	// check of the client certificate can refuse it.
	attack := clientTLS(foreign.Managers[0].Manager().Credentials().Certificate(), c.Roots())
	refused := []codes.Code{codes.Unavailable, codes.Unauthenticated, codes.PermissionDenied}
	for _, m := range []*clustertest.Node{c.Leader(), c.Follower()} {
		addr := m.Addr()
		conn := c.Dial(addr, attack)
		for call, err := range adminCalls(t.Context(), api.NewControlClient(conn)) {
			checkCode(t, call+" with a foreign certificate at "+addr, err, refused...)
		}
		_, err := api.NewCAClient(conn).RenewNodeCertificate(t.Context(), &api.RenewNodeCertificateRequest{Csr: newCSR(t)})
		checkCode(t, "CA.RenewNodeCertificate with a foreign certificate at "+addr, err, refused...)
	}
	checkAdminUnchanged(t, c, nodes, voters)
}

// TestManagerAPIRefusesNoCert calls the API without a client certificate:
// the calls that need one are Unauthenticated; the root bundle, which a
// joining node fetches, is served.
func TestManagerAPIRefusesNoCert(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	nodes := c.WaitConverged()
	st, err := c.Managers[0].Status()
	if err != nil {
		t.Fatal(err)
	}
	voters := members(st)

	for _, m := range []*clustertest.Node{c.Leader(), c.Follower()} {
		addr := m.Addr()
		conn := c.Dial(addr, clientTLS(nil, c.Roots()))
		for call, err := range adminCalls(t.Context(), api.NewControlClient(conn)) {
			checkCode(t, call+" without a certificate at "+addr, err, codes.Unauthenticated)
		}
		_, err := api.NewCAClient(conn).RenewNodeCertificate(t.Context(), &api.RenewNodeCertificateRequest{Csr: newCSR(t)})
		checkCode(t, "CA.RenewNodeCertificate without a certificate at "+addr, err, codes.Unauthenticated)
		if _, err := api.NewCAClient(conn).GetRootBundle(t.Context(), &api.GetRootBundleRequest{}); err != nil {
			t.Errorf("control: CA.GetRootBundle() without a certificate at %s = %v", addr, err)
		}
	}
	checkAdminUnchanged(t, c, nodes, voters)
}

// TestTLS11ClientRefused offers at most TLS 1.1 to the API and the Raft
// transport: the server refuses the protocol version.
func TestTLS11ClientRefused(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1})
	cert := c.Managers[0].Credentials().Certificate()
	for _, tc := range []struct{ name, addr string }{
		{"API", c.Managers[0].Addr()},
		{"Raft", c.Managers[0].RaftAddr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := clientTLS(cert, c.Roots())
			old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tc.addr, old)
			if err == nil {
				v := conn.ConnectionState().Version
				conn.Close()
				t.Fatalf("TLS 1.1 handshake with the %s at %s succeeded (%s), want it refused", tc.name, tc.addr, tls.VersionName(v))
			}
			// The refusal must come from the server, not from a client
			// that could not offer the version.
			if !strings.Contains(err.Error(), "remote error") || !strings.Contains(err.Error(), "protocol version") {
				t.Errorf("TLS 1.1 handshake with the %s = %v, want the server's protocol version alert", tc.name, err)
			}

			// Control: TLS 1.2 is accepted.
			modern := clientTLS(cert, c.Roots())
			modern.MaxVersion = tls.VersionTLS12
			conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tc.addr, modern)
			if err != nil {
				t.Fatalf("control: TLS 1.2 handshake with the %s = %v", tc.name, err)
			}
			conn.Close()
		})
	}
}

// TestInitRefusesExistingDataDir inits a cluster, stops it, and inits (or
// joins) again into its data directory, with what a node calls to create
// one: refused with agent.ErrDataDirInUse, and every file is byte for byte
// as it was.
func TestInitRefusesExistingDataDir(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1})
	n := c.Managers[0]
	m := n.Manager()
	clusterID, nodeID, addr := m.ClusterID(), m.NodeID(), m.Addr()
	token := c.ManagerToken
	n.Stop()
	before := hashTree(t, n.Dir)
	if len(before) < 4 {
		t.Fatalf("data dir holds %v, want a cluster's files", slices.Sorted(maps.Keys(before)))
	}

	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"manager.Init", func() error {
			cfg := manager.Config{DataDir: n.Dir, ListenAddr: "127.0.0.1:0", RaftListenAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", Logger: testkit.Logger()}
			m, err := manager.Init(t.Context(), cfg, manager.InitOptions{})
			if m != nil {
				m.Close()
			}
			return err
		}},
		{"agent.Join", func() error {
			_, err := agent.Join(t.Context(), agent.JoinConfig{DataDir: n.Dir, Token: token, Remote: addr, Logger: testkit.Logger()})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if !errors.Is(err, agent.ErrDataDirInUse) {
				t.Fatalf("%s() over a cluster's data dir = %v, want agent.ErrDataDirInUse", tc.name, err)
			}
			after := hashTree(t, n.Dir)
			if !maps.Equal(after, before) {
				for k, v := range before {
					if after[k] != v {
						t.Errorf("%s: %q, was %q", k, after[k], v)
					}
				}
				for k := range after {
					if _, ok := before[k]; !ok {
						t.Errorf("%s: created", k)
					}
				}
				t.Fatalf("%s() changed the data dir", tc.name)
			}
		})
	}

	// The cluster is intact: it starts again as it was, on the addresses
	// it recorded.
	n.Restart()
	if m := n.Manager(); m.ClusterID() != clusterID || m.NodeID() != nodeID || m.Addr() != addr {
		t.Errorf("started node %s of cluster %s at %s, want %s of %s at %s", m.NodeID(), m.ClusterID(), m.Addr(), nodeID, clusterID, addr)
	}
}
