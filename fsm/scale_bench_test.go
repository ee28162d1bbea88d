package fsm_test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/fsm/fsmtest"
)

// The scale benchmarks measure the state at 1k, 10k and 100k nodes: the
// cost of applying one renewal and one join (which must not grow with the
// number of nodes), and of writing and reading a snapshot (bytes per node,
// and time).
//
//	go test -run '^$' -bench 'Scale' -benchtime 20x ./fsm/

var scaleSizes = []int{1_000, 10_000, 100_000}

// scaleCmds is how many distinct renewals and joins each size has.
const scaleCmds = 1000

var scales struct {
	mu sync.Mutex // guards m
	m  map[int]*fsmtest.Scale
}

// scaleOf returns the cluster of n nodes, built once per run.
func scaleOf(b *testing.B, n int) *fsmtest.Scale {
	b.Helper()
	scales.mu.Lock()
	defer scales.mu.Unlock()
	if sc, ok := scales.m[n]; ok {
		return sc
	}
	sc, err := fsmtest.NewScale(n, scaleCmds)
	if err != nil {
		b.Fatalf("fsmtest.NewScale(%d) = %v", n, err)
	}
	if scales.m == nil {
		scales.m = map[int]*fsmtest.Scale{}
	}
	scales.m[n] = sc
	return sc
}

func benchApplyScale(b *testing.B, cmds func(*fsmtest.Scale) []fsm.Command) {
	for _, n := range scaleSizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			sc := scaleOf(b, n)
			list := cmds(sc)
			s := sc.State
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := fsm.Apply(s, s.Index+1, list[i%len(list)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkScaleApplyRenew is one renewal applied to a state of N nodes.
func BenchmarkScaleApplyRenew(b *testing.B) {
	benchApplyScale(b, func(sc *fsmtest.Scale) []fsm.Command { return sc.Renew })
}

// BenchmarkScaleApplyJoin is one join applied to a state of N nodes.
func BenchmarkScaleApplyJoin(b *testing.B) {
	benchApplyScale(b, func(sc *fsmtest.Scale) []fsm.Command { return sc.Join })
}

// BenchmarkScaleSnapshot is WriteTo of a state of N nodes, into memory.
func BenchmarkScaleSnapshot(b *testing.B) {
	for _, n := range scaleSizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			s := scaleOf(b, n).State
			var buf bytes.Buffer
			for b.Loop() {
				buf.Reset()
				if _, err := s.WriteTo(&buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(buf.Len())/float64(n), "bytes/node")
			b.ReportMetric(float64(b.Elapsed())/float64(time.Millisecond)/float64(b.N), "ms/op")
		})
	}
}

// BenchmarkScaleRestore is ReadState of a snapshot of N nodes, from
// memory.
func BenchmarkScaleRestore(b *testing.B) {
	for _, n := range scaleSizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			var buf bytes.Buffer
			if _, err := scaleOf(b, n).State.WriteTo(&buf); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				s, err := fsm.ReadState(bytes.NewReader(buf.Bytes()))
				if err != nil {
					b.Fatal(err)
				}
				if s.Nodes.Len() != n {
					b.Fatalf("ReadState() holds %d nodes, want %d", s.Nodes.Len(), n)
				}
			}
			b.ReportMetric(float64(b.Elapsed())/float64(time.Millisecond)/float64(b.N), "ms/op")
		})
	}
}
