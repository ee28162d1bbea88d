// Package clustertest runs quorumca clusters inside a test's process, each
// node started by node.Start as `quorumca run` starts one: real Raft on
// bolt stores in temporary directories, real gRPC over mutual TLS on
// 127.0.0.1, listeners on port 0 that the daemons open and keep, real
// memberlist, testkit's timings and, if asked, one fake clock. A node
// switches between manager and worker by itself when the cluster promotes
// or demotes it. Everything a cluster starts is stopped, and every
// connection it opened closed, when the test ends.
package clustertest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/membership"
	"github.com/quorumca/quorumca/node"
)

// Options shape a cluster.
type Options struct {
	// Managers is how many managers New starts (at least one); Workers
	// how many worker daemons join after them.
	Managers, Workers int
	// Init is what the first manager creates the cluster with: a cert
	// expiry, an imported CA, external CAs.
	Init manager.InitOptions
	// Clock, when set, is the clock of every node (see
	// testkit.NewClusterClock); nil: the real one.
	Clock *testkit.Clock
	// Grace, when set, is the rotation grace, set once the managers run.
	Grace time.Duration
	// Configure, when set, changes the configuration of each node the
	// cluster starts, named name ("m0", "w1", ...): other timings, a
	// logger, where tokens are published.
	Configure func(name string, cfg *node.Config)
	// GossipBound bounds the wait for every worker to see every node in
	// gossip (default testkit.Wait).
	GossipBound time.Duration
}

// Cluster is a running test cluster.
type Cluster struct {
	tb            testing.TB
	opts          Options
	root, sockDir string

	// Clock is Options.Clock.
	Clock *testkit.Clock
	// Managers and Workers are the nodes New and AddManager, AddWorker
	// started, by the role they joined with.
	Managers, Workers []*Node
	// ClusterID and Bundle (the root bundle at init) are the cluster's;
	// WorkerToken and ManagerToken the join tokens the first manager gave
	// at init (tests that rotate them set them anew).
	ClusterID                 string
	Bundle                    []byte
	WorkerToken, ManagerToken string

	mu        sync.Mutex // guards the fields below
	nodes     []*Node    // every node started, in order
	conns     []*grpc.ClientConn
	sockConns map[string]*grpc.ClientConn
}

// New inits a cluster, joins Managers-1 more managers with the manager
// token (each a voter before the next joins), sets the grace, joins the
// workers with the worker token, and waits until every manager lists the
// managers as voters and agrees on a leader and on the nodes, and every
// worker sees every node in gossip.
func New(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	// Directories first: cleanups run last-registered first, and the
	// directories must go after the nodes have stopped.
	c := &Cluster{tb: tb, opts: opts, root: tb.TempDir(), sockDir: testkit.ShortDir(tb), Clock: opts.Clock}
	tb.Cleanup(c.StopAll)
	init := opts.Init
	first, err := c.start("m0", &init, nil)
	if err != nil {
		tb.Fatalf("node.Start(init) = %v", err)
	}
	c.Managers = append(c.Managers, first)
	m := first.Manager()
	c.ClusterID, c.Bundle = m.ClusterID(), m.Credentials().Bundle()
	c.WorkerToken, c.ManagerToken = c.Token(first, "worker"), c.Token(first, "manager")
	for i := 1; i < max(opts.Managers, 1); i++ {
		c.AddManager(fmt.Sprintf("m%d", i))
	}
	c.WaitVoters()
	if opts.Grace > 0 {
		c.SetGrace(opts.Grace)
	}
	for i := range opts.Workers {
		c.AddWorker(fmt.Sprintf("w%d", i))
	}
	c.WaitConverged()
	bound := opts.GossipBound
	if bound == 0 {
		bound = testkit.Wait
	}
	c.WaitGossip(bound)
	return c
}

