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
	// handshakeTimeout bounds a client's TLS and HTTP/2 handshake
	// (grpc.ConnectionTimeout; gRPC's default is 120 s).
	handshakeTimeout = 5 * time.Second
)

// quietListener hands out connections and closes the oldest of those that
// have not sent a byte yet when there are more than max of them.
type quietListener struct {
	net.Listener
	max int

	mu    sync.Mutex // guards quiet
	quiet *list.List // of *quietConn, oldest first
}

func newQuietListener(ln net.Listener, max int) *quietListener {
	return &quietListener{Listener: ln, max: max, quiet: list.New()}
}

// Accept returns the next connection, after closing the oldest silent one
// if there are too many.
func (l *quietListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	qc := &quietConn{Conn: c, l: l}
	l.mu.Lock()
	qc.elem = l.quiet.PushBack(qc)
	var evict *quietConn
	for evict == nil && l.quiet.Len() > l.max {
		oldest := l.quiet.Remove(l.quiet.Front()).(*quietConn)
		oldest.elem = nil
		// A client whose bytes wait in the socket spoke: this manager,
		// busy (a storm of reconnections after renewals), has not read
		// them yet. Closing it would make it dial again, and the storm
		// worse.
		if !pending(oldest.Conn) {
			evict = oldest
		}
	}
	l.mu.Unlock()
	if evict != nil {
		evict.Conn.Close()
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
	l     *quietListener
	spoke atomic.Bool
	elem  *list.Element // guarded by l.mu
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
