package fsm

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// Machine holds the current State for a Raft node: Apply is called in log
// order from one goroutine; State and Watch may be called from any.
type Machine struct {
	mu      sync.Mutex // guards state and changed
	state   *State
	changed chan struct{} // closed and replaced when state changes
}

// NewMachine returns a Machine holding the empty state.
func NewMachine() *Machine {
	return &Machine{state: &State{}, changed: make(chan struct{})}
}

// Apply decodes and applies one log entry. It returns a Result; a command
// that does not decode is refused like any other.
func (m *Machine) Apply(index uint64, data []byte) any {
	cur := m.State()
	var (
		next *State
		err  error
	)
	cmd, derr := Decode(data)
	if derr != nil {
		next, err = advance(cur, index), derr
	} else {
		next, err = Apply(cur, index, cmd)
	}
	m.set(next)
	return Result{State: next, Err: err}
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
// state next changes.
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

// Restore replaces the state with one read from r, as Persist wrote it.
func (m *Machine) Restore(r io.Reader) error {
	s, err := ReadState(r)
	if err != nil {
		return err
	}
	m.set(s)
	return nil
}

// WriteTo serialises the state, for a snapshot.
func (s *State) WriteTo(w io.Writer) (int64, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return 0, fmt.Errorf("fsm: encode state: %w", err)
	}
	n, err := w.Write(b)
	return int64(n), err
}

// ReadState parses a state written by WriteTo.
func ReadState(r io.Reader) (*State, error) {
	var s State
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return nil, fmt.Errorf("fsm: decode snapshot: %w", err)
	}
	return &s, nil
}
