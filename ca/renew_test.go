package ca_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
)

func TestRenewAtWithinWindow(t *testing.T) {
	validities := []time.Duration{ca.MinCertExpiry, ca.DefaultCertExpiry, 365 * 24 * time.Hour, time.Nanosecond, 7 * time.Nanosecond}
	r := detRand(1)
	for _, validity := range validities {
		notBefore := now.Add(-time.Hour)
		notAfter := notBefore.Add(validity)
		lo := notBefore.Add(validity / 2)
		hi := notBefore.Add(validity * 4 / 5)
		var first, last time.Time
		for i := range 10000 {
			got, err := ca.RenewAt(r, notBefore, notAfter)
			if err != nil {
				t.Fatalf("RenewAt(%v) #%d = %v", validity, i, err)
			}
			if got.Before(lo) || got.After(hi) {
				t.Fatalf("RenewAt(%v) #%d = %v, want in [%v, %v] (50%%..80%% of validity)", validity, i, got, lo, hi)
			}
			if first.IsZero() || got.Before(first) {
				first = got
			}
			if got.After(last) {
				last = got
			}
		}
		// Draws spread over the window: not all the same instant.
		if validity > time.Microsecond {
			if spread := last.Sub(first); spread < (hi.Sub(lo))*9/10 {
				t.Errorf("RenewAt(%v): 10000 draws span %v, want most of the %v window", validity, spread, hi.Sub(lo))
			}
		}
	}
}

func TestRenewAtBounds(t *testing.T) {
	notBefore := now.Add(-time.Hour)
	validity := ca.DefaultCertExpiry
	notAfter := notBefore.Add(validity)
	tests := []struct {
		name string
		r    constReader
		want time.Time
	}{
		{"all zero bytes: 50%", 0x00, notBefore.Add(validity / 2)},
		{"all 0xff bytes: 80%", 0xff, notBefore.Add(validity * 4 / 5)},
	}
	for _, tt := range tests {
		got, err := ca.RenewAt(tt.r, notBefore, notAfter)
		if err != nil {
			t.Fatalf("RenewAt(%s) = %v", tt.name, err)
		}
		// 53 random bits and float rounding: within a microsecond.
		if d := got.Sub(tt.want); d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("RenewAt(%s) = %v, want %v", tt.name, got, tt.want)
		}
		if got.Before(notBefore.Add(validity/2)) || got.After(notBefore.Add(validity*4/5)) {
			t.Errorf("RenewAt(%s) = %v, outside 50%%..80%%", tt.name, got)
		}
	}
}

func TestRenewAtRefuses(t *testing.T) {
	tests := []struct {
		name                string
		notBefore, notAfter time.Time
	}{
		{"zero validity", now, now},
		{"negative validity", now, now.Add(-time.Hour)},
	}
	for _, tt := range tests {
		got, err := ca.RenewAt(detRand(1), tt.notBefore, tt.notAfter)
		if err == nil || !got.IsZero() {
			t.Errorf("RenewAt(%s) = %v, %v, want zero time and an error", tt.name, got, err)
		} else if !strings.Contains(err.Error(), "validity") {
			t.Errorf("RenewAt(%s) error %q, want it to say the validity is wrong", tt.name, err)
		}
	}
	if _, err := ca.RenewAt(errReader{}, now, now.Add(time.Hour)); !errors.Is(err, errRead) {
		t.Errorf("RenewAt(failing reader) = %v, want %v", err, errRead)
	}
}