// Config returns the configuration of a node with its own data directory
// under a temporary directory and its control socket under a short one,
// listening on 127.0.0.1 port 0, with testkit's timings and logger: for a
// node a test starts by itself.
func Config(tb testing.TB, name string) node.Config {
	tb.Helper()
	return baseConfig(filepath.Join(tb.TempDir(), name), filepath.Join(testkit.ShortDir(tb), name+".sock"), nil)
}

func baseConfig(dataDir, sock string, clock *testkit.Clock) node.Config {
	cfg := node.Config{
		DataDir:    dataDir,
		SocketPath: sock,
		Logger:     testkit.Logger(),
		// Port 0, as an override of what node.json records: a node that
		// switches role listens on fresh ports, and records them.
		ListenAddr: "127.0.0.1:0",
		RaftAddr:   "127.0.0.1:0",
		GossipAddr: "127.0.0.1:0",
		Manager: manager.Config{
			HeartbeatTimeout:   testkit.RaftHeartbeat,
			ElectionTimeout:    testkit.RaftElection,
			LeaderLeaseTimeout: testkit.RaftLease,
			ApplyTimeout:       testkit.ApplyTimeout,
			HeartbeatPeriod:    testkit.HeartbeatPeriod,
			ReconcilePeriod:    testkit.ReconcilePeriod,
			RotationJitter:     testkit.RotationJitter,
			ExternalTimeout:    testkit.ClusterExternalTimeout,
			GossipTiming:       membership.Fast,
		},
	}
	if clock != nil {
		cfg.Manager.Now = clock.Now
	}
	return cfg
}

// config returns the configuration of the node named name.
func (c *Cluster) config(name string) node.Config {
	cfg := baseConfig(filepath.Join(c.root, name), filepath.Join(c.sockDir, name+".sock"), c.Clock)
	if c.opts.Configure != nil {
		c.opts.Configure(name, &cfg)
	}
	return cfg
}

// start starts the node named name: it inits the cluster with init, or
// joins it with join, or runs what its data directory holds.
func (c *Cluster) start(name string, init *manager.InitOptions, join *node.Join) (*Node, error) {
	cfg := c.config(name)
	cfg.Init, cfg.Join = init, join
	n := &Node{c: c, Name: name, Dir: cfg.DataDir, Socket: cfg.SocketPath, cfg: cfg}
	if err := n.run(cfg); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n, nil
}

// NodeConfig returns the configuration the cluster gives the node named
// name: for a test that prepares its data directory (a restore) before
// StartPrepared runs it.
func (c *Cluster) NodeConfig(name string) node.Config { return c.config(name) }

// StartPrepared runs the node named name from the data directory the test
// prepared (NodeConfig(name).DataDir), and counts it among the cluster's
// managers when it runs one.
func (c *Cluster) StartPrepared(name string) *Node {
	c.tb.Helper()
	n, err := c.start(name, nil, nil)
	if err != nil {
		c.tb.Fatalf("node.Start(%s, prepared) = %v", name, err)
	}
	if n.Node().Manager() != nil {
		c.Managers = append(c.Managers, n)
	}
	return n
}

// Join starts a node named name that joins the cluster as j says (Addr
// "": through the first running manager), and returns the error of
// node.Start: for tests of a join that must fail. The node is stopped
// when the test ends.
func (c *Cluster) Join(name string, j node.Join) (*Node, error) {
	c.tb.Helper()
	if j.Addr == "" {
		j.Addr = c.Via()
	}
	return c.start(name, nil, &j)
}

// AddManager joins a manager named name with the manager token, waits
// until every manager lists it as a voter, and returns it.
func (c *Cluster) AddManager(name string) *Node {
	c.tb.Helper()
	n, err := c.Join(name, node.Join{Token: c.ManagerToken})
	if err != nil {
		c.tb.Fatalf("node.Start(join %s with the manager token) = %v", name, err)
	}
	if n.Node().Manager() == nil {
		c.tb.Fatalf("node %s joined with the manager token runs no manager", name)
	}
	c.Managers = append(c.Managers, n)
	// Let each new voter settle before the next join: a two-voter cluster
	// with a voter still catching up is the easiest to lose its leader.
	c.WaitVoters()
	return n
}

