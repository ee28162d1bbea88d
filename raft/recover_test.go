package raft

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/quorumca/quorumca/internal/testkit"
)

func forcing(cfg *Config) { cfg.ForceNewCluster = true }

// TestForceNewClusterKeepsState: the leader of three, the two others
// gone for good, recovers on its own: it leads alone, keeps every entry,
// commits new ones, and reports the two as lost. An entry it had appended
// but could not commit (the two were already gone) is committed by the
// recovery, and reported after the last index it knew committed.
func TestForceNewClusterKeepsState(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	nodes := startCluster(t, c, 3, nil)
	leader := nodes[0]
	for i := range 5 {
		if _, err := leader.Apply(t.Context(), fmt.Appendf(nil, "k%d=v%d", i, i)); err != nil {
			t.Fatalf("Apply(k%d) = %v", i, err)
		}
	}
	for _, n := range nodes[1:] {
		testkit.Eventually(t, "follower "+n.id+" applied k4", testkit.True(func() bool { _, ok := n.sm.get("k4"); return ok }))
		if err := n.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if _, err := leader.Apply(ctx, []byte("late=uncommitted")); err == nil {
		t.Fatalf("Apply() without a majority committed")
	}
	if err := leader.Shutdown(); err != nil {
		t.Fatal(err)
	}

	r := leader.restart(t, c, false, forcing)
	waitLeader(t, r)
	rec := r.PendingRecovery()
	want := []string{nodes[1].id, nodes[2].id}
	slices.Sort(want)
	if rec == nil || !slices.Equal(rec.Lost, want) || !rec.Done {
		t.Fatalf("PendingRecovery() = %+v, want lost %v, done", rec, want)
	}
	if rec.Committed >= rec.Last {
		t.Errorf("PendingRecovery() = committed %d, last %d; want the uncommitted entry after the last index known committed", rec.Committed, rec.Last)
	}
	for i := range 5 {
		if v, ok := r.sm.get(fmt.Sprintf("k%d", i)); !ok || v != fmt.Sprintf("v%d", i) {
			t.Errorf("k%d after the recovery = %q, %v", i, v, ok)
		}
	}
	if v, _ := r.sm.get("late"); v != "uncommitted" {
		t.Errorf("the entry the recovery committed: late = %q, want uncommitted", v)
	}
	if _, err := r.Apply(t.Context(), []byte("after=1")); err != nil {
		t.Fatalf("Apply() after the recovery = %v", err)
	}
	servers, err := r.Servers()
	if err != nil || len(servers) != 1 || servers[0].ID != r.id {
		t.Fatalf("Servers() after the recovery = %+v, %v; want this node alone", servers, err)
	}

	// Until it is finished, the recovery stays pending across a restart,
	// and is not done again.
	if err := r.Shutdown(); err != nil {
		t.Fatal(err)
	}
	r = r.restart(t, c, false, nil)
	waitLeader(t, r)
	if again := r.PendingRecovery(); again == nil || !slices.Equal(again.Lost, want) {
		t.Fatalf("PendingRecovery() after a restart = %+v, want the same recovery", again)
	}
	if v, _ := r.sm.get("after"); v != "1" {
		t.Errorf("after the restart: after = %q, want 1", v)
	}
	if err := r.FinishRecovery(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.dir, recoveryFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after FinishRecovery: %v, want it gone", recoveryFile, err)
	}
	if r.PendingRecovery() != nil {
		t.Errorf("PendingRecovery() after FinishRecovery is not nil")
	}
}

// TestForceNewClusterResumesAfterCrash: a recovery a crash stopped before
// RecoverCluster ran (recovery.json written, not done) runs at the next
// Open, even without the flag.
func TestForceNewClusterResumesAfterCrash(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	nodes := startCluster(t, c, 3, nil)
	leader := nodes[0]
	if _, err := leader.Apply(t.Context(), []byte("k=v")); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if err := n.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	lost := []string{nodes[1].id, nodes[2].id}
	slices.Sort(lost)
	if err := writeRecovery(leader.dir, &Recovery{Lost: lost, Committed: 1, Last: 1}); err != nil {
		t.Fatal(err)
	}
	r := leader.restart(t, c, false, nil)
	waitLeader(t, r)
	if rec := r.PendingRecovery(); rec == nil || !rec.Done || !slices.Equal(rec.Lost, lost) {
		t.Fatalf("PendingRecovery() = %+v, want the interrupted recovery, done", rec)
	}
	if v, _ := r.sm.get("k"); v != "v" {
		t.Errorf("k = %q after the resumed recovery, want v", v)
	}
}

// TestForceNewClusterNoState: a data directory that never held a cluster
// is refused, and nothing is written that says it recovered.
func TestForceNewClusterNoState(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.Listener = newID(t), dir, ln
	cfg.TLS, cfg.ClusterID, cfg.StateMachine = c.TLSConfig(t, manager(c, cfg.NodeID)), c.ClusterID, newKV()
	cfg.ForceNewCluster = true
	if _, err := Open(cfg); !errors.Is(err, ErrNoState) {
		t.Fatalf("Open(ForceNewCluster, empty) = %v, want ErrNoState", err)
	}
	if _, err := os.Stat(filepath.Join(dir, recoveryFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s written for a refused recovery: %v", recoveryFile, err)
	}
}
