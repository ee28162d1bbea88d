package manager

import (
	"io"
	"net"
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
	third := dial()
	accept() // the silent one goes
	_ = third

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
