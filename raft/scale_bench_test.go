package raft

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	qfsm "github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/fsm/fsmtest"
)

// machine adapts qfsm.Machine to StateMachine as the manager does: a
// snapshot is the state's pointer, written with WriteTo.
type machine struct{ m *qfsm.Machine }

func (s machine) Apply(index uint64, cmd []byte) any { return s.m.Apply(index, cmd) }
func (s machine) Snapshot() (Snapshot, error)        { return machineSnapshot{s.m.Snapshot()}, nil }
func (s machine) Restore(r io.Reader) error          { return s.m.Restore(r) }

type machineSnapshot struct{ st *qfsm.State }

func (s machineSnapshot) Persist(w io.Writer) error { _, err := s.st.WriteTo(w); return err }
func (machineSnapshot) Release()                    {}

// BenchmarkScaleSnapshotFile persists the fsm state of N nodes through
// the stores a Node writes its snapshots with (hashicorp/raft's file
// store, watched, and sealed under a data key when sealed=true), to a
// real file synced on close; and restores it from that file as Raft does
// at Open. The goal: each at most 2 s at 100k nodes.
//
//	go test -run '^$' -bench 'Scale' -benchtime 20x ./raft/
func BenchmarkScaleSnapshotFile(b *testing.B) {
	for _, sealed := range []bool{false, true} {
		for _, n := range []int{1_000, 10_000, 100_000} {
			sc, err := fsmtest.NewScale(n, 0)
			if err != nil {
				b.Fatal(err)
			}
			m := qfsm.NewMachine()
			if err := m.Restore(stateReader(b, sc.State)); err != nil {
				b.Fatal(err)
			}
			f := fsm{sm: machine{m}, applied: &appliedIndex{}}
			store := scaleStore(b, sealed)
			var id string
			b.Run(fmt.Sprintf("op=persist/sealed=%t/nodes=%d", sealed, n), func(b *testing.B) {
				for b.Loop() {
					snap, err := f.Snapshot()
					if err != nil {
						b.Fatal(err)
					}
					sink, err := store.Create(hraft.SnapshotVersionMax, sc.State.Index, 1, hraft.Configuration{}, 1, nil)
					if err != nil {
						b.Fatal(err)
					}
					if err := snap.Persist(sink); err != nil {
						b.Fatal(err)
					}
					snap.Release()
					id = sink.ID()
				}
				b.ReportMetric(float64(b.Elapsed())/float64(time.Millisecond)/float64(b.N), "ms/op")
			})
			b.Run(fmt.Sprintf("op=restore/sealed=%t/nodes=%d", sealed, n), func(b *testing.B) {
				for b.Loop() {
					meta, rc, err := store.Open(id)
					if err != nil {
						b.Fatal(err)
					}
					if err := f.Restore(rc); err != nil {
						b.Fatal(err)
					}
					if got := m.State().Nodes.Len(); got != n {
						b.Fatalf("restored %d nodes, want %d", got, n)
					}
					b.ReportMetric(float64(meta.Size)/float64(n), "bytes/node")
				}
				b.ReportMetric(float64(b.Elapsed())/float64(time.Millisecond)/float64(b.N), "ms/op")
			})
		}
	}
}

// scaleStore returns the snapshot store of a Node in a temporary data
// directory, sealed under a new data key if sealed.
func scaleStore(b *testing.B, sealed bool) hraft.SnapshotStore {
	b.Helper()
	dir := b.TempDir()
	files, err := hraft.NewFileSnapshotStoreWithLogger(dir, snapshotsRetained, newHCLogger(slog.New(slog.DiscardHandler), "raft"))
	if err != nil {
		b.Fatal(err)
	}
	var store hraft.SnapshotStore = files
	if sealed {
		key := make([]byte, DataKeySize)
		rand.Read(key)
		s, err := newSealer(Keys{Current: key})
		if err != nil {
			b.Fatal(err)
		}
		store = &sealedSnapshots{SnapshotStore: files, s: s}
	}
	disk := &diskWatch{log: slog.New(slog.DiscardHandler)}
	return &watchedSnapshots{SnapshotStore: store, dir: filepath.Join(dir, "snapshots"), disk: disk}
}

// stateReader returns s as a snapshot stream.
func stateReader(b *testing.B, s *qfsm.State) io.Reader {
	b.Helper()
	r, w := io.Pipe()
	go func() { _, err := s.WriteTo(w); w.CloseWithError(err) }()
	return r
}
