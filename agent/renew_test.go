package agent

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
)

// constReader reads an endless run of one byte value.
type constReader byte

func (c constReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c)
	}
	return len(p), nil
}

// ceilingOf is the backoff ceiling after failures: 1s doubled per failure
// after the first, capped at max. (max must be under 2^16 seconds, where
// backoff stops doubling.)
func ceilingOf(failures int, max time.Duration) time.Duration {
	c := time.Second
	for i := 1; i < failures && c < max; i++ {
		c *= 2
	}
	return min(c, max)
}

func TestRenewerBackoff(t *testing.T) {
	tests := []struct {
		name       string
		maxBackoff time.Duration // 0: the default
		wantMax    time.Duration
	}{
		{"default cap", 0, time.Minute},
		{"10s cap", 10 * time.Second, 10 * time.Second},
		{"odd cap", 7*time.Second + 3, 7*time.Second + 3},
		{"1h cap", time.Hour, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRenewer(RenewerConfig{MaxBackoff: tt.maxBackoff, Rand: rand.NewChaCha8([32]byte{1})})
			for failures := 1; failures <= 40; failures++ {
				ceiling := ceilingOf(failures, tt.wantMax)
				lo, hi := time.Duration(1<<62), time.Duration(0)
				for range 200 {
					d := r.backoff(failures)
					if d < ceiling/2 || d > ceiling {
						t.Fatalf("backoff(%d) = %v, want within [%v, %v]", failures, d, ceiling/2, ceiling)
					}
					lo, hi = min(lo, d), max(hi, d)
				}
				// Full jitter: the waits spread over the range rather than
				// all landing on one value.
				if hi-lo < ceiling/4 {
					t.Errorf("backoff(%d) over 200 draws spans [%v, %v], want a spread of at least %v", failures, lo, hi, ceiling/4)
				}
			}
		})
	}
}

// TestRenewerBackoffEdges pins the two ends of the jitter and the
// behaviour when the random source fails.
func TestRenewerBackoffEdges(t *testing.T) {
	const max = 30 * time.Second
	tests := []struct {
		name string
		rand interface{ Read([]byte) (int, error) }
		want func(ceiling time.Duration) time.Duration
	}{
		{"zero bytes: half the ceiling", constReader(0), func(c time.Duration) time.Duration { return c / 2 }},
		{"failing source: the ceiling", bytes.NewReader(nil), func(c time.Duration) time.Duration { return c }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRenewer(RenewerConfig{MaxBackoff: max, Rand: tt.rand})
			for _, failures := range []int{1, 2, 3, 5, 6, 17, 100, 1 << 20} {
				want := tt.want(ceilingOf(failures, max))
				if got := r.backoff(failures); got != want {
					t.Errorf("backoff(%d) = %v, want %v", failures, got, want)
				}
			}
		})
	}
}
