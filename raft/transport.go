package raft

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/quorumca/quorumca/ca"
)

const (
	// helloTimeout bounds the wait for an accepted connection's first TLS
	// record, the ClientHello, which a manager sends as soon as it has
	// connected: a silent peer is closed after it, long before
	// handshakeTimeout. It leaves room for a few lost segments.
	helloTimeout = 2 * time.Second
	// handshakeTimeout bounds an accepted connection's whole TLS handshake.
	handshakeTimeout = 5 * time.Second
	// dialTimeout bounds a dial and its handshake when Raft gives no
	// timeout.
	dialTimeout = 10 * time.Second
	// acceptBacklog is how many authenticated connections may wait for
	// Raft to take them.
	acceptBacklog = 16
	// maxHandshakes bounds the accepted connections whose handshake is
	// pending. When all are taken, a new connection evicts the oldest one
	// that has not yet sent its ClientHello (or, failing that, the oldest
	// one), rather than being refused: see admit.
	maxHandshakes = 128
	// maxServing is the hard cap on handshake goroutines, and so on the
	// accepted connections they hold: maxHandshakes pending ones, plus
	// evicted ones winding down and handshaken ones waiting for Accept. At
	// the cap the accept loop waits, and new connections wait in the
	// kernel's backlog.
	maxServing = 2 * maxHandshakes
	// evictWarnEvery is the least time between two warnings that
	// connections are being evicted, so that a flood does not flood the log.
	evictWarnEvery = 10 * time.Second
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
// caller's: quorumca's TLS policy (ca.HardenTLS) on both sides and on every
// config GetConfigForClient returns, client certificates required and
// verified, no session resumption, and managers named "swarm-manager" when
// dialled.
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
	client := ca.HardenTLS(cfg.Clone())
	client.InsecureSkipVerify = false
	client.ClientSessionCache = nil
	// A manager's certificate names its role as a DNS SAN; Raft dials an
	// address, which the certificate does not name.
	client.ServerName = string(ca.RoleManager)
	return &tlsConfigs{server: server, client: client}
}

// hardenServer applies quorumca's TLS policy to c (TLS 1.2 at least, and
// under TLS 1.2 only ECDHE suites with an AEAD: no CBC, no SHA-1 MAC),
// makes it require a verified client certificate, and verify every
// connection afresh: a resumed session would skip the chain check against
// roots SetTLS may have replaced.
func hardenServer(c *tls.Config) {
	ca.HardenTLS(c)
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.SessionTicketsDisabled = true
}

// streamLayer is hashicorp/raft's StreamLayer over mutual TLS. Accepted
// connections are handshaken and checked on their own goroutines; only
// connections from this cluster's managers reach Accept. Anyone can
// connect to the port, so what a connection that has not yet shown a
// certificate may hold is bounded: a goroutine and a file descriptor, for
// helloTimeout if it stays silent, and only until newer connections need
// its slot (see admit).
type streamLayer struct {
	ln        net.Listener
	addr      net.Addr
	clusterID string
	authorize func(id ca.Identity, serial string) error
	dial      func(ctx context.Context, address string) (net.Conn, error)
	log       *slog.Logger
	tls       atomic.Pointer[tlsConfigs]

	accepted chan net.Conn  // authenticated, waiting for Accept
	done     chan struct{}  // closed by Close
	sem      chan struct{}  // one token per handshake goroutine
	wg       sync.WaitGroup // the accept loop and the handshakes

	// evictions and lastEvictWarn are owned by the accept loop.
	evictions     int       // evicted since the last warning
	lastEvictWarn time.Time // when evict last warned

	mu      sync.Mutex // mu guards conns, pending and closed
	conns   map[net.Conn]struct{}
	pending []*helloConn // accepted, handshake not yet done; oldest first
	closed  bool
}

var _ hraft.StreamLayer = (*streamLayer)(nil)

// streamConfig is what newStreamLayer needs.
type streamConfig struct {
	listener  net.Listener
	advertise string
	tls       *tls.Config
	clusterID string
	authorize func(id ca.Identity, serial string) error
	dial      func(ctx context.Context, address string) (net.Conn, error) // nil: a net.Dialer
	log       *slog.Logger
}

