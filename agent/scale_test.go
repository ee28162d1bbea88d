package agent

import (
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// busy is a manager's "busy, retry after d" answer.
func busy(t *testing.T, d time.Duration) error {
	t.Helper()
	st, err := status.New(codes.ResourceExhausted, "test: too many renewals at once").WithDetails(
		&errdetails.ErrorInfo{Reason: api.ReasonBusy, Domain: api.ErrorDomain},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

// TestRenewerHonoursBusy: a renewal answered "busy, retry after d" is
// tried again after d to 2d, directly (no heartbeat in between, no
// failure backoff), until the manager takes it.
func TestRenewerHonoursBusy(t *testing.T) {
	const delay = 150 * time.Millisecond
	r := newRotation(t)
	f := startFakeManager(t, r.managerCreds(t), r.next)
	var (
		mu       sync.Mutex
		attempts []time.Time
		beats    []int // heartbeats answered before each attempt
	)
	answer := busy(t, delay)
	f.set(func(f *fakeManager) {
		f.heartbeat = &api.HeartbeatResponse{Renew: true, PeriodMs: time.Hour.Milliseconds()}
		f.refuseRenewal = func() error {
			mu.Lock()
			defer mu.Unlock()
			attempts = append(attempts, time.Now())
			beats = append(beats, f.count("Heartbeat"))
			if len(attempts) <= 2 {
				return answer
			}
			return nil
		}
	})
	p := r.next.Issue(t, ca.RoleWorker)
	creds, _ := newCreds(t, r.next, p)
	rn := startRenewer(t, creds, f.addr)

	testkit.Eventually(t, "a renewal past two busy answers", testkit.True(func() bool { return rn.Renewals() > 0 }))
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 3 {
		t.Fatalf("%d renewal attempts, want 3 (two busy, one taken)", len(attempts))
	}
	for i := 1; i < 3; i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < delay {
			t.Errorf("attempt %d came %v after the busy answer, want at least the %v it asked for", i+1, gap, delay)
		}
		if beats[i] != beats[0] {
			t.Errorf("attempt %d followed %d more heartbeats, want the renewal retried directly", i+1, beats[i]-beats[0])
		}
	}
	if ok, failed := rn.RenewalCounts(); ok != 1 || failed["busy"] != 2 {
		t.Errorf("RenewalCounts() = %d, %v, want 1 and busy: 2", ok, failed)
	}
}
