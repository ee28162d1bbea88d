package integration

// The certificate lifecycle, end to end: renewal on schedule, a cert-expiry
// change reaching every node, promotion and demotion, removal and the
// pruning of the refusal list, join-token rotation and token policies, and
// the admin mutual-TLS access to the Control API. Each security refusal is
// its own named test.
//
// The daemons run on one injected clock (lcClock) that stands still unless
// a test moves it, so that renewal schedules, token TTLs and liveness are
// driven by the test rather than by real hours. crypto/tls still checks
// certificate validity against the real clock; see lcClock for what that
// asks of the tests.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/membership"
)

// Timings of the lifecycle tests: fast Raft, a heartbeat every 100ms, a
// reconcile (voters, pruning) every 200ms.
const (
	lcRaftHeartbeat   = 400 * time.Millisecond
	lcRaftElection    = 400 * time.Millisecond
	lcRaftLease       = 200 * time.Millisecond
	lcApplyTimeout    = 3 * time.Second
	lcHeartbeatPeriod = 100 * time.Millisecond
	lcReconcilePeriod = 200 * time.Millisecond
	// lcWait bounds every poll.
	lcWait = 20 * time.Second
	// lcPoll is the pause between two looks at a polled condition.
	lcPoll = 20 * time.Millisecond
	// lcClockLag is how far behind the real clock the fake clock starts.
	lcClockLag = 10 * time.Minute
	// lcBackdate is how far before its signing a leaf's NotBefore lies
	// (ca's leafBackdate).
	lcBackdate = time.Hour
)

// lcClock is the clock every daemon of a test cluster reads (Config.Now).
// It stands still unless the test moves it.
//
// crypto/tls verifies certificates against the real clock, while the
// managers sign at the fake one, with NotBefore backdated by an hour. So
// the fake clock starts lcClockLag behind the real one, and Set refuses to
// move it more than the backdate ahead of the real clock: certificates
// signed at the fake time must be valid already by the real one, or the
// daemons could no longer talk to each other.
type lcClock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func lcNewClock() *lcClock {
	return &lcClock{now: time.Now().Add(-lcClockLag).Truncate(time.Second)}
}

