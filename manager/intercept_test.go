package manager

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// pair is a leader and a follower.
func pair(t *testing.T) (leader, follower *testManager) {
	t.Helper()
	leader = initManager(t, nil)
	follower = joinManager(t, leader, nil)
	testkit.Eventually(t, "the follower is a voter that knows the leader", func() error {
		if id, _ := follower.raft.Leader(); id != leader.NodeID() || !leader.isVoter(follower.NodeID()) {
			return errNoLeader
		}
		// It knows the leader's Raft ID before it has applied the entries
		// that record both managers (and the leader's API address, which
		// relaying needs): a follower that lags says so instead.
		for _, id := range []string{leader.NodeID(), follower.NodeID()} {
			if n, ok := follower.State().Node(id); !ok || n.Addr == "" {
				return fmt.Errorf("the follower's state does not record %s and its address yet", id)
			}
		}
		return nil
	})
	return leader, follower
}

// dial opens a gRPC connection to addr with cfg, closed when the test ends.
func dial(t *testing.T, addr string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// local serves m's control socket in a temporary directory and returns a
// client of it.
func local(t *testing.T, m *testManager) api.ControlClient {
	t.Helper()
	path := filepath.Join(t.TempDir(), "q.sock")
	ln, err := agent.ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	s := m.Local()
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return api.NewControlClient(conn)
}

// TestFollowerRedirectsNodeCalls: a heartbeat (a node's call as itself)
// at a follower is not relayed: the follower names the leader.
func TestFollowerRedirectsNodeCalls(t *testing.T) {
	leader, follower := pair(t)
	conn := dial(t, follower.Addr(), follower.Credentials().ClientTLS(agent.ManagerName))
	_, err := api.NewCAClient(conn).Heartbeat(t.Context(), &api.HeartbeatRequest{})
	if addr, ok := api.LeaderRedirect(err); !ok || addr != leader.Addr() || status.Code(err) != codes.Unavailable {
		t.Fatalf("Heartbeat() at the follower = %v, want Unavailable redirecting to the leader at %s", err, leader.Addr())
	}
	conn = dial(t, leader.Addr(), follower.Credentials().ClientTLS(agent.ManagerName))
	if _, err := api.NewCAClient(conn).Heartbeat(t.Context(), &api.HeartbeatRequest{}); err != nil {
		t.Fatalf("Heartbeat() at the leader = %v", err)
	}
}

// TestFollowerRelaysAdministration: an administration call on a
// follower's control socket is relayed to the leader, which records the
// follower's host as the caller, and the follower as the relay.
func TestFollowerRelaysAdministration(t *testing.T) {
	leader, follower := pair(t)
	key, err := ca.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.NewCSR(nil, key, "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := local(t, follower).IssueAdminCertificate(t.Context(), &api.IssueAdminCertificateRequest{Csr: csr})
	if err != nil {
		t.Fatalf("IssueAdminCertificate() on the follower's socket = %v", err)
	}
	rec, ok := leader.State().Admin(resp.GetSerial())
	if !ok {
		t.Fatalf("the leader's state does not record admin certificate %s", resp.GetSerial())
	}
	if !strings.Contains(rec.IssuedBy, "via "+follower.NodeID()) || !strings.Contains(rec.IssuedBy, "local") {
		t.Errorf("admin certificate issued by %q, want the follower's socket via the follower %s", rec.IssuedBy, follower.NodeID())
	}
}

// TestRelayedCallNeverRelayedAgain: a relayed call that reaches a manager
// which is not the leader is refused, not relayed again.
func TestRelayedCallNeverRelayedAgain(t *testing.T) {
	_, follower := pair(t)
	conn := dial(t, follower.Addr(), follower.Credentials().ClientTLS(agent.ManagerName))
	ctx := metadata.AppendToOutgoingContext(t.Context(), mdForwardedLocal, "1", mdForwardedAddr, "local")
	_, err := api.NewControlClient(conn).ListNodes(ctx, &api.ListNodesRequest{})
	if r, _ := api.ErrorReason(err); status.Code(err) != codes.Unavailable || r != api.ReasonNoLeader {
		t.Fatalf("ListNodes() relayed to the follower = %v, want Unavailable (%s): never relayed twice", err, api.ReasonNoLeader)
	}
}

// TestAnonymousCallsCheckedBeforeRead: without a certificate, a call that
// needs one is refused before its message is read, and the calls anyone
// may make are bounded.
func TestAnonymousCallsCheckedBeforeRead(t *testing.T) {
	m := initManager(t, nil)
	roots := m.Credentials().Roots()
	conn := dial(t, m.Addr(), agent.BundleClientTLS(roots, agent.ManagerName))
	_, err := api.NewControlClient(conn).ListNodes(t.Context(), &api.ListNodesRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ListNodes() without a certificate = %v, want Unauthenticated", err)
	}
	if _, err := api.NewCAClient(conn).GetRootBundle(t.Context(), &api.GetRootBundleRequest{}); err != nil {
		t.Fatalf("GetRootBundle() without a certificate = %v", err)
	}
	// Every slot taken: the next anonymous call is turned away at once.
	for range cap(m.anonymous) {
		m.anonymous <- struct{}{}
	}
	_, err = api.NewCAClient(conn).GetRootBundle(t.Context(), &api.GetRootBundleRequest{})
	if status.Code(err) != codes.ResourceExhausted || !api.HasReason(err, api.ReasonBusy) {
		t.Fatalf("GetRootBundle() with every anonymous slot taken = %v, want ResourceExhausted (%s)", err, api.ReasonBusy)
	}
	for range cap(m.anonymous) {
		<-m.anonymous
	}
	// A call with a certificate does not count.
	conn = dial(t, m.Addr(), m.Credentials().ClientTLS(agent.ManagerName))
	if _, err := api.NewControlClient(conn).Ping(context.Background(), &api.PingRequest{}); err != nil {
		t.Fatalf("Ping() with a certificate = %v", err)
	}
}