// AddWorker joins a worker daemon named name with the worker token, the
// way `quorumca join` does, and returns it.
func (c *Cluster) AddWorker(name string) *Node {
	c.tb.Helper()
	n, err := c.Join(name, node.Join{Token: c.WorkerToken})
	if err != nil {
		c.tb.Fatalf("node.Start(join %s with the worker token) = %v", name, err)
	}
	if n.Node().Worker() == nil {
		c.tb.Fatalf("node %s joined with the worker token runs no worker", name)
	}
	c.Workers = append(c.Workers, n)
	return n
}

// StopAll closes the test's connections, then stops every node, the last
// started first.
func (c *Cluster) StopAll() {
	c.mu.Lock()
	nodes, conns := c.nodes, c.conns
	c.conns, c.sockConns = nil, nil
	c.mu.Unlock()
	for _, conn := range conns {
		conn.Close()
	}
	for _, n := range slices.Backward(nodes) {
		n.Stop()
	}
}

// Nodes returns every node the cluster started, in order.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// RunningManagers returns the nodes that run a manager now, in the order
// they started.
func (c *Cluster) RunningManagers() []*Node {
	var out []*Node
	for _, n := range c.Nodes() {
		if nn := n.Node(); nn != nil && nn.Manager() != nil {
			out = append(out, n)
		}
	}
	return out
}

// RunningWorkers returns the nodes that run a worker now.
func (c *Cluster) RunningWorkers() []*Node {
	var out []*Node
	for _, n := range c.Nodes() {
		if nn := n.Node(); nn != nil && nn.Worker() != nil {
			out = append(out, n)
		}
	}
	return out
}

// Via returns the API address of the first running manager, to join or
// call through.
func (c *Cluster) Via() string {
	c.tb.Helper()
	run := c.RunningManagers()
	if len(run) == 0 {
		c.tb.Fatalf("no running manager")
	}
	return run[0].Manager().Addr()
}

// Leader waits until exactly one running manager leads, and returns it.
func (c *Cluster) Leader() *Node {
	c.tb.Helper()
	var leader *Node
	testkit.Eventually(c.tb, "one leader among the running managers", func() error {
		var leaders []string
		for _, n := range c.RunningManagers() {
			if m := n.Node().Manager(); m != nil && m.IsLeader() {
				leader = n
				leaders = append(leaders, n.Name)
			}
		}
		if len(leaders) != 1 {
			return fmt.Errorf("leaders = %v", leaders)
		}
		return nil
	})
	return leader
}

// Follower returns a running manager that does not lead.
func (c *Cluster) Follower() *Node {
	c.tb.Helper()
	l := c.Leader()
	for _, n := range c.RunningManagers() {
		if n != l {
			return n
		}
	}
	c.tb.Fatalf("no running follower")
	return nil
}

// Token returns a role's join token from n's control socket.
func (c *Cluster) Token(n *Node, role string) string {
	c.tb.Helper()
	resp, err := n.Control().JoinToken(testkit.Ctx(c.tb), &api.JoinTokenRequest{Role: role})
	if err != nil {
		c.tb.Fatalf("Control.JoinToken(%s) on %s = %v", role, n.Name, err)
	}
	return resp.GetToken()
}

// VoterIDs returns the sorted node IDs of the voters of a Status answer.
func VoterIDs(st *api.StatusResponse) []string {
	var out []string
	for _, m := range st.GetManagers() {
		if m.GetVoter() {
			out = append(out, m.GetNodeId())
		}
	}
	sort.Strings(out)
	return out
}

