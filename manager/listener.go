package manager

import (
	"container/list"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of the API listener against connections that never speak.
const (
	// maxQuietConns bounds the API connections that have not sent a byte
	// yet; beyond it the oldest is closed, so that a flood of silent
	// connections cannot hold file descriptors, and a real client's
	// handshake (milliseconds) always gets through.
	maxQuietConns = 256
	// quietGrace is how long a connection may stay silent before it is
	// closed for being over maxQuietConns: a client sends its ClientHello
	// at once, but one on a machine that is itself busy (a storm of
	// reconnections after a rotation) may take a moment. Closing it then
	// made it dial again and fed the storm: a bench run of 10,000 nodes
	// saw 30,000 such closings. maxQuietConnsHard bounds the silent
	// connections whatever their age.
	quietGrace        = time.Second
	maxQuietConnsHard = 4096
	// handshakeTimeout bounds a client's TLS and HTTP/2 handshake
	// (grpc.ConnectionTimeout; gRPC's default is 120 s).
	handshakeTimeout = 5 * time.Second
)

// quietListener hands out connections and closes the oldest of those that
// have not sent a byte yet when there are more than max of them.
type quietListener struct {
	net.Listener
	// max silent connections are kept; beyond, the oldest is closed once
	// silent for grace, and beyond hard at once.
	max, hard int
	grace     time.Duration
	now       func() time.Time
	// evicted, when set, hears of every connection closed for silence.
	evicted func()

	mu    sync.Mutex // guards quiet
	quiet *list.List // of *quietConn, oldest first
}

func newQuietListener(ln net.Listener, bound int) *quietListener {
	return &quietListener{Listener: ln, max: bound, hard: max(bound, maxQuietConnsHard), grace: quietGrace, now: time.Now, quiet: list.New()}
}

// Accept returns the next connection, after closing the silent ones over
// the bound: the oldest first, those silent for longer than the grace, or
// any beyond the hard bound.
func (l *quietListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	now := l.now()
	qc := &quietConn{Conn: c, l: l, accepted: now}
	l.mu.Lock()
	qc.elem = l.quiet.PushBack(qc)
	var evict []*quietConn
	for l.quiet.Len() > l.max {
		front := l.quiet.Front().Value.(*quietConn)
		if l.quiet.Len() <= l.hard && now.Sub(front.accepted) < l.grace {
			// Even the oldest may still be a client slow to speak.
			break
		}
		l.quiet.Remove(front.elem)
		front.elem = nil
		// A client whose bytes wait in the socket spoke: this manager,
		// busy (a storm of reconnections after renewals), has not read
		// them yet. Closing it would make it dial again, and the storm
		// worse.
		if !pending(front.Conn) {
			evict = append(evict, front)
		}
	}
	l.mu.Unlock()
	for _, e := range evict {
		e.Conn.Close()
		if l.evicted != nil {
			l.evicted()
		}
	}
	return qc, nil
}

// forget takes c off the list of silent connections.
func (l *quietListener) forget(c *quietConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.elem != nil {
		l.quiet.Remove(c.elem)
		c.elem = nil
	}
}

// quiets returns how many connections have not spoken yet.
func (l *quietListener) quiets() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.quiet.Len()
}

// quietConn is a connection that leaves the list of silent ones at its
// first byte.
type quietConn struct {
	net.Conn
	l        *quietListener
	accepted time.Time
	spoke    atomic.Bool
	elem     *list.Element // guarded by l.mu
}

func (c *quietConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.spoke.Swap(true) {
		c.l.forget(c)
	}
	return n, err
}

func (c *quietConn) Close() error {
	c.l.forget(c)
	return c.Conn.Close()
}

// pending reports whether c's peer sent bytes not read yet.
func pending(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	if err := raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return false
	}
	return n > 0
}
