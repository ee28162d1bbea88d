package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Machine holds the current State for a Raft node: Apply is called in log
// order from one goroutine; State, Watch and Halted may be called from
// any.
//
// A Machine halts at the first command a newer quorumca wrote (ErrNewer):
// it applies nothing from that entry on, as skipping it would leave this
// manager's state behind the others' for good.
type Machine struct {
	mu      sync.Mutex // guards state, changed and halted
	state   *State
	changed chan struct{} // closed and replaced when state changes or the machine halts
	halted  error         // set once, by Apply
}

// NewMachine returns a Machine holding the empty state.
func NewMachine() *Machine {
	return &Machine{state: &State{}, changed: make(chan struct{})}
}

// Apply decodes and applies one log entry. It returns a Result; a command
// that does not decode is refused like any other, but for one a newer
// quorumca wrote: then the Machine halts, and this Apply and every later
// one return the state as it was with Halted's error.
func (m *Machine) Apply(index uint64, data []byte) any {
	cur, halted := m.current()
	if halted != nil {
		return Result{State: cur, Err: halted}
	}
	var (
		next *State
		err  error
	)
	cmd, derr := Decode(data)
	var newer *NewerError
	switch {
	case errors.As(derr, &newer):
		at := *newer
		at.Index = index
		return Result{State: cur, Err: m.halt(&at)}
	case derr != nil:
		next, err = advance(cur, index), derr
	default:
		next, err = Apply(cur, index, cmd)
	}
	m.set(next)
	return Result{State: next, Err: err}
}

// Halted returns nil while the Machine applies commands, and once it met
// a command a newer quorumca wrote, the *NewerError that says so (with the
// command's index): the manager must be upgraded.
func (m *Machine) Halted() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.halted
}

func (m *Machine) current() (*State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state, m.halted
}

// halt stops the Machine with err, and wakes the watchers so that they
// can see it.
func (m *Machine) halt(err error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.halted = err
	close(m.changed)
	m.changed = make(chan struct{})
	return err
}

func advance(s *State, index uint64) *State {
	c := *s
	c.Index = index
	return &c
}

// State returns the current state. The caller must not modify it.
func (m *Machine) State() *State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// Watch returns the current state and a channel that is closed when the
// state next changes, or the Machine halts.
func (m *Machine) Watch() (*State, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state, m.changed
}

func (m *Machine) set(s *State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state = s
	close(m.changed)
	m.changed = make(chan struct{})
}

// Snapshot returns the current state, to be persisted with WriteTo while
// Apply goes on.
func (m *Machine) Snapshot() *State { return m.State() }

// Restore replaces the state with one read from r, as WriteTo wrote it.
// A halted Machine restores nothing and returns Halted's error.
func (m *Machine) Restore(r io.Reader) error {
	if err := m.Halted(); err != nil {
		return err
	}
	s, err := ReadState(r)
	if err != nil {
		return err
	}
	m.set(s)
	return nil
}

// SnapshotFormat is the snapshot encoding WriteTo writes. ReadState reads
// it and the earlier ones (a snapshot that names no format, as before
// formats were named, is of format 1), and refuses a later one with a
// *NewerError rather than misread it.
const SnapshotFormat = 1

// snapshotFile is a snapshot as WriteTo writes it: the state's fields and
// the format beside them.
type snapshotFile struct {
	Format int `json:"format"`
	*State
}

// WriteTo serialises the state, for a snapshot.
func (s *State) WriteTo(w io.Writer) (int64, error) {
	b, err := json.Marshal(snapshotFile{Format: SnapshotFormat, State: s})
	if err != nil {
		return 0, fmt.Errorf("fsm: encode state: %w", err)
	}
	n, err := w.Write(b)
	return int64(n), err
}

// ReadState parses a state written by WriteTo, of SnapshotFormat or an
// earlier format.
func ReadState(r io.Reader) (*State, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("fsm: read snapshot: %w", err)
	}
	// The format first: a later format may not decode as this one does.
	var head struct {
		Format int `json:"format"`
	}
	if json.Unmarshal(b, &head) == nil && head.Format > SnapshotFormat {
		return nil, &NewerError{Snapshot: true, Version: head.Format, Max: SnapshotFormat}
	}
	var s State
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&s); err != nil {
		return nil, fmt.Errorf("fsm: decode snapshot: %w", err)
	}
	return &s, nil
}
