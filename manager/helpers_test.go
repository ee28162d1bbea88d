package manager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/membership"
)

// testManager is a manager of a test cluster, running until the test ends
// or stop.
type testManager struct {
	*Manager
	cfg  Config
	stop func() error
}

// testConfig is a manager configuration on loopback ephemeral ports in
// its own data directory, with Raft's default timings and fast heartbeats.
func testConfig(t *testing.T, dir string) Config {
	return Config{
		DataDir:         dir,
		ListenAddr:      "127.0.0.1:0",
		RaftListenAddr:  "127.0.0.1:0",
		GossipAddr:      "127.0.0.1:0",
		GossipTiming:    membership.Fast,
		HeartbeatPeriod: testkit.HeartbeatPeriod,
		ReconcilePeriod: testkit.ReconcilePeriod,
		ApplyTimeout:    5 * time.Second,
	}
}

// run runs m until the test ends; the returned stop ends it earlier and
// returns Run's error.
func run(t *testing.T, m *Manager, cfg Config) *testManager {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var stopped bool
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(testkit.Wait):
				t.Errorf("Manager.Run did not return within %s of its context ending", testkit.Wait)
			}
		}
		return runErr
	}
	t.Cleanup(func() { stop() })
	select {
	case <-m.Ready():
	case err := <-done:
		stopped = true
		t.Fatalf("Manager.Run() = %v before it was ready", err)
	case <-time.After(testkit.Wait):
		t.Fatalf("manager not ready within %s", testkit.Wait)
	}
	return &testManager{Manager: m, cfg: cfg, stop: stop}
}

// initManager inits a cluster in a fresh directory and runs its manager.
func initManager(t *testing.T, tweak func(*Config)) *testManager {
	t.Helper()
	cfg := testConfig(t, t.TempDir())
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := Init(t.Context(), cfg, InitOptions{})
	if err != nil {
		t.Fatalf("Init() = %v", err)
	}
	return run(t, m, cfg)
}

// joinManager joins a manager to leader's cluster, as the node package
// does: listeners first, then the join, then Open on them; and runs it
// (it is a voter once ready).
func joinManager(t *testing.T, leader *testManager, tweak func(*Config)) *testManager {
	t.Helper()
	cfg := testConfig(t, t.TempDir())
	if tweak != nil {
		tweak(&cfg)
	}
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	raftLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenResponse(leader.State(), "swarm-manager")
	if err != nil {
		t.Fatal(err)
	}
	jc := agent.JoinConfig{
		DataDir: cfg.DataDir, Token: tok.GetToken(), Remote: leader.Addr(),
		Addr: apiLn.Addr().String(), RaftAddr: raftLn.Addr().String(),
		Node: agent.NodeConfig{ListenAddr: apiLn.Addr().String(), AdvertiseAddr: apiLn.Addr().String(),
			RaftAddr: raftLn.Addr().String(), RaftAdvertiseAddr: raftLn.Addr().String(), GossipAddr: cfg.GossipAddr},
	}
	if _, err := agent.Join(t.Context(), jc); err != nil {
		t.Fatalf("agent.Join(manager token) = %v", err)
	}
	store, err := agent.OpenNodeStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.APIListener, cfg.RaftListener = apiLn, raftLn
	m, err := Open(t.Context(), cfg, store)
	if err != nil {
		t.Fatalf("Open(joined manager) = %v", err)
	}
	return run(t, m, cfg)
}

// reopen opens the stopped manager's data directory again, on the same
// addresses, and runs it.
func reopen(t *testing.T, old *testManager) *testManager {
	t.Helper()
	store, err := agent.OpenNodeStore(old.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := old.cfg
	nc := store.Get()
	cfg.ListenAddr, cfg.RaftListenAddr = nc.ListenAddr, nc.RaftAddr
	cfg.APIListener, cfg.RaftListener = nil, nil
	m, err := Open(t.Context(), cfg, store)
	if err != nil {
		t.Fatalf("Open(%s) = %v", cfg.DataDir, err)
	}
	return run(t, m, cfg)
}

// rotateSecrets commits n join-token rotations through m, the leader.
func rotateSecrets(t *testing.T, m *Manager, n int) {
	t.Helper()
	for i := range n {
		secret := fmt.Sprintf("%025d", i+1)
		if _, err := m.propose(t.Context(), fsm.Command{At: m.cfg.Now(), RotateSecret: &fsm.RotateSecret{Role: "swarm-worker", Secret: secret}}); err != nil {
			t.Fatalf("propose(RotateSecret %d) = %v", i, err)
		}
	}
}

// snapshots returns how many snapshots the manager kept on disk.
func snapshots(dir string) int {
	entries, err := os.ReadDir(filepath.Join(dir, RaftDir, "snapshots"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	return len(entries)
}
