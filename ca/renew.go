package ca

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// RenewAt picks when to renew a certificate valid from notBefore to
// notAfter: a uniformly random instant between 50 % and 80 % of its
// validity, drawn from rand, so that a fleet issued at once does not renew
// at once.
func RenewAt(rand io.Reader, notBefore, notAfter time.Time) (time.Time, error) {
	validity := notAfter.Sub(notBefore)
	if validity <= 0 {
		return time.Time{}, fmt.Errorf("ca: certificate validity %s is not positive", validity)
	}
	var b [8]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return time.Time{}, fmt.Errorf("ca: read random renewal time: %w", err)
	}
	// 53 random bits make a uniform float in [0, 1).
	u := float64(binary.BigEndian.Uint64(b[:])>>11) / (1 << 53)
	frac := 0.5 + 0.3*u
	return notBefore.Add(time.Duration(frac * float64(validity))), nil
}
