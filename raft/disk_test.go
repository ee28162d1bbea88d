package raft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/quorumca/quorumca/internal/testkit"
)

// tmpfsSize is the size of the tmpfs the disk-full test fills: room for a
// fresh node's stores, small enough to fill in an instant.
const tmpfsSize = 8 << 20

// TestDiskFullIsReported is a manager whose disk fills up: Apply must fail
// with ErrDiskFull, not ErrNoQuorum, and DiskError must name the file;
// once space is freed, Apply must succeed and DiskError be nil.
//
// The tmpfs case fills a real file system and needs mount (root). The
// injected case, which runs everywhere, puts a store whose log writes fail
// with ENOSPC under the Node's (Config.wrapStore): where mount is not
// permitted, it alone tests the logic. It fails only log writes, not the
// stable store's: hashicorp/raft panics when it cannot save its term.
func TestDiskFullIsReported(t *testing.T) {
	t.Run("tmpfs", func(t *testing.T) {
		testkit.CheckGoroutines(t)
		dir := mountTmpfs(t, tmpfsSize)
		filler := filepath.Join(dir, "filler")
		testDiskFull(t, filepath.Join(dir, "raft"), nil, func() { fillDisk(t, filler) }, func() {
			if err := os.Remove(filler); err != nil {
				t.Fatalf("Remove(filler) = %v", err)
			}
		})
	})
	t.Run("injected store", func(t *testing.T) {
		testkit.CheckGoroutines(t)
		dataDir := t.TempDir()
		var full atomic.Bool
		wrap := func(s logStableStore) logStableStore {
			return &fullDiskStore{logStableStore: s, path: filepath.Join(dataDir, dbFile), full: &full}
		}
		testDiskFull(t, dataDir, wrap, func() { full.Store(true) }, func() { full.Store(false) })
	})
}

// testDiskFull runs the disk-full scenario on a one-node cluster in
// dataDir: fill makes its disk full, free frees it.
func testDiskFull(t *testing.T, dataDir string, wrap func(logStableStore) logStableStore, fill, free func()) {
	c := testkit.NewCA(t)
	n := startNode(t, c, newID(t), dataDir, "127.0.0.1:0", true, func(cfg *Config) {
		cfg.wrapStore = wrap
		// Between the failed write, when the leader steps down, and its
		// next election, the test frees the disk: a slow heartbeat leaves
		// it room. An election on a full disk would fail to save the term,
		// and hashicorp/raft panics then.
		cfg.HeartbeatTimeout, cfg.ElectionTimeout = time.Second, time.Second
	})
	waitLeader(t, n)
	if _, err := n.Apply(t.Context(), []byte("a=1")); err != nil {
		t.Fatalf("Apply(a=1) = %v", err)
	}
	if err := n.DiskError(); err != nil {
		t.Fatalf("DiskError() before the disk is full = %v, want nil", err)
	}

	fill()
	// A large entry, so that bolt needs new pages, not ones it freed.
	big := append([]byte("big="), bytes.Repeat([]byte("x"), 256<<10)...)
	_, err := n.Apply(t.Context(), big)
	if !errors.Is(err, ErrDiskFull) || errors.Is(err, ErrNoQuorum) {
		free()
		t.Fatalf("Apply() on a full disk = %v, want ErrDiskFull, not ErrNoQuorum", err)
	}
	t.Logf("Apply() on a full disk = %v", err)
	derr := n.DiskError()
	free()
	assertDiskFull(t, derr, filepath.Join(dataDir, dbFile))

	testkit.Eventually(t, "Apply to succeed once the disk has room", testkit.True(func() bool {
		_, err := n.Apply(t.Context(), []byte("b=2"))
		return err == nil
	}))
	if err := n.DiskError(); err != nil {
		t.Errorf("DiskError() after space was freed = %v, want nil", err)
	}
}

// TestDiskFullSnapshotIsReported fills a real disk while a snapshot is
// taken: the failure shows in DiskError, naming the snapshots directory,
// until a later write succeeds.
func TestDiskFullSnapshotIsReported(t *testing.T) {
	testkit.CheckGoroutines(t)
	dir := mountTmpfs(t, tmpfsSize)
	dataDir := filepath.Join(dir, "raft")
	c := testkit.NewCA(t)
	n := startNode(t, c, newID(t), dataDir, "127.0.0.1:0", true, nil)
	waitLeader(t, n)
	if _, err := n.Apply(t.Context(), []byte("a=1")); err != nil {
		t.Fatalf("Apply(a=1) = %v", err)
	}

	filler := filepath.Join(dir, "filler")
	fillDisk(t, filler)
	err := n.raft.Snapshot().Error()
	derr := n.DiskError()
	if err := os.Remove(filler); err != nil {
		t.Fatalf("Remove(filler) = %v", err)
	}
	if err == nil {
		t.Fatalf("Snapshot() on a full disk = nil error, want one")
	}
	t.Logf("Snapshot() on a full disk = %v", err)
	var dfe *DiskFullError
	snapshots := filepath.Join(dataDir, "snapshots")
	if !errors.As(derr, &dfe) || !errors.Is(derr, syscall.ENOSPC) || !strings.HasPrefix(dfe.File, snapshots) {
		t.Fatalf("DiskError() after a snapshot on a full disk = %v, want a *DiskFullError (ENOSPC) for a file under %s", derr, snapshots)
	}
	t.Logf("DiskError() = %v", derr)

	// The snapshot does not step the leader down; its next write clears
	// the error, and the next snapshot goes through.
	if _, err := n.Apply(t.Context(), []byte("b=2")); err != nil {
		t.Fatalf("Apply(b=2) after space was freed = %v", err)
	}
	if err := n.DiskError(); err != nil {
		t.Errorf("DiskError() after a successful write = %v, want nil", err)
	}
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Errorf("Snapshot() after space was freed = %v", err)
	}
}