// WaitVoters waits until every running manager's Control.Status lists
// exactly the voters ids (node IDs; none given: the running managers), and
// all name the same leader, one of them.
func (c *Cluster) WaitVoters(ids ...string) {
	c.tb.Helper()
	want := slices.Sorted(slices.Values(ids))
	explicit := len(ids) > 0
	testkit.Eventually(c.tb, "the voters and one agreed leader on every manager", func() error {
		run := c.RunningManagers()
		if !explicit {
			want = nil
			for _, n := range run {
				want = append(want, n.ID())
			}
			slices.Sort(want)
		}
		leader := ""
		for _, n := range run {
			st, err := n.Status()
			if err != nil {
				return fmt.Errorf("manager %s: Control.Status() = %v", n.Name, err)
			}
			if got := VoterIDs(st); !slices.Equal(got, want) {
				return fmt.Errorf("manager %s: voters %v, want %v", n.Name, got, want)
			}
			if l := st.GetLeaderId(); l == "" || !slices.Contains(want, l) {
				return fmt.Errorf("manager %s: leader %q", n.Name, l)
			}
			if leader != "" && st.GetLeaderId() != leader {
				return fmt.Errorf("managers disagree on the leader: %s and %s", leader, st.GetLeaderId())
			}
			leader = st.GetLeaderId()
		}
		return nil
	})
}

