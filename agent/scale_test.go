package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
			// Taken: the node is up to date, as a manager would say.
			f.set(func(f *fakeManager) { f.heartbeat = &api.HeartbeatResponse{PeriodMs: time.Hour.Milliseconds()} })
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

// TestRenewerReportsRenewalAtOnce: after a renewal, a node without hooks
// heartbeats at once (the leader sees its new certificate without waiting
// a period: a rotation waits for that); a manager that still says "renew"
// to that heartbeat gets one more renewal, not a loop of them.
func TestRenewerReportsRenewalAtOnce(t *testing.T) {
	r := newRotation(t)
	f := startFakeManager(t, r.managerCreds(t), r.next)
	// Every heartbeat says "renew", with an hour's period: only a
	// heartbeat that reports a renewal comes sooner than that.
	f.set(func(f *fakeManager) {
		f.heartbeat = &api.HeartbeatResponse{Renew: true, PeriodMs: time.Hour.Milliseconds()}
	})
	creds, _ := newCreds(t, r.next, r.next.Issue(t, ca.RoleWorker))
	rn := startRenewer(t, creds, f.addr)

	testkit.Eventually(t, "two renewals, each after a heartbeat", testkit.True(func() bool {
		return rn.Renewals() >= 2 && f.count("Heartbeat") >= 2
	}))
	// The second renewal answered the heartbeat that reported the
	// first: the next heartbeat is an hour away, and nothing more comes.
	before := f.count("RenewNodeCertificate")
	time.Sleep(100 * time.Millisecond) // a loop would renew hundreds of times in this
	if got := f.count("RenewNodeCertificate"); got != before || got != 2 {
		t.Errorf("%d renewals, then %d more in 100ms, want 2 and none: a manager saying renew makes a loop", before, got-before)
	}
	if got := f.count("Heartbeat"); got != 2 {
		t.Errorf("%d heartbeats, want 2: the first, and the one that reported the renewal", got)
	}
}

// TestRenewerReportsRenewalAfterReload: a node with hooks says it is
// reloading in every heartbeat until its hooks have run for its new
// files, and heartbeats as soon as they have, not a period later.
func TestRenewerReportsRenewalAfterReload(t *testing.T) {
	r := newRotation(t)
	f := startFakeManager(t, r.managerCreds(t), r.next)
	f.set(func(f *fakeManager) {
		f.heartbeat = &api.HeartbeatResponse{Renew: true, PeriodMs: 20}
		f.refuseRenewal = func() error {
			// Taken: the node is up to date from now on.
			f.set(func(f *fakeManager) { f.heartbeat = &api.HeartbeatResponse{PeriodMs: 20} })
			return nil
		}
	})
	creds, _ := newCreds(t, r.next, r.next.Issue(t, ca.RoleWorker))
	gate := filepath.Join(t.TempDir(), "gate")
	hooks := NewHooks(HookConfig{Command: "while [ ! -e " + gate + " ]; do sleep 0.01; done", Splay: -1},
		func() *Credentials { return creds }, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); hooks.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	creds.OnUpdate(hooks.Changed)
	rn := startRenewerWith(t, RenewerConfig{Credentials: creds, Managers: []string{f.addr}, Reloads: hooks})

	testkit.Eventually(t, "a renewal, then heartbeats while the hooks run", testkit.True(func() bool {
		return rn.Renewals() == 1 && f.count("Heartbeat") >= 4
	}))
	if settled, _ := hooks.Settled(); settled {
		t.Fatalf("hooks.Settled() = true while the command waits for its gate")
	}
	// From now on the period is an hour: only the report of the reload
	// comes sooner. Wait for a heartbeat that told it.
	f.set(func(f *fakeManager) { f.heartbeat = &api.HeartbeatResponse{PeriodMs: time.Hour.Milliseconds()} })
	told := f.count("Heartbeat") + 1
	testkit.Eventually(t, "a heartbeat told of the hour's period", testkit.True(func() bool { return f.count("Heartbeat") >= told }))
	beats := f.count("Heartbeat")
	f.mu.Lock()
	said := slices.Clone(f.reloading)
	f.mu.Unlock()
	if said[0] {
		t.Errorf("the first heartbeat, before the renewal, said reloading")
	}
	for i, r := range said[1:] {
		if !r {
			t.Errorf("heartbeat %d, after the renewal and before the hooks ran, did not say reloading (all: %v)", i+2, said)
		}
	}

	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "a heartbeat without reloading as soon as the hooks ran", func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.reloading) <= beats {
			return errors.New("no heartbeat since the gate opened")
		}
		if last := f.reloading[len(f.reloading)-1]; last {
			return errors.New("still reloading")
		}
		return nil
	})
	if settled, _ := hooks.Settled(); !settled {
		t.Errorf("hooks.Settled() = false after the hooks ran")
	}
}

// maxRand reads as all ones: Renewer.jitter draws near its bound.
type maxRand struct{}

func (maxRand) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = 0xff
	}
	return len(b), nil
}

// TestRenewerHeartbeatsWhileWaitingToRenew: a node told to renew after a
// jitter of up to three periods (a rotation's window) keeps heartbeating
// at its period while it waits, and renews once, when the jitter ends. A
// node that went silent for its jitter was marked down by the leader
// whenever the jitter drawn, plus the renewal, passed three periods.
func TestRenewerHeartbeatsWhileWaitingToRenew(t *testing.T) {
	const (
		period = 20 * time.Millisecond
		window = 30 * period // the jitter told: fifteen times the live window
	)
	r := newRotation(t)
	f := startFakeManager(t, r.managerCreds(t), r.next)
	var (
		mu          sync.Mutex
		beatsBefore = -1 // heartbeats answered before the renewal
	)
	f.set(func(f *fakeManager) {
		f.heartbeat = &api.HeartbeatResponse{Renew: true, RenewJitterMs: window.Milliseconds(), PeriodMs: period.Milliseconds()}
		f.refuseRenewal = func() error {
			mu.Lock()
			beatsBefore = f.count("Heartbeat")
			mu.Unlock()
			f.set(func(f *fakeManager) { f.heartbeat = &api.HeartbeatResponse{PeriodMs: period.Milliseconds()} })
			return nil
		}
	})
	creds, _ := newCreds(t, r.next, r.next.Issue(t, ca.RoleWorker))
	start := time.Now()
	rn := startRenewerWith(t, RenewerConfig{Credentials: creds, Managers: []string{f.addr}, Rand: maxRand{}})

	testkit.Eventually(t, "the renewal after its jitter", testkit.True(func() bool { return rn.Renewals() > 0 }))
	waited := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	// maxRand draws 2^64-1 ns modulo 600 ms: 109.6 ms, five periods.
	if waited < 100*time.Millisecond {
		t.Fatalf("renewed %v after the start, want after the jitter drawn (about 110ms)", waited)
	}
	if beatsBefore < 4 {
		t.Errorf("%d heartbeats before the renewal %v after the start, want one a period (%v) while it waited: a silent node is marked down", beatsBefore, waited, period)
	}
	if got := f.count("RenewNodeCertificate"); got != 1 {
		t.Errorf("%d renewals, want 1: each heartbeat's renew must not start another", got)
	}
}
