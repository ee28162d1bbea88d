package raft

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/internal/sealstream"
	"github.com/quorumca/quorumca/internal/testkit"
)

// marker is a value the tests put in the replicated state, as a secret of
// the cluster's would be, and look for in the raw bytes of the stores.
const marker = "QUORUMCA-TEST-SECRET-7f3a9c"

func newDataKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, DataKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// withKeys seals the stores under keys, and snapshots after a few entries.
func withKeys(keys *Keys) func(*Config) {
	return func(c *Config) {
		c.Keys = keys
		c.SnapshotThreshold = 16
		c.SnapshotInterval = 20 * time.Millisecond
		c.TrailingLogs = 4
	}
}

// fillWithSecrets applies n entries that each carry marker, and waits for
// a snapshot, so that the marker is in the log and in a snapshot.
func fillWithSecrets(t *testing.T, n *testNode, count int) {
	t.Helper()
	for i := range count {
		if _, err := n.Apply(t.Context(), fmt.Appendf(nil, "k%d=%s-%d", i, marker, i)); err != nil {
			t.Fatalf("Apply(%d) = %v", i, err)
		}
	}
	testkit.Eventually(t, "a snapshot", testkit.True(func() bool { return n.Stats()["last_snapshot_index"] != "0" }))
}

// filesHolding returns the files under dir whose raw bytes hold s.
func filesHolding(t *testing.T, dir, s string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(s)) {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSealedStoresHoldNoSecret: with data keys, what a node writes of the
// replicated state is sealed: the log and the snapshots hold no byte of
// it in clear, and a restart opens them to the same state.
func TestSealedStoresHoldNoSecret(t *testing.T) {
	c := testkit.NewCA(t)
	keys := &Keys{Current: newDataKey(t)}
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, withKeys(keys))
	waitLeader(t, n)
	fillWithSecrets(t, n, 40)
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if files := filesHolding(t, n.dir, marker); len(files) > 0 {
		t.Errorf("the stores hold the secret in clear: %v", files)
	}
	r := n.restart(t, c, true, withKeys(keys))
	waitLeader(t, r)
	testkit.Eventually(t, "the restarted node's state", testkit.True(func() bool {
		v, ok := r.sm.get("k39")
		return ok && v == marker+"-39"
	}))
	if r.sm.restored() == 0 {
		t.Errorf("the restarted node restored no snapshot")
	}
}

// TestSealedStoreWrongKey: a store sealed under one key does not open
// under another: Open fails with ErrSealed, naming the file, and nothing
// is applied.
func TestSealedStoreWrongKey(t *testing.T) {
	c := testkit.NewCA(t)
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, withKeys(&Keys{Current: newDataKey(t)}))
	waitLeader(t, n)
	fillWithSecrets(t, n, 20)
	n.Shutdown()
	cfg := n.cfg
	withKeys(&Keys{Current: newDataKey(t)})(&cfg)
	ln, err := listenLocal()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = ln
	cfg.StateMachine = newKV()
	_, err = Open(cfg)
	if !errors.Is(err, ErrSealed) || !strings.Contains(err.Error(), dbFile) {
		t.Fatalf("Open(another key) = %v, want ErrSealed naming %s", err, dbFile)
	}
	// Without a key at all, a sealed store is refused too.
	cfg.Keys = nil
	if cfg.Listener, err = listenLocal(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "sealed") {
		t.Fatalf("Open(no key) of a sealed store = %v, want a refusal", err)
	}
}

// TestUpgradeSealsInPlace: a data dir written without sealing (the
// release before) is sealed on its first start with a key: in new files,
// so that no page of the old ones is left, with every entry and snapshot
// kept.
func TestUpgradeSealsInPlace(t *testing.T) {
	c := testkit.NewCA(t)
	plain := func(cfg *Config) {
		withKeys(nil)(cfg)
	}
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, plain)
	waitLeader(t, n)
	fillWithSecrets(t, n, 40)
	n.Shutdown()
	if files := filesHolding(t, n.dir, marker); len(files) == 0 {
		t.Fatalf("the unsealed stores hold no secret in clear: the test proves nothing")
	}
	keys := &Keys{Current: newDataKey(t)}
	r := n.restart(t, c, true, withKeys(keys))
	waitLeader(t, r)
	testkit.Eventually(t, "the sealed node's state", testkit.True(func() bool {
		v, ok := r.sm.get("k39")
		return ok && v == marker+"-39" && r.sm.len() == 40
	}))
	r.Shutdown()
	if files := filesHolding(t, n.dir, marker); len(files) > 0 {
		t.Errorf("after sealing, the stores still hold the secret in clear: %v", files)
	}
}