// NodeIDs returns the sorted node IDs of a state.
func NodeIDs(st *fsm.State) []string {
	ids := make([]string, 0, st.Nodes.Len())
	for id := range st.Nodes.All() {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// WaitConverged waits until every running manager has applied the same
// nodes as the leader, and returns them.
func (c *Cluster) WaitConverged() []string {
	c.tb.Helper()
	var want []string
	testkit.Eventually(c.tb, "every manager has the leader's nodes", func() error {
		want = NodeIDs(c.Leader().Manager().State())
		for _, n := range c.RunningManagers() {
			if got := NodeIDs(n.Manager().State()); !slices.Equal(got, want) {
				return fmt.Errorf("manager %s has nodes %v, the leader %v", n.Name, got, want)
			}
		}
		return nil
	})
	return want
}

// CheckNodesUnchanged fails the test unless every running manager's state
// holds exactly the nodes want: nothing was written.
func (c *Cluster) CheckNodesUnchanged(tb testing.TB, want []string) {
	tb.Helper()
	for _, n := range c.RunningManagers() {
		if got := NodeIDs(n.Manager().State()); !slices.Equal(got, want) {
			tb.Errorf("manager %s: State().Nodes = %v, want unchanged %v", n.Name, got, want)
		}
	}
}

// StateJSON encodes a state without its Raft index and CRL set, to
// compare states.
func StateJSON(tb testing.TB, st *fsm.State) string {
	tb.Helper()
	cp := *st
	cp.Index = 0
	// The CRL set is the leader's signed publication of the revocations
	// the state holds anyway; the leader signs a new one on its own
	// schedule (after a removal, say), which no test waits for.
	cp.CRLs = nil
	b, err := json.Marshal(&cp)
	if err != nil {
		tb.Fatalf("json.Marshal(state) = %v", err)
	}
	return string(b)
}

// WaitSameState waits until every running manager has applied the same
// state, and returns it (as StateJSON writes it).
func (c *Cluster) WaitSameState() string {
	c.tb.Helper()
	var want string
	testkit.Eventually(c.tb, "every manager has applied the same state", func() error {
		run := c.RunningManagers()
		want = StateJSON(c.tb, run[0].Manager().State())
		for _, n := range run[1:] {
			if got := StateJSON(c.tb, n.Manager().State()); got != want {
				return fmt.Errorf("manager %s: %s", n.Name, Diff(got, want))
			}
		}
		return nil
	})
	return want
}

// CheckStateUnchanged fails unless every running manager's state is want
// (as StateJSON writes it).
func (c *Cluster) CheckStateUnchanged(tb testing.TB, what, want string) {
	tb.Helper()
	for _, n := range c.RunningManagers() {
		if got := StateJSON(tb, n.Manager().State()); got != want {
			tb.Errorf("after %s, manager %s's state changed: %s", what, n.Name, Diff(got, want))
		}
	}
}

// Diff shows where two encoded states first differ.
func Diff(got, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := max(0, i-80)
	return fmt.Sprintf("at byte %d: got ...%s..., want ...%s...", i, got[from:min(len(got), i+80)], want[from:min(len(want), i+80)])
}

// WaitGossip waits, at most bound, until every worker daemon sees every
// other node in gossip, so that a rotation starts with every node in it.
// (A join that memberlist's broadcasts miss arrives with its next
// push/pull: 5s with fast timing, 30s on LAN timing.)
func (c *Cluster) WaitGossip(bound time.Duration) {
	c.tb.Helper()
	testkit.EventuallyWithin(c.tb, bound, "every worker sees every node in gossip", func() error {
		workers := c.RunningWorkers()
		want := len(c.RunningManagers()) + len(workers) - 1
		for _, n := range workers {
			mem := n.Worker().Gossip().Member()
			if mem == nil {
				return fmt.Errorf("worker %s: gossip not started", n.Name)
			}
			if got := mem.NumPeers(); got != want {
				return fmt.Errorf("worker %s sees %d peers, want %d", n.Name, got, want)
			}
		}
		return nil
	})
}

// NodeCreds returns the credentials of every running daemon, managers and
// workers, by node ID.
func (c *Cluster) NodeCreds() map[string]*agent.Credentials {
	out := map[string]*agent.Credentials{}
	for _, n := range c.Nodes() {
		if creds := n.creds(); creds != nil {
			out[n.ID()] = creds
		}
	}
	return out
}

// Roots returns the cluster's root bundle at init as a pool.
func (c *Cluster) Roots() *x509.CertPool {
	c.tb.Helper()
	pool, _, err := ca.ParseBundle(c.Bundle)
	if err != nil {
		c.tb.Fatalf("ca.ParseBundle() = %v", err)
	}
	return pool
}

// Dial opens a gRPC connection to addr over TLS with cfg; StopAll closes
// it.
func (c *Cluster) Dial(addr string, cfg *tls.Config) *grpc.ClientConn {
	c.tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		c.tb.Fatalf("grpc.NewClient(%s) = %v", addr, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conns = append(c.conns, conn)
	return conn
}

// control returns a client of the control socket sock, on one connection
// per socket that StopAll closes.
func (c *Cluster) control(sock string) api.ControlClient {
	c.tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	conn, ok := c.sockConns[sock]
	if !ok {
		var err error
		conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.tb.Fatalf("grpc.NewClient(unix://%s) = %v", sock, err)
		}
		if c.sockConns == nil {
			c.sockConns = map[string]*grpc.ClientConn{}
		}
		c.sockConns[sock] = conn
		c.conns = append(c.conns, conn)
	}
	return api.NewControlClient(conn)
}

// TryJoin joins with token through the manager at via into a fresh data
// directory, without a daemon, and returns the directory, the result and
// the error.
func (c *Cluster) TryJoin(token, via string) (string, agent.JoinResult, error) {
	c.tb.Helper()
	dir, err := os.MkdirTemp(c.root, "join")
	if err != nil {
		c.tb.Fatalf("os.MkdirTemp() = %v", err)
	}
	res, err := agent.Join(testkit.Ctx(c.tb), agent.JoinConfig{DataDir: dir, Token: token, Remote: via, Logger: testkit.Logger()})
	return dir, res, err
}

// JoinNoDaemon joins a node with the worker token through the manager at
// via, without a daemon: it never heartbeats, renews nor gossips. It
// returns the result and the data directory.
func (c *Cluster) JoinNoDaemon(via string) (agent.JoinResult, string) {
	c.tb.Helper()
	dir, res, err := c.TryJoin(c.WorkerToken, via)
	if err != nil {
		c.tb.Fatalf("agent.Join(worker token, %s) = %v", via, err)
	}
	return res, dir
}