// newStreamLayer starts accepting on c.listener. Close stops it.
func newStreamLayer(c streamConfig) *streamLayer {
	s := &streamLayer{
		ln:        c.listener,
		addr:      advertiseAddr(c.advertise),
		clusterID: c.clusterID,
		authorize: c.authorize,
		dial:      c.dial,
		log:       c.log,
		accepted:  make(chan net.Conn, acceptBacklog),
		done:      make(chan struct{}),
		sem:       make(chan struct{}, maxServing),
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
	s.conns, s.pending = nil, nil
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
	dial := s.dial
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, address string) (net.Conn, error) { return d.DialContext(ctx, "tcp", address) }
	}
	raw, err := dial(ctx, string(address))
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
		// Take a goroutine's token before accepting, so that at the cap
		// new connections wait in the kernel's backlog, not in memory.
		select {
		case s.sem <- struct{}{}:
		case <-s.done:
			return
		}
		raw, err := s.ln.Accept()
		if err != nil {
			<-s.sem
			if !s.retryAccept(err, &delay) {
				return
			}
			continue
		}
		delay = 0
		hc := newHelloConn(raw)
		victim, ok := s.admit(hc)
		if !ok {
			<-s.sem
			_ = raw.Close()
			return
		}
		if victim != nil {
			s.evict(victim)
		}
		s.wg.Add(1)
		go s.serve(hc)
		// Let the new goroutine read what the peer has already sent
		// before the next Accept: a manager's ClientHello is in the socket
		// by now, and once read it protects the connection from eviction.
		// Without this, under a flood, the accept loop could take in
		// maxHandshakes newer connections before the goroutine ran, and
		// evict a manager's connection unread (the flood test did, in
		// every run).
		runtime.Gosched()
	}
}

// retryAccept waits before the accept loop tries again after err, backing
// off up to maxAcceptDelay. It reports false if the listener or the layer
// is closed.
func (s *streamLayer) retryAccept(err error, delay *time.Duration) bool {
	if s.isClosed() || errors.Is(err, net.ErrClosed) {
		return false
	}
	*delay = min(max(2**delay, 5*time.Millisecond), maxAcceptDelay)
	s.log.Warn("raft: accept failed; retrying", "error", err, "retry_in", *delay)
	t := time.NewTimer(*delay)
	defer t.Stop()
	select {
	case <-s.done:
		return false
	case <-t.C:
		return true
	}
}

// admit tracks hc as a pending handshake. When maxHandshakes are already
// pending, it takes one out and returns it for the caller to evict: the
// oldest that has not sent its whole ClientHello, else the oldest. It
// reports false once the layer is closed.
//
// Evicting the oldest rather than refusing the newest is what keeps the
// managers in. Refused, a few hundred silent connections, re-opened as
// they were closed, kept every manager's dial out for as long as they
// went on. Evicted, they cannot: a manager sends its ClientHello as soon
// as it has connected and is done in milliseconds, so it is never evicted
// while a silent connection is pending, and otherwise only if
// maxHandshakes newer connections arrive before its handshake ends.
func (s *streamLayer) admit(hc *helloConn) (victim *helloConn, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	if len(s.pending) >= maxHandshakes {
		i := max(slices.IndexFunc(s.pending, func(p *helloConn) bool { return !p.hello.Load() }), 0)
		victim = s.pending[i]
		s.pending = slices.Delete(s.pending, i, i+1)
	}
	s.conns[hc.Conn] = struct{}{}
	s.pending = append(s.pending, hc)
	return victim, true
}

// evict closes a connection admit chose, and warns that connections are
// being evicted, with how many, at most once per evictWarnEvery. It runs
// on the accept loop.
func (s *streamLayer) evict(victim *helloConn) {
	s.closeRaw(victim.Conn)
	s.evictions++
	if now := time.Now(); now.Sub(s.lastEvictWarn) >= evictWarnEvery {
		s.log.Warn("raft: all TLS handshake slots are taken; closing the oldest connections that have not sent a ClientHello (is someone flooding the Raft port?)",
			"limit", maxHandshakes, "evicted", s.evictions, "remote", victim.RemoteAddr().String())
		s.evictions, s.lastEvictWarn = 0, now
	}
}

