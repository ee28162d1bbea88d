package raft

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	hraft "github.com/hashicorp/raft"

	"github.com/quorumca/quorumca/internal/atomicfile"
)

// Forcing a new cluster (Config.ForceNewCluster) makes a surviving
// manager the only voter of its Raft configuration, with hashicorp/raft's
// RecoverCluster: the latest snapshot is restored, every entry of this
// node's log after it is applied (committed or not: the recovery commits
// them), and a new snapshot replaces the log, holding the configuration
// of this node alone.
//
// The node cannot tell which of the entries it holds had been committed.
// What it knows is the last index it applied (applied-index, written
// after each entry its state machine applies, without fsync: after a
// power loss it may say less, never more) and its last snapshot's. The
// entries after that index are reported (Recovery.Committed), so that the
// caller can mark what they recorded as possibly never answered.
//
// The recovery is crash-safe: recovery.json is written (and fsynced)
// before RecoverCluster runs, and rewritten as done after; an Open that
// finds it not done runs the recovery again, which repeats the same
// steps. The caller ends it with FinishRecovery once it has recorded the
// recovery in its state.

const (
	appliedFile  = "applied-index"
	recoveryFile = "recovery.json"
)

// Recovery describes a forced new cluster.
type Recovery struct {
	// Lost are the node IDs of the other servers of the configuration
	// before: no longer voters.
	Lost []string `json:"lost"`
	// Committed is the last index this node knew to be committed; Last
	// the last index of its log. The entries after Committed, up to Last,
	// were committed by the recovery.
	Committed uint64 `json:"committed"`
	Last      uint64 `json:"last"`
	// Done says RecoverCluster ran to its end.
	Done bool `json:"done"`
}

// ErrNoState is returned by Open with ForceNewCluster when the data
// directory holds no Raft state to recover.
var ErrNoState = errors.New("raft: no Raft state to recover")

// appliedIndex records, best effort, the index of the last entry the
// state machine applied.
type appliedIndex struct {
	f *os.File
}

func openAppliedIndex(dataDir string) (*appliedIndex, error) {
	f, err := os.OpenFile(filepath.Join(dataDir, appliedFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("raft: %w", err)
	}
	return &appliedIndex{f: f}, nil
}

// set records index. It is not fsynced and its error is dropped: the file
// only ever says less than the truth, which marks more entries, never
// fewer.
func (a *appliedIndex) set(index uint64) {
	if a == nil {
		return
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], index)
	_, _ = a.f.WriteAt(b[:], 0)
}

func (a *appliedIndex) close() error {
	if a == nil {
		return nil
	}
	return a.f.Close()
}

// readAppliedIndex returns what applied-index holds (0 when it is missing
// or short).
func readAppliedIndex(dataDir string) uint64 {
	b, err := os.ReadFile(filepath.Join(dataDir, appliedFile))
	if err != nil || len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// readRecovery returns the recovery recorded in dataDir, nil if none.
func readRecovery(dataDir string) (*Recovery, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, recoveryFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("raft: %w", err)
	}
	var r Recovery
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("raft: %s: %w", filepath.Join(dataDir, recoveryFile), err)
	}
	return &r, nil
}

func writeRecovery(dataDir string, r *Recovery) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dataDir, recoveryFile), b, 0o600); err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	return nil
}

