package raft

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/quorumca/quorumca/ca"
)

const (
	// handshakeTimeout bounds an accepted connection's TLS handshake, so a
	// silent peer holds nothing but its own goroutine, and not for long.
	handshakeTimeout = 5 * time.Second
	// dialTimeout bounds a dial and its handshake when Raft gives no
	// timeout.
	dialTimeout = 10 * time.Second
	// acceptBacklog is how many authenticated connections may wait for
	// Raft to take them.
	acceptBacklog = 16
	// maxHandshakes bounds the handshakes in progress at once; connections
	// beyond it are closed at once.
	maxHandshakes = 128
	// maxAcceptDelay caps the back-off after a failed Accept.
	maxAcceptDelay = time.Second
)

// errPeerRefused is returned by streamLayer.Dial, and logged for accepted
// connections, when a peer's verified certificate is not that of a manager
// of this cluster, or Authorize refused it.
var errPeerRefused = errors.New("raft: peer refused")

// tlsConfigs is the pair of TLS configurations a streamLayer uses, replaced
// as a whole by SetTLS.
type tlsConfigs struct {
	server, client *tls.Config
}

// newTLSConfigs derives the server and client configurations from the
// caller's: TLS 1.2 at least, client certificates required and verified, no
// session resumption, and managers named "swarm-manager" when dialled.
func newTLSConfigs(cfg *tls.Config) *tlsConfigs {
	server := cfg.Clone()
	hardenServer(server)
	if get := server.GetConfigForClient; get != nil {
		server.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if c != nil {
				c = c.Clone()
				hardenServer(c)
			}
			return c, err
		}
	}
	client := cfg.Clone()
	client.MinVersion = max(client.MinVersion, tls.VersionTLS12)
	client.InsecureSkipVerify = false
	client.ClientSessionCache = nil
	// A manager's certificate names its role as a DNS SAN; Raft dials an
	// address, which the certificate does not name.
	client.ServerName = string(ca.RoleManager)
	return &tlsConfigs{server: server, client: client}
}

// hardenServer makes c require TLS 1.2 and a verified client certificate,
// and verify every connection afresh: a resumed session would skip the
// chain check against roots SetTLS may have replaced.
func hardenServer(c *tls.Config) {
	c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.SessionTicketsDisabled = true
}

// streamLayer is hashicorp/raft's StreamLayer over mutual TLS. Accepted
// connections are handshaken and checked on their own goroutines; only
// connections from this cluster's managers reach Accept.
type streamLayer struct {
	ln        net.Listener
	addr      net.Addr
	clusterID string
	authorize func(ca.Identity) error
	log       *slog.Logger
	tls       atomic.Pointer[tlsConfigs]

	accepted chan net.Conn  // authenticated, waiting for Accept
	done     chan struct{}  // closed by Close
	sem      chan struct{}  // one token per handshake in progress
	wg       sync.WaitGroup // the accept loop and the handshakes

	mu     sync.Mutex // mu guards conns and closed
	conns  map[net.Conn]struct{}
	closed bool
}

var _ hraft.StreamLayer = (*streamLayer)(nil)

// streamConfig is what newStreamLayer needs.
type streamConfig struct {
	listener  net.Listener
	advertise string
	tls       *tls.Config
	clusterID string
	authorize func(ca.Identity) error
	log       *slog.Logger
}

// newStreamLayer starts accepting on c.listener. Close stops it.
func newStreamLayer(c streamConfig) *streamLayer {
	s := &streamLayer{
		ln:        c.listener,
		addr:      advertiseAddr(c.advertise),
		clusterID: c.clusterID,
		authorize: c.authorize,
		log:       c.log,
		accepted:  make(chan net.Conn, acceptBacklog),
		done:      make(chan struct{}),
		sem:       make(chan struct{}, maxHandshakes),
		conns:     make(map[net.Conn]struct{}),
	}
	s.tls.Store(newTLSConfigs(c.tls))
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// setTLS replaces the TLS configuration for connections made from now on.
func (s *streamLayer) setTLS(cfg *tls.Config) { s.tls.Store(newTLSConfigs(cfg)) }

// Accept returns the next authenticated connection from a manager of this
// cluster. It is called by hashicorp/raft's NetworkTransport listen loop.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.accepted:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Addr returns the address other managers dial, which Raft records as this
// node's address.
func (s *streamLayer) Addr() net.Addr { return s.addr }

// Close stops accepting, closes every connection this layer accepted or
// dialled, and waits for its goroutines to end. It is called by
// NetworkTransport.Close and by Node.Shutdown; calls after the first do
// nothing.
func (s *streamLayer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()

	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	for c := range conns {
		_ = c.Close()
	}
	s.wg.Wait()
	return err
}

// Dial connects to the manager at address, completes the TLS handshake
// within timeout and checks the server's verified identity. It is called by
// NetworkTransport on Raft's replication and election goroutines.
func (s *streamLayer) Dial(address hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 {
		timeout = dialTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft: dial manager at %s: %w", address, err)
	}
	if !s.track(raw) {
		_ = raw.Close()
		return nil, fmt.Errorf("raft: dial manager at %s: %w", address, net.ErrClosed)
	}
	conn := tls.Client(raw, s.tls.Load().client)
	if err := conn.HandshakeContext(ctx); err != nil {
		s.closeRaw(raw)
		s.refused("dial", raw.RemoteAddr(), claimedNodeID(err), err)
		return nil, fmt.Errorf("raft: TLS handshake with manager at %s: %w", address, err)
	}
	id, err := s.check(conn.ConnectionState())
	if err != nil {
		s.closeRaw(raw)
		s.refused("dial", raw.RemoteAddr(), id.NodeID, err)
		return nil, fmt.Errorf("%w (dialled %s)", err, address)
	}
	return &peerConn{Conn: conn, raw: raw, s: s}, nil
}

// acceptLoop accepts TCP connections and hands each to a handshake
// goroutine, until the listener is closed.
func (s *streamLayer) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), maxAcceptDelay)
			s.log.Warn("raft: accept failed; retrying", "error", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-s.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		if !s.track(raw) {
			_ = raw.Close()
			return
		}
		select {
		case s.sem <- struct{}{}:
		default:
			s.log.Warn("raft: too many TLS handshakes in progress; closing connection", "remote", raw.RemoteAddr().String(), "limit", maxHandshakes)
			s.closeRaw(raw)
			continue
		}
		s.wg.Add(1)
		go s.serve(raw)
	}
}

