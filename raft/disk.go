package raft

import (
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"syscall"

	hraft "github.com/hashicorp/raft"
)

// diskWatch remembers whether this node's last write to its stores failed
// because the disk is full. hashicorp/raft answers a failed log write by
// stepping down, and loses the error's chain on the way (its LogCache
// quotes it with %q), so the stores report to a diskWatch themselves,
// from Raft's goroutines; Node.DiskError and Node.fail read it.
type diskWatch struct {
	log *slog.Logger

	mu  sync.Mutex     // mu guards err
	err *DiskFullError // nil unless the last write failed with ENOSPC
}

// note records the outcome of a write to file: an error that is ENOSPC
// makes the disk full, success makes it not, and any other error says
// nothing about space and changes nothing. Changes are logged.
func (d *diskWatch) note(file string, err error) {
	full := errors.Is(err, syscall.ENOSPC)
	if err != nil && !full {
		return
	}
	d.mu.Lock()
	was := d.err
	d.err = nil
	if full {
		d.err = &DiskFullError{File: file, Err: err}
	}
	d.mu.Unlock()
	switch {
	case full && was == nil:
		d.log.Error("raft: disk full; this manager cannot write its Raft log and will not lead until space is freed", "file", file, "error", err)
	case !full && was != nil:
		d.log.Info("raft: disk writable again", "file", was.File)
	}
}

// get returns the disk-full error, or nil.
func (d *diskWatch) get() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err == nil {
		return nil // not a nil *DiskFullError in a non-nil error
	}
	return d.err
}

// watchedStore is the log and stable store, reporting the outcome of every
// write to disk. Reads pass through.
type watchedStore struct {
	logStableStore
	file string // the bolt file, for DiskFullError
	disk *diskWatch
}

// StoreLog is called by Raft's goroutines to append an entry.
func (s *watchedStore) StoreLog(l *hraft.Log) error {
	return s.note(s.logStableStore.StoreLog(l))
}

// StoreLogs is called by Raft's goroutines to append entries.
func (s *watchedStore) StoreLogs(logs []*hraft.Log) error {
	return s.note(s.logStableStore.StoreLogs(logs))
}

// DeleteRange is called by Raft's goroutines to compact the log.
func (s *watchedStore) DeleteRange(lo, hi uint64) error {
	return s.note(s.logStableStore.DeleteRange(lo, hi))
}

// Set is called by Raft's goroutines to save the vote.
func (s *watchedStore) Set(k, v []byte) error {
	return s.note(s.logStableStore.Set(k, v))
}

// SetUint64 is called by Raft's goroutines to save the term.
func (s *watchedStore) SetUint64(k []byte, v uint64) error {
	return s.note(s.logStableStore.SetUint64(k, v))
}

func (s *watchedStore) note(err error) error {
	s.disk.note(s.file, err)
	return err
}

// watchedSnapshots is the snapshot store, reporting the outcome of every
// snapshot written to disk.
type watchedSnapshots struct {
	hraft.SnapshotStore
	dir  string // DataDir/snapshots
	disk *diskWatch
}

// Create is called by Raft's goroutines to start a snapshot; the store
// makes its directory and writes its metadata.
func (s *watchedSnapshots) Create(version hraft.SnapshotVersion, index, term uint64, c hraft.Configuration, cIndex uint64, trans hraft.Transport) (hraft.SnapshotSink, error) {
	sink, err := s.SnapshotStore.Create(version, index, term, c, cIndex, trans)
	if err != nil {
		s.disk.note(s.dir, err)
		return nil, err
	}
	return &watchedSink{SnapshotSink: sink, file: filepath.Join(s.dir, sink.ID()), disk: s.disk}, nil
}

// watchedSink is a snapshot being written, reporting its failed writes and
// the outcome of Close, which flushes and syncs it.
type watchedSink struct {
	hraft.SnapshotSink
	file string
	disk *diskWatch
}

// Write is called by the StateMachine's Snapshot.Persist. Its success says
// nothing of the disk (the sink buffers), so only failures are noted.
func (s *watchedSink) Write(p []byte) (int, error) {
	n, err := s.SnapshotSink.Write(p)
	if err != nil {
		s.disk.note(s.file, err)
	}
	return n, err
}

// Close is called by Raft once the snapshot is persisted.
func (s *watchedSink) Close() error {
	err := s.SnapshotSink.Close()
	s.disk.note(s.file, err)
	return err
}
