package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// fabric carries the managers' Raft connections (manager.Config.RaftDial)
// and puts faults on them, as a network would:
//   - isolate: a manager's dials fail, dials to it fail, and the
//     connections it has are cut (a partition);
//   - pause: every connection to or from a manager stalls, reads and
//     writes alike, without closing (a process that stops being
//     scheduled, or a link that blackholes for a while);
//   - lossy: each write (and dial) fails with probability p, and its
//     connection is closed (dropped messages, reset connections), and
//     each write waits a random time under a bound first (delay).
//
// Only the dialing side's net.Conn is wrapped: a Raft connection carries
// a request and its answer, so stalling or closing it holds up both ways.
type fabric struct {
	mu       sync.Mutex // guards the fields below
	rng      *rand.Rand
	isolated map[string]bool          // by Raft address
	paused   map[string]chan struct{} // by Raft address; closed on resume
	dropP    float64
	maxDelay time.Duration
	conns    map[*faultConn]bool
}

func newFabric(seed uint64) *fabric {
	return &fabric{
		rng:      rand.New(rand.NewPCG(seed, 99)),
		isolated: map[string]bool{},
		paused:   map[string]chan struct{}{},
		conns:    map[*faultConn]bool{},
	}
}

// errDropped is what a write the fabric dropped returns.
var errDropped = errors.New("fabric: connection dropped")

// dialer returns the Raft dialer of the manager whose Raft address self
// returns (known once it runs).
func (f *fabric) dialer(self func() string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, address string) (net.Conn, error) {
		from := self()
		f.mu.Lock()
		cut := f.isolated[from] || f.isolated[address]
		drop := f.dropP > 0 && f.rng.Float64() < f.dropP
		f.mu.Unlock()
		if cut {
			return nil, fmt.Errorf("fabric: %s and %s are partitioned", from, address)
		}
		if drop {
			return nil, fmt.Errorf("fabric: dial %s from %s: %w", address, from, errDropped)
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", address)
		if err != nil {
			return nil, err
		}
		c := &faultConn{Conn: conn, f: f, from: from, to: address, closed: make(chan struct{})}
		f.mu.Lock()
		f.conns[c] = true
		f.mu.Unlock()
		return c, nil
	}
}

// isolate cuts addr off (or heals it, with false).
func (f *fabric) isolate(addr string, cut bool) {
	f.mu.Lock()
	f.isolated[addr] = cut
	var doomed []*faultConn
	if cut {
		doomed = f.touching(addr)
	}
	f.mu.Unlock()
	for _, c := range doomed {
		c.Close()
	}
}

// pause stalls every connection to or from addr until resume(addr).
func (f *fabric) pause(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused[addr] == nil {
		f.paused[addr] = make(chan struct{})
	}
}

func (f *fabric) resume(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch := f.paused[addr]; ch != nil {
		close(ch)
		delete(f.paused, addr)
	}
}

// lossy sets the drop probability and the delay bound of every write (0,
// 0: a clean network).
func (f *fabric) lossy(p float64, maxDelay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropP, f.maxDelay = p, maxDelay
}

// heal ends every fault.
func (f *fabric) heal() {
	f.lossy(0, 0)
	f.mu.Lock()
	var addrs []string
	for a := range f.paused {
		addrs = append(addrs, a)
	}
	clear(f.isolated)
	f.mu.Unlock()
	for _, a := range addrs {
		f.resume(a)
	}
}

// touching returns the open connections to or from addr; f.mu is held.
func (f *fabric) touching(addr string) []*faultConn {
	var out []*faultConn
	for c := range f.conns {
		if c.from == addr || c.to == addr {
			out = append(out, c)
		}
	}
	return out
}

// faultConn is one Raft connection the fabric carries.
type faultConn struct {
	net.Conn
	f        *fabric
	from, to string
	once     sync.Once
	closed   chan struct{}
}

// hold waits while either end of c is paused; it reports false if c was
// closed meanwhile.
func (c *faultConn) hold() bool {
	for {
		c.f.mu.Lock()
		ch := c.f.paused[c.from]
		if ch == nil {
			ch = c.f.paused[c.to]
		}
		c.f.mu.Unlock()
		if ch == nil {
			return true
		}
		select {
		case <-ch:
		case <-c.closed:
			return false
		}
	}
}

func (c *faultConn) Write(b []byte) (int, error) {
	if !c.hold() {
		return 0, net.ErrClosed
	}
	c.f.mu.Lock()
	drop := c.f.dropP > 0 && c.f.rng.Float64() < c.f.dropP
	var delay time.Duration
	if c.f.maxDelay > 0 {
		delay = time.Duration(c.f.rng.Int64N(int64(c.f.maxDelay)))
	}
	c.f.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.closed:
			t.Stop()
			return 0, net.ErrClosed
		}
	}
	if drop {
		c.Close()
		return 0, errDropped
	}
	return c.Conn.Write(b)
}

func (c *faultConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.hold() {
		return 0, net.ErrClosed
	}
	return n, err
}

func (c *faultConn) Close() error {
	var err error
	c.once.Do(func() {
		close(c.closed)
		err = c.Conn.Close()
		c.f.mu.Lock()
		delete(c.f.conns, c)
		c.f.mu.Unlock()
	})
	return err
}