// forceNewCluster makes this node the only voter (see above). rec is the
// recovery a crash interrupted, or nil for a new one.
func forceNewCluster(rc *hraft.Config, sm hraft.FSM, logs hraft.LogStore, stable hraft.StableStore, snaps hraft.SnapshotStore,
	trans hraft.Transport, dataDir, advertise string, rec *Recovery, log *slog.Logger) (*Recovery, error) {
	has, err := hraft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return nil, fmt.Errorf("raft: read existing state: %w", err)
	}
	if !has {
		return nil, fmt.Errorf("%w in %s: --force-new-cluster recovers a manager's data directory; this one never held a cluster", ErrNoState, dataDir)
	}
	if rec == nil {
		if rec, err = planRecovery(logs, snaps, dataDir, string(rc.LocalID)); err != nil {
			return nil, err
		}
		if err := writeRecovery(dataDir, rec); err != nil {
			return nil, err
		}
	}
	err = hraft.RecoverCluster(rc, sm, logs, stable, snaps, trans, hraft.Configuration{Servers: []hraft.Server{{
		Suffrage: hraft.Voter, ID: rc.LocalID, Address: hraft.ServerAddress(advertise),
	}}})
	if err != nil {
		return nil, fmt.Errorf("raft: force new cluster: %w", err)
	}
	rec.Done = true
	if err := writeRecovery(dataDir, rec); err != nil {
		return nil, err
	}
	log.Warn("raft: forced a new cluster: this manager is now the only voter",
		"lost", rec.Lost, "last_known_committed", rec.Committed, "last_index", rec.Last,
		"committed_by_recovery", rec.Last-min(rec.Last, rec.Committed))
	return rec, nil
}

// planRecovery reads, before RecoverCluster changes them, the servers of
// the latest configuration and the indexes a Recovery reports.
func planRecovery(logs hraft.LogStore, snaps hraft.SnapshotStore, dataDir, self string) (*Recovery, error) {
	conf, snapIndex, err := latestConfiguration(logs, snaps)
	if err != nil {
		return nil, err
	}
	last, err := logs.LastIndex()
	if err != nil {
		return nil, fmt.Errorf("raft: %w", err)
	}
	rec := &Recovery{Last: max(last, snapIndex), Committed: max(snapIndex, readAppliedIndex(dataDir))}
	rec.Committed = min(rec.Committed, rec.Last)
	for _, s := range conf.Servers {
		if string(s.ID) != self {
			rec.Lost = append(rec.Lost, string(s.ID))
		}
	}
	slices.Sort(rec.Lost)
	return rec, nil
}

// latestConfiguration returns the latest Raft configuration in the log,
// or else in the latest snapshot, and the latest snapshot's index.
func latestConfiguration(logs hraft.LogStore, snaps hraft.SnapshotStore) (hraft.Configuration, uint64, error) {
	metas, err := snaps.List()
	if err != nil {
		return hraft.Configuration{}, 0, fmt.Errorf("raft: list snapshots: %w", err)
	}
	var conf hraft.Configuration
	var snapIndex uint64
	if len(metas) > 0 {
		conf, snapIndex = metas[0].Configuration, metas[0].Index
	}
	first, err := logs.FirstIndex()
	if err != nil {
		return hraft.Configuration{}, 0, fmt.Errorf("raft: %w", err)
	}
	last, err := logs.LastIndex()
	if err != nil {
		return hraft.Configuration{}, 0, fmt.Errorf("raft: %w", err)
	}
	for i := last; i >= first && i > snapIndex && i > 0; i-- {
		var l hraft.Log
		if err := logs.GetLog(i, &l); err != nil {
			return hraft.Configuration{}, 0, fmt.Errorf("raft: read entry %d: %w", i, err)
		}
		if l.Type == hraft.LogConfiguration {
			return hraft.DecodeConfiguration(l.Data), snapIndex, nil
		}
	}
	return conf, snapIndex, nil
}

// PendingRecovery returns the forced new cluster that Open did and the
// caller has not finished (FinishRecovery), or nil.
func (n *Node) PendingRecovery() *Recovery {
	n.recMu.Lock()
	defer n.recMu.Unlock()
	if n.recovery == nil {
		return nil
	}
	r := *n.recovery
	r.Lost = slices.Clone(r.Lost)
	return &r
}

// FinishRecovery ends the forced new cluster once the caller has recorded
// it: recovery.json is removed, and a later Open starts as usual.
func (n *Node) FinishRecovery() error {
	n.recMu.Lock()
	defer n.recMu.Unlock()
	if n.recovery == nil {
		return nil
	}
	if err := os.Remove(filepath.Join(n.dataDir, recoveryFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("raft: %w", err)
	}
	if err := atomicfile.SyncDir(n.dataDir); err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	n.recovery = nil
	return nil
}
