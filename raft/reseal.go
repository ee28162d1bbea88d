package raft

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/quorumca/quorumca/internal/atomicfile"
	bolt "go.etcd.io/bbolt"
)

// stableKeys are the keys hashicorp/raft keeps in the stable store.
var stableKeys = [][]byte{[]byte("CurrentTerm"), []byte("LastVoteTerm"), []byte("LastVoteCand")}

// sealedWith is the stable store's key that names the data key everything
// in the stores is sealed with, once it all is.
var sealedWith = []byte("QuorumcaSealedWith")

// resealBatch is how many entries are copied at once when a store is
// sealed again.
const resealBatch = 512

// openBolt opens the bolt store at path, fsynced.
func openBolt(path string) (*raftboltdb.BoltStore, error) {
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        path,
		BoltOptions: &bolt.Options{Timeout: boltOpenTimeout},
		NoSync:      false, // every log append is on disk before it is acknowledged
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("raft: open %s: %w; is another process using this data dir?", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("raft: open %s: %w", path, err)
	}
	return store, nil
}

// sealedUnder reports whether everything in the stores is sealed under the
// key of s.
func sealedUnder(store logStableStore, s *sealer) bool {
	v, err := store.Get(sealedWith)
	return err == nil && bytes.Equal(v, s.currentID[:])
}

// seal seals everything in the stores of dataDir under the current key of
// s: entries written before sealing (an upgrade in place) or under a
// previous key (a rotation of the key). The log is copied into a new bolt
// file that replaces the old one, so that no page of the old file (bolt
// keeps freed pages) is left; each snapshot is written again and the old
// one removed. A crash anywhere leaves the old file or the new one whole,
// and the next Open starts over; the stores are marked sealed last. It
// returns the store, opened again.
func seal(store *raftboltdb.BoltStore, dataDir string, snaps *hraft.FileSnapshotStore, s *sealer, log *slog.Logger) (*raftboltdb.BoltStore, error) {
	path := filepath.Join(dataDir, dbFile)
	log.Info("raft: sealing the stores under this manager's data key", "file", path)
	if err := copySealed(store, path+".seal", s); err != nil {
		return store, err
	}
	if err := store.Close(); err != nil {
		return store, fmt.Errorf("raft: close %s: %w", path, err)
	}
	if err := os.Rename(path+".seal", path); err != nil {
		return nil, fmt.Errorf("raft: replace %s: %w", path, err)
	}
	if err := atomicfile.SyncDir(dataDir); err != nil {
		return nil, err
	}
	store, err := openBolt(path)
	if err != nil {
		return nil, err
	}
	if err := sealSnapshots(dataDir, snaps, s); err != nil {
		return store, err
	}
	if err := store.Set(sealedWith, s.currentID[:]); err != nil {
		return store, fmt.Errorf("raft: mark %s sealed: %w", path, err)
	}
	return store, nil
}

// copySealed writes every entry and the stable keys of store, sealed under
// s's current key, into a new bolt file at tmp.
func copySealed(store *raftboltdb.BoltStore, tmp string, s *sealer) error {
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("raft: remove an unfinished %s: %w", tmp, err)
	}
	nw, err := openBolt(tmp)
	if err != nil {
		return err
	}
	src := &sealedStore{logStableStore: store, s: s, file: dbFile, plain: true}
	dst := &sealedStore{logStableStore: nw, s: s, file: tmp}
	err = copyLogs(src, dst)
	for _, k := range stableKeys {
		if err != nil {
			break
		}
		if v, gerr := store.Get(k); gerr == nil {
			err = nw.Set(k, v)
		}
	}
	if err == nil {
		err = nw.Sync()
	}
	if cerr := nw.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("raft: seal the log into %s: %w", tmp, err)
	}
	return nil
}

// copyLogs copies every entry of src into dst, a batch at a time.
func copyLogs(src, dst hraft.LogStore) error {
	first, err := src.FirstIndex()
	if err != nil {
		return err
	}
	last, err := src.LastIndex()
	if err != nil || last == 0 {
		return err
	}
	batch := make([]*hraft.Log, 0, resealBatch)
	for i := first; i <= last; i++ {
		l := new(hraft.Log)
		if err := src.GetLog(i, l); errors.Is(err, hraft.ErrLogNotFound) {
			continue
		} else if err != nil {
			return err
		}
		if batch = append(batch, l); len(batch) == resealBatch || i == last {
			if err := dst.StoreLogs(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	return nil
}

// sealSnapshots writes again, sealed under s's current key, each snapshot
// that is not, and removes the old one.
func sealSnapshots(dataDir string, snaps *hraft.FileSnapshotStore, s *sealer) error {
	metas, err := snaps.List()
	if err != nil {
		return fmt.Errorf("raft: list snapshots: %w", err)
	}
	sealed := &sealedSnapshots{SnapshotStore: snaps, s: s, plain: true}
	for _, m := range metas {
		dir := filepath.Join(dataDir, "snapshots", m.ID)
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			continue // reaped as the store made room for one sealed again
		}
		if err := sealSnapshot(snaps, sealed, m, s); err != nil {
			return err
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("raft: remove snapshot %s once sealed again: %w", m.ID, err)
		}
	}
	return nil
}

// sealSnapshot writes snapshot m again through sealed, unless it is sealed
// under the current key already.
func sealSnapshot(snaps *hraft.FileSnapshotStore, sealed *sealedSnapshots, m *hraft.SnapshotMeta, s *sealer) error {
	_, raw, err := snaps.Open(m.ID)
	if err != nil {
		return fmt.Errorf("raft: open snapshot %s: %w", m.ID, err)
	}
	want := append(append([]byte(nil), snapshotMagic...), s.currentID[:]...)
	current := (&peekReader{r: raw}).hasPrefix(want)
	raw.Close()
	if current {
		return nil
	}
	_, plain, err := sealed.Open(m.ID)
	if err != nil {
		return err
	}
	defer plain.Close()
	// The file store encodes the peers of old snapshot versions through a
	// transport; the network transport writes a peer's address as is, as
	// the in-memory one does.
	_, trans := hraft.NewInmemTransport("")
	defer trans.Close()
	sink, err := sealed.Create(m.Version, m.Index, m.Term, m.Configuration, m.ConfigurationIndex, trans)
	if err != nil {
		return fmt.Errorf("raft: seal snapshot %s: %w", m.ID, err)
	}
	if _, err := io.Copy(sink, plain); err != nil {
		sink.Cancel()
		return fmt.Errorf("raft: seal snapshot %s: %w", m.ID, err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("raft: seal snapshot %s: %w", m.ID, err)
	}
	return nil
}
