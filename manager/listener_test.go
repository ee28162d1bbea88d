package manager

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumca/quorumca/internal/testkit"
)

// TestQuietListenerSparesSpeakers: over the bound of silent connections,
// the oldest one that sent nothing is closed, but not one whose bytes
// wait unread (a busy manager's client, not a silent one).
func TestQuietListenerSparesSpeakers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ql := newQuietListener(ln, 1)
	ql.grace = 0
	var evicted atomic.Int32
	ql.evicted = func() { evicted.Add(1) }
	t.Cleanup(func() { ql.Close() })
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	accept := func() net.Conn {
		t.Helper()
		c, err := ql.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	speaker := dial()
	if _, err := speaker.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	spoke := accept()
	testkit.Eventually(t, "the byte to wait in the socket", testkit.True(func() bool { return pending(spoke.(*quietConn).Conn) }))
	silent := dial()
	accept() // two unread connections, bound 1: the speaker is spared
	if n := evicted.Load(); n != 0 {
		t.Errorf("%d evictions reported with the speaker spared, want 0", n)
	}
	third := dial()
	accept() // the silent one goes
	_ = third
	if n := evicted.Load(); n != 1 {
		t.Errorf("%d evictions reported, want 1 (the silent connection)", n)
	}

	silent.SetReadDeadline(time.Now().Add(testkit.Wait))
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the oldest silent connection: Read() = %v, want io.EOF (closed by the manager)", err)
	}
	var b [1]byte
	spoke.SetReadDeadline(time.Now().Add(testkit.Wait))
	if n, err := spoke.Read(b[:]); n != 1 || b[0] != 'x' {
		t.Errorf("the speaker's connection: Read() = %d, %v, want its byte", n, err)
	}
}

// TestQuietListenerGrace: over the bound, a connection silent for less
// than the grace is kept (its client may be busy), one silent for longer
// is closed, and beyond the hard bound the oldest goes whatever its age.
func TestQuietListenerGrace(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ql := newQuietListener(ln, 1)
	ql.hard = 3
	now := time.Unix(1000, 0)
	ql.now = func() time.Time { return now }
	t.Cleanup(func() { ql.Close() })
	var clients []net.Conn
	dial := func() {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
		s, err := ql.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
	}
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(testkit.Wait))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}

	dial()
	dial() // two silent, bound 1, both young: kept
	if n := ql.quiets(); n != 2 {
		t.Fatalf("%d silent connections kept, want 2 (within the grace)", n)
	}
	now = now.Add(quietGrace)
	dial() // the first two are past the grace: closed down to the bound
	if n := ql.quiets(); n != 1 {
		t.Errorf("%d silent connections kept after the grace, want 1", n)
	}
	if !closed(clients[0]) || !closed(clients[1]) {
		t.Errorf("the connections silent past the grace are not closed")
	}
	dial()
	dial()
	dial() // four young silent connections, hard bound 3: the oldest goes
	if n := ql.quiets(); n != 3 {
		t.Errorf("%d silent connections kept over the hard bound 3, want 3", n)
	}
	if !closed(clients[2]) {
		t.Errorf("the oldest young connection over the hard bound is not closed")
	}
}
