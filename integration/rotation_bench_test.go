package integration

import (
	"testing"
	"time"

	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/membership"
	"github.com/quorumca/quorumca/node"
)

// Rotation benchmarks: one root rotation of a 3-manager, 10-worker cluster,
// from RotateCA until GetCA shows it completed and every node trusting the
// new root, polled every testkit.PollEvery. They report the mean time of one rotation
// (s/rotation), and of its first part, until the leader commits completion
// (s-to-complete); the rest is nodes taking the new bundle at their next
// heartbeat and advertising it in gossip.
//
//	go test -run='^$' -bench=Rotation13 -benchtime=3x ./integration/

// benchRotationBound bounds one rotation (the product's heartbeat is 5s,
// and LAN gossip repairs a lost update at its 30s push/pull).
const benchRotationBound = 2 * time.Minute

// productionRotation leaves the product's defaults for heartbeats (5s),
// reconciling (2s) and the rotation jitter (2s), and gossips on LAN timing;
// only Raft keeps the test timings.
func productionRotation(_ string, cfg *node.Config) {
	cfg.Manager.HeartbeatPeriod, cfg.Manager.ReconcilePeriod, cfg.Manager.RotationJitter = 0, 0, 0
	cfg.Manager.GossipTiming = membership.LAN
}

// BenchmarkRotation13 rotates with the product's timings.
func BenchmarkRotation13(b *testing.B) { benchRotation(b, productionRotation) }

// BenchmarkRotation13Fast rotates with the test clusters' timings
// (testkit's heartbeat and jitter, fast gossip).
func BenchmarkRotation13Fast(b *testing.B) { benchRotation(b, nil) }

func benchRotation(b *testing.B, timing func(string, *node.Config)) {
	rc := clustertest.New(b, clustertest.Options{Managers: 3, Workers: 10, Configure: timing, GossipBound: benchRotationBound})
	var total, completion time.Duration
	rotations := 0
	for b.Loop() {
		start := time.Now()
		root := rc.Rotate()
		var completed time.Duration
		err := testkit.Poll(benchRotationBound, func() error {
			_, err := rc.RotationDone(root, true)
			if err != nil && completed == 0 {
				if _, err := rc.RotationDone(root, false); err == nil {
					completed = time.Since(start)
				}
			}
			return err
		})
		if err != nil {
			b.Fatalf("rotation #%d: %v", rotations+1, err)
		}
		took := time.Since(start)
		if completed == 0 {
			completed = took
		}
		b.Logf("rotation #%d: completed after %s, every node trusting after %s", rotations+1, completed.Round(time.Millisecond), took.Round(time.Millisecond))
		total += took
		completion += completed
		rotations++
	}
	if rotations > 0 {
		b.ReportMetric(total.Seconds()/float64(rotations), "s/rotation")
		b.ReportMetric(completion.Seconds()/float64(rotations), "s-to-complete")
	}
}
