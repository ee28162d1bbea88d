package manager

import (
	"errors"
	"testing"

	"github.com/quorumca/quorumca/fsm"
)

// TestParseSerial: a serial as people paste it (openssl's spellings, Go's
// hex) reads as the state records it; anything else is refused as a bad
// command.
func TestParseSerial(t *testing.T) {
	for in, want := range map[string]string{
		"1a2b3c":               "1a2b3c",
		"1A2B3C":               "1a2b3c",
		"1A:2B:3C":             "1a2b3c",
		"0x1a2b3c":             "1a2b3c",
		"serial=001A2B3C":      "1a2b3c",
		"  serial=1A:2B:3C \n": "1a2b3c",
	} {
		if got, err := parseSerial(in); err != nil || got != want {
			t.Errorf("parseSerial(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "xyz", "serial=", "-1a", "12 34"} {
		if got, err := parseSerial(in); !errors.Is(err, fsm.ErrBadCommand) {
			t.Errorf("parseSerial(%q) = %q, %v; want ErrBadCommand", in, got, err)
		}
	}
}
