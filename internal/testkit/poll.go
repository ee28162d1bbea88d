package testkit

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// Eventually polls cond until it returns nil, and fails the test with
// cond's last error if it has not within Wait.
func Eventually(tb testing.TB, what string, cond func() error) {
	tb.Helper()
	EventuallyWithin(tb, Wait, what, cond)
}

// EventuallyWithin polls cond every PollEvery until it returns nil, and
// fails the test with cond's last error if it has not within d.
func EventuallyWithin(tb testing.TB, d time.Duration, what string, cond func() error) {
	tb.Helper()
	if err := Poll(d, cond); err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}

// Poll calls cond every PollEvery until it returns nil, or d has passed:
// then it returns an error that wraps cond's last one.
func Poll(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(PollEvery)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return &NotWithinError{Bound: d, Last: err}
		}
		<-tick.C
	}
}

// NotWithinError is Poll's error when its condition never held.
type NotWithinError struct {
	Bound time.Duration
	Last  error // the condition's last error
}

func (e *NotWithinError) Error() string {
	return "not within " + e.Bound.String() + ": " + e.Last.Error()
}
func (e *NotWithinError) Unwrap() error { return e.Last }

// True adapts a plain condition to Eventually: the error it returns while
// cond does not hold says only that.
func True(cond func() bool) func() error {
	return func() error {
		if !cond() {
			return errNotYet
		}
		return nil
	}
}

var errNotYet = errors.New("the condition does not hold")

// HoldsUntil asserts that something does not happen for as long as it
// takes something else to happen, rather than for a span of real time: it
// checks cond, then until, at every look, fails the test the first time
// cond does not hold, and returns once until has returned nil (with cond
// checked once more after it). until names events the system under test
// makes, such as a number of heartbeats answered: on a slow machine the
// span lasts longer, and covers the same events. It fails the test if
// until has not held within Wait.
func HoldsUntil(tb testing.TB, what string, cond, until func() error) {
	tb.Helper()
	deadline := time.Now().Add(Wait)
	tick := time.NewTicker(PollEvery)
	defer tick.Stop()
	for {
		if err := cond(); err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
		err := until()
		if err == nil {
			if err := cond(); err != nil {
				tb.Fatalf("%s: %v", what, err)
			}
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: held, but its span did not end within %s: %v", what, Wait, err)
		}
		<-tick.C
	}
}

// WaitClosed waits, at most Wait, for ch to be closed.
func WaitClosed(tb testing.TB, what string, ch <-chan struct{}) {
	tb.Helper()
	t := time.NewTimer(Wait)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
		tb.Fatalf("%s: not within %s", what, Wait)
	}
}

// HoldsFor checks cond at every look for the whole of d of real time, and
// fails the test the first time it does not hold. It is for a property
// whose span no event of the system under test marks (prefer HoldsUntil):
// keep d short.
func HoldsFor(tb testing.TB, d time.Duration, what string, cond func() error) {
	tb.Helper()
	end := time.Now().Add(d)
	HoldsUntil(tb, what, cond, func() error {
		if left := time.Until(end); left > 0 {
			return fmt.Errorf("%s left", left)
		}
		return nil
	})
}
