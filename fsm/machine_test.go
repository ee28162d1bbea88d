package fsm_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

func encode(t testing.TB, c fsm.Command) []byte {
	t.Helper()
	b, err := fsm.Encode(c)
	if err != nil {
		t.Fatalf("Encode(%s) = %v", describe(c), err)
	}
	return b
}

func machineApply(t testing.TB, m *fsm.Machine, index uint64, data []byte) fsm.Result {
	t.Helper()
	r, ok := m.Apply(index, data).(fsm.Result)
	if !ok {
		t.Fatalf("Machine.Apply(%d) returned %T, want fsm.Result", index, r)
	}
	return r
}

func TestMachineApply(t *testing.T) {
	f := newFixture(t)
	m := fsm.NewMachine()
	if s := m.State(); s == nil || s.Initialized() || s.Index != 0 {
		t.Fatalf("NewMachine().State() = %+v, want the empty state", s)
	}

	_, changed := m.Watch()
	r := machineApply(t, m, 1, encode(t, f.initCmd()))
	if r.Err != nil || r.State == nil || r.State.Index != 1 || r.State.ClusterID != f.clusterID {
		t.Fatalf("Apply(1, init) = %+v, want the initialized state at index 1", r)
	}
	if m.State() != r.State {
		t.Errorf("State() = %p, want the state Apply returned %p", m.State(), r.State)
	}
	select {
	case <-changed:
	default:
		t.Errorf("Watch() channel still open after Apply, want closed")
	}
	s, next := m.Watch()
	if s != r.State {
		t.Errorf("Watch() state = %p, want %p", s, r.State)
	}
	select {
	case <-next:
		t.Errorf("Watch() channel after Apply is closed, want open until the next change")
	default:
	}

	// A refused command and a log entry that does not decode advance the
	// index and nothing else.
	for _, tt := range []struct {
		data []byte
		want error
	}{
		{encode(t, fsm.Command{At: now, RemoveNode: &fsm.RemoveNode{NodeID: f.managerID}}), fsm.ErrLastManager},
		{[]byte("garbage"), fsm.ErrBadCommand},
		{[]byte(`{"v":1,"prune":{},"remove_node":{"node_id":"x"}}`), fsm.ErrBadCommand},
	} {
		before := m.State()
		index := before.Index + 1
		r := machineApply(t, m, index, tt.data)
		if !errors.Is(r.Err, tt.want) {
			t.Errorf("Apply(%d, %q) error = %v, want %v", index, tt.data, r.Err, tt.want)
		}
		if d := diff(r.State, withIndex(before, index)); d != "" {
			t.Errorf("Apply(%d, %q) changed more than Index:\n%s", index, tt.data, d)
		}
		if m.State() != r.State {
			t.Errorf("State() after a refused command is not the Result's state")
		}
	}
}

// TestMachineWatch waits, from another goroutine, for a state Apply makes,
// the way readers of the Machine do.
func TestMachineWatch(t *testing.T) {
	f := newFixture(t)
	m := fsm.NewMachine()
	const last = 20
	seen := make(chan uint64)
	go func() {
		for {
			s, changed := m.Watch()
			if s.Index >= last {
				seen <- s.Index
				return
			}
			<-changed
		}
	}()
	machineApply(t, m, 1, encode(t, f.initCmd()))
	for i := uint64(2); i <= last; i++ {
		machineApply(t, m, i, encode(t, fsm.Command{At: now, Prune: &fsm.Prune{}}))
	}
	if got := <-seen; got != last {
		t.Errorf("watcher saw index %d, want %d", got, last)
	}
}

func TestMachineSnapshotRestore(t *testing.T) {
	w := newWorld(t)
	src := fsm.NewMachine()
	// Replay the base world into src by restoring it, then change it.
	var buf bytes.Buffer
	if _, err := w.base.WriteTo(&buf); err != nil {
		t.Fatalf("WriteTo() = %v", err)
	}
	if err := src.Restore(&buf); err != nil {
		t.Fatalf("Restore(base) = %v", err)
	}
	r := machineApply(t, src, w.base.Index+1, encode(t, w.renew(idW, ca.RoleWorker, now, time.Hour)))
	if r.Err != nil {
		t.Fatalf("Apply(renew) = %v", r.Err)
	}

	snap := src.Snapshot()
	buf.Reset()
	n, err := snap.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo() = %d, %v, want %d, nil", n, err, buf.Len())
	}
	// Apply goes on while the snapshot is persisted: the snapshot does not
	// move.
	machineApply(t, src, r.State.Index+1, encode(t, fsm.Command{At: now, RemoveNode: &fsm.RemoveNode{NodeID: idW}}))
	if _, ok := snap.Node(idW); !ok {
		t.Errorf("snapshot lost %s when the machine removed it afterwards", idW)
	}

	dst := fsm.NewMachine()
	_, changed := dst.Watch()
	if err := dst.Restore(&buf); err != nil {
		t.Fatalf("Restore() = %v", err)
	}
	if d := diff(dst.State(), snap); d != "" {
		t.Errorf("restored state differs from the snapshot:\n%s", d)
	}
	select {
	case <-changed:
	default:
		t.Errorf("Watch() channel still open after Restore, want closed")
	}

	before := dst.State()
	if err := dst.Restore(strings.NewReader("{not a snapshot")); err == nil {
		t.Errorf("Restore(garbage) = nil, want an error")
	}
	if dst.State() != before {
		t.Errorf("Restore(garbage) replaced the state")
	}
}

// TestReadStateEmpty: a snapshot of the empty state restores to an
// uninitialized state with a usable, empty Nodes map.
func TestReadStateEmpty(t *testing.T) {
	s := snapshot(t, &fsm.State{})
	if s.Nodes.Len() != 0 || s.Initialized() {
		t.Errorf("ReadState(empty) = %+v, want uninitialized with no nodes", s)
	}
	if got := s.Nodes.With(fsm.Node{ID: "a"}); got.Len() != 1 || s.Nodes.Len() != 0 {
		t.Errorf("Nodes.With on a restored empty state: %d nodes, original %d; want 1 and 0", got.Len(), s.Nodes.Len())
	}
}
