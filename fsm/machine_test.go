package fsm_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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

// TestMachineHalts: at a command a newer quorumca wrote, the Machine
// applies nothing from that entry on, rather than skip it (and leave this
// manager's state behind the others' for good). Every later Apply, even of
// a command it reads, and every Restore return the same error, which says
// to upgrade; watchers are woken to see it. Entries that are merely bad
// are still refused and skipped (TestMachineApply).
func TestMachineHalts(t *testing.T) {
	f := newFixture(t)
	at := `"at":"2030-01-01T00:00:00Z"`
	for _, tt := range []struct {
		name    string
		entry   string
		unknown bool
	}{
		{"later version", fmt.Sprintf(`{"v":%d,%s,"prune":{}}`, fsm.Version+1, at), false},
		{"unknown field", `{"v":1,` + at + `,"prune":{},"priority":3}`, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := fsm.NewMachine()
			machineApply(t, m, 1, encode(t, f.initCmd()))
			machineApply(t, m, 2, encode(t, fsm.Command{At: now, Prune: &fsm.Prune{}}))
			before, changed := m.Watch()
			if err := m.Halted(); err != nil {
				t.Fatalf("Halted() before the newer command = %v, want nil", err)
			}

			r := machineApply(t, m, 3, []byte(tt.entry))
			var ne *fsm.NewerError
			if !errors.As(r.Err, &ne) || !errors.Is(r.Err, fsm.ErrNewer) {
				t.Fatalf("Apply(3, %s) error = %v, want a *fsm.NewerError", tt.entry, r.Err)
			}
			if ne.Index != 3 || ne.Max != fsm.Version || (ne.Unknown != "") != tt.unknown {
				t.Errorf("Apply(3, %s) error = %+v, want index 3, max %d, unknown field %t", tt.entry, *ne, fsm.Version, tt.unknown)
			}
			if r.State != before || m.State() != before || before.Index != 2 {
				t.Errorf("Apply(3, %s) state at index %d, machine at %d, want the state at index 2 untouched", tt.entry, r.State.Index, m.State().Index)
			}
			if err := m.Halted(); err != r.Err {
				t.Errorf("Halted() = %v, want the error Apply returned, %v", err, r.Err)
			}
			for _, want := range []string{"upgrade this manager", "at index 3", fmt.Sprintf("reads up to version %d", fsm.Version)} {
				if !strings.Contains(r.Err.Error(), want) {
					t.Errorf("Halted() = %q, want it to say %q", r.Err, want)
				}
			}
			select {
			case <-changed:
			default:
				t.Errorf("Watch() channel still open after the Machine halted, want closed")
			}

			// Nothing more is applied, good commands included.
			for i, data := range [][]byte{
				encode(t, fsm.Command{At: now, Prune: &fsm.Prune{}}),
				encode(t, f.join(idNew, ca.RoleWorker, f.workerSecret, now)),
				[]byte("garbage"),
			} {
				index := uint64(4 + i)
				r := machineApply(t, m, index, data)
				if r.Err != m.Halted() || r.State != before || m.State() != before {
					t.Errorf("Apply(%d) on a halted Machine = state at %d, %v; want the state at 2 and %v", index, r.State.Index, r.Err, m.Halted())
				}
			}
			var buf bytes.Buffer
			if _, err := before.WriteTo(&buf); err != nil {
				t.Fatalf("WriteTo() = %v", err)
			}
			if err := m.Restore(&buf); err != m.Halted() || m.State() != before {
				t.Errorf("Restore() on a halted Machine = %v, want %v and the state kept", err, m.Halted())
			}
		})
	}
}

// TestReadStateFormats: snapshots carry their format; ReadState reads
// those written before formats were named, and refuses a later format
// with an error that names both formats and says to upgrade.
func TestReadStateFormats(t *testing.T) {
	w := newWorld(t)
	var buf bytes.Buffer
	if _, err := w.base.WriteTo(&buf); err != nil {
		t.Fatalf("WriteTo() = %v", err)
	}
	var head struct {
		Format *int `json:"format"`
	}
	if err := json.Unmarshal(buf.Bytes(), &head); err != nil || head.Format == nil || *head.Format != fsm.SnapshotFormat {
		t.Fatalf("WriteTo() wrote format %v (%v), want %d", head.Format, err, fsm.SnapshotFormat)
	}

	// Before formats were named, a snapshot was the state's JSON alone.
	old, err := json.Marshal(w.base)
	if err != nil {
		t.Fatalf("json.Marshal(state) = %v", err)
	}
	if bytes.Contains(old, []byte(`"format"`)) {
		t.Fatalf("json.Marshal(state) names a format; the test needs a snapshot as they were before")
	}
	got, err := fsm.ReadState(bytes.NewReader(old))
	if err != nil {
		t.Fatalf("ReadState(snapshot without a format) = %v, want it read", err)
	}
	if d := diff(got, w.base); d != "" {
		t.Errorf("ReadState(snapshot without a format) differs:\n%s", d)
	}

	// A later format is refused before its fields are read: they may not
	// decode as this format's do.
	next := fsm.SnapshotFormat + 1
	for _, newer := range []string{
		fmt.Sprintf(`{"format":%d,`, next) + string(old[1:]),
		fmt.Sprintf(`{"format":%d,"nodes":[{"id":"a"}],"index":"seven"}`, next),
	} {
		s, err := fsm.ReadState(strings.NewReader(newer))
		var ne *fsm.NewerError
		if !errors.As(err, &ne) || !errors.Is(err, fsm.ErrNewer) || errors.Is(err, fsm.ErrBadCommand) {
			t.Fatalf("ReadState(format %d) = %v, %v, want a snapshot's *fsm.NewerError", next, s, err)
		}
		if !ne.Snapshot || ne.Version != next || ne.Max != fsm.SnapshotFormat {
			t.Errorf("ReadState(format %d) error = %+v, want snapshot format %d, max %d", next, *ne, next, fsm.SnapshotFormat)
		}
		for _, want := range []string{"upgrade this manager", fmt.Sprintf("format %d", next), fmt.Sprintf("up to format %d", fsm.SnapshotFormat)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("ReadState(format %d) error %q does not say %q", next, err, want)
			}
		}
		m := fsm.NewMachine()
		before := m.State()
		if err := m.Restore(strings.NewReader(newer)); !errors.Is(err, fsm.ErrNewer) || m.State() != before {
			t.Errorf("Restore(format %d) = %v, want ErrNewer and the state kept", next, err)
		}
	}
}
