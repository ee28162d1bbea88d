package testkit

import (
	"bytes"
	"fmt"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// GoroutineBound is how long the goroutines a test started may take to end
// once it stopped them: gRPC and HTTP/2 wind a few of their own down after
// Close returns, within a second or so.
const GoroutineBound = 15 * time.Second

// CheckGoroutines takes the number of goroutines running now as the test's
// baseline, and registers a cleanup that fails the test, with a dump of
// them, unless that number is back to the baseline within GoroutineBound.
// Call it first: cleanups run last-registered first, so its check comes
// after everything the test started has been stopped.
func CheckGoroutines(tb testing.TB) {
	tb.Helper()
	base := runtime.NumGoroutine()
	tb.Cleanup(func() {
		if err := WaitGoroutines(base, GoroutineBound); err != nil {
			tb.Error(err)
		}
	})
}

// WaitGoroutines polls until no more than n goroutines run, and returns an
// error with a dump of them if that does not happen within d.
func WaitGoroutines(n int, d time.Duration) error {
	err := Poll(d, func() error {
		if got := runtime.NumGoroutine(); got > n {
			return fmt.Errorf("%d goroutines", got)
		}
		return nil
	})
	if err == nil {
		return nil
	}
	var buf bytes.Buffer
	// Each goroutine with where it was created: that names the leak.
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	return fmt.Errorf("runtime.NumGoroutine() = %d once everything stopped, want at most %d (%v); goroutines:\n%s",
		runtime.NumGoroutine(), n, err, buf.String())
}
