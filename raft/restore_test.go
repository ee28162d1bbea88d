package raft

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/quorumca/quorumca/internal/testkit"
)

// TestRestoreStartsAOneVoterCluster: stores Restore wrote open as a
// one-voter cluster of the node, leading alone with the restored state,
// whose indexes go on after the restored one; sealed, nothing of the state
// is in clear on disk. A second Restore into the same directory is
// refused.
func TestRestoreStartsAOneVoterCluster(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	dir := t.TempDir()
	id := newID(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	keys := &Keys{Current: newDataKey(t)}
	state := kvSnapshot{"k": marker}
	if err := Restore(dir, keys, id, addr, 41, 7, state.Persist); err != nil {
		t.Fatalf("Restore() = %v", err)
	}
	if err := Restore(dir, keys, id, addr, 41, 7, state.Persist); err == nil {
		t.Fatalf("a second Restore() into the same directory succeeded")
	}
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(marker)) {
				t.Errorf("%s holds the restored state in clear", path)
			}
		}
		return err
	})

	n := startNode(t, c, id, dir, "127.0.0.1:0", false, func(cfg *Config) {
		withKeys(keys)(cfg)
		cfg.Listener.Close()
		cfg.Listener = ln // the address the configuration names
	})
	waitLeader(t, n)
	if v, _ := n.sm.get("k"); v != marker {
		t.Fatalf("restored k = %q, want the marker", v)
	}
	out, err := n.Apply(t.Context(), []byte("next=1"))
	if err != nil {
		t.Fatalf("Apply() after the restore = %v", err)
	}
	if idx, _ := out.(uint64); idx <= 41 {
		t.Errorf("the first entry after the restore has index %d, want after 41", idx)
	}
	if term, _ := strconv.Atoi(n.Stats()["term"]); term < 7 {
		t.Errorf("term after the restore = %d, want at least 7", term)
	}
}
