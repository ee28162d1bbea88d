package manager

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/fsm"
)

// TestToStatusNotFound: what names nothing the state holds is NotFound,
// not Internal: a client tells "no such thing" from a manager's fault.
func TestToStatusNotFound(t *testing.T) {
	for _, err := range []error{fsm.ErrUnknownNode, fsm.ErrRemoved, fsm.ErrUnknownToken, fsm.ErrUnknownAdmin, fsm.ErrUnknownCert} {
		wrapped := fmt.Errorf("%w: serial 1f", err)
		if got := status.Code(toStatus(wrapped)); got != codes.NotFound {
			t.Errorf("toStatus(%v) = %v, want NotFound", wrapped, got)
		}
	}
}
