package raft

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	hraft "github.com/hashicorp/raft"
)

// Restore writes, in dataDir, the Raft stores of a one-voter cluster of
// this node (nodeID, reachable at advertise) whose state is what persist
// writes, taken at index and term: what a manager restored from a backup
// starts from. The state is one snapshot, sealed under keys.Current (nil
// keys: unsealed); the log is empty. Open then restores the snapshot and
// leads alone. dataDir must hold no Raft stores yet; on failure, what
// Restore wrote is removed.
func Restore(dataDir string, keys *Keys, nodeID, advertise string, index, term uint64, persist func(io.Writer) error) (err error) {
	if nodeID == "" || advertise == "" || index == 0 || term == 0 {
		return errors.New("raft: Restore needs a node ID, an address, an index and a term")
	}
	path := filepath.Join(dataDir, dbFile)
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("raft: restore into %s: it holds Raft stores already", dataDir)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(path)
			os.RemoveAll(filepath.Join(dataDir, "snapshots"))
			os.Remove(filepath.Join(dataDir, appliedFile))
		}
	}()
	store, err := openBolt(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := store.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("raft: close %s: %w", path, cerr)
		}
	}()
	fileSnaps, err := hraft.NewFileSnapshotStoreWithLogger(dataDir, snapshotsRetained, newHCLogger(slog.New(slog.DiscardHandler), "snapshots"))
	if err != nil {
		return fmt.Errorf("raft: open snapshot store: %w", err)
	}
	var snaps hraft.SnapshotStore = fileSnaps
	if keys != nil {
		s, err := newSealer(*keys)
		if err != nil {
			return err
		}
		snaps = &sealedSnapshots{SnapshotStore: fileSnaps, s: s}
		// An empty log is sealed under any key: mark it so.
		if err := store.Set(sealedWith, s.currentID[:]); err != nil {
			return fmt.Errorf("raft: %s: %w", path, err)
		}
	}
	if err := store.SetUint64([]byte("CurrentTerm"), term); err != nil {
		return fmt.Errorf("raft: %s: %w", path, err)
	}
	// The transport only encodes the configuration's peers into the
	// snapshot's metadata; nothing is sent.
	_, trans := hraft.NewInmemTransport(hraft.ServerAddress(advertise))
	defer trans.Close()
	conf := hraft.Configuration{Servers: []hraft.Server{{Suffrage: hraft.Voter, ID: hraft.ServerID(nodeID), Address: hraft.ServerAddress(advertise)}}}
	sink, err := snaps.Create(hraft.SnapshotVersionMax, index, term, conf, 1, trans)
	if err != nil {
		return fmt.Errorf("raft: create snapshot: %w", err)
	}
	if err := persist(sink); err != nil {
		return errors.Join(fmt.Errorf("raft: write snapshot: %w", err), sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("raft: write snapshot: %w", err)
	}
	applied, err := openAppliedIndex(dataDir)
	if err != nil {
		return err
	}
	applied.set(index)
	return applied.close()
}
