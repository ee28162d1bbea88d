package integration

// The authorization findings of the security review, each reproduced as an
// attack against a real in-process cluster: the call is refused, and
// nothing is written to the state.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
)

// Forwarding metadata, as a manager sets it when it relays a call.
const (
	mdLocal = "quorumca-forwarded-local"
	mdChain = "quorumca-forwarded-chain-bin"
	mdAddr  = "quorumca-forwarded-addr"
)

// attackCall is one call an attacker makes with stolen or stale
// credentials, with some forwarding metadata.
type attackCall struct {
	name string
	call func(context.Context, *grpc.ClientConn) error
}

// attackCalls are the calls a demoted manager or a worker must not get
// through with forwarding metadata: the manager join token, every kind of
// Control call, a renewal and a heartbeat as another node, and the gossip
// key. other is another node's chain, to claim it.
func attackCalls(other []*x509.Certificate) []attackCall {
	var chainMD []string
	for _, c := range other {
		chainMD = append(chainMD, mdChain, string(c.Raw))
	}
	mds := []struct {
		name string
		kv   []string
	}{
		{"no metadata", nil},
		{"forwarded-local", []string{mdLocal, "1", mdAddr, "local"}},
		{"forwarded-chain of another node", append([]string{mdAddr, "127.0.0.1:1"}, chainMD...)},
		{"forwarded-addr only", []string{mdAddr, "127.0.0.1:1"}},
	}
	var out []attackCall
	for _, md := range mds {
		with := func(ctx context.Context) context.Context {
			if md.kv == nil {
				return ctx
			}
			return metadata.AppendToOutgoingContext(ctx, md.kv...)
		}
		out = append(out,
			attackCall{"JoinToken(manager) " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewControlClient(conn).JoinToken(with(ctx), &api.JoinTokenRequest{Role: "manager"})
				return err
			}},
			attackCall{"JoinToken(manager, rotate) " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewControlClient(conn).JoinToken(with(ctx), &api.JoinTokenRequest{Role: "manager", Rotate: true})
				return err
			}},
			attackCall{"ListNodes " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewControlClient(conn).ListNodes(with(ctx), &api.ListNodesRequest{})
				return err
			}},
			attackCall{"CreateToken " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewControlClient(conn).CreateToken(with(ctx), &api.CreateTokenRequest{Role: "manager"})
				return err
			}},
			attackCall{"IssueAdminCertificate " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewControlClient(conn).IssueAdminCertificate(with(ctx), &api.IssueAdminCertificateRequest{Csr: mustCSR()})
				return err
			}},
			attackCall{"Status " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewControlClient(conn).Status(with(ctx), &api.StatusRequest{})
				return err
			}},
			attackCall{"Gossip " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewCAClient(conn).Gossip(with(ctx), &api.GossipRequest{})
				return err
			}},
		)
		if md.kv != nil {
			// Without metadata a node renews and heartbeats as itself,
			// which a demoted manager must be able to do (into its worker
			// certificate); relayed, into another identity, never.
			out = append(out,
				attackCall{"RenewNodeCertificate " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
					_, err := api.NewCAClient(conn).RenewNodeCertificate(with(ctx), &api.RenewNodeCertificateRequest{Csr: mustCSR()})
					return err
				}},
				attackCall{"Heartbeat " + md.name, func(ctx context.Context, conn *grpc.ClientConn) error {
					_, err := api.NewCAClient(conn).Heartbeat(with(ctx), &api.HeartbeatRequest{})
					return err
				}},
			)
		}
	}
	return out
}

func mustCSR() []byte {
	key, err := ca.GenerateKey(nil)
	if err != nil {
		panic(err)
	}
	csr, err := ca.NewCSR(nil, key, "")
	if err != nil {
		panic(err)
	}
	return csr
}

// checkAttacks makes every attack call with creds at every running
// manager, and fails unless each is refused with PermissionDenied.
func checkAttacks(t *testing.T, c *clustertest.Cluster, who string, creds *tls.Certificate, calls []attackCall) {
	t.Helper()
	for _, m := range c.RunningManagers() {
		conn := c.Dial(m.Addr(), clientTLS(creds, c.Roots()))
		for _, a := range calls {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			err := a.call(ctx, conn)
			cancel()
			if code := status.Code(err); code != codes.PermissionDenied {
				t.Errorf("%s: %s at manager %s (leader %v) = %v, want PermissionDenied", who, a.name, m.ID(), m.Manager().IsLeader(), err)
			}
		}
	}
}

// raftRefuses checks that the Raft transport at addr refuses a peer with
// creds: it takes the TLS handshake, then closes the connection at once
// (a manager it accepts would hold it open for Raft's RPCs).
func raftRefuses(tb testing.TB, addr string, creds *tls.Certificate, roots *x509.CertPool) error {
	cfg := clientTLS(creds, roots)
	cfg.ServerName = string(ca.RoleManager)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil // refused at the handshake
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	var b [1]byte
	_, err = conn.Read(b[:])
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("the Raft transport kept the connection open: it took the peer")
	}
	return nil
}

// TestDemotedManagerCertificateRefused is the reported escalation: a
// demoted manager keeps its manager certificate; with it, and with any of
// the forwarding metadata a manager sets, it must get nothing a manager
// gets: not the manager join token, not a Control call, not a renewal or a
// heartbeat as another node, not the Raft transport, not the gossip key.
// Nothing is written to the state.
func TestDemotedManagerCertificateRefused(t *testing.T) {
	c := newLifecycleCluster(t, 4, 0)
	leader := c.Leader()
	var victim *clustertest.Node
	for _, m := range c.Managers {
		if m != leader {
			victim = m
		}
	}
	old := *victim.Credentials().Certificate()
	if _, err := leader.Control().SetRole(testkit.Ctx(t), &api.SetRoleRequest{NodeId: victim.ID(), Role: "worker"}); err != nil {
		t.Fatalf("SetRole(%s, worker) = %v", victim.ID(), err)
	}
	waitRole(t, victim, ca.RoleWorker) // the demoted manager's manager side has stopped
	before := c.WaitSameState()
	for _, m := range c.RunningManagers() {
		if n, _ := m.Manager().State().Node(victim.ID()); n.Role != ca.RoleWorker {
			t.Fatalf("manager %s holds %s as a %s, want a worker", m.ID(), victim.ID(), n.Role)
		}
	}
	leaderChain := chainOf(t, leader.Credentials())
	checkAttacks(t, c, "demoted manager", &old, attackCalls(leaderChain))
	for _, m := range c.RunningManagers() {
		if err := raftRefuses(t, m.RaftAddr(), &old, c.Roots()); err != nil {
			t.Errorf("demoted manager at %s's Raft port: %v", m.ID(), err)
		}
	}
	c.CheckStateUnchanged(t, "the demoted manager's attacks", before)
}

// TestWorkerForwardingMetadataRefused: a worker's certificate with the
// metadata a manager sets when it relays a call gets nothing either.
func TestWorkerForwardingMetadataRefused(t *testing.T) {
	c := newLifecycleCluster(t, 3, 0)
	w := c.AddWorker("w0")
	c.WaitConverged()
	before := c.WaitSameState()
	creds := w.Credentials().Certificate()
	calls := attackCalls(chainOf(t, c.Leader().Credentials()))
	// A worker may call Gossip as itself: leave that call out of the
	// no-metadata set.
	var filtered []attackCall
	for _, a := range calls {
		if a.name != "Gossip no metadata" {
			filtered = append(filtered, a)
		}
	}
	checkAttacks(t, c, "worker", creds, filtered)
	for _, m := range c.RunningManagers() {
		if err := raftRefuses(t, m.RaftAddr(), creds, c.Roots()); err != nil {
			t.Errorf("worker at %s's Raft port: %v", m.ID(), err)
		}
	}
	c.CheckStateUnchanged(t, "the worker's attacks", before)
}

// TestAdminCertificateRecordedAndRevoked: an admin certificate is issued
// on a control socket (a follower's: the leader records it), works at
// every manager, is listed, and once revoked is refused by every manager
// on new and on open connections. It cannot mint its successor, and its
// TTL is its own (default 24h, at most 30 days), not the cluster's cert
// expiry.
func TestAdminCertificateRecordedAndRevoked(t *testing.T) {
	c := newLifecycleCluster(t, 3, time.Hour)
	f := c.Follower()
	pair, leaf := adminCertificate(t, c, f, 0)
	serial := leaf.SerialNumber.Text(16)
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < manager.DefaultAdminCertTTL {
		t.Errorf("admin certificate valid %s, want the default %s (not capped by the cluster's 1h cert expiry)", got, manager.DefaultAdminCertTTL)
	}
	c.WaitSameState()
	ls, err := c.Leader().Control().ListAdminCertificates(testkit.Ctx(t), &api.ListAdminCertificatesRequest{})
	if err != nil || len(ls.GetCertificates()) != 1 || ls.GetCertificates()[0].GetSerial() != serial || ls.GetCertificates()[0].GetIssuedBy() == "" {
		t.Fatalf("ListAdminCertificates() = %v, %v; want the one issued, %s, with who issued it", ls, err, serial)
	}
	open := map[*clustertest.Node]*grpc.ClientConn{}
	for _, m := range c.Managers {
		open[m] = c.Dial(m.Addr(), clientTLS(&pair, c.Roots()))
		if err := listNodesCall(testkit.Ctx(t), open[m]); err != nil {
			t.Fatalf("ListNodes() with the admin certificate at %s = %v", m.ID(), err)
		}
	}
	// It cannot mint its successor.
	_, err = api.NewControlClient(open[c.Leader()]).IssueAdminCertificate(testkit.Ctx(t), &api.IssueAdminCertificateRequest{Csr: mustCSR()})
	wantCode(t, "IssueAdminCertificate() with an admin certificate", err, codes.PermissionDenied)
	// Its TTL is capped.
	_, err = f.Control().IssueAdminCertificate(testkit.Ctx(t), &api.IssueAdminCertificateRequest{Csr: mustCSR(), TtlSeconds: int64(31 * 24 * time.Hour / time.Second)})
	wantCode(t, "IssueAdminCertificate(ttl 31 days)", err, codes.InvalidArgument)

	resp, err := f.Control().RevokeAdminCertificates(testkit.Ctx(t), &api.RevokeAdminCertificatesRequest{Serials: []string{serial}})
	if err != nil || len(resp.GetSerials()) != 1 {
		t.Fatalf("RevokeAdminCertificates(%s) = %v, %v", serial, resp, err)
	}
	for _, m := range c.Managers {
		testkit.Eventually(t, "manager "+m.ID()+" refuses the revoked admin certificate", func() error {
			if err := listNodesCall(testkit.Ctx(t), open[m]); status.Code(err) != codes.PermissionDenied {
				return fmt.Errorf("ListNodes() on a connection opened before the revocation = %v, want PermissionDenied", err)
			}
			return refusedAt(t, m.Addr(), clientTLS(&pair, c.Roots()), "bad certificate", listNodesCall)
		})
	}
}

// TestAdminCertificateExpiresAndIsPruned: an admin certificate is refused
// on an open connection once the managers' clock passes its NotAfter, and
// leaves the state.
func TestAdminCertificateExpiresAndIsPruned(t *testing.T) {
	c := newLifecycleCluster(t, 1, 0)
	m := c.Managers[0]
	pair, leaf := adminCertificate(t, c, m, time.Hour)
	conn := c.Dial(m.Addr(), clientTLS(&pair, c.Roots()))
	if err := listNodesCall(testkit.Ctx(t), conn); err != nil {
		t.Fatalf("ListNodes() with a fresh admin certificate = %v", err)
	}
	c.Clock.Set(t, leaf.NotAfter.Add(time.Minute))
	err := listNodesCall(testkit.Ctx(t), conn)
	wantCode(t, "ListNodes() with an expired admin certificate on an open connection", err, codes.PermissionDenied)
	testkit.Eventually(t, "the expired admin certificate is pruned", func() error {
		if n := len(m.Manager().State().Admins); n != 0 {
			return fmt.Errorf("%d admin certificates recorded", n)
		}
		return nil
	})
}

// TestLeaderChangeShowsLiveNodes: right after a leader change, before any
// node has heartbeat to the new leader, node ls shows the live nodes as
// ready and matches the committed state, and node rm still asks for
// --force on a live node.
func TestLeaderChangeShowsLiveNodes(t *testing.T) {
	c := newLifecycleCluster(t, 3, 0)
	w := c.AddWorker("w0")
	id := w.Credentials().Identity().NodeID
	old := c.Leader()
	old.Stop()
	nl := c.Leader()
	resp, err := nl.Control().ListNodes(testkit.Ctx(t), &api.ListNodesRequest{})
	if err != nil {
		t.Fatalf("ListNodes() on the new leader = %v", err)
	}
	want := clustertest.NodeIDs(nl.Manager().State())
	var got []string
	for _, n := range resp.GetNodes() {
		got = append(got, n.GetId())
		if n.GetId() == id && n.GetStatus() != "ready" {
			t.Errorf("node ls right after the election: worker %s is %q, want ready", id, n.GetStatus())
		}
	}
	if slices.Sort(got); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("node ls lists %v, want the committed nodes %v", got, want)
	}
	_, err = nl.Control().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: id})
	wantCode(t, "RemoveNode(live worker, no --force) right after the election", err, codes.FailedPrecondition)
}

// TestForwardedCallNamesTheCaller checks what a follower relays: a call on
// its control socket reaches the leader as the follower's host, and the
// policy reason of a refusal reaches the client.
func TestForwardedCallNamesTheCaller(t *testing.T) {
	c := newLifecycleCluster(t, 3, 0)
	f := c.Follower()
	resp, err := f.Control().JoinToken(testkit.Ctx(t), &api.JoinTokenRequest{Role: "worker", Rotate: true})
	if err != nil {
		t.Fatalf("JoinToken(rotate) on a follower's control socket = %v", err)
	}
	c.WorkerToken = resp.GetToken()
	w := c.AddWorker("w0")
	conn := c.Dial(f.Addr(), w.Credentials().ClientTLS(agent.ManagerName))
	_, err = api.NewControlClient(conn).ListNodes(testkit.Ctx(t), &api.ListNodesRequest{})
	if r, _ := api.ErrorReason(err); r != authz.ReasonNotManager {
		t.Errorf("ListNodes() with a worker certificate = %v, want reason %s", err, authz.ReasonNotManager)
	}
}
