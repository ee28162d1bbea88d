package testkit

import (
	"sync"
	"testing"
	"time"
)

// Clock is a fake clock that stands still unless the test moves it; its
// Now goes where a Config takes a clock.
type Clock struct {
	// limit, when set, is how far past the real clock the clock may go.
	limit time.Duration

	mu  sync.Mutex // guards now
	now time.Time
}

// NewClock returns a clock at start, free to go anywhere.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Clock of a cluster: how far behind the real one it starts, and how far
// before its signing a leaf's NotBefore lies (ca's leafBackdate).
const (
	ClockLag = 10 * time.Minute
	Backdate = time.Hour
)

// NewClusterClock returns the clock of a test cluster, whose daemons sign
// at the fake time while crypto/tls verifies certificates against the real
// one. It starts ClockLag behind the real clock, and refuses to move past
// it by more than the backdate of a leaf's NotBefore (less a minute):
// certificates signed at the fake time must be valid already by the real
// one, or the daemons could no longer talk to each other.
func NewClusterClock() *Clock {
	return &Clock{now: time.Now().Add(-ClockLag).Truncate(time.Second), limit: Backdate - time.Minute}
}

// Now returns the fake time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock d forward.
func (c *Clock) Advance(tb testing.TB, d time.Duration) {
	tb.Helper()
	c.Set(tb, c.Now().Add(d))
}

// Set moves the clock to t (backwards too).
func (c *Clock) Set(tb testing.TB, t time.Time) {
	tb.Helper()
	if c.limit > 0 {
		if limit := time.Now().Add(c.limit); t.After(limit) {
			tb.Fatalf("Clock.Set(%s): too far past the real clock: certificates signed then would not be valid yet for crypto/tls", t)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}
