package raft

import (
	"errors"
	"fmt"
	"io"

	hraft "github.com/hashicorp/raft"
)

// StateMachine is what a Node replicates. Raft calls it from one goroutine
// (hashicorp/raft's FSM goroutine), never concurrently with itself, except
// that a Snapshot's Persist runs while later Apply calls go on.
type StateMachine interface {
	// Apply is called from Raft's FSM goroutine for each committed command,
	// in log order, with the entry's index and data, on every manager. It
	// must be deterministic: the same commands give the same state on every
	// manager. Its result is what Node.Apply returns on the leader; a
	// command that is refused should say so in its result, since Apply
	// cannot fail.
	Apply(index uint64, cmd []byte) any

	// Snapshot is called from Raft's FSM goroutine, between Apply calls, to
	// take a point-in-time snapshot. It must be cheap (the state is an
	// immutable value, so it can take a reference); the snapshot is written
	// out later by Snapshot.Persist on another goroutine. An error skips
	// this snapshot; Raft tries again later.
	Snapshot() (Snapshot, error)

	// Restore is called from Raft's FSM goroutine, at Open when a snapshot
	// exists on disk and whenever the leader sends one, to replace the
	// whole state with the one r holds. An error leaves the node unable to
	// follow: Open fails, or the leader retries the snapshot.
	Restore(r io.Reader) error
}

// Snapshot is a point-in-time state taken by StateMachine.Snapshot.
type Snapshot interface {
	// Persist is called from a Raft snapshot goroutine to write the
	// snapshot to w. Apply may run meanwhile. An error discards the
	// snapshot being written.
	Persist(w io.Writer) error

	// Release is called once Raft is done with the snapshot, whether
	// Persist was called or succeeded or not.
	Release()
}

// fsm adapts a StateMachine to hashicorp/raft's FSM, and records the
// index of each entry it applied (see recover.go).
type fsm struct {
	sm      StateMachine
	applied *appliedIndex
}

var _ hraft.FSM = fsm{}

func (f fsm) Apply(l *hraft.Log) any {
	out := f.sm.Apply(l.Index, l.Data)
	f.applied.set(l.Index)
	return out
}

func (f fsm) Snapshot() (hraft.FSMSnapshot, error) {
	s, err := f.sm.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("raft: snapshot state: %w", err)
	}
	return fsmSnapshot{s}, nil
}

func (f fsm) Restore(rc io.ReadCloser) error {
	err := f.sm.Restore(rc)
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("raft: restore state from snapshot: %w", err)
	}
	return nil
}

// fsmSnapshot adapts a Snapshot to hashicorp/raft's FSMSnapshot.
type fsmSnapshot struct{ s Snapshot }

func (f fsmSnapshot) Persist(sink hraft.SnapshotSink) error {
	if err := f.s.Persist(sink); err != nil {
		return errors.Join(fmt.Errorf("raft: persist snapshot: %w", err), sink.Cancel())
	}
	return sink.Close()
}

func (f fsmSnapshot) Release() { f.s.Release() }
