package main

import (
	"math"
	"runtime/metrics"
	"testing"
)

// TestSchedBetween: the quantile and the largest latency are those of the
// latencies recorded between the snapshots, as bucket upper bounds; an
// open last bucket counts as its lower bound.
func TestSchedBetween(t *testing.T) {
	buckets := []float64{0, 0.001, 0.01, 0.1, 1, math.Inf(1)}
	before := &metrics.Float64Histogram{Buckets: buckets, Counts: []uint64{5, 5, 5, 5, 5}}
	after := &metrics.Float64Histogram{Buckets: buckets, Counts: []uint64{5 + 90, 5 + 9, 5 + 1, 5, 5}}
	q, most, _ := schedBetween(before, after, 0.99)
	if q != 10 || most != 100 {
		t.Errorf("schedBetween() = %v ms p99, %v ms most; want 10, 100", q, most)
	}
	if q, _, _ := schedBetween(before, after, 0.5); q != 1 {
		t.Errorf("median = %v ms, want 1", q)
	}
	after.Counts[4]++
	if _, most, _ := schedBetween(before, after, 0.99); most != 1000 {
		t.Errorf("most with one in the open bucket = %v ms, want 1000", most)
	}
	if q, most, ok := schedBetween(before, before, 0.99); !ok || q != 0 || most != 0 {
		t.Errorf("nothing recorded: %v, %v; want 0, 0", q, most)
	}
	if _, _, ok := schedBetween(nil, after, 0.99); ok {
		t.Error("schedBetween() without a snapshot is ok")
	}
	if s := schedSnapshot(); s == nil || len(s.Counts) == 0 {
		t.Errorf("schedSnapshot() = %v; the runtime names %s", s, schedLatencies)
	}
}
