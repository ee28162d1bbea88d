package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
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

// WriteTo serialises the state, for a snapshot: the JSON of snapshotFile,
// written as it goes rather than built whole. The nodes come last, as
// the "nodes" member of the same object, written by NodeMap.writeJSON;
// JSON does not order an object's members, so ReadState, and the
// versions before it, read it as they read json.Marshal's.
func (s *State) WriteTo(w io.Writer) (int64, error) {
	head := *s
	head.Nodes = NodeMap{}
	b, err := json.Marshal(snapshotFile{Format: SnapshotFormat, State: &head})
	if err != nil {
		return 0, fmt.Errorf("fsm: encode state: %w", err)
	}
	cw := &countingWriter{w: w}
	if s.Nodes.Len() == 0 {
		_, err := cw.Write(b)
		return cw.n, err
	}
	// b is {"format":1,...}: the nodes go in before its closing brace.
	b = append(b[:len(b)-1], `,"nodes":`...)
	if _, err := cw.Write(b); err != nil {
		return cw.n, err
	}
	if err := s.Nodes.writeJSON(cw); err != nil {
		if errors.Is(err, errBadTime) {
			err = fmt.Errorf("fsm: encode state: %w", err)
		}
		return cw.n, err
	}
	_, err = cw.Write([]byte{'}'})
	return cw.n, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadState parses a state written by WriteTo, of SnapshotFormat or an
// earlier format.
func ReadState(r io.Reader) (*State, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("fsm: read snapshot: %w", err)
	}
	// The nodes are most of a snapshot: they are cut out, the rest is
	// read first, then they are read by NodeMap's reader. A snapshot that
	// is not a plain object with one "nodes" member is read whole, as it
	// was before.
	head, nodes, ok := cutNodes(b)
	if !ok {
		head = b
	}
	// The format first: a later format may not decode as this one does.
	var format struct {
		Format int `json:"format"`
	}
	if json.Unmarshal(head, &format) == nil && format.Format > SnapshotFormat {
		return nil, &NewerError{Snapshot: true, Version: format.Format, Max: SnapshotFormat}
	}
	var s State
	if err := json.NewDecoder(bytes.NewReader(head)).Decode(&s); err != nil {
		return nil, fmt.Errorf("fsm: decode snapshot: %w", err)
	}
	if ok && nodes != nil {
		if s.Nodes, err = parseNodes(nodes); err != nil {
			return nil, fmt.Errorf("fsm: decode snapshot: %w", err)
		}
	}
	return &s, nil
}

// cutNodes splits the JSON object b into the object without its "nodes"
// member and that member's value (nil when it has none). It reports false
// when b is not an object of members it can tell apart: keys with
// escapes, a key that encoding/json would take for "nodes" (it ignores
// case) but is not, a "nodes" member twice, or anything after the object
// but white space.
func cutNodes(b []byte) (head, nodes []byte, ok bool) {
	r := reader{b: b}
	r.ws()
	if !r.byte('{') {
		return nil, nil, false
	}
	head = make([]byte, 0, 4<<10)
	head = append(head, '{')
	r.ws()
	if !r.byte('}') {
		for {
			r.ws()
			start := r.i
			key, ok := r.str()
			if !ok {
				return nil, nil, false
			}
			r.ws()
			if !r.byte(':') {
				return nil, nil, false
			}
			r.ws()
			vstart := r.i
			end, ok := skipValue(b, vstart)
			if !ok {
				return nil, nil, false
			}
			switch {
			case string(key) == "nodes":
				if nodes != nil {
					return nil, nil, false
				}
				nodes = b[vstart:end]
			case strings.EqualFold(string(key), "nodes"):
				return nil, nil, false
			default:
				if len(head) > 1 {
					head = append(head, ',')
				}
				head = append(head, b[start:end]...)
			}
			r.i = end
			r.ws()
			if r.byte('}') {
				break
			}
			if !r.byte(',') {
				return nil, nil, false
			}
		}
	}
	if r.ws(); r.i != len(b) {
		return nil, nil, false
	}
	return append(head, '}'), nodes, true
}
