package membership

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"net"
	"strconv"
	"sync"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
)

// transport carries memberlist's packets over UDP and its streams over TCP,
// on the same port, as memberlist's NetTransport does, with one difference:
// NetTransport reads every UDP packet into a fresh 64 KiB buffer and hands
// the buffer on. Allocating (and zeroing) 64 KiB for a packet of a few
// hundred bytes was most of gossip's cost, in allocation and garbage
// collection, and a handoff queue under load held 64 KiB per packet. This
// transport reads into one buffer and hands on a copy of the packet's size.
type transport struct {
	host    string
	tcp     *net.TCPListener
	udp     *net.UDPConn
	packets chan *memberlist.Packet
	streams chan net.Conn
	logger  *log.Logger

	closing chan struct{} // closed by Shutdown
	once    sync.Once
	wg      sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

// udpReadBuffer is the socket receive buffer asked for, as memberlist does:
// gossip arrives in bursts.
const udpReadBuffer = 2 << 20

// newTransport binds TCP and UDP on host:port. Port 0 picks a free TCP
// port and binds UDP on the same one, trying again if another process
// takes the UDP port first.
func newTransport(host string, port int, logger *log.Logger) (*transport, error) {
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, fmt.Errorf("gossip bind address %q is not an IP address", host)
	}
	tries := 1
	if port == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var t *transport
		if t, err = bindTransport(ip, port); err == nil {
			t.host, t.logger = host, logger
			t.packets, t.streams = make(chan *memberlist.Packet), make(chan net.Conn)
			t.closing = make(chan struct{})
			t.wg.Add(2)
			go t.readPackets()
			go t.acceptStreams()
			return t, nil
		}
	}
	return nil, err
}

func bindTransport(ip net.IP, port int) (*transport, error) {
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, fmt.Errorf("listen on TCP %s: %w", net.JoinHostPort(ip.String(), strconv.Itoa(port)), err)
	}
	port = tcp.Addr().(*net.TCPAddr).Port
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		tcp.Close()
		return nil, fmt.Errorf("listen on UDP %s: %w", net.JoinHostPort(ip.String(), strconv.Itoa(port)), err)
	}
	// Take what the system grants: a smaller buffer only drops more
	// packets in a burst, which gossip repairs.
	for size := udpReadBuffer; size > 0; size /= 2 {
		if udp.SetReadBuffer(size) == nil {
			break
		}
	}
	return &transport{tcp: tcp, udp: udp}, nil
}

// port is the port both listeners are bound to.
func (t *transport) port() int { return t.tcp.Addr().(*net.TCPAddr).Port }

func (t *transport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := t.udp.ReadFrom(buf)
		at := time.Now()
		if err != nil {
			if t.closed() {
				return
			}
			t.logger.Printf("[ERR] memberlist: read UDP packet: %v", err)
			continue
		}
		if n == 0 {
			continue
		}
		select {
		case t.packets <- &memberlist.Packet{Buf: bytes.Clone(buf[:n]), From: from, Timestamp: at}:
		case <-t.closing:
			return
		}
	}
}

func (t *transport) acceptStreams() {
	defer t.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		conn, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.closed() {
				return
			}
			t.logger.Printf("[ERR] memberlist: accept TCP connection: %v", err)
			select {
			case <-time.After(backoff):
			case <-t.closing:
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		select {
		case t.streams <- conn:
		case <-t.closing:
			conn.Close()
			return
		}
	}
}

func (t *transport) closed() bool {
	select {
	case <-t.closing:
		return true
	default:
		return false
	}
}

// FinalAdvertiseAddr returns the address to advertise: the one given, or
// else the bound IP (a private IP of this host when bound to all of them)
// and the bound port.
func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		addr := net.ParseIP(ip)
		if addr == nil {
			return nil, 0, fmt.Errorf("advertise address %q is not an IP address", ip)
		}
		if v4 := addr.To4(); v4 != nil {
			addr = v4
		}
		return addr, port, nil
	}
	if t.host != "0.0.0.0" {
		return t.tcp.Addr().(*net.TCPAddr).IP, t.port(), nil
	}
	private, err := sockaddr.GetPrivateIP()
	if err != nil {
		return nil, 0, fmt.Errorf("find this host's addresses: %w", err)
	}
	addr := net.ParseIP(private)
	if addr == nil {
		return nil, 0, errors.New("no private IP address to advertise: give --gossip-advertise-addr")
	}
	return addr, t.port(), nil
}

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	to, err := net.ResolveUDPAddr("udp", a.Addr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = t.udp.WriteTo(b, to)
	return time.Now(), err
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *transport) StreamCh() <-chan net.Conn { return t.streams }

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("tcp", a.Addr)
}

// Shutdown closes both listeners and waits for their goroutines.
func (t *transport) Shutdown() error {
	t.once.Do(func() {
		close(t.closing)
		t.tcp.Close()
		t.udp.Close()
	})
	t.wg.Wait()
	return nil
}
