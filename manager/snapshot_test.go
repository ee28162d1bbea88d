package manager

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
)

// snapshotting makes a manager snapshot after a few entries, and keep few
// entries after a snapshot, so that a new manager must install one.
func snapshotting(cfg *Config) {
	cfg.SnapshotThreshold = 8
	cfg.SnapshotInterval = 50 * time.Millisecond
}

// stateOf is the state as JSON, without the index of the last entry
// applied (a restored manager may have applied more, or other, entries
// than the commands: configuration changes).
func stateOf(t *testing.T, st *fsm.State) string {
	t.Helper()
	c := *st
	c.Index = 0
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

// TestRestartRestoresFromSnapshot runs the real manager's snapshot and
// restore path: the state machine adapter persists a snapshot while the
// manager runs, and a restarted manager comes back from it (and the few
// entries after it) to the very same state.
func TestRestartRestoresFromSnapshot(t *testing.T) {
	m := initManager(t, snapshotting)
	rotateSecrets(t, m.Manager, 40)
	testkit.Eventually(t, "a snapshot on disk", func() error {
		if n := snapshots(m.cfg.DataDir); n == 0 {
			return fmt.Errorf("no snapshot yet (last_snapshot_index %s)", m.raft.Stats()["last_snapshot_index"])
		}
		return nil
	})
	before := stateOf(t, m.State())
	if err := m.stop(); err != nil {
		t.Fatalf("Run() = %v after a stop", err)
	}
	r := reopen(t, m)
	testkit.Eventually(t, "the restarted manager's state", func() error {
		if got := stateOf(t, r.State()); got != before {
			return fmt.Errorf("state differs:\n got %.300s\nwant %.300s", got, before)
		}
		return nil
	})
	if idx := r.raft.Stats()["last_snapshot_index"]; idx == "0" {
		t.Errorf("the restarted manager's last_snapshot_index = %s, want the snapshot it restored", idx)
	}
	// It goes on committing from there, once it leads again.
	testkit.Eventually(t, "the restarted manager leads", func() error {
		if !r.IsLeader() {
			return fmt.Errorf("not the leader yet")
		}
		return nil
	})
	rotateSecrets(t, r.Manager, 1)
}

// TestNewManagerInstallsSnapshot: a manager that joins after the log was
// compacted gets the state as a snapshot from the leader (InstallSnapshot),
// restored through the adapter, and agrees with it.
func TestNewManagerInstallsSnapshot(t *testing.T) {
	m := initManager(t, snapshotting)
	rotateSecrets(t, m.Manager, 40)
	testkit.Eventually(t, "a snapshot on the leader", func() error {
		if snapshots(m.cfg.DataDir) == 0 {
			return fmt.Errorf("no snapshot yet")
		}
		return nil
	})
	j := joinManager(t, m, snapshotting)
	testkit.Eventually(t, "the new manager's state", func() error {
		want := stateOf(t, m.State())
		if got := stateOf(t, j.State()); got != want {
			return fmt.Errorf("state differs:\n got %.300s\nwant %.300s", got, want)
		}
		return nil
	})
	if idx := j.raft.Stats()["last_snapshot_index"]; idx == "0" {
		t.Errorf("the new manager's last_snapshot_index = %s, want the snapshot it installed", idx)
	}
}
