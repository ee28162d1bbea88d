package raft

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumca/quorumca/internal/testkit"
)

// floodConns is how many silent connections the flooder keeps open against
// each Raft port: more than twice maxHandshakes.
const floodConns = 300

// TestRaftPortFloodStillElectsLeader is the attack of a peer with no
// certificate that keeps hundreds of silent TCP connections open against
// every manager's Raft port, re-opening each one the server closes. The
// managers must still elect a new leader when the leader dies, within
// about the time an election takes without the flood, and the new leader
// must commit.
func TestRaftPortFloodStillElectsLeader(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	nodes := startCluster(t, c, 3, nil)
	if _, err := nodes[0].Apply(t.Context(), []byte("a=1")); err != nil {
		t.Fatalf("Apply(a=1) = %v", err)
	}
	addrs := make([]string, len(nodes))
	for i, n := range nodes {
		addrs[i] = n.addr
	}
	f := startFlood(t, floodConns, addrs...)
	for _, n := range nodes {
		testkit.Eventually(t, "the flood to fill "+n.id+"'s handshake slots", testkit.True(func() bool {
			return n.stream.tracked() >= maxHandshakes
		}))
	}

	old := nodes[0]
	if err := old.Shutdown(); err != nil {
		t.Fatalf("Shutdown(leader) = %v", err)
	}
	bound := electionBound(old.cfg)
	start := time.Now()
	leader := waitLeaderWithin(t, bound, nodes[1], nodes[2])
	t.Logf("new leader %s after %s, with %d flood connections opened so far", leader.id, time.Since(start).Round(time.Millisecond), f.opened.Load())
	if _, err := leader.Apply(t.Context(), []byte("b=2")); err != nil {
		t.Fatalf("new leader Apply(b=2) under the flood = %v", err)
	}
}

// electionBound is how long an election may take after the leader dies,
// given cfg's timeouts: a follower notices within twice HeartbeatTimeout
// (hashicorp/raft randomises the timer between one and two times it), and
// one round of voting ends within twice ElectionTimeout; four rounds allow
// for split votes on two busy cores. It is 10s for 1s timeouts.
func electionBound(cfg Config) time.Duration {
	return 2*cfg.HeartbeatTimeout + 4*2*cfg.ElectionTimeout
}

// tracked returns how many TCP connections s holds, handshaking or
// handshaken.
func (s *streamLayer) tracked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// flooder keeps silent TCP connections open: it connects, sends nothing,
// and connects again as soon as the server closes the connection.
type flooder struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	opened atomic.Int64 // connections made, for the log

	mu      sync.Mutex // mu guards conns and stopped
	conns   map[net.Conn]struct{}
	stopped bool
}

// startFlood starts perAddr connection holders against each of addrs and
// stops them when the test ends.
func startFlood(t *testing.T, perAddr int, addrs ...string) *flooder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &flooder{cancel: cancel, conns: make(map[net.Conn]struct{})}
	for _, addr := range addrs {
		for range perAddr {
			f.wg.Add(1)
			go f.hold(ctx, addr)
		}
	}
	t.Cleanup(f.stop)
	return f
}

// hold keeps one silent connection to addr open until ctx is done. Each
// turn is bounded: the dial by its timeout, the read by the server closing
// the connection or by stop closing it.
func (f *flooder) hold(ctx context.Context, addr string) {
	defer f.wg.Done()
	d := net.Dialer{Timeout: time.Second}
	for ctx.Err() == nil {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			// The port is closed (the dead leader's) or the backlog is
			// full: try again shortly, without spinning.
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if !f.add(conn) {
			_ = conn.Close()
			return
		}
		f.opened.Add(1)
		_, _ = conn.Read(make([]byte, 1))
		f.remove(conn)
	}
}

// add records conn for stop to close; it reports false once stopped.
func (f *flooder) add(conn net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	f.conns[conn] = struct{}{}
	return true
}

// remove forgets and closes conn.
func (f *flooder) remove(conn net.Conn) {
	f.mu.Lock()
	delete(f.conns, conn)
	f.mu.Unlock()
	_ = conn.Close()
}

// stop closes every connection and waits for the holders to return.
func (f *flooder) stop() {
	f.cancel()
	f.mu.Lock()
	f.stopped = true
	for conn := range f.conns {
		_ = conn.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
