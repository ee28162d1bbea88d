package main

import (
	"math"
	"runtime/metrics"
)

// schedLatencies is the runtime's histogram of how long goroutines waited
// runnable before they ran, since the process started.
const schedLatencies = "/sched/latencies:seconds"

// schedSnapshot reads the scheduling-latency histogram now.
func schedSnapshot() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: schedLatencies}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return s[0].Value.Float64Histogram()
}

// schedBetween is the q-quantile and the largest of the scheduling
// latencies recorded between two snapshots, in milliseconds: the upper
// bound of the bucket each falls in (the runtime's buckets are a few
// percent wide). A goroutine woken by the network (a Raft heartbeat's
// answer, a follower's append) waits that long for a CPU in this process.
// ok is false when a snapshot is missing.
func schedBetween(before, after *metrics.Float64Histogram, q float64) (quantile, most float64, ok bool) {
	if before == nil || after == nil || len(before.Counts) != len(after.Counts) {
		return 0, 0, false
	}
	counts := make([]uint64, len(after.Counts))
	var total uint64
	for i := range counts {
		counts[i] = after.Counts[i] - before.Counts[i]
		total += counts[i]
	}
	if total == 0 {
		return 0, 0, true
	}
	upper := func(i int) float64 {
		b := after.Buckets[i+1]
		if math.IsInf(b, 1) {
			b = after.Buckets[i]
		}
		return b * 1000
	}
	want := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	found := false
	for i, c := range counts {
		seen += c
		if seen >= want && !found {
			quantile, found = upper(i), true
		}
		if c > 0 {
			most = upper(i)
		}
	}
	return quantile, most, true
}
