// Package wait holds the one way the daemons pause: for a while, or until
// their context ends, whichever comes first.
package wait

import (
	"context"
	"time"
)

// Sleep waits d or until ctx is done; it reports whether d passed. A d of
// zero or less does not wait, and reports whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