// Now returns the fake time.
func (c *lcClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock d forward.
func (c *lcClock) Advance(tb testing.TB, d time.Duration) {
	tb.Helper()
	c.Set(tb, c.Now().Add(d))
}

// Set moves the clock to t (backwards too).
func (c *lcClock) Set(tb testing.TB, t time.Time) {
	tb.Helper()
	if limit := time.Now().Add(lcBackdate - time.Minute); t.After(limit) {
		tb.Fatalf("lcClock: %s is too far past the real clock: certificates signed then would not be valid yet for crypto/tls", t)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// lcCluster is a test cluster of managers and workers on one fake clock.
// Everything it starts is stopped when the test ends.
type lcCluster struct {
	t       *testing.T
	clock   *lcClock
	root    string // data directories live under it
	sockDir string // and sockets under this short path
	// managers are the managers started by lcNewCluster, in order.
	managers []*manager.Manager
	cfgs     []manager.Config

	mu        sync.Mutex // guards the fields below
	stops     []func()
	conns     []*grpc.ClientConn
	sockConns map[string]*grpc.ClientConn
}

// lcNewCluster inits a cluster with the given cert expiry (0: the
// default) and joins managers-1 more managers with the manager token, then
// waits until every manager lists all of them as voters and has applied
// the same nodes.
func lcNewCluster(t *testing.T, managers int, expiry time.Duration) *lcCluster {
	t.Helper()
	// Directories first: their removal must run after the daemons stop,
	// and cleanups run last-registered first.
	root := t.TempDir()
	sockDir, err := os.MkdirTemp("", "qlc")
	if err != nil {
		t.Fatalf("os.MkdirTemp() = %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	c := &lcCluster{t: t, clock: lcNewClock(), root: root, sockDir: sockDir}
	t.Cleanup(c.stopAll)

	cfg := c.config("m0")
	m, err := manager.Init(t.Context(), cfg, manager.InitOptions{CertExpiry: expiry})
	if err != nil {
		t.Fatalf("manager.Init() = %v", err)
	}
	c.addManager(cfg, m)
	token := c.token(m, "manager")
	for i := 1; i < managers; i++ {
		cfg := c.config(fmt.Sprintf("m%d", i))
		jm, w, err := manager.Join(t.Context(), cfg, token, m.Addr())
		if err != nil {
			t.Fatalf("manager.Join(manager token, %s) = %v", m.Addr(), err)
		}
		if jm == nil {
			w.Stop()
			t.Fatalf("manager.Join(manager token) started a worker, want a manager")
		}
		c.addManager(cfg, jm)
		// Let each new voter settle before the next join: a two-voter
		// cluster with a voter still catching up is the easiest to lose
		// its leader.
		c.waitVoters(c.managers, c.managerIDs())
	}
	c.waitVoters(c.managers, c.managerIDs())
	c.waitConverged(c.managers)
	return c
}

// managerIDs returns the node IDs of the managers of lcNewCluster.
func (c *lcCluster) managerIDs() []string {
	var ids []string
	for _, m := range c.managers {
		ids = append(ids, m.NodeID())
	}
	return ids
}

// config returns a node configuration with its own data directory,
// ephemeral loopback ports, a short socket path, fast timings and the
// cluster's clock.
func (c *lcCluster) config(name string) manager.Config {
	dir := filepath.Join(c.root, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		c.t.Fatalf("os.Mkdir(%s) = %v", dir, err)
	}
	return manager.Config{
		DataDir:            dir,
		ListenAddr:         "127.0.0.1:0",
		RaftListenAddr:     "127.0.0.1:0",
		GossipAddr:         "127.0.0.1:0",
		GossipTiming:       membership.Fast,
		SocketPath:         filepath.Join(c.sockDir, name+".sock"),
		Logger:             testLogger(),
		HeartbeatTimeout:   lcRaftHeartbeat,
		ElectionTimeout:    lcRaftElection,
		LeaderLeaseTimeout: lcRaftLease,
		ApplyTimeout:       lcApplyTimeout,
		HeartbeatPeriod:    lcHeartbeatPeriod,
		ReconcilePeriod:    lcReconcilePeriod,
		Now:                c.clock.Now,
	}
}

func (c *lcCluster) addManager(cfg manager.Config, m *manager.Manager) {
	c.managers = append(c.managers, m)
	c.cfgs = append(c.cfgs, cfg)
	c.onStop(func() {
		if err := m.Stop(); err != nil {
			c.t.Errorf("manager %s: Stop() = %v", m.NodeID(), err)
		}
	})
}

// onStop registers f to run when the test ends, before the directories go.
func (c *lcCluster) onStop(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stops = append(c.stops, f)
}

// stopAll closes the test's connections and stops everything, the last
// started first.
func (c *lcCluster) stopAll() {
	c.mu.Lock()
	stops, conns := c.stops, c.conns
	c.stops, c.conns, c.sockConns = nil, nil, nil
	c.mu.Unlock()
	for _, conn := range conns {
		conn.Close()
	}
	for _, f := range slices.Backward(stops) {
		f()
	}
}

// control returns a client of m's control socket (admin access), on one
// connection per socket that stopAll closes.
func (c *lcCluster) control(m *manager.Manager) api.ControlClient {
	c.t.Helper()
	sock := m.SocketPath()
	c.mu.Lock()
	defer c.mu.Unlock()
	conn, ok := c.sockConns[sock]
	if !ok {
		var err error
		conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.t.Fatalf("grpc.NewClient(unix://%s) = %v", sock, err)
		}
		if c.sockConns == nil {
			c.sockConns = map[string]*grpc.ClientConn{}
		}
		c.sockConns[sock] = conn
		c.conns = append(c.conns, conn)
	}
	return api.NewControlClient(conn)
}

// dial opens a gRPC connection to a manager's API over TLS with cfg;
// stopAll closes it.
func (c *lcCluster) dial(addr string, cfg *tls.Config) *grpc.ClientConn {
	c.t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		c.t.Fatalf("grpc.NewClient(%s) = %v", addr, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conns = append(c.conns, conn)
	return conn
}

// addWorker joins a worker daemon through the first manager with the
// worker token, the way `quorumca join` does.
func (c *lcCluster) addWorker(name string) (*agent.Worker, manager.Config) {
	c.t.Helper()
	cfg := c.config(name)
	w, err := c.joinWorker(cfg, c.token(c.managers[0], "worker"))
	if err != nil {
		c.t.Fatalf("manager.Join(worker token) = %v", err)
	}
	return w, cfg
}

// joinWorker joins a worker daemon with token through the first manager.
func (c *lcCluster) joinWorker(cfg manager.Config, token string) (*agent.Worker, error) {
	c.t.Helper()
	m, w, err := manager.Join(lcCtx(c.t), cfg, token, c.managers[0].Addr())
	if err != nil {
		return nil, err
	}
	if m != nil {
		m.Stop()
		c.t.Fatalf("manager.Join(worker token) started a manager, want a worker")
	}
	c.onStop(w.Stop)
	return w, nil
}

// tryJoin joins with token through the manager at remote into a fresh
// data directory, without a daemon, and returns the directory and the
// error.
func (c *lcCluster) tryJoin(token, remote string) (string, agent.JoinResult, error) {
	c.t.Helper()
	dir, err := os.MkdirTemp(c.root, "join")
	if err != nil {
		c.t.Fatalf("os.MkdirTemp() = %v", err)
	}
	res, err := agent.Join(lcCtx(c.t), agent.JoinConfig{DataDir: dir, Token: token, Remote: remote, Logger: testLogger()})
	return dir, res, err
}

// checkJoinRefused fails unless a join with token is refused with
// PermissionDenied and leaves nothing in its data directory, and the
// cluster's nodes are unchanged.
func (c *lcCluster) checkJoinRefused(what, token string) {
	c.t.Helper()
	before := nodeIDs(c.leader().State())
	dir, _, err := c.tryJoin(token, c.managers[0].Addr())
	if got := status.Code(err); got != codes.PermissionDenied {
		c.t.Errorf("join with %s = %v (code %s), want %s", what, err, got, codes.PermissionDenied)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		c.t.Errorf("join with %s left %d entries in its data directory, want none", what, len(entries))
	}
	if after := nodeIDs(c.leader().State()); !slices.Equal(after, before) {
		c.t.Errorf("join with %s: nodes = %v, want unchanged %v", what, after, before)
	}
}

// leader waits until exactly one of the cluster's running managers leads,
// and returns it.
func (c *lcCluster) leader() *manager.Manager {
	c.t.Helper()
	var leader *manager.Manager
	lcEventually(c.t, "one leader", func() error {
		var leaders []*manager.Manager
		for _, m := range c.running() {
			if m.IsLeader() {
				leaders = append(leaders, m)
			}
		}
		if len(leaders) != 1 {
			return fmt.Errorf("%d leaders", len(leaders))
		}
		leader = leaders[0]
		return nil
	})
	return leader
}

// follower returns a running manager that does not lead.
func (c *lcCluster) follower() *manager.Manager {
	c.t.Helper()
	l := c.leader()
	for _, m := range c.running() {
		if m != l {
			return m
		}
	}
	c.t.Fatalf("no follower")
	return nil
}

// running returns the managers of lcNewCluster that have not stopped.
func (c *lcCluster) running() []*manager.Manager {
	var out []*manager.Manager
	for _, m := range c.managers {
		select {
		case <-m.Done():
		default:
			out = append(out, m)
		}
	}
	return out
}

// token returns a role's join token from m's control socket.
func (c *lcCluster) token(m *manager.Manager, role string) string {
	c.t.Helper()
	resp, err := c.control(m).JoinToken(lcCtx(c.t), &api.JoinTokenRequest{Role: role})
	if err != nil {
		c.t.Fatalf("Control.JoinToken(%s) = %v", role, err)
	}
	return resp.GetToken()
}

// waitVoters waits until each of ms lists exactly the voters want (node
// IDs) in Control.Status, and all agree on one leader among them.
func (c *lcCluster) waitVoters(ms []*manager.Manager, want []string) {
	c.t.Helper()
	want = slices.Sorted(slices.Values(want))
	lcEventually(c.t, fmt.Sprintf("voters %v on every manager", want), func() error {
		leader := ""
		for _, m := range ms {
			st, err := c.control(m).Status(lcCtx(c.t), &api.StatusRequest{})
			if err != nil {
				return fmt.Errorf("manager %s: Control.Status() = %v", m.NodeID(), err)
			}
			if got := voterIDs(st); !slices.Equal(got, want) {
				return fmt.Errorf("manager %s: voters %v", m.NodeID(), got)
			}
			if st.GetLeaderId() == "" || !slices.Contains(want, st.GetLeaderId()) {
				return fmt.Errorf("manager %s: leader %q", m.NodeID(), st.GetLeaderId())
			}
			if leader != "" && st.GetLeaderId() != leader {
				return fmt.Errorf("managers disagree on the leader: %s and %s", leader, st.GetLeaderId())
			}
			leader = st.GetLeaderId()
		}
		return nil
	})
}

// waitConverged waits until each of ms has applied the same nodes.
func (c *lcCluster) waitConverged(ms []*manager.Manager) {
	c.t.Helper()
	lcEventually(c.t, "every manager has the same nodes", func() error {
		want := nodeIDs(ms[0].State())
		for _, m := range ms[1:] {
			if got := nodeIDs(m.State()); !slices.Equal(got, want) {
				return fmt.Errorf("manager %s has nodes %v, manager %s %v", m.NodeID(), got, ms[0].NodeID(), want)
			}
		}
		return nil
	})
}

// roots returns the cluster's trust bundle as a pool.
func (c *lcCluster) roots() *x509.CertPool {
	c.t.Helper()
	pool, _, err := ca.ParseBundle(c.managers[0].Credentials().Bundle())
	if err != nil {
		c.t.Fatalf("ca.ParseBundle() = %v", err)
	}
	return pool
}

// adminCertificate asks m's control socket for an admin certificate for a
// fresh key, and returns it as a key pair with its parsed leaf.
func (c *lcCluster) adminCertificate(m *manager.Manager, ttl time.Duration) (tls.Certificate, *x509.Certificate) {
	c.t.Helper()
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		c.t.Fatalf("ca.GenerateKey() = %v", err)
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		c.t.Fatalf("ca.MarshalKey() = %v", err)
	}
	csr, err := ca.NewCSR(rand.Reader, key, "")
	if err != nil {
		c.t.Fatalf("ca.NewCSR() = %v", err)
	}
	resp, err := c.control(m).IssueAdminCertificate(lcCtx(c.t), &api.IssueAdminCertificateRequest{Csr: csr, TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		c.t.Fatalf("Control.IssueAdminCertificate() = %v", err)
	}
	if !bytes.Equal(resp.GetBundle(), c.managers[0].Credentials().Bundle()) {
		c.t.Errorf("Control.IssueAdminCertificate() bundle is not the cluster's")
	}
	pair, err := tls.X509KeyPair(resp.GetCertificate(), keyPEM)
	if err != nil {
		c.t.Fatalf("tls.X509KeyPair(admin certificate) = %v", err)
	}
	return pair, pair.Leaf
}

// lcEventually polls cond until it returns nil, and fails the test with
// cond's last error if it has not within lcWait.
func lcEventually(tb testing.TB, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(lcWait)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %s: %v", what, lcWait, err)
		}
		time.Sleep(lcPoll)
	}
}

// lcHolds checks cond for the whole of d, and fails the test the first
// time it does not hold. It is for asserting that something does not
// happen; use it sparingly and keep d short.
func lcHolds(tb testing.TB, d time.Duration, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := cond(); err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
		time.Sleep(lcPoll)
	}
}

// lcCtx returns a context for one call, bounded by lcWait.
func lcCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(tb.Context(), lcWait)
	tb.Cleanup(cancel)
	return ctx
}

// lcRefusedAt makes call on a fresh connection to addr with cfg (a new
// handshake each time) and returns nil if the server refused the client's
// certificate: PermissionDenied from the per-call check, or Unavailable
// because the server broke off the handshake, which a raw TLS handshake
// with cfg must then show as a TLS alert naming alert.
func lcRefusedAt(tb testing.TB, addr string, cfg *tls.Config, alert string, call func(context.Context, *grpc.ClientConn) error) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		tb.Fatalf("grpc.NewClient(%s) = %v", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(tb.Context(), 5*time.Second)
	defer cancel()
	err = call(ctx, conn)
	switch status.Code(err) {
	case codes.OK:
		return errors.New("the call succeeded")
	case codes.PermissionDenied:
		tb.Logf("%s refused the call: %v", addr, err)
		return nil
	case codes.Unavailable:
		got, herr := lcTLSAlert(addr, cfg)
		if herr != nil {
			return fmt.Errorf("call: %v; raw handshake: %v", err, herr)
		}
		if !strings.Contains(got, alert) {
			return fmt.Errorf("call: %v; the server sent TLS alert %q, want %q", err, got, alert)
		}
		tb.Logf("%s refused the handshake: TLS alert %q", addr, got)
		return nil
	}
	return fmt.Errorf("%v (code %s), want PermissionDenied or a refused TLS handshake", err, status.Code(err))
}

// lcTLSAlert opens a raw TLS connection to addr with cfg and returns the
// alert the server sends when it refuses the client's certificate (in TLS
// 1.3 that comes after the client's side of the handshake is done), or an
// error if the server took the connection and started HTTP/2.
func lcTLSAlert(addr string, cfg *tls.Config) (string, error) {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err == nil {
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		_, err = conn.Read(b[:])
		if err == nil {
			return "", errors.New("the server took the connection")
		}
	}
	if msg := err.Error(); strings.Contains(msg, "remote error: tls: ") {
		return msg[strings.Index(msg, "remote error: tls: ")+len("remote error: tls: "):], nil
	}
	return "", err
}

func lcListNodes(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := api.NewControlClient(conn).ListNodes(ctx, &api.ListNodesRequest{})
	return err
}

func lcGossip(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := api.NewCAClient(conn).Gossip(ctx, &api.GossipRequest{})
	return err
}

func lcHeartbeat(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := api.NewCAClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{})
	return err
}

func lcRenew(ctx context.Context, conn *grpc.ClientConn) error {
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	csr, err := ca.NewCSR(rand.Reader, key, "")
	if err != nil {
		return err
	}
	_, err = api.NewCAClient(conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{Csr: csr})
	return err
}

// lcWantCode fails unless err has gRPC code want.
func lcWantCode(tb testing.TB, call string, err error, want codes.Code) {
	tb.Helper()
	if got := status.Code(err); got != want {
		tb.Errorf("%s = %v (code %s), want %s", call, err, got, want)
	}
}

// checkStateUnchanged fails unless every running manager's state is want
// (as stateJSON writes it).
func (c *lcCluster) checkStateUnchanged(what, want string) {
	c.t.Helper()
	for _, m := range c.running() {
		if got := stateJSON(c.t, m.State()); got != want {
			c.t.Errorf("after %s, manager %s's state changed: %s", what, m.NodeID(), lcDiff(got, want))
		}
	}
}

// waitSameState waits until every running manager has applied the same
// state, and returns it (as stateJSON writes it).
func (c *lcCluster) waitSameState() string {
	c.t.Helper()
	var want string
	lcEventually(c.t, "every manager has applied the same state", func() error {
		ms := c.running()
		want = stateJSON(c.t, ms[0].State())
		for _, m := range ms[1:] {
			if got := stateJSON(c.t, m.State()); got != want {
				return fmt.Errorf("manager %s: %s", m.NodeID(), lcDiff(got, want))
			}
		}
		return nil
	})
	return want
}

// lcDiff shows where two encoded states first differ.
func lcDiff(got, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := max(0, i-80)
	return fmt.Sprintf("at byte %d: got ...%s..., want ...%s...", i, got[from:min(len(got), i+80)], want[from:min(len(want), i+80)])
}

// lcSamePublicKey reports whether two certificates hold the same key.
func lcSamePublicKey(a, b *x509.Certificate) bool {
	k, ok := a.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b.PublicKey)
}

// lcAt returns the instant frac of the way through leaf's validity.
func lcAt(leaf *x509.Certificate, frac float64) time.Time {
	return leaf.NotBefore.Add(time.Duration(frac * float64(leaf.NotAfter.Sub(leaf.NotBefore))))
}

// lcWaitDone waits for done to close.
func lcWaitDone(tb testing.TB, what string, done <-chan struct{}) {
	tb.Helper()
	select {
	case <-done:
	case <-time.After(lcWait):
		tb.Fatalf("%s: not within %s", what, lcWait)
	}
}