// settle ends hc's pending handshake; it reports false if hc was evicted,
// or the layer closed, first.
func (s *streamLayer) settle(hc *helloConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.Index(s.pending, hc)
	if i < 0 {
		return false
	}
	s.pending = slices.Delete(s.pending, i, i+1)
	return true
}

// serve completes the server side of the TLS handshake on hc within its
// deadlines, checks the client's identity, and queues the connection for
// Accept; a refused connection is closed and logged.
func (s *streamLayer) serve(hc *helloConn) {
	defer s.wg.Done()
	defer func() { <-s.sem }()

	// hc's deadline bounds every read and write of the handshake, so it
	// needs no context, which would cost a goroutine per connection.
	conn := tls.Server(hc, s.tls.Load().server)
	err := conn.Handshake()
	if !s.settle(hc) {
		s.closeRaw(hc.Conn) // evicted: evict has closed and counted it
		return
	}
	if err != nil {
		s.closeRaw(hc.Conn)
		s.handshakeFailed(hc, err)
		return
	}
	id, err := s.check(conn.ConnectionState())
	if err != nil {
		s.closeRaw(hc.Conn)
		s.refused("accept", hc.RemoteAddr(), id.NodeID, err)
		return
	}
	_ = hc.SetDeadline(time.Time{})
	select {
	case s.accepted <- &peerConn{Conn: conn, raw: hc.Conn, s: s}:
	case <-s.done:
		s.closeRaw(hc.Conn)
	}
}

// handshakeFailed logs a failed handshake: as a refused peer if the peer
// sent anything, and only at Debug if it never said a word (port
// scanners, health checks, the tail of a flood), so that those cannot
// flood the log.
func (s *streamLayer) handshakeFailed(hc *helloConn, err error) {
	if hc.read > 0 {
		s.refused("accept", hc.RemoteAddr(), claimedNodeID(err), err)
		return
	}
	if !s.isClosed() {
		s.log.Debug("raft: connection closed before it sent a ClientHello", "remote", hc.RemoteAddr().String(), "reason", err.Error())
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
		if err := s.authorize(id, cs.VerifiedChains[0][0].SerialNumber.Text(16)); err != nil {
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

// recordHeaderLen is the length of a TLS record's header: content type,
// version, and the length of what follows, big-endian, in the last two
// bytes.
const recordHeaderLen = 5

// helloConn is an accepted connection during its TLS handshake. It
// follows the first TLS record read from it, the ClientHello: until that
// is in, the connection has helloTimeout and is the first to be evicted;
// then it has the rest of handshakeTimeout.
type helloConn struct {
	net.Conn
	deadline time.Time   // when the whole handshake must be done
	hello    atomic.Bool // the first record is in; admit reads it

	// hdr and read are only used by Read, on the handshake's goroutine, and
	// by that goroutine once the handshake is over.
	hdr  [recordHeaderLen]byte
	read int // bytes read so far, counted until the first record is in
}

// newHelloConn sets raw's deadline to helloTimeout from now and follows
// its handshake.
func newHelloConn(raw net.Conn) *helloConn {
	now := time.Now()
	_ = raw.SetDeadline(now.Add(helloTimeout))
	return &helloConn{Conn: raw, deadline: now.Add(handshakeTimeout)}
}

// Read reads from the connection and counts what it read until the first
// record is in. crypto/tls calls it, during the handshake and after.
func (c *helloConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.hello.Load() {
		c.follow(p[:n])
	}
	return n, err
}

// follow counts b, the next bytes of the connection, and once the first
// record is in, moves the deadline to the end of handshakeTimeout.
func (c *helloConn) follow(b []byte) {
	if c.read < recordHeaderLen {
		copy(c.hdr[c.read:], b)
	}
	c.read += len(b)
	if c.read < recordHeaderLen || c.read < recordHeaderLen+int(binary.BigEndian.Uint16(c.hdr[3:])) {
		return
	}
	c.hello.Store(true)
	_ = c.Conn.SetDeadline(c.deadline)
}

// advertiseAddr is a net.Addr for an address given as a string.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }
