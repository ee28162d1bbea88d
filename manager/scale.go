package manager

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/progress"
)

// What keeps a large cluster's leader within its means: the heartbeat
// period grows with the number of nodes so that the leader answers at most
// Config.MaxHeartbeatsPerSecond, down-detection follows the period the
// nodes were told, and renewals beyond Config.MaxConcurrentSigns are
// answered "busy, retry after" instead of piling up behind the signer and
// the Raft log.

// periodFor is the heartbeat period for a cluster of n nodes: the
// configured one, or, when n nodes at that period would pass rate
// heartbeats a second, n/rate rounded up to a whole second.
func periodFor(base time.Duration, rate, n int) time.Duration {
	if rate <= 0 || n <= 0 {
		return base
	}
	need := time.Duration(n) * time.Second / time.Duration(rate)
	if need <= base {
		return base
	}
	return (need + time.Second - 1).Truncate(time.Second)
}

// periods remembers the heartbeat periods this manager told nodes, so
// that a node told a long period is not taken for down when the cluster
// shrinks and the period with it: the longer period counts until every
// node told it has had LiveWindow of them to heartbeat.
type periods struct {
	mu sync.Mutex // guards the fields below
	// cur is the period told last; prev a longer one told before, which
	// counts for liveness until prevUntil.
	cur, prev time.Duration
	prevUntil time.Time
}

// tell records that a node was told period p at now.
func (ps *periods) tell(p time.Duration, now time.Time) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p == ps.cur {
		return
	}
	if ps.cur > p {
		until := now.Add(progress.LiveWindow * ps.cur)
		if ps.cur > ps.prev || now.After(ps.prevUntil) {
			ps.prev = ps.cur
		}
		if until.After(ps.prevUntil) {
			ps.prevUntil = until
		}
	}
	ps.cur = p
}

// live returns the period by which a node's silence is judged at now: the
// longest period a node may still be heartbeating at, and at least base.
func (ps *periods) live(base time.Duration, now time.Time) time.Duration {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := max(base, ps.cur)
	if now.Before(ps.prevUntil) {
		p = max(p, ps.prev)
	}
	return p
}

// heartbeatPeriod is the period to tell a node of a cluster of n nodes.
func (m *Manager) heartbeatPeriod(n int) time.Duration {
	return periodFor(m.cfg.HeartbeatPeriod, m.cfg.MaxHeartbeatsPerSecond, n)
}

// livePeriod is the heartbeat period liveness is judged by now.
func (m *Manager) livePeriod(now time.Time) time.Duration {
	return m.periods.live(m.cfg.HeartbeatPeriod, now)
}

// signWait is how long a renewal waits for a signing slot before it is
// answered busy; at most signQueue times Config.MaxConcurrentSigns
// renewals wait at once, and more are answered busy at once. busyRetry is
// the wait the answer asks for (nodes add jitter up to as much again).
const (
	signWait  = time.Second
	signQueue = 4
	busyRetry = time.Second
)

// errBusy is the refusal of a renewal beyond Config.MaxConcurrentSigns.
var errBusy = errors.New("too many renewals at once on this manager; retry shortly")

// acquireSign takes one of the manager's signing slots, waiting at most
// signWait for one, behind at most signQueue*MaxConcurrentSigns others;
// release gives it back. When no slot frees up in time it returns a
// ResourceExhausted status with reason BUSY and a RetryInfo. A renewal
// that waits costs nothing but its goroutine: the CPU goes to the ones
// signing and to heartbeats.
func (m *Manager) acquireSign(ctx context.Context) (release func(), err error) {
	take := func() func() {
		m.metrics.signing.Inc()
		return func() {
			m.metrics.signing.Dec()
			<-m.signing
		}
	}
	select {
	case m.signing <- struct{}{}:
		return take(), nil
	default:
	}
	if m.signWaiting.Add(1) > int64(signQueue*cap(m.signing)) {
		m.signWaiting.Add(-1)
		return nil, busyStatus(errBusy.Error())
	}
	defer m.signWaiting.Add(-1)
	t := time.NewTimer(signWait)
	defer t.Stop()
	select {
	case m.signing <- struct{}{}:
		return take(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
	}
	return nil, busyStatus(errBusy.Error())
}

// busyStatus is the "busy, retry after" answer.
func busyStatus(msg string) error {
	st := withReason(status.New(codes.ResourceExhausted, msg), api.ReasonBusy, nil)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(busyRetry)}); err == nil {
		st = d
	}
	return st.Err()
}

// digestCache holds the digest of the last bundle asked for: heartbeats
// compare every node's digest with the cluster bundle's.
type digestCache struct {
	bundle []byte
	digest string
}

// bundleDigest is the digest nodes send of the bundle of st
// (agent.BundleDigest).
func (m *Manager) bundleDigest(st *fsm.State) string {
	if c := m.digests.Load(); c != nil && bytes.Equal(c.bundle, st.CA.Bundle) {
		return c.digest
	}
	c := &digestCache{bundle: st.CA.Bundle, digest: agent.BundleDigest(st.CA.Bundle)}
	m.digests.Store(c)
	return c.digest
}