// TestRenewalBeforeExpiry follows a worker's certificate through its
// schedule: no renewal before half its validity, a renewal once the clock
// passes 80 %, with a fresh key and a later expiry, for the same identity,
// stored on disk and recorded in the cluster state.
func TestRenewalBeforeExpiry(t *testing.T) {
	c := lcNewCluster(t, 1, time.Hour)
	w, cfg := c.addWorker("w0")
	old := w.Credentials().Leaf()
	oldID := w.Credentials().Identity()
	lcEventually(t, "the renewer schedules the first renewal", func() error {
		if w.Renewer().RenewAt().IsZero() {
			return errors.New("Renewer().RenewAt() is zero")
		}
		return nil
	})

	// The renewal instant is drawn in 50-80 % of the validity.
	if at := w.Renewer().RenewAt(); at.Before(lcAt(old, 0.5)) || at.After(lcAt(old, 0.8)) {
		t.Errorf("Renewer().RenewAt() = %s, want within [%s, %s] (50-80 %% of %s..%s)", at, lcAt(old, 0.5), lcAt(old, 0.8), old.NotBefore, old.NotAfter)
	}

	// At 45 % (with a one-hour expiry and a one-hour backdate, a little
	// before the signing itself) nothing renews, heartbeat after heartbeat.
	c.clock.Set(t, lcAt(old, 0.45))
	lcHolds(t, 10*lcHeartbeatPeriod, "at 45% of the validity", func() error {
		if n := w.Renewer().Renewals(); n != 0 {
			return fmt.Errorf("Renewer().Renewals() = %d, want 0", n)
		}
		if s := w.Credentials().Leaf().SerialNumber; s.Cmp(old.SerialNumber) != 0 {
			return fmt.Errorf("serial changed from %x to %x", old.SerialNumber, s)
		}
		return nil
	})

	// Past 80 %, the worker renews by itself.
	c.clock.Set(t, lcAt(old, 0.81))
	lcEventually(t, "the worker renews past 80% of its validity", func() error {
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
	if lcSamePublicKey(leaf, old) {
		t.Errorf("renewed certificate has the old public key, want a fresh key per renewal")
	}
	if at := w.Renewer().RenewAt(); at.Before(lcAt(leaf, 0.5)) || at.After(lcAt(leaf, 0.8)) {
		t.Errorf("after renewal, Renewer().RenewAt() = %s, want within 50-80 %% of the new certificate", at)
	}

	// The files other programs read hold the new pair.
	disk, err := agent.LoadCredentials(cfg.DataDir)
	if err != nil {
		t.Fatalf("agent.LoadCredentials(%s) = %v", cfg.DataDir, err)
	}
	if got := disk.Leaf(); !got.Equal(leaf) {
		t.Errorf("%s holds serial %x, want the renewed %x", agent.CertDir(cfg.DataDir), got.SerialNumber, leaf.SerialNumber)
	}
	if !lcSamePublicKey(disk.Leaf(), leaf) {
		t.Errorf("the key on disk is not the renewed certificate's")
	}

	// The cluster recorded it.
	lcEventually(t, "the state records the renewed certificate", func() error {
		n, ok := c.leader().State().Node(oldID.NodeID)
		if !ok {
			return fmt.Errorf("node %s not in the state", oldID.NodeID)
		}
		if want := leaf.SerialNumber.Text(16); n.Cert.Serial != want {
			return fmt.Errorf("state serial %s, want %s", n.Cert.Serial, want)
		}
		return nil
	})

	// And the renewed certificate is the one that works now.
	conn := c.dial(c.managers[0].Addr(), w.Credentials().ClientTLS(agent.ManagerName))
	if err := lcHeartbeat(lcCtx(t), conn); err != nil {
		t.Errorf("CA.Heartbeat() with the renewed certificate = %v", err)
	}
}

// TestCertExpiryUpdateReachesEveryNode shortens the cluster's cert expiry
// from the default 90 days to 2h: every manager and worker renews at once
// into a certificate of the new validity. An expiry under the minimum is
// refused and changes nothing.
func TestCertExpiryUpdateReachesEveryNode(t *testing.T) {
	c := lcNewCluster(t, 3, 0)
	w0, _ := c.addWorker("w0")
	w1, _ := c.addWorker("w1")
	type holder struct {
		name    string
		creds   *agent.Credentials
		renewer *agent.Renewer
	}
	var nodes []holder
	for _, m := range c.managers {
		nodes = append(nodes, holder{"manager " + m.NodeID(), m.Credentials(), m.Renewer()})
	}
	for _, w := range []*agent.Worker{w0, w1} {
		nodes = append(nodes, holder{"worker " + w.Credentials().Identity().NodeID, w.Credentials(), w.Renewer()})
	}
	for _, n := range nodes {
		if got, want := n.creds.Leaf().NotAfter.Sub(n.creds.Leaf().NotBefore), ca.DefaultCertExpiry+lcBackdate; got != want {
			t.Fatalf("%s: validity %s before the update, want %s", n.name, got, want)
		}
	}

	const expiry = 2 * time.Hour
	// Through a follower: it forwards to the leader.
	resp, err := c.control(c.follower()).Update(lcCtx(t), &api.UpdateRequest{CertExpirySeconds: int64(expiry / time.Second)})
	if err != nil {
		t.Fatalf("Control.Update(cert expiry %s) = %v", expiry, err)
	}
	if got := time.Duration(resp.GetCertExpirySeconds()) * time.Second; got != expiry {
		t.Errorf("Control.Update() cert expiry = %s, want %s", got, expiry)
	}

	const slack = time.Minute
	lcEventually(t, "every node holds a certificate of the new validity", func() error {
		for _, m := range c.managers {
			if got := m.State().CertExpiry; got != expiry {
				return fmt.Errorf("manager %s: State().CertExpiry = %s", m.NodeID(), got)
			}
		}
		for _, n := range nodes {
			leaf := n.creds.Leaf()
			if v := leaf.NotAfter.Sub(leaf.NotBefore); v > expiry+lcBackdate+slack {
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
		if v := leaf.NotAfter.Sub(leaf.NotBefore); v < expiry+lcBackdate-slack {
			t.Errorf("%s: validity %s, want about %s", n.name, v, expiry+lcBackdate)
		}
		if limit := c.clock.Now().Add(expiry + slack); leaf.NotAfter.After(limit) {
			t.Errorf("%s: NotAfter %s, want at most %s", n.name, leaf.NotAfter, limit)
		}
	}

	// Each node renewed once, and then no more: its heartbeats now present
	// the new certificate, which is up to date.
	lcHolds(t, 10*lcHeartbeatPeriod, "after the renewal", func() error {
		for _, n := range nodes {
			if got := n.renewer.Renewals(); got != 1 {
				return fmt.Errorf("%s: Renewer().Renewals() = %d, want 1", n.name, got)
			}
		}
		return nil
	})

	// Under the minimum: refused, and nothing changes.
	before := c.waitSameState()
	_, err = c.control(c.managers[0]).Update(lcCtx(t), &api.UpdateRequest{CertExpirySeconds: int64(30 * time.Minute / time.Second)})
	lcWantCode(t, "Control.Update(cert expiry 30m)", err, codes.InvalidArgument)
	c.checkStateUnchanged("a refused update", before)
	for _, m := range c.managers {
		if got := m.State().CertExpiry; got != expiry {
			t.Errorf("manager %s: State().CertExpiry = %s after a refused update, want %s", m.NodeID(), got, expiry)
		}
	}
}

// TestPromoteThenDemote promotes a worker that joined with a worker token
// and demotes it again, restarting its daemon on each switch the way
// `quorumca run` does: its certificate's role and the Raft voters follow.
func TestPromoteThenDemote(t *testing.T) {
	baseline := runtime.NumGoroutine()
	c := lcNewCluster(t, 3, 0)
	w, wcfg := c.addWorker("w0")
	id := w.Credentials().Identity().NodeID
	voters := c.managerIDs()

	// Promote: the worker renews into a manager certificate and stops.
	if _, err := c.control(c.managers[0]).SetRole(lcCtx(t), &api.SetRoleRequest{NodeId: id, Role: "manager"}); err != nil {
		t.Fatalf("Control.SetRole(%s, manager) = %v", id, err)
	}
	lcWaitDone(t, "the promoted worker stops", w.Done())
	if !errors.Is(w.Reason(), agent.ErrPromoted) {
		t.Fatalf("worker Reason() = %v, want %v", w.Reason(), agent.ErrPromoted)
	}
	nc, err := agent.LoadNodeConfig(wcfg.DataDir)
	if err != nil {
		t.Fatalf("agent.LoadNodeConfig() = %v", err)
	}
	if nc.Role != ca.RoleManager {
		t.Fatalf("node.json role = %s after promotion, want %s", nc.Role, ca.RoleManager)
	}

	// Start the manager side on the addresses the node advertised.
	mcfg := wcfg
	mcfg.ListenAddr, mcfg.RaftListenAddr = nc.AdvertiseAddr, nc.RaftAdvertiseAddr
	pm, err := manager.Start(t.Context(), mcfg)
	if errors.Is(err, syscall.EADDRINUSE) {
		// Another socket took the port meanwhile: take new ones (AddVoter
		// records them).
		mcfg.ListenAddr, mcfg.RaftListenAddr = "127.0.0.1:0", "127.0.0.1:0"
		pm, err = manager.Start(t.Context(), mcfg)
	}
	if err != nil {
		t.Fatalf("manager.Start(promoted worker) = %v", err)
	}
	c.onStop(func() { pm.Stop() })
	if got := pm.Credentials().Leaf().Subject.OrganizationalUnit; !slices.Equal(got, []string{string(ca.RoleManager)}) {
		t.Errorf("promoted node's certificate OU = %v, want [%s]", got, ca.RoleManager)
	}
	if got := pm.Credentials().Identity().NodeID; got != id || pm.NodeID() != id {
		t.Errorf("promoted node is %s (certificate %s), want the worker's ID %s", pm.NodeID(), got, id)
	}
	all := append([]*manager.Manager{pm}, c.managers...)
	c.waitVoters(all, append(slices.Clone(voters), id))
	lcEventually(t, "the state records the promoted manager's addresses", func() error {
		n, _ := c.leader().State().Node(id)
		if n.Role != ca.RoleManager || n.Addr != pm.Addr() || n.RaftAddr != pm.RaftAddr() {
			return fmt.Errorf("state has %s at %s / %s, want %s at %s / %s", n.Role, n.Addr, n.RaftAddr, ca.RoleManager, pm.Addr(), pm.RaftAddr())
		}
		return nil
	})

	// Demote: the manager renews into a worker certificate and stops.
	managerCert := pm.Credentials().Certificate()
	if _, err := c.control(c.managers[0]).SetRole(lcCtx(t), &api.SetRoleRequest{NodeId: id, Role: "worker"}); err != nil {
		t.Fatalf("Control.SetRole(%s, worker) = %v", id, err)
	}
	lcWaitDone(t, "the demoted manager stops", pm.Done())
	if !errors.Is(pm.Reason(), manager.ErrRoleChanged) {
		t.Fatalf("manager Reason() = %v, want %v", pm.Reason(), manager.ErrRoleChanged)
	}
	w2, err := agent.StartWorker(agent.WorkerConfig{
		DataDir: wcfg.DataDir, SocketPath: wcfg.SocketPath, Logger: testLogger(),
		HeartbeatPeriod: lcHeartbeatPeriod, Now: c.clock.Now,
	})
	if err != nil {
		t.Fatalf("agent.StartWorker(demoted manager) = %v", err)
	}
	c.onStop(w2.Stop)
	lcEventually(t, "the demoted node holds a worker certificate", func() error {
		if got := w2.Credentials().Leaf().Subject.OrganizationalUnit; !slices.Equal(got, []string{string(ca.RoleWorker)}) {
			return fmt.Errorf("OU = %v", got)
		}
		return nil
	})
	c.waitVoters(c.managers, voters)
	if n, _ := c.leader().State().Node(id); n.Role != ca.RoleWorker {
		t.Errorf("state role of %s = %s, want %s", id, n.Role, ca.RoleWorker)
	}
	// It goes on as a worker: heartbeats with its worker certificate say
	// it is up to date.
	conn := c.dial(c.managers[0].Addr(), w2.Credentials().ClientTLS(agent.ManagerName))
	hb, err := api.NewCAClient(conn).Heartbeat(lcCtx(t), &api.HeartbeatRequest{})
	if err != nil {
		t.Fatalf("CA.Heartbeat() as the demoted worker = %v", err)
	}
	if hb.GetRole() != string(ca.RoleWorker) || hb.GetRenew() {
		t.Errorf("CA.Heartbeat() = role %s, renew %v; want %s, false", hb.GetRole(), hb.GetRenew(), ca.RoleWorker)
	}
	conn.Close()
	// The manager certificate it held before (still within its validity)
	// no longer opens the Control API.
	err = lcRefusedAt(t, c.managers[0].Addr(), clientTLS(managerCert, c.roots()), "bad certificate", lcListNodes)
	if err != nil {
		t.Errorf("Control.ListNodes() with the demoted node's manager certificate: %v", err)
	}

	c.stopAll()
	checkGoroutines(t, baseline)
}

// TestDemoteLastManagerRefused: the only manager cannot be demoted; the
// refusal says why and nothing changes.
func TestDemoteLastManagerRefused(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	m := c.managers[0]
	before := c.waitSameState()
	_, err := c.control(m).SetRole(lcCtx(t), &api.SetRoleRequest{NodeId: m.NodeID(), Role: "worker"})
	lcWantCode(t, "Control.SetRole(last manager, worker)", err, codes.FailedPrecondition)
	if s, _ := status.FromError(err); !containsAny(s.Message(), "last manager") {
		t.Errorf("Control.SetRole(last manager, worker) message = %q, want it to say it is the last manager", s.Message())
	}
	c.checkStateUnchanged("demoting the last manager", before)
	c.waitVoters(c.managers, []string{m.NodeID()})
	if got := m.Credentials().Identity().Role; got != ca.RoleManager {
		t.Errorf("manager's certificate role = %s, want %s", got, ca.RoleManager)
	}
}

// TestSetRoleUnknownNode: promoting or demoting a node the cluster does
// not know is NotFound, and nothing changes.
func TestSetRoleUnknownNode(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	m := c.managers[0]
	before := c.waitSameState()
	unknown, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"manager", "worker"} {
		_, err := c.control(m).SetRole(lcCtx(t), &api.SetRoleRequest{NodeId: unknown, Role: role})
		lcWantCode(t, fmt.Sprintf("Control.SetRole(unknown node, %s)", role), err, codes.NotFound)
	}
	c.checkStateUnchanged("SetRole of an unknown node", before)
}

// TestRemoveLiveNodeNeedsForce: a worker that heartbeats is not removed
// without --force; with it, it is.
func TestRemoveLiveNodeNeedsForce(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	w, _ := c.addWorker("w0")
	id := w.Credentials().Identity().NodeID
	m := c.managers[0]
	lcEventually(t, "the worker is ready", func() error {
		resp, err := c.control(m).ListNodes(lcCtx(t), &api.ListNodesRequest{NodeId: id})
		if err != nil {
			return err
		}
		if s := resp.GetNodes()[0].GetStatus(); s != "ready" {
			return fmt.Errorf("status %q", s)
		}
		return nil
	})

	before := c.waitSameState()
	_, err := c.control(m).RemoveNode(lcCtx(t), &api.RemoveNodeRequest{NodeId: id})
	lcWantCode(t, "Control.RemoveNode(live worker)", err, codes.FailedPrecondition)
	if s, _ := status.FromError(err); !containsAny(s.Message(), "force") {
		t.Errorf("Control.RemoveNode(live worker) message = %q, want it to mention --force", s.Message())
	}
	c.checkStateUnchanged("removing a live node without force", before)

	if _, err := c.control(m).RemoveNode(lcCtx(t), &api.RemoveNodeRequest{NodeId: id, Force: true}); err != nil {
		t.Fatalf("Control.RemoveNode(live worker, force) = %v", err)
	}
	st := m.State()
	if _, ok := st.Node(id); ok {
		t.Errorf("node %s still in the state after a forced removal", id)
	}
	if !st.IsRemoved(id) {
		t.Errorf("node %s not in State().Removed after a forced removal", id)
	}
	before = c.waitSameState()
	_, err = c.control(m).RemoveNode(lcCtx(t), &api.RemoveNodeRequest{NodeId: id, Force: true})
	lcWantCode(t, "Control.RemoveNode(already removed, force)", err, codes.NotFound)
	c.checkStateUnchanged("removing a removed node again", before)
}

// TestRemovedNodeRefusedByAllManagers removes a stopped worker: every
// manager then refuses its certificate, on the calls it made before.
func TestRemovedNodeRefusedByAllManagers(t *testing.T) {
	c := lcNewCluster(t, 3, 0)
	w, wcfg := c.addWorker("w0")
	id := w.Credentials().Identity().NodeID
	roots := c.roots()

	// Control: before the removal, every manager takes its calls (Gossip
	// is answered by each; heartbeats and renewals by the leader, which
	// the others name). These connections stay open across the removal.
	open := map[*manager.Manager]*grpc.ClientConn{}
	for _, m := range c.managers {
		open[m] = c.dial(m.Addr(), w.Credentials().ClientTLS(agent.ManagerName))
		// A follower takes the node's calls once it applied its join.
		lcEventually(t, "control: CA.Gossip() at "+m.Addr()+" before the removal", func() error {
			return lcGossip(lcCtx(t), open[m])
		})
	}

	w.Stop()
	// Three heartbeat periods of silence make it down: no --force needed.
	c.clock.Advance(t, 4*lcHeartbeatPeriod)
	if _, err := c.control(c.managers[0]).RemoveNode(lcCtx(t), &api.RemoveNodeRequest{NodeId: id}); err != nil {
		t.Fatalf("Control.RemoveNode(stopped worker) = %v", err)
	}

	old, err := agent.LoadCredentials(wcfg.DataDir)
	if err != nil {
		t.Fatalf("agent.LoadCredentials() = %v", err)
	}
	attack := clientTLS(old.Certificate(), roots)
	for _, m := range c.managers {
		lcEventually(t, "manager "+m.NodeID()+" refuses the removed node", func() error {
			if !m.State().IsRemoved(id) {
				return fmt.Errorf("State().Removed = %v", m.State().Removed)
			}
			if err := lcRefusedAt(t, m.Addr(), attack, "bad certificate", lcHeartbeat); err != nil {
				return fmt.Errorf("CA.Heartbeat(): %w", err)
			}
			if err := lcRefusedAt(t, m.Addr(), attack, "bad certificate", lcRenew); err != nil {
				return fmt.Errorf("CA.RenewNodeCertificate(): %w", err)
			}
			// A connection made before the removal is no way around it:
			// every call is checked again.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if err := lcRenew(ctx, open[m]); status.Code(err) != codes.PermissionDenied {
				return fmt.Errorf("CA.RenewNodeCertificate() on a connection opened before the removal = %v, want %s", err, codes.PermissionDenied)
			}
			return nil
		})
		if _, ok := m.State().Node(id); ok {
			t.Errorf("manager %s still has node %s", m.NodeID(), id)
		}
	}
}

// TestRemovedListPruned: once the last certificate of a removed node has
// expired, every manager drops it from the refusal list.
func TestRemovedListPruned(t *testing.T) {
	c := lcNewCluster(t, 3, time.Hour)
	w, _ := c.addWorker("w0")
	id := w.Credentials().Identity().NodeID
	notAfter := w.Credentials().Leaf().NotAfter
	w.Stop()
	if _, err := c.control(c.managers[0]).RemoveNode(lcCtx(t), &api.RemoveNodeRequest{NodeId: id, Force: true}); err != nil {
		t.Fatalf("Control.RemoveNode(%s, force) = %v", id, err)
	}
	var until time.Time
	lcEventually(t, "every manager lists the removed node", func() error {
		for _, m := range c.managers {
			u, ok := m.State().Removed[id]
			if !ok {
				return fmt.Errorf("manager %s: State().Removed = %v", m.NodeID(), m.State().Removed)
			}
			until = u
		}
		return nil
	})
	if !until.Equal(notAfter) {
		t.Errorf("State().Removed[%s] = %s, want the certificate's NotAfter %s", id, until, notAfter)
	}

	// A second before the certificate expires, the entry stays.
	c.clock.Set(t, until.Add(-time.Second))
	lcHolds(t, 3*lcReconcilePeriod, "before the certificate expires", func() error {
		for _, m := range c.managers {
			if !m.State().IsRemoved(id) {
				return fmt.Errorf("manager %s pruned %s early", m.NodeID(), id)
			}
		}
		return nil
	})

	c.clock.Set(t, until.Add(time.Second))
	lcEventually(t, "every manager prunes the expired removal", func() error {
		for _, m := range c.managers {
			if m.State().IsRemoved(id) {
				return fmt.Errorf("manager %s: State().Removed = %v", m.NodeID(), m.State().Removed)
			}
		}
		return nil
	})
	for _, m := range c.managers {
		if _, ok := m.State().Node(id); ok {
			t.Errorf("manager %s: the pruned node %s is a member again", m.NodeID(), id)
		}
	}
}

// TestJoinTokenRotateInvalidatesOld rotates the worker token: the old one
// is refused at once, the new one admits, and a node that joined before
// goes on heartbeating and renewing.
func TestJoinTokenRotateInvalidatesOld(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	m := c.managers[0]
	w, _ := c.addWorker("w0")
	oldWorker := c.token(m, "worker")
	oldManager := c.token(m, "manager")

	resp, err := c.control(m).JoinToken(lcCtx(t), &api.JoinTokenRequest{Role: "worker", Rotate: true})
	if err != nil {
		t.Fatalf("Control.JoinToken(worker, rotate) = %v", err)
	}
	newWorker := resp.GetToken()
	if newWorker == oldWorker {
		t.Fatalf("Control.JoinToken(worker, rotate) returned the old token")
	}
	if got := c.token(m, "worker"); got != newWorker {
		t.Errorf("Control.JoinToken(worker) after the rotation = %s..., want the rotated one", got[:20])
	}
	if got := c.token(m, "manager"); got != oldManager {
		t.Errorf("the manager token changed with a worker rotation")
	}

	c.checkJoinRefused("the rotated-out worker token", oldWorker)
	_, res, err := c.tryJoin(newWorker, m.Addr())
	if err != nil {
		t.Fatalf("join with the new worker token = %v", err)
	}
	if res.Node.Role != ca.RoleWorker {
		t.Errorf("join with the new worker token made a %s, want %s", res.Node.Role, ca.RoleWorker)
	}

	// The worker that joined before is unaffected.
	serial := w.Credentials().Leaf().SerialNumber
	if err := w.Renewer().Renew(lcCtx(t)); err != nil {
		t.Fatalf("Renewer().Renew() of a worker that joined before the rotation = %v", err)
	}
	if w.Credentials().Leaf().SerialNumber.Cmp(serial) == 0 {
		t.Errorf("Renewer().Renew() kept serial %x", serial)
	}
	conn := c.dial(m.Addr(), w.Credentials().ClientTLS(agent.ManagerName))
	if err := lcHeartbeat(lcCtx(t), conn); err != nil {
		t.Errorf("CA.Heartbeat() of a worker that joined before the rotation = %v", err)
	}
}

// createToken creates an extra join token on m.
func (c *lcCluster) createToken(m *manager.Manager, req *api.CreateTokenRequest) *api.CreateTokenResponse {
	c.t.Helper()
	resp, err := c.control(m).CreateToken(lcCtx(c.t), req)
	if err != nil {
		c.t.Fatalf("Control.CreateToken(%v) = %v", req, err)
	}
	return resp
}

// listedToken returns the token id as Control.ListTokens lists it.
func (c *lcCluster) listedToken(m *manager.Manager, id string) (*api.Token, bool) {
	c.t.Helper()
	resp, err := c.control(m).ListTokens(lcCtx(c.t), &api.ListTokensRequest{})
	if err != nil {
		c.t.Fatalf("Control.ListTokens() = %v", err)
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
	c := lcNewCluster(t, 1, 0)
	m := c.managers[0]
	created := c.clock.Now()
	tok := c.createToken(m, &api.CreateTokenRequest{Role: "worker", TtlSeconds: 3600})
	listed, ok := c.listedToken(m, tok.GetId())
	if !ok {
		t.Fatalf("Control.ListTokens() lacks the new token %s", tok.GetId())
	}
	if want := created.Add(time.Hour).Unix(); listed.GetExpiresAt() != want {
		t.Errorf("token expires at %d, want %d", listed.GetExpiresAt(), want)
	}

	c.clock.Set(t, created.Add(time.Hour-time.Second))
	if _, res, err := c.tryJoin(tok.GetToken(), m.Addr()); err != nil {
		t.Fatalf("join a second before the token's TTL = %v", err)
	} else if res.Node.Role != ca.RoleWorker {
		t.Errorf("join with a worker token made a %s", res.Node.Role)
	}

	c.clock.Set(t, created.Add(time.Hour+time.Second))
	c.checkJoinRefused("a token past its TTL", tok.GetToken())
	if _, ok := c.listedToken(m, tok.GetId()); ok {
		t.Errorf("Control.ListTokens() still lists the expired token %s", tok.GetId())
	}
}

// TestTokenUsesOnce: a one-use token admits one join and refuses the next.
func TestTokenUsesOnce(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	m := c.managers[0]
	tok := c.createToken(m, &api.CreateTokenRequest{Role: "worker", Uses: 1})
	if listed, ok := c.listedToken(m, tok.GetId()); !ok || listed.GetUsesLeft() != 1 {
		t.Fatalf("Control.ListTokens() lists %v, want token %s with 1 use left", listed, tok.GetId())
	}
	if _, _, err := c.tryJoin(tok.GetToken(), m.Addr()); err != nil {
		t.Fatalf("first join with a one-use token = %v", err)
	}
	c.checkJoinRefused("a used-up one-use token", tok.GetToken())
	if _, ok := c.listedToken(m, tok.GetId()); ok {
		t.Errorf("Control.ListTokens() still lists the used-up token %s", tok.GetId())
	}
}

// TestTokenRevokedRefused: a revoked token admits no one.
func TestTokenRevokedRefused(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	m := c.managers[0]
	tok := c.createToken(m, &api.CreateTokenRequest{Role: "manager"})
	if _, err := c.control(m).RevokeToken(lcCtx(t), &api.RevokeTokenRequest{Id: tok.GetId()}); err != nil {
		t.Fatalf("Control.RevokeToken(%s) = %v", tok.GetId(), err)
	}
	c.checkJoinRefused("a revoked token", tok.GetToken())
	if _, ok := c.listedToken(m, tok.GetId()); ok {
		t.Errorf("Control.ListTokens() still lists the revoked token %s", tok.GetId())
	}
}

// TestListTokensNeverShowsSecret: the token listing has no field for a
// secret, and carries none of the tokens' secrets.
func TestListTokensNeverShowsSecret(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	m := c.managers[0]
	toks := []*api.CreateTokenResponse{
		c.createToken(m, &api.CreateTokenRequest{Role: "worker", TtlSeconds: 600, Uses: 3}),
		c.createToken(m, &api.CreateTokenRequest{Role: "manager"}),
	}
	resp, err := c.control(m).ListTokens(lcCtx(t), &api.ListTokensRequest{})
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
	c := lcNewCluster(t, 3, 0)
	pair, leaf := c.adminCertificate(c.managers[0], 0)
	id, err := ca.IdentityOf(leaf)
	if err != nil {
		t.Fatalf("ca.IdentityOf(admin certificate) = %v", err)
	}
	if id.Role != ca.RoleAdmin || id.ClusterID != c.managers[0].ClusterID() {
		t.Errorf("admin certificate names %s of %s, want %s of %s", id.Role, id.ClusterID, ca.RoleAdmin, c.managers[0].ClusterID())
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("admin certificate ExtKeyUsage = %v, want client auth only", leaf.ExtKeyUsage)
	}
	if v := leaf.NotAfter.Sub(leaf.NotBefore); v > manager.DefaultAdminCertTTL+lcBackdate {
		t.Errorf("admin certificate validity = %s, want at most %s", v, manager.DefaultAdminCertTTL+lcBackdate)
	}
	if _, ok := c.leader().State().Node(id.NodeID); ok {
		t.Errorf("an admin certificate made %s a node of the cluster", id.NodeID)
	}

	cfg := agent.BundleClientTLS(c.roots(), agent.ManagerName)
	cfg.Certificates = []tls.Certificate{pair}
	for _, m := range c.managers {
		ctl := api.NewControlClient(c.dial(m.Addr(), cfg))
		resp, err := ctl.ListNodes(lcCtx(t), &api.ListNodesRequest{})
		if err != nil {
			t.Errorf("Control.ListNodes() with an admin certificate at %s = %v", m.Addr(), err)
			continue
		}
		if len(resp.GetNodes()) != len(c.managers) {
			t.Errorf("Control.ListNodes() at %s lists %d nodes, want %d", m.Addr(), len(resp.GetNodes()), len(c.managers))
		}
	}
}

// TestManagerAPIRefusesWorkerCertificate: a worker's certificate cannot
// list nodes, nor promote itself.
func TestManagerAPIRefusesWorkerCertificate(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	w, _ := c.addWorker("w0")
	id := w.Credentials().Identity().NodeID
	m := c.managers[0]
	before := c.waitSameState()

	ctl := api.NewControlClient(c.dial(m.Addr(), clientTLS(w.Credentials().Certificate(), c.roots())))
	_, err := ctl.ListNodes(lcCtx(t), &api.ListNodesRequest{})
	lcWantCode(t, "Control.ListNodes() with a worker certificate", err, codes.PermissionDenied)
	_, err = ctl.SetRole(lcCtx(t), &api.SetRoleRequest{NodeId: id, Role: "manager"})
	lcWantCode(t, "Control.SetRole(self, manager) with a worker certificate", err, codes.PermissionDenied)
	_, err = ctl.IssueAdminCertificate(lcCtx(t), &api.IssueAdminCertificateRequest{Csr: newCSR(t)})
	lcWantCode(t, "Control.IssueAdminCertificate() with a worker certificate", err, codes.PermissionDenied)
	_, err = ctl.CreateToken(lcCtx(t), &api.CreateTokenRequest{Role: "manager"})
	lcWantCode(t, "Control.CreateToken(manager) with a worker certificate", err, codes.PermissionDenied)

	c.checkStateUnchanged("calls with a worker certificate", before)
	if n, _ := m.State().Node(id); n.Role != ca.RoleWorker {
		t.Errorf("worker %s is a %s now", id, n.Role)
	}
}

// TestManagerAPIRefusesForeignClusterCertificate: another cluster's admin
// certificate is refused, even by a client that trusts this cluster.
func TestManagerAPIRefusesForeignClusterCertificate(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	foreign := lcNewCluster(t, 1, 0)
	pair, _ := foreign.adminCertificate(foreign.managers[0], 0)
	m := c.managers[0]
	before := c.waitSameState()

	attack := clientTLS(&pair, c.roots())
	if err := lcRefusedAt(t, m.Addr(), attack, "unknown certificate authority", lcListNodes); err != nil {
		t.Errorf("Control.ListNodes() with another cluster's admin certificate: %v", err)
	}
	if err := lcRefusedAt(t, m.Addr(), attack, "unknown certificate authority", func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := api.NewControlClient(conn).JoinToken(ctx, &api.JoinTokenRequest{Role: "manager", Rotate: true})
		return err
	}); err != nil {
		t.Errorf("Control.JoinToken(manager, rotate) with another cluster's admin certificate: %v", err)
	}
	c.checkStateUnchanged("calls with another cluster's certificate", before)
}

// TestManagerAPIRefusesRemovedNodeCertificate: once a manager is removed,
// its manager certificate no longer opens the Control API of the others.
func TestManagerAPIRefusesRemovedNodeCertificate(t *testing.T) {
	c := lcNewCluster(t, 3, 0)
	gone := c.follower()
	id := gone.NodeID()
	var rest []*manager.Manager
	for _, m := range c.managers {
		if m != gone {
			rest = append(rest, m)
		}
	}
	if err := gone.Stop(); err != nil {
		t.Fatalf("Stop() = %v", err)
	}
	creds, err := agent.LoadCredentials(c.cfgs[slices.Index(c.managers, gone)].DataDir)
	if err != nil {
		t.Fatalf("agent.LoadCredentials() = %v", err)
	}
	attack := clientTLS(creds.Certificate(), c.roots())
	// Control: until the removal, its certificate is a manager's.
	for _, m := range rest {
		if err := lcListNodes(lcCtx(t), c.dial(m.Addr(), attack)); err != nil {
			t.Fatalf("control: Control.ListNodes() at %s with the manager's certificate before its removal = %v", m.Addr(), err)
		}
	}

	if _, err := c.control(rest[0]).RemoveNode(lcCtx(t), &api.RemoveNodeRequest{NodeId: id, Force: true}); err != nil {
		t.Fatalf("Control.RemoveNode(stopped manager, force) = %v", err)
	}
	for _, m := range rest {
		lcEventually(t, "manager "+m.NodeID()+" refuses the removed manager's certificate", func() error {
			if err := lcRefusedAt(t, m.Addr(), attack, "bad certificate", lcListNodes); err != nil {
				return fmt.Errorf("Control.ListNodes(): %w", err)
			}
			if err := lcRefusedAt(t, m.Addr(), attack, "bad certificate", func(ctx context.Context, conn *grpc.ClientConn) error {
				_, err := api.NewControlClient(conn).CreateToken(ctx, &api.CreateTokenRequest{Role: "manager"})
				return err
			}); err != nil {
				return fmt.Errorf("Control.CreateToken(): %w", err)
			}
			return nil
		})
	}
	c.waitVoters(rest, []string{rest[0].NodeID(), rest[1].NodeID()})
	if n := len(c.leader().State().Tokens); n != 0 {
		t.Errorf("State().Tokens has %d tokens, want none made by the removed manager", n)
	}
}

// TestManagerAPIRefusesExpiredCertificate: an admin certificate of this
// cluster that has expired is refused at the handshake. The managers'
// TLS checks validity against the real clock, so the test signs, with the
// cluster's own CA, a certificate that expired two hours ago.
func TestManagerAPIRefusesExpiredCertificate(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	m := c.managers[0]
	signer, err := ca.NewSigner(m.State().CA)
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
		id := ca.Identity{NodeID: nodeID, Role: ca.RoleAdmin, ClusterID: m.ClusterID()}
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
	valid, _ := c.adminCertificate(m, time.Hour)
	if err := lcListNodes(lcCtx(t), c.dial(m.Addr(), clientTLS(&valid, c.roots()))); err != nil {
		t.Fatalf("control: Control.ListNodes() with a valid admin certificate = %v", err)
	}
	before := c.waitSameState()
	expired := sign(time.Now().Add(-3 * time.Hour))
	if !expired.Leaf.NotAfter.Before(time.Now()) {
		t.Fatalf("certificate NotAfter %s, want in the past", expired.Leaf.NotAfter)
	}
	attack := clientTLS(expired, c.roots())
	if err := lcRefusedAt(t, m.Addr(), attack, "expired certificate", lcListNodes); err != nil {
		t.Errorf("Control.ListNodes() with an expired admin certificate: %v", err)
	}
	if err := lcRefusedAt(t, m.Addr(), attack, "expired certificate", func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := api.NewControlClient(conn).CreateToken(ctx, &api.CreateTokenRequest{Role: "manager"})
		return err
	}); err != nil {
		t.Errorf("Control.CreateToken() with an expired admin certificate: %v", err)
	}
	c.checkStateUnchanged("calls with an expired certificate", before)
}

// TestBadLifecycleInputChangesNothing: bad arguments to the lifecycle
// calls get the code that says so, and change nothing.
func TestBadLifecycleInputChangesNothing(t *testing.T) {
	c := lcNewCluster(t, 1, 0)
	w, _ := c.addWorker("w0")
	id := w.Credentials().Identity().NodeID
	m := c.managers[0]
	ctl := c.control(m)
	unknown, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	before := c.waitSameState()

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
		lcWantCode(t, "Control."+tc.call, tc.do(lcCtx(t)), tc.want)
	}
	c.checkStateUnchanged("bad lifecycle input", before)
}
