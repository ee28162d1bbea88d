package manager

import (
	"errors"
	"net"
	"runtime"
	"time"

	"google.golang.org/grpc/credentials"
)

// Bounds of the TLS handshakes the API server runs at once. A handshake
// costs about a millisecond of CPU (key exchange, a signature, the
// verification of the client's chain). Run all at once, N reconnecting
// nodes share the CPU fairly: every handshake then takes N times as long,
// all pass handshakeTimeout together, and none completes; the nodes dial
// again and the storm feeds itself (quorumca-bench scale saw 80,000 failed
// handshakes after a rotation of 10,000 nodes, the Raft lease lost, and
// thousands of nodes marked down). Taken in turns, they complete at the
// rate the CPU allows, and the rest of the manager (heartbeats on open
// connections, Raft) keeps its share.
const (
	// handshakesPerCPU is how many handshakes run at once per CPU: a
	// handshake also waits for its client's messages.
	handshakesPerCPU = 8
	// handshakeQueueWait is the most a connection waits for its turn; it
	// is then closed (the client backs off and dials again), before its
	// handshakeTimeout could pass in the middle of the handshake.
	handshakeQueueWait = handshakeTimeout / 2
)

// errHandshakeBusy closes a connection that waited handshakeQueueWait for
// its turn.
var errHandshakeBusy = errors.New("manager: too many TLS handshakes at once; the client dials again after a backoff")

// turnCreds are server transport credentials that run at most cap(turns)
// handshakes at once; the others wait for a turn, up to wait.
type turnCreds struct {
	credentials.TransportCredentials
	turns chan struct{}
	wait  time.Duration
	// waited, when set, hears how each handshake's turn went: the time
	// it waited, and whether it got one.
	waited func(d time.Duration, ok bool)
}

// withTurns bounds the handshakes of creds to handshakesPerCPU per CPU.
func withTurns(creds credentials.TransportCredentials, waited func(time.Duration, bool)) credentials.TransportCredentials {
	return &turnCreds{
		TransportCredentials: creds,
		turns:                make(chan struct{}, handshakesPerCPU*runtime.GOMAXPROCS(0)),
		wait:                 handshakeQueueWait,
		waited:               waited,
	}
}

func (c *turnCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	start := time.Now()
	select {
	case c.turns <- struct{}{}:
	default:
		t := time.NewTimer(c.wait)
		select {
		case c.turns <- struct{}{}:
			t.Stop()
		case <-t.C:
			c.report(time.Since(start), false)
			return nil, nil, errHandshakeBusy
		}
	}
	c.report(time.Since(start), true)
	defer func() { <-c.turns }()
	return c.TransportCredentials.ServerHandshake(raw)
}

func (c *turnCreds) report(d time.Duration, ok bool) {
	if c.waited != nil {
		c.waited(d, ok)
	}
}

// Clone shares the turns: a clone serves the same listener.
func (c *turnCreds) Clone() credentials.TransportCredentials {
	clone := *c
	clone.TransportCredentials = c.TransportCredentials.Clone()
	return &clone
}
