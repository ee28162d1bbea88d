package integration

import (
	"slices"
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
)

// BenchmarkSequentialJoins joins workers one after another through a
// follower of a three-manager cluster: each join fetches the bundle, sends
// a CSR, is forwarded to the leader, signed and committed by Raft (fsynced
// on a majority) and stored in a fresh data directory. It reports the
// median and 99th percentile latency of one join, and joins per second.
//
//	go test -run='^$' -bench=SequentialJoins -benchtime=200x ./integration/
func BenchmarkSequentialJoins(b *testing.B) {
	c := clustertest.New(b, clustertest.Options{Managers: 3})
	via := c.Follower().Addr()

	var lat []time.Duration
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		b.StartTimer()
		start := time.Now()
		_, err := agent.Join(b.Context(), agent.JoinConfig{DataDir: dir, Token: c.WorkerToken, Remote: via, Logger: testkit.Logger()})
		d := time.Since(start)
		if err != nil {
			b.Fatalf("agent.Join() #%d through a follower = %v", len(lat), err)
		}
		lat = append(lat, d)
		total += d
	}
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(float64(len(lat))/total.Seconds(), "joins/s")
}

// percentile returns the p-th quantile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
