package raft

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// Test timings: fast enough that a three-node test takes a second or two on
// loopback, slow enough not to flap on two busy cores.
const (
	testHeartbeat = 400 * time.Millisecond
	testLease     = 200 * time.Millisecond
	testApply     = 3 * time.Second
	// waitFor bounds every poll for something to happen.
	waitFor = 10 * time.Second
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

// testCA is a cluster's root CA, issuing test certificates.
type testCA struct {
	clusterID string
	signer    *ca.Signer
	roots     *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	clusterID := newID(t)
	m, err := ca.GenerateRoot(rand.Reader, time.Now(), clusterID)
	if err != nil {
		t.Fatalf("GenerateRoot() = %v", err)
	}
	signer, err := ca.NewSigner(m)
	if err != nil {
		t.Fatalf("NewSigner() = %v", err)
	}
	roots, _, err := ca.ParseBundle(m.Bundle)
	if err != nil {
		t.Fatalf("ParseBundle() = %v", err)
	}
	return &testCA{clusterID: clusterID, signer: signer, roots: roots}
}

func newID(t *testing.T) string {
	t.Helper()
	id, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatalf("NewID() = %v", err)
	}
	return id
}

// cert issues a certificate naming id.
func (c *testCA) cert(t *testing.T, id ca.Identity) tls.Certificate {
	t.Helper()
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("GenerateKey() = %v", err)
	}
	csr, err := ca.NewCSR(rand.Reader, key, id.NodeID)
	if err != nil {
		t.Fatalf("NewCSR() = %v", err)
	}
	issued, err := c.signer.Sign(rand.Reader, time.Now(), csr, id, ca.DefaultCertExpiry)
	if err != nil {
		t.Fatalf("Sign(%+v) = %v", id, err)
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		t.Fatalf("MarshalKey() = %v", err)
	}
	cert, err := tls.X509KeyPair(issued.PEM, keyPEM)
	if err != nil {
		t.Fatalf("X509KeyPair() = %v", err)
	}
	return cert
}

// tlsConfig returns a TLS configuration for a node of this cluster with the
// given role, trusting this CA.
func (c *testCA) tlsConfig(t *testing.T, nodeID string, role ca.Role) *tls.Config {
	t.Helper()
	return c.tlsConfigFor(t, ca.Identity{NodeID: nodeID, Role: role, ClusterID: c.clusterID})
}

// tlsConfigFor returns a TLS configuration for a certificate naming id,
// whatever cluster it names, trusting this CA.
func (c *testCA) tlsConfigFor(t *testing.T, id ca.Identity) *tls.Config {
	t.Helper()
	return &tls.Config{
		Certificates: []tls.Certificate{c.cert(t, id)},
		RootCAs:      c.roots,
		ClientCAs:    c.roots,
	}
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
func startNode(t *testing.T, c *testCA, id, dir, addr string, bootstrap bool, tweak func(*Config)) *testNode {
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
	cfg.TLS = c.tlsConfig(t, id, ca.RoleManager)
	cfg.ClusterID = c.clusterID
	cfg.StateMachine = sm
	cfg.Logger = testLogger(t).With("node", id[:6])
	cfg.Bootstrap = bootstrap
	cfg.HeartbeatTimeout = testHeartbeat
	cfg.ElectionTimeout = testHeartbeat
	cfg.LeaderLeaseTimeout = testLease
	cfg.CommitTimeout = 10 * time.Millisecond
	cfg.ApplyTimeout = testApply
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
func (tn *testNode) restart(t *testing.T, c *testCA, bootstrap bool, tweak func(*Config)) *testNode {
	t.Helper()
	return startNode(t, c, tn.id, tn.dir, tn.addr, bootstrap, tweak)
}

// startCluster starts size nodes: the first bootstraps and adds the others
// as voters. It returns them, the leader first.
func startCluster(t *testing.T, c *testCA, size int, tweak func(*Config)) []*testNode {
	t.Helper()
	nodes := []*testNode{startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, tweak)}
	waitLeader(t, nodes...)
	for range size - 1 {
		n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", false, tweak)
		nodes = append(nodes, n)
		// A leader that misses the new voter's first answers may step
		// down; ask whichever node leads next.
		eventually(t, "AddVoter("+n.id+") to succeed", func() bool {
			err := waitLeader(t, nodes...).AddVoter(t.Context(), n.id, n.addr)
			if err != nil {
				t.Logf("AddVoter(%s) = %v; retrying", n.id, err)
			}
			return err == nil
		})
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
	return waitLeaderWithin(t, waitFor, nodes...)
}

// waitLeaderWithin polls until one of nodes is the leader and returns it,
// failing the test after d.
func waitLeaderWithin(t *testing.T, d time.Duration, nodes ...*testNode) *testNode {
	t.Helper()
	var leader *testNode
	eventuallyWithin(t, d, "a leader", func() bool {
		for _, n := range nodes {
			if n.IsLeader() {
				leader = n
				return true
			}
		}
		return false
	})
	return leader
}

// eventually polls cond until it holds, failing the test after waitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, waitFor, what, cond)
}

// eventuallyWithin polls cond until it holds, failing the test after d.
func eventuallyWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkGoroutines fails the test if, once every later cleanup (shutting
// nodes down) has run, more goroutines run than when it was called. It
// must be called before anything the test starts.
func checkGoroutines(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutines = %d after shutdown, want <= %d (at start); stacks:\n%s", runtime.NumGoroutine(), base, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
