package membership

import (
	"io"
	"log"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func newTestTransport(t *testing.T) *transport {
	t.Helper()
	tr, err := newTransport("127.0.0.1", 0, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatalf("newTransport(127.0.0.1, 0) = %v", err)
	}
	t.Cleanup(func() { tr.Shutdown() })
	return tr
}

// TestTransportPackets: a packet arrives whole, in a buffer about its own
// size (an allocator size class, not 64 KiB), from the address that sent
// it, over UDP on the port TCP got.
func TestTransportPackets(t *testing.T) {
	a, b := newTestTransport(t), newTestTransport(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port()))
	if got := b.udp.LocalAddr().(*net.UDPAddr).Port; got != b.port() {
		t.Fatalf("UDP bound to port %d, TCP to %d; want the same", got, b.port())
	}
	for _, size := range []int{1, 300, 1400, 9000} {
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(i * 7)
		}
		if _, err := a.WriteTo(msg, addr); err != nil {
			t.Fatalf("WriteTo(%d bytes) = %v", size, err)
		}
		select {
		case p := <-b.PacketCh():
			if string(p.Buf) != string(msg) || cap(p.Buf) > 2*size+64 {
				t.Errorf("packet of %d bytes arrived as %d bytes in a buffer of %d; want it whole in a buffer of about its size", size, len(p.Buf), cap(p.Buf))
			}
			if from := p.From.(*net.UDPAddr).Port; from != a.port() {
				t.Errorf("packet from port %d, want %d", from, a.port())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no packet of %d bytes within 5s", size)
		}
	}
}

// TestTransportStreams: a dial reaches the other side's StreamCh.
func TestTransportStreams(t *testing.T) {
	a, b := newTestTransport(t), newTestTransport(t)
	conn, err := a.DialAddressTimeout(memberlist.Address{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port()))}, 5*time.Second)
	if err != nil {
		t.Fatalf("DialAddressTimeout() = %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case in := <-b.StreamCh():
		defer in.Close()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(in, buf); err != nil || string(buf) != "hello" {
			t.Errorf("stream read %q, %v; want hello", buf, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no stream within 5s")
	}
}

// TestTransportShutdownWithPendingPacket: Shutdown returns while a packet
// waits for a reader that never comes, and again when called twice.
func TestTransportShutdownWithPendingPacket(t *testing.T) {
	a := newTestTransport(t)
	b, err := newTransport("127.0.0.1", 0, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteTo([]byte("unread"), net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port()))); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		b.Shutdown()
		b.Shutdown()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return within 5s with a packet pending")
	}
}

// TestTransportAdvertise: the advertised address is the one given, else
// the bound one; a bad one is an error.
func TestTransportAdvertise(t *testing.T) {
	tr := newTestTransport(t)
	ip, port, err := tr.FinalAdvertiseAddr("10.1.2.3", 7946)
	if err != nil || ip.String() != "10.1.2.3" || len(ip) != net.IPv4len || port != 7946 {
		t.Errorf("FinalAdvertiseAddr(10.1.2.3, 7946) = %v (%d bytes), %d, %v; want 10.1.2.3 as 4 bytes, 7946", ip, len(ip), port, err)
	}
	ip, port, err = tr.FinalAdvertiseAddr("", 0)
	if err != nil || ip.String() != "127.0.0.1" || port != tr.port() {
		t.Errorf("FinalAdvertiseAddr(\"\", 0) = %v, %d, %v; want 127.0.0.1, %d", ip, port, err, tr.port())
	}
	if _, _, err := tr.FinalAdvertiseAddr("not-an-ip", 1); err == nil {
		t.Errorf("FinalAdvertiseAddr(not-an-ip) = nil error, want one")
	}
	if _, err := newTransport("not-an-ip", 0, log.New(io.Discard, "", 0)); err == nil {
		t.Errorf("newTransport(not-an-ip) = nil error, want one")
	}
}
