// Package integration holds quorumca's multi-node tests: real managers with
// real Raft (bolt stores in temporary directories), real gRPC over real TLS
// on 127.0.0.1 ephemeral ports, all in one process.
//
// QUORUMCA_TEST_LOG=1 sends the daemons' logs to stderr.
package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/membership"
)

// Test timings. Raft's are hashicorp/raft's defaults (the product's too):
// shorter ones made leaders step down spuriously when `go test ./...` runs
// other packages' tests beside these on two cores, under -race.
const (
	testHeartbeat = time.Second
	testElection  = time.Second
	testLease     = 500 * time.Millisecond
	testApply     = 3 * time.Second
	// waitFor bounds every poll for something to happen.
	waitFor = 20 * time.Second
	// pollEvery is the pause between two looks at a polled condition.
	pollEvery = 20 * time.Millisecond
)

// testLogger discards the daemons' logs unless QUORUMCA_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("QUORUMCA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// eventually polls cond until it returns nil, and fails the test with
// cond's last error if it has not within timeout.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(pollEvery)
	}
}

// shortDir returns a fresh directory with a short path, for Unix sockets
// (whose paths must stay under 108 bytes, which t.TempDir() may not).
func shortDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "qca")
	if err != nil {
		tb.Fatalf("MkdirTemp() = %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// node is one manager of a test cluster, running or stopped.
type node struct {
	cfg manager.Config
	m   *manager.Manager // nil while stopped
	// id, addr and raftAddr are recorded when the manager first starts,
	// so that a restart can reuse them.
	id, addr, raftAddr string
}

// cluster is a running test cluster of managers.
type cluster struct {
	tb       testing.TB
	sockDir  string
	managers []*node
	// tokens, as the first manager gave them.
	workerToken, managerToken string
	clusterID                 string
	bundle                    []byte
}

// managerConfig returns a manager configuration with its own data
// directory, ephemeral loopback ports, a short socket path and fast Raft
// timings.
func managerConfig(tb testing.TB, sockDir, name string) manager.Config {
	return manager.Config{
		DataDir:            tb.TempDir(),
		ListenAddr:         "127.0.0.1:0",
		RaftListenAddr:     "127.0.0.1:0",
		GossipAddr:         "127.0.0.1:0",
		GossipTiming:       membership.Fast,
		SocketPath:         filepath.Join(sockDir, name+".sock"),
		Logger:             testLogger(),
		HeartbeatTimeout:   testHeartbeat,
		ElectionTimeout:    testElection,
		LeaderLeaseTimeout: testLease,
		ApplyTimeout:       testApply,
	}
}

// newCluster inits a cluster and joins managers-1 more managers through
// the first, then waits until every manager sees them all as voters. The
// managers are stopped when the test ends.
func newCluster(tb testing.TB, managers int) *cluster {
	tb.Helper()
	// The first TempDir registers the removal of every temp dir of the
	// test; it must come before stopAll so that cleanups, which run last
	// first, stop the managers before their data dirs go.
	tb.TempDir()
	c := &cluster{tb: tb, sockDir: shortDir(tb)}
	tb.Cleanup(c.stopAll)

	cfg := managerConfig(tb, c.sockDir, "m0")
	m, err := manager.Init(tb.Context(), cfg, manager.InitOptions{})
	if err != nil {
		tb.Fatalf("manager.Init() = %v", err)
	}
	c.add(cfg, m)
	c.clusterID = m.ClusterID()
	c.bundle = m.Credentials().Bundle()
	c.workerToken = c.token(0, "worker")
	c.managerToken = c.token(0, "manager")

	for i := 1; i < managers; i++ {
		cfg := managerConfig(tb, c.sockDir, fmt.Sprintf("m%d", i))
		m, w, err := manager.Join(tb.Context(), cfg, c.managerToken, c.managers[0].addr)
		if err != nil {
			tb.Fatalf("manager.Join(manager token, %s) = %v", c.managers[0].addr, err)
		}
		if m == nil {
			w.Stop()
			tb.Fatalf("manager.Join(manager token) returned a worker, want a manager")
		}
		c.add(cfg, m)
	}
	c.waitVoters(managers)
	c.waitConverged()
	return c
}

func (c *cluster) add(cfg manager.Config, m *manager.Manager) {
	c.managers = append(c.managers, &node{cfg: cfg, m: m, id: m.NodeID(), addr: m.Addr(), raftAddr: m.RaftAddr()})
}

// stopAll stops every running manager.
func (c *cluster) stopAll() {
	for i := range c.managers {
		c.stop(i)
	}
}

// stop stops manager i if it runs.
func (c *cluster) stop(i int) {
	n := c.managers[i]
	if n.m == nil {
		return
	}
	if err := n.m.Stop(); err != nil {
		c.tb.Errorf("manager %d: Stop() = %v", i, err)
	}
	n.m = nil
}

// restart starts the stopped manager i again from its data directory, on
// the addresses it had.
func (c *cluster) restart(i int) *manager.Manager {
	c.tb.Helper()
	n := c.managers[i]
	cfg := n.cfg
	cfg.ListenAddr, cfg.RaftListenAddr = n.addr, n.raftAddr
	m, err := manager.Start(c.tb.Context(), cfg)
	if err != nil {
		c.tb.Fatalf("manager.Start(%s) = %v", cfg.DataDir, err)
	}
	n.m = m
	return m
}

// running returns the indexes of the running managers.
func (c *cluster) running() []int {
	var out []int
	for i, n := range c.managers {
		if n.m != nil {
			out = append(out, i)
		}
	}
	return out
}

// m returns running manager i.
func (c *cluster) m(i int) *manager.Manager {
	c.tb.Helper()
	if c.managers[i].m == nil {
		c.tb.Fatalf("manager %d is stopped", i)
	}
	return c.managers[i].m
}

// leader waits until exactly one running manager is the leader and
// returns its index.
func (c *cluster) leader() int {
	c.tb.Helper()
	leader := -1
	eventually(c.tb, waitFor, "one leader among the running managers", func() error {
		var leaders []int
		for _, i := range c.running() {
			if c.managers[i].m.IsLeader() {
				leaders = append(leaders, i)
			}
		}
		if len(leaders) != 1 {
			return fmt.Errorf("leaders = %v", leaders)
		}
		leader = leaders[0]
		return nil
	})
	return leader
}

// follower returns the index of a running manager that is not the leader.
func (c *cluster) follower() int {
	c.tb.Helper()
	l := c.leader()
	for _, i := range c.running() {
		if i != l {
			return i
		}
	}
	c.tb.Fatalf("no running follower")
	return -1
}

// control opens the control socket of manager i: admin access.
func (c *cluster) control(i int) api.ControlClient {
	c.tb.Helper()
	return controlAt(c.tb, c.managers[i].cfg.SocketPath)
}

// controlAt opens a control socket; the connection is closed when the test
// ends.
func controlAt(tb testing.TB, sock string) api.ControlClient {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("grpc.NewClient(unix://%s) = %v", sock, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return api.NewControlClient(conn)
}

// token returns a role's join token from manager i's control socket.
func (c *cluster) token(i int, role string) string {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(c.tb.Context(), waitFor)
	defer cancel()
	resp, err := c.control(i).JoinToken(ctx, &api.JoinTokenRequest{Role: role})
	if err != nil {
		c.tb.Fatalf("Control.JoinToken(%s) on manager %d = %v", role, i, err)
	}
	return resp.GetToken()
}

// status returns Control.Status from manager i's control socket.
func (c *cluster) status(i int) (*api.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(c.tb.Context(), 10*time.Second)
	defer cancel()
	return c.control(i).Status(ctx, &api.StatusRequest{})
}

// raftMember is one Raft server as Control.Status lists it (without who
// leads, which may change at any time).
type raftMember struct {
	ID, RaftAddr string
	Voter        bool
}

// members returns the sorted Raft configuration of a Status answer.
func members(st *api.StatusResponse) []raftMember {
	var out []raftMember
	for _, m := range st.GetManagers() {
		out = append(out, raftMember{ID: m.GetNodeId(), RaftAddr: m.GetRaftAddr(), Voter: m.GetVoter()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// voterIDs returns the sorted node IDs of the voters of a Status answer.
func voterIDs(st *api.StatusResponse) []string {
	var out []string
	for _, m := range st.GetManagers() {
		if m.GetVoter() {
			out = append(out, m.GetNodeId())
		}
	}
	sort.Strings(out)
	return out
}

// waitVoters waits until every running manager's Control.Status lists
// exactly the given number of voters, one of them the leader, and all agree
// on who leads.
func (c *cluster) waitVoters(want int) {
	c.tb.Helper()
	eventually(c.tb, waitFor, fmt.Sprintf("%d voters and one agreed leader on every manager", want), func() error {
		leader := ""
		for _, i := range c.running() {
			st, err := c.status(i)
			if err != nil {
				return fmt.Errorf("manager %d: Status() = %v", i, err)
			}
			voters, leaders := 0, 0
			for _, m := range st.GetManagers() {
				if m.GetVoter() {
					voters++
				}
				if m.GetLeader() {
					leaders++
				}
			}
			if voters != want || leaders != 1 {
				return fmt.Errorf("manager %d: %d voters, %d leaders; want %d and 1", i, voters, leaders, want)
			}
			if leader == "" {
				leader = st.GetLeaderId()
			}
			if st.GetLeaderId() != leader {
				return fmt.Errorf("manager %d: leader %s, another manager says %s", i, st.GetLeaderId(), leader)
			}
		}
		return nil
	})
}

// nodeIDs returns the sorted node IDs of a state.
func nodeIDs(st *fsm.State) []string {
	ids := make([]string, 0, st.Nodes.Len())
	for id := range st.Nodes.All() {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// waitConverged waits until every running manager has applied the same
// nodes as the leader, and returns them.
func (c *cluster) waitConverged() []string {
	c.tb.Helper()
	var want []string
	eventually(c.tb, waitFor, "every manager has the leader's nodes", func() error {
		want = nodeIDs(c.m(c.leader()).State())
		for _, i := range c.running() {
			if got := nodeIDs(c.managers[i].m.State()); !slices.Equal(got, want) {
				return fmt.Errorf("manager %d has nodes %v, the leader %v", i, got, want)
			}
		}
		return nil
	})
	return want
}

// checkNodesUnchanged fails the test unless every running manager's state
// holds exactly the nodes want: nothing was written.
func (c *cluster) checkNodesUnchanged(tb testing.TB, want []string) {
	tb.Helper()
	for _, i := range c.running() {
		if got := nodeIDs(c.managers[i].m.State()); !slices.Equal(got, want) {
			tb.Errorf("manager %d: State().Nodes = %v, want unchanged %v", i, got, want)
		}
	}
}

// joinWorker joins a worker (no daemon) through the manager at via, into a
// fresh data directory, and returns the result and the directory.
func (c *cluster) joinWorker(via string) (agent.JoinResult, string) {
	c.tb.Helper()
	dir := c.tb.TempDir()
	res, err := agent.Join(c.tb.Context(), agent.JoinConfig{DataDir: dir, Token: c.workerToken, Remote: via, Logger: testLogger()})
	if err != nil {
		c.tb.Fatalf("agent.Join(worker token, %s) = %v", via, err)
	}
	return res, dir
}

// roots returns the cluster's trust bundle as a pool.
func (c *cluster) roots() *x509.CertPool {
	c.tb.Helper()
	pool, _, err := ca.ParseBundle(c.bundle)
	if err != nil {
		c.tb.Fatalf("ParseBundle() = %v", err)
	}
	return pool
}

// clientTLS is a client configuration that trusts roots, verifies a
// manager, and presents cert (none if nil) whatever the server asks for:
// what an attacker holding cert would use. (With tls.Config.Certificates,
// crypto/tls would withhold a certificate whose issuer the server does not
// list as acceptable, and the server's own check would go untested.)
func clientTLS(cert *tls.Certificate, roots *x509.CertPool) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: agent.ManagerName}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

// dialAPI opens a gRPC connection to a manager's API with cfg; it is closed
// when the test ends.
func dialAPI(tb testing.TB, addr string, cfg *tls.Config) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		tb.Fatalf("grpc.NewClient(%s) = %v", addr, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// newCSR returns a CSR for a fresh key.
func newCSR(tb testing.TB) []byte {
	tb.Helper()
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatalf("GenerateKey() = %v", err)
	}
	csr, err := ca.NewCSR(rand.Reader, key, "")
	if err != nil {
		tb.Fatalf("NewCSR() = %v", err)
	}
	return csr
}

// checkGoroutines waits until the number of goroutines is back to at most
// baseline+slack, and fails with a dump of them if it does not come back
// within a bounded time. Call it once every node is stopped.
func checkGoroutines(tb testing.TB, baseline int) {
	tb.Helper()
	// gRPC and HTTP/2 wind down a few goroutines of their own after Close
	// returns; they go within a second or so.
	const slack = 0
	deadline := time.Now().Add(15 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= baseline+slack {
			return
		}
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&buf, 1)
			tb.Errorf("runtime.NumGoroutine() = %d after every node stopped, want at most %d (baseline %d + %d); goroutines:\n%s",
				n, baseline+slack, baseline, slack, buf.String())
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hashTree returns, for every entry under dir, its mode and (for regular
// files) the SHA-256 of its content.
func hashTree(tb testing.TB, dir string) map[string]string {
	tb.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		v := info.Mode().String()
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			v += " " + hex.EncodeToString(sum[:])
		}
		out[rel] = v
		return nil
	})
	if err != nil {
		tb.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

// dirEntries returns the names in dir.
func dirEntries(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		tb.Fatalf("ReadDir(%s) = %v", dir, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// stateJSON encodes a state without its Raft index, to compare states.
func stateJSON(tb testing.TB, st *fsm.State) string {
	tb.Helper()
	cp := *st
	cp.Index = 0
	b, err := json.Marshal(&cp)
	if err != nil {
		tb.Fatalf("json.Marshal(state) = %v", err)
	}
	return string(b)
}

// proxy relays TCP connections to a target and counts them: it tells how
// many connections a client opened to a manager.
type proxy struct {
	ln       net.Listener
	target   string
	accepted atomic.Int64

	mu    sync.Mutex // guards conns
	conns []net.Conn
	wg    sync.WaitGroup
}

// newProxy relays 127.0.0.1:<ephemeral> to target until the test ends.
func newProxy(tb testing.TB, target string) *proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("net.Listen() = %v", err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.acceptLoop()
	tb.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// joinRequest is the join request a node makes for csr with token over
// conn: a proof of the token bound to conn's TLS connection, as
// agent.Enroll makes it. It calls GetRootBundle first, to learn the
// connection.
func joinRequest(tb testing.TB, conn *grpc.ClientConn, token string, csr []byte) *api.IssueNodeCertificateRequest {
	tb.Helper()
	tok, err := ca.ParseToken(token)
	if err != nil {
		tb.Fatalf("ca.ParseToken() = %v", err)
	}
	var p peer.Peer
	ctx, cancel := context.WithTimeout(tb.Context(), waitFor)
	defer cancel()
	if _, err := api.NewCAClient(conn).GetRootBundle(ctx, &api.GetRootBundleRequest{}, grpc.Peer(&p)); err != nil {
		tb.Fatalf("GetRootBundle() = %v", err)
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		tb.Fatalf("GetRootBundle() came over %T, not TLS", p.AuthInfo)
	}
	ekm, err := ti.State.ExportKeyingMaterial(ca.TokenExporterLabel, nil, ca.TokenExporterLength)
	if err != nil {
		tb.Fatalf("ExportKeyingMaterial() = %v", err)
	}
	return &api.IssueNodeCertificateRequest{
		Csr: csr, TokenProof: ca.TokenProof(sha256.Sum256([]byte(tok.Secret)), ekm, csr), TokenDigest: tok.DigestString(),
	}
}

// containsAny reports whether s contains any of subs, ignoring case.
func containsAny(s string, subs ...string) bool {
	s = strings.ToLower(s)
	for _, sub := range subs {
		if strings.Contains(s, strings.ToLower(sub)) {
			return true
		}
	}
	return false
}