// TestRotateDataKey: a node given a new key, with the old one as previous,
// seals everything again under the new one; from then on the new key alone
// opens it, and the old alone does not.
func TestRotateDataKey(t *testing.T) {
	c := testkit.NewCA(t)
	oldKey, newKey := newDataKey(t), newDataKey(t)
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, withKeys(&Keys{Current: oldKey}))
	waitLeader(t, n)
	fillWithSecrets(t, n, 40)
	n.Shutdown()
	r := n.restart(t, c, true, withKeys(&Keys{Current: newKey, Previous: [][]byte{oldKey}}))
	waitLeader(t, r)
	r.Shutdown()
	r2 := n.restart(t, c, true, withKeys(&Keys{Current: newKey}))
	waitLeader(t, r2)
	testkit.Eventually(t, "the state under the new key alone", testkit.True(func() bool {
		v, ok := r2.sm.get("k39")
		return ok && v == marker+"-39"
	}))
	r2.Shutdown()
	cfg := n.cfg
	withKeys(&Keys{Current: oldKey})(&cfg)
	var err error
	if cfg.Listener, err = listenLocal(); err != nil {
		t.Fatal(err)
	}
	cfg.StateMachine = newKV()
	if _, err := Open(cfg); !errors.Is(err, ErrSealed) {
		t.Fatalf("Open(the old key alone) after the rotation = %v, want ErrSealed", err)
	}
}

// TestSealedSnapshotFormat checks the snapshot stream on its own: it
// round-trips at every size around the chunk boundaries, its plain size is
// known from its sealed size, and a stream cut short, with a chunk
// changed, or opened with another key is refused.
func TestSealedSnapshotFormat(t *testing.T) {
	key := newDataKey(t)
	s, err := newSealer(Keys{Current: key})
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 1, sealstream.ChunkSize - 1, sealstream.ChunkSize, sealstream.ChunkSize + 1, 3*sealstream.ChunkSize + 7} {
		plain := make([]byte, size)
		rand.Read(plain)
		var sealed bytes.Buffer
		w, err := newSealingWriter(&sealed, s)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(plain)
		if err := w.finish(); err != nil {
			t.Fatal(err)
		}
		if got := int64(sealed.Len()); got != sealedSize(int64(size)) || plainSize(got) != int64(size) {
			t.Errorf("size %d: sealed %d bytes, sealedSize %d, plainSize %d", size, got, sealedSize(int64(size)), plainSize(got))
		}
		r, err := newOpeningReader(bytes.NewReader(sealed.Bytes()), s, "test")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("size %d: opened %d bytes, %v; want the %d written", size, len(got), err, size)
		}
		if size == 0 {
			continue
		}
		cut := sealed.Bytes()[:sealed.Len()-1]
		if r, err := newOpeningReader(bytes.NewReader(cut), s, "test"); err == nil {
			if _, err := io.ReadAll(r); !errors.Is(err, ErrSealed) {
				t.Errorf("size %d cut short: read %v, want ErrSealed", size, err)
			}
		}
		changed := bytes.Clone(sealed.Bytes())
		changed[snapshotHead+5] ^= 1
		if r, err := newOpeningReader(bytes.NewReader(changed), s, "test"); err == nil {
			if _, err := io.ReadAll(r); !errors.Is(err, ErrSealed) {
				t.Errorf("size %d changed: read %v, want ErrSealed", size, err)
			}
		}
		other, _ := newSealer(Keys{Current: newDataKey(t)})
		if _, err := newOpeningReader(bytes.NewReader(sealed.Bytes()), other, "test"); !errors.Is(err, ErrSealed) {
			t.Errorf("size %d, another key: %v, want ErrSealed", size, err)
		}
	}
}

// listenLocal listens on a loopback port of the system's choosing.
func listenLocal() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

// TestInstallSnapshotAcrossKeys: each manager seals under its own key; a
// new one that must install the leader's snapshot receives it plain over
// the mutual-TLS transport and seals it under its own.
func TestInstallSnapshotAcrossKeys(t *testing.T) {
	c := testkit.NewCA(t)
	leader := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, withKeys(&Keys{Current: newDataKey(t)}))
	waitLeader(t, leader)
	fillWithSecrets(t, leader, 40)
	joiner := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", false, withKeys(&Keys{Current: newDataKey(t)}))
	if err := leader.AddVoter(t.Context(), joiner.id, joiner.addr); err != nil {
		t.Fatalf("AddVoter() = %v", err)
	}
	testkit.Eventually(t, "the new node's state", testkit.True(func() bool {
		v, ok := joiner.sm.get("k39")
		return ok && v == marker+"-39"
	}))
	if joiner.sm.restored() == 0 {
		t.Errorf("the new node installed no snapshot: the test proves nothing")
	}
	joiner.Shutdown()
	if files := filesHolding(t, joiner.dir, marker); len(files) > 0 {
		t.Errorf("the new node's stores hold the secret in clear: %v", files)
	}
}

// TestSealResumesAfterCrash: a seal that a crash stopped half way (an
// unfinished new file beside raft.db) starts over on the next Open.
func TestSealResumesAfterCrash(t *testing.T) {
	c := testkit.NewCA(t)
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, withKeys(nil))
	waitLeader(t, n)
	fillWithSecrets(t, n, 40)
	n.Shutdown()
	if err := os.WriteFile(filepath.Join(n.dir, dbFile+".seal"), []byte("half a bolt file"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := n.restart(t, c, true, withKeys(&Keys{Current: newDataKey(t)}))
	waitLeader(t, r)
	testkit.Eventually(t, "the state", testkit.True(func() bool { v, ok := r.sm.get("k39"); return ok && v == marker+"-39" }))
	r.Shutdown()
	if _, err := os.Stat(filepath.Join(n.dir, dbFile+".seal")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the unfinished seal file is left: %v", err)
	}
	if files := filesHolding(t, n.dir, marker); len(files) > 0 {
		t.Errorf("the stores hold the secret in clear: %v", files)
	}
}
