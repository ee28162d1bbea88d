package manager

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/quorumca/quorumca/internal/testkit"
)

// blockingCreds is server credentials whose handshake waits until release
// is closed, counting how many run at once.
type blockingCreds struct {
	credentials.TransportCredentials
	release      chan struct{}
	running, max atomic.Int32
}

func (b *blockingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	n := b.running.Add(1)
	defer b.running.Add(-1)
	for {
		m := b.max.Load()
		if n <= m || b.max.CompareAndSwap(m, n) {
			break
		}
	}
	<-b.release
	return raw, nil, nil
}

// TestHandshakesTakeTurns: a storm of connections gets at most the turns'
// worth of handshakes running at once; the others wait for a turn, and
// one that waits too long is refused (its client dials again) rather than
// left to time out in the middle of a handshake.
func TestHandshakesTakeTurns(t *testing.T) {
	inner := &blockingCreds{TransportCredentials: credentials.NewTLS(&tls.Config{}), release: make(chan struct{})}
	var mu sync.Mutex
	var refused int
	c := withTurns(inner, func(_ time.Duration, ok bool) {
		if !ok {
			mu.Lock()
			refused++
			mu.Unlock()
		}
	}).(*turnCreds)
	c.turns = make(chan struct{}, 2)
	c.wait = testkit.Wait

	const storm = 6
	errs := make(chan error, storm)
	for range storm {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		go func() { _, _, err := c.ServerHandshake(a); errs <- err }()
	}
	testkit.Eventually(t, "two handshakes running", testkit.True(func() bool { return inner.running.Load() == 2 }))
	close(inner.release)
	for range storm {
		if err := <-errs; err != nil {
			t.Errorf("ServerHandshake() = %v, want every one done in turn", err)
		}
	}
	if got := inner.max.Load(); got != 2 {
		t.Errorf("at most %d handshakes ran at once, want 2 (the turns)", got)
	}

	// A connection that finds every turn taken for longer than the wait
	// is refused.
	c.wait = 50 * time.Millisecond
	c.turns <- struct{}{}
	c.turns <- struct{}{}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ctx, cancel := context.WithTimeout(t.Context(), testkit.Wait)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, _, err := c.ServerHandshake(a); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, errHandshakeBusy) {
			t.Errorf("ServerHandshake() with no turn free = %v, want %v", err, errHandshakeBusy)
		}
	case <-ctx.Done():
		t.Fatalf("ServerHandshake() with no turn free did not give up within %v", testkit.Wait)
	}
	mu.Lock()
	defer mu.Unlock()
	if refused != 1 {
		t.Errorf("%d refusals reported, want 1", refused)
	}
}