// serve completes the server side of the TLS handshake on raw within
// handshakeTimeout, checks the client's identity, and queues the
// connection for Accept; a refused connection is closed and logged.
func (s *streamLayer) serve(raw net.Conn) {
	defer s.wg.Done()
	defer func() { <-s.sem }()

	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	conn := tls.Server(raw, s.tls.Load().server)
	if err := conn.HandshakeContext(ctx); err != nil {
		s.closeRaw(raw)
		s.refused("accept", raw.RemoteAddr(), claimedNodeID(err), err)
		return
	}
	id, err := s.check(conn.ConnectionState())
	if err != nil {
		s.closeRaw(raw)
		s.refused("accept", raw.RemoteAddr(), id.NodeID, err)
		return
	}
	_ = raw.SetDeadline(time.Time{})
	select {
	case s.accepted <- &peerConn{Conn: conn, raw: raw, s: s}:
	case <-s.done:
		s.closeRaw(raw)
	}
}

// check reads the identity of a handshaken peer from its verified
// certificate and admits only managers of this cluster that Authorize
// accepts. The identity is returned, when there is one, even on refusal,
// for the log.
func (s *streamLayer) check(cs tls.ConnectionState) (ca.Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ca.Identity{}, fmt.Errorf("%w: no verified certificate", errPeerRefused)
	}
	id, err := ca.IdentityOf(cs.VerifiedChains[0][0])
	if err != nil {
		return ca.Identity{}, fmt.Errorf("%w: %w", errPeerRefused, err)
	}
	if id.Role != ca.RoleManager {
		return id, fmt.Errorf("%w: node %s has role %s; only %s nodes take part in Raft", errPeerRefused, id.NodeID, id.Role, ca.RoleManager)
	}
	if id.ClusterID != s.clusterID {
		return id, fmt.Errorf("%w: node %s belongs to cluster %s, not %s", errPeerRefused, id.NodeID, id.ClusterID, s.clusterID)
	}
	if s.authorize != nil {
		if err := s.authorize(id); err != nil {
			return id, fmt.Errorf("%w: node %s: %w", errPeerRefused, id.NodeID, err)
		}
	}
	return id, nil
}

// refused logs a refused peer: its node ID if known, and why. Only names
// from the certificate are logged, never key material.
func (s *streamLayer) refused(side string, remote net.Addr, nodeID string, reason error) {
	if s.isClosed() {
		return // the handshake was cut short by Close
	}
	s.log.Warn("raft: refused peer", "side", side, "remote", remote.String(), "node_id", nodeID, "reason", reason.Error())
}

// claimedNodeID returns the common name of the certificate a failed
// handshake rejected: the node ID it claims, unverified. It is for logs.
func claimedNodeID(err error) string {
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) && len(cve.UnverifiedCertificates) > 0 {
		return cve.UnverifiedCertificates[0].Subject.CommonName + " (unverified)"
	}
	var uae x509.UnknownAuthorityError
	if errors.As(err, &uae) && uae.Cert != nil {
		return uae.Cert.Subject.CommonName + " (unverified)"
	}
	return ""
}

// track records raw so that Close closes it; it reports false once the
// layer is closed.
func (s *streamLayer) track(raw net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[raw] = struct{}{}
	return true
}

// closeRaw forgets and closes raw.
func (s *streamLayer) closeRaw(raw net.Conn) {
	s.mu.Lock()
	delete(s.conns, raw) // a no-op on the nil map after Close
	s.mu.Unlock()
	_ = raw.Close()
}

func (s *streamLayer) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// peerConn is an authenticated connection: TLS over a tracked TCP connection.
type peerConn struct {
	*tls.Conn
	raw net.Conn
	s   *streamLayer
}

// Close closes the TLS connection and forgets the TCP one.
func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.s.closeRaw(c.raw)
	return err
}

// advertiseAddr is a net.Addr for an address given as a string.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }
