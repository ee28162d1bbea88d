package testkit

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy relays the TCP connections it accepts on 127.0.0.1 to a target,
// and counts them: it tells how many connections a client opened, and it
// gives a port that a test holds from the start to a server whose own
// port is known only later.
type Proxy struct {
	ln       net.Listener
	accepted atomic.Int64

	mu     sync.Mutex // guards target and conns
	target string
	conns  []net.Conn
	wg     sync.WaitGroup
}

// NewProxy relays 127.0.0.1:<ephemeral> to target ("": refuse every
// connection until SetTarget) until the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("net.Listen() = %v", err)
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.acceptLoop()
	tb.Cleanup(p.close)
	return p
}

// Addr returns the address the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Accepted returns how many connections the proxy accepted.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// SetTarget relays the connections accepted from now on to target.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		if target == "" {
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