// TestErrorMappingDiskFull checks how Node.fail reports failures while the
// disk is full, for every call that commits: what would read as a lost
// quorum, and any other failure, wraps ErrDiskFull; ErrNotLeader (the
// caller should go to the leader), ErrShutdown and a caller's own
// cancellation stay as they are. Once a write succeeds, ErrNoQuorum is
// back.
func TestErrorMappingDiskFull(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, nil)
	waitLeader(t, n)
	// The new leader's own writes are done once an Apply is; the node
	// then writes nothing until the next call.
	if _, err := n.Apply(t.Context(), []byte("a=1")); err != nil {
		t.Fatalf("Apply(a=1) = %v", err)
	}
	file := filepath.Join(n.dir, dbFile)
	enospc := &os.PathError{Op: "write", Path: file, Err: syscall.ENOSPC}
	n.disk.note(file, enospc)
	n.disk.note(file, errors.New("input/output error")) // says nothing about space
	assertDiskFull(t, n.DiskError(), file)

	tests := []struct {
		err       error
		want, not error
	}{
		{context.DeadlineExceeded, ErrDiskFull, ErrNoQuorum},
		{hraft.ErrEnqueueTimeout, ErrDiskFull, ErrNoQuorum},
		{hraft.ErrLeadershipLost, ErrDiskFull, ErrNoQuorum},
		{fmt.Errorf("unable to store logs within log store, err: %q", enospc), ErrDiskFull, ErrNoQuorum},
		{hraft.ErrNotLeader, ErrNotLeader, ErrDiskFull},
		{hraft.ErrRaftShutdown, ErrShutdown, ErrDiskFull},
		{context.Canceled, context.Canceled, ErrDiskFull},
	}
	for _, op := range []string{"apply", "add voter x", "remove server x", "barrier"} {
		for _, tt := range tests {
			got := n.fail(op, "commit", tt.err, 2*time.Second)
			if !errors.Is(got, tt.want) || errors.Is(got, tt.not) {
				t.Errorf("fail(%s, %v) on a full disk = %v, want %v, not %v", op, tt.err, got, tt.want, tt.not)
			}
		}
	}

	n.disk.note(file, nil)
	if err := n.DiskError(); err != nil {
		t.Errorf("DiskError() after a successful write = %v, want nil", err)
	}
	if got := n.fail("apply", "commit", context.DeadlineExceeded, 2*time.Second); !errors.Is(got, ErrNoQuorum) || errors.Is(got, ErrDiskFull) {
		t.Errorf("fail(apply, deadline) after a successful write = %v, want ErrNoQuorum, not ErrDiskFull", got)
	}
}

// assertDiskFull checks that err is a *DiskFullError (ErrDiskFull, ENOSPC)
// naming file.
func assertDiskFull(t *testing.T, err error, file string) {
	t.Helper()
	var dfe *DiskFullError
	switch {
	case !errors.Is(err, ErrDiskFull) || !errors.Is(err, syscall.ENOSPC):
		t.Fatalf("DiskError() on a full disk = %v, want ErrDiskFull wrapping ENOSPC", err)
	case !errors.As(err, &dfe) || dfe.File != file:
		t.Fatalf("DiskError() on a full disk = %#v, want a *DiskFullError with File %s", err, file)
	case !strings.Contains(err.Error(), file):
		t.Fatalf("DiskError() = %q, want it to name %s", err, file)
	}
	t.Logf("DiskError() = %v", err)
}

// mountTmpfs mounts a tmpfs of size bytes on a new temporary directory and
// unmounts it when the test ends, after the nodes started later have shut
// down. Where mount is not permitted it skips the test, unless $CI is set
// and the test runs as root, where mount must work.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" && os.Geteuid() == 0 {
			t.Fatalf("mount -t tmpfs %s = %v: %s", dir, err, out)
		}
		t.Skipf("mount -t tmpfs not permitted here (%v: %s); the injected store case tests the logic", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s = %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes zeros to path until the file system is full.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("Create(%s) = %v", path, err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for range tmpfsSize/len(chunk) + 1 {
		if _, err := f.Write(chunk); errors.Is(err, syscall.ENOSPC) {
			return
		} else if err != nil {
			t.Fatalf("Write(%s) = %v", path, err)
		}
	}
	t.Fatalf("wrote %d bytes to %s without filling its file system", tmpfsSize+len(chunk), path)
}

// fullDiskStore is a store whose log writes fail as bolt's do on a full
// disk while full is set.
type fullDiskStore struct {
	logStableStore
	path string
	full *atomic.Bool
}

func (s *fullDiskStore) StoreLog(l *hraft.Log) error {
	return s.StoreLogs([]*hraft.Log{l})
}

func (s *fullDiskStore) StoreLogs(logs []*hraft.Log) error {
	if s.full.Load() {
		return &os.PathError{Op: "write", Path: s.path, Err: syscall.ENOSPC}
	}
	return s.logStableStore.StoreLogs(logs)
}
