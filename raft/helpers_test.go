package raft

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// testLogger writes to the test's output, so the log shows with a failure.
// RAFT_TEST_LOG=debug shows hashicorp/raft's chatter too.
func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("RAFT_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

func newID(t *testing.T) string {
	t.Helper()
	id, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatalf("NewID() = %v", err)
	}
	return id
}

// kv is a test StateMachine: a map of strings set by commands "key=value",
// snapshotted as JSON. Apply returns the entry's index.
type kv struct {
	mu       sync.Mutex // mu guards m and restores
	m        map[string]string
	restores int
}

func newKV() *kv { return &kv{m: map[string]string{}} }

func (s *kv) Apply(index uint64, cmd []byte) any {
	k, v, ok := strings.Cut(string(cmd), "=")
	if !ok {
		return fmt.Errorf("command %q is not key=value", cmd)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Copy on write, so that a snapshot can hold the old map.
	m := make(map[string]string, len(s.m)+1)
	for key, val := range s.m {
		m[key] = val
	}
	m[k] = v
	s.m = m
	return index
}

func (s *kv) Snapshot() (Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return kvSnapshot(s.m), nil
}

func (s *kv) Restore(r io.Reader) error {
	var m map[string]string
	if err := json.NewDecoder(r).Decode(&m); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m = m
	s.restores++
	return nil
}

func (s *kv) get(k string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok
}

func (s *kv) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

func (s *kv) restored() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restores
}

type kvSnapshot map[string]string

func (s kvSnapshot) Persist(w io.Writer) error {
	return json.NewEncoder(w).Encode(map[string]string(s))
}
func (s kvSnapshot) Release() {}

// testNode is a Node with what a test needs to restart it.
type testNode struct {
	*Node
	id   string
	dir  string
	addr string
	sm   *kv
	cfg  Config
}

// startNode opens a node with the given ID, data dir and listen address
// ("127.0.0.1:0" for a new one), with test timings, and shuts it down when
// the test ends. tweak, if not nil, adjusts the Config.
func startNode(t *testing.T, c *testkit.CA, id, dir, addr string, bootstrap bool, tweak func(*Config)) *testNode {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("Listen(%s) = %v", addr, err)
	}
	sm := newKV()
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.DataDir = dir
	cfg.Listener = ln
	cfg.TLS = c.TLSConfig(t, manager(c, id))
	cfg.ClusterID = c.ClusterID
	cfg.StateMachine = sm
	cfg.Logger = testLogger(t).With("node", id[:6])
	cfg.Bootstrap = bootstrap
	cfg.HeartbeatTimeout = testkit.RaftHeartbeat
	cfg.ElectionTimeout = testkit.RaftHeartbeat
	cfg.LeaderLeaseTimeout = testkit.RaftLease
	cfg.CommitTimeout = 10 * time.Millisecond
	cfg.ApplyTimeout = testkit.ApplyTimeout
	if tweak != nil {
		tweak(&cfg)
	}
	n, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open(%s) = %v", id, err)
	}
	t.Cleanup(func() {
		if err := n.Shutdown(); err != nil {
			t.Errorf("Shutdown(%s) = %v", id, err)
		}
	})
	return &testNode{Node: n, id: id, dir: dir, addr: ln.Addr().String(), sm: sm, cfg: cfg}
}

// restart opens tn again from its data dir, on its address.
func (tn *testNode) restart(t *testing.T, c *testkit.CA, bootstrap bool, tweak func(*Config)) *testNode {
	t.Helper()
	return startNode(t, c, tn.id, tn.dir, tn.addr, bootstrap, tweak)
}

// startCluster starts size nodes: the first bootstraps and adds the others
// as voters. It returns them, the leader first.
func startCluster(t *testing.T, c *testkit.CA, size int, tweak func(*Config)) []*testNode {
	t.Helper()
	nodes := []*testNode{startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, tweak)}
	waitLeader(t, nodes...)
	for range size - 1 {
		n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", false, tweak)
		nodes = append(nodes, n)
		// A leader that misses the new voter's first answers may step
		// down; ask whichever node leads next.
		testkit.Eventually(t, "AddVoter("+n.id+") to succeed", testkit.True(func() bool {
			err := waitLeader(t, nodes...).AddVoter(t.Context(), n.id, n.addr)
			if err != nil {
				t.Logf("AddVoter(%s) = %v; retrying", n.id, err)
			}
			return err == nil
		}))
	}
	leader := waitLeader(t, nodes...)
	for i, n := range nodes {
		if n == leader {
			nodes[0], nodes[i] = nodes[i], nodes[0]
		}
	}
	return nodes
}

// waitLeader polls until one of nodes is the leader and returns it.
func waitLeader(t *testing.T, nodes ...*testNode) *testNode {
	t.Helper()
	return waitLeaderWithin(t, testkit.Wait, nodes...)
}

// waitLeaderWithin polls until one of nodes is the leader and returns it,
// failing the test after d.
func waitLeaderWithin(t *testing.T, d time.Duration, nodes ...*testNode) *testNode {
	t.Helper()
	var leader *testNode
	testkit.EventuallyWithin(t, d, "a leader", testkit.True(func() bool {
		for _, n := range nodes {
			if n.IsLeader() {
				leader = n
				return true
			}
		}
		return false
	}))
	return leader
}
