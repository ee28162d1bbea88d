package raft

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// testStream is a stream layer of its own, for a node of c with the given
// identity, on an ephemeral loopback port, closed when the test ends.
type testStream struct {
	*streamLayer
	id   string
	tls  *tls.Config
	logs *recorder
}

func newTestStream(t *testing.T, c *testkit.CA, id ca.Identity, authorize func(ca.Identity, string) error) *testStream {
	t.Helper()
	s := newTestStreamTLS(t, c, c.TLSConfig(t, id), authorize)
	s.id = id.NodeID
	return s
}

// newTestStreamTLS is newTestStream with the caller's TLS configuration.
func newTestStreamTLS(t *testing.T, c *testkit.CA, cfg *tls.Config, authorize func(ca.Identity, string) error) *testStream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	s := newStreamLayer(streamConfig{
		listener:  ln,
		advertise: ln.Addr().String(),
		tls:       cfg,
		clusterID: c.ClusterID,
		authorize: authorize,
		log:       slog.New(rec),
	})
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return &testStream{streamLayer: s, tls: cfg, logs: rec}
}

func manager(c *testkit.CA, nodeID string) ca.Identity {
	return ca.Identity{NodeID: nodeID, Role: ca.RoleManager, ClusterID: c.ClusterID}
}

// clientConfig returns cfg as a plain crypto/tls client dialling a manager.
func clientConfig(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	cfg.ServerName = string(ca.RoleManager)
	return cfg
}

// acceptOne waits for s to hand over a connection.
func acceptOne(t *testing.T, s *testStream) net.Conn {
	t.Helper()
	select {
	case c := <-s.accepted:
		return c
	case <-time.After(testkit.Wait):
		t.Fatalf("Accept() returned nothing in %s", testkit.Wait)
		return nil
	}
}

// assertNotAccepted fails if s has handed a connection to Raft.
func assertNotAccepted(t *testing.T, s *testStream) {
	t.Helper()
	select {
	case c := <-s.accepted:
		c.Close()
		t.Fatalf("Accept() returned a connection from a refused peer")
	default:
	}
}

// assertServerCloses dials s with a plain TLS client using cfg and checks
// that the server ends the connection without serving it: the handshake
// fails, or the first read fails (not by the client's own timeout).
func assertServerCloses(t *testing.T, s *testStream, cfg *tls.Config) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testkit.Wait}, "tcp", s.Addr().String(), clientConfig(cfg))
	if err != nil {
		t.Logf("handshake refused: %v", err)
		assertNotAccepted(t, s)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(testkit.Wait))
	_, _ = conn.Write([]byte{0}) // an AppendEntries RPC's type byte
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case err == nil:
		t.Fatalf("server answered a refused peer")
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("server kept a refused peer's connection open for %s", testkit.Wait)
	}
	t.Logf("connection closed by the server: %v", err)
	assertNotAccepted(t, s)
}

// assertRefusalLogged checks that s logged a refusal at Warn naming nodeID.
func assertRefusalLogged(t *testing.T, s *testStream, nodeID string) {
	t.Helper()
	testkit.Eventually(t, "a refusal naming "+nodeID+" in the log", testkit.True(func() bool {
		for _, r := range s.logs.records() {
			if r.Level == slog.LevelWarn && r.Message == "raft: refused peer" && strings.Contains(r.attrs["node_id"], nodeID) {
				return true
			}
		}
		return false
	}))
}

func TestTransportAcceptsManager(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	a := newTestStream(t, c, manager(c, newID(t)), nil)
	b := newTestStream(t, c, manager(c, newID(t)), nil)

	conn, err := a.Dial(hraft.ServerAddress(b.Addr().String()), time.Second)
	if err != nil {
		t.Fatalf("Dial(manager) = %v", err)
	}
	defer conn.Close()
	srv := acceptOne(t, b)
	defer srv.Close()
	if got := srv.(*peerConn).ConnectionState().Version; got < tls.VersionTLS12 {
		t.Errorf("TLS version = %s, want at least TLS 1.2", tls.VersionName(got))
	}
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("Read() = %q, %v; want ping", buf, err)
	}
}

func TestTransportRefusesWorkerCert(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	m := newTestStream(t, c, manager(c, newID(t)), nil)
	workerID := newID(t)
	worker := ca.Identity{NodeID: workerID, Role: ca.RoleWorker, ClusterID: c.ClusterID}

	t.Run("accept", func(t *testing.T) {
		assertServerCloses(t, m, c.TLSConfig(t, worker))
		assertRefusalLogged(t, m, workerID)
	})
	t.Run("dial", func(t *testing.T) {
		w := newTestStream(t, c, worker, nil)
		conn, err := m.Dial(hraft.ServerAddress(w.Addr().String()), time.Second)
		if err == nil {
			conn.Close()
			t.Fatalf("Dial(worker) = nil error, want a refusal")
		}
		t.Logf("Dial(worker) = %v", err)
		assertRefusalLogged(t, m, workerID)
	})
}

func TestTransportRefusesForeignCluster(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	m := newTestStream(t, c, manager(c, newID(t)), nil)
	other := testkit.NewCA(t)

	t.Run("other root", func(t *testing.T) {
		foreign := manager(other, newID(t))
		// The foreign node trusts our root, so only our side refuses, and
		// presents its certificate even though our server asks for
		// certificates from our root.
		cfg := other.TLSConfig(t, foreign)
		cfg.RootCAs = c.Roots(t)
		cert := cfg.Certificates[0]
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		assertServerCloses(t, m, cfg)
		assertRefusalLogged(t, m, foreign.NodeID)

		f := newTestStream(t, other, foreign, nil)
		if conn, err := m.Dial(hraft.ServerAddress(f.Addr().String()), time.Second); err == nil {
			conn.Close()
			t.Fatalf("Dial(foreign root) = nil error, want a refusal")
		} else {
			t.Logf("Dial(foreign root) = %v", err)
		}
	})
	t.Run("other cluster ID under our root", func(t *testing.T) {
		// Our root signs a certificate naming another cluster: the chain
		// verifies, the O does not match.
		foreign := ca.Identity{NodeID: newID(t), Role: ca.RoleManager, ClusterID: other.ClusterID}
		assertServerCloses(t, m, c.TLSConfig(t, foreign))
		assertRefusalLogged(t, m, foreign.NodeID)

		f := newTestStream(t, c, foreign, nil)
		conn, err := m.Dial(hraft.ServerAddress(f.Addr().String()), time.Second)
		if !errors.Is(err, errPeerRefused) {
			if conn != nil {
				conn.Close()
			}
			t.Fatalf("Dial(other cluster ID) = %v, want errPeerRefused", err)
		}
		t.Logf("Dial(other cluster ID) = %v", err)
	})
}

func TestTransportRefusesTLS11(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	m := newTestStream(t, c, manager(c, newID(t)), nil)
	peer := c.TLSConfig(t, manager(c, newID(t)))

	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		cfg := clientConfig(peer)
		cfg.MinVersion, cfg.MaxVersion = v, v
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testkit.Wait}, "tcp", m.Addr().String(), cfg)
		if err == nil {
			conn.Close()
			t.Fatalf("handshake with MaxVersion %s succeeded, want it refused", tls.VersionName(v))
		}
		t.Logf("%s client: %v", tls.VersionName(v), err)
	}
	assertNotAccepted(t, m)

	// TLS 1.2 is the least accepted.
	cfg := clientConfig(peer)
	cfg.MaxVersion = tls.VersionTLS12
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testkit.Wait}, "tcp", m.Addr().String(), cfg)
	if err != nil {
		t.Fatalf("handshake with MaxVersion TLS 1.2 = %v, want success", err)
	}
	defer conn.Close()
	acceptOne(t, m).Close()
}

func TestTransportAuthorizeHook(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	removedID := newID(t)
	errRemoved := errors.New("node was removed")
	authorize := func(id ca.Identity, _ string) error {
		if id.NodeID == removedID {
			return errRemoved
		}
		return nil
	}
	m := newTestStream(t, c, manager(c, newID(t)), authorize)
	removed := manager(c, removedID)

	t.Run("accept", func(t *testing.T) {
		assertServerCloses(t, m, c.TLSConfig(t, removed))
		assertRefusalLogged(t, m, removedID)
	})
	t.Run("dial", func(t *testing.T) {
		r := newTestStream(t, c, removed, nil)
		conn, err := m.Dial(hraft.ServerAddress(r.Addr().String()), time.Second)
		if !errors.Is(err, errPeerRefused) || !errors.Is(err, errRemoved) {
			if conn != nil {
				conn.Close()
			}
			t.Fatalf("Dial(removed) = %v, want errPeerRefused wrapping Authorize's error", err)
		}
	})
	t.Run("allowed", func(t *testing.T) {
		ok := newTestStream(t, c, manager(c, newID(t)), nil)
		conn, err := ok.Dial(hraft.ServerAddress(m.Addr().String()), time.Second)
		if err != nil {
			t.Fatalf("Dial(allowed) = %v", err)
		}
		conn.Close()
		acceptOne(t, m).Close()
	})
}

func TestTransportSilentPeerDoesNotBlockAccept(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	m := newTestStream(t, c, manager(c, newID(t)), nil)

	// A peer that connects and never says a word.
	silent, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	peer := newTestStream(t, c, manager(c, newID(t)), nil)
	conn, err := peer.Dial(hraft.ServerAddress(m.Addr().String()), time.Second)
	if err != nil {
		t.Fatalf("Dial() behind a silent peer = %v", err)
	}
	defer conn.Close()
	acceptOne(t, m).Close()
}

func TestTransportCloseEndsConnections(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	a := newTestStream(t, c, manager(c, newID(t)), nil)
	b := newTestStream(t, c, manager(c, newID(t)), nil)
	conn, err := a.Dial(hraft.ServerAddress(b.Addr().String()), time.Second)
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer conn.Close()
	srv := acceptOne(t, b)
	if err := b.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if _, err := srv.Read(make([]byte, 1)); err == nil {
		t.Errorf("Read() on an accepted connection after Close() = nil error, want it closed")
	}
	if _, err := b.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept() after Close() = %v, want net.ErrClosed", err)
	}
	if _, err := b.Dial(hraft.ServerAddress(a.Addr().String()), time.Second); err == nil {
		t.Errorf("Dial() after Close() = nil error, want one")
	}
}

// recorder is a slog.Handler that keeps records, for tests to inspect.
type recorder struct {
	mu   sync.Mutex // mu guards recs
	recs []record
}

type record struct {
	Level   slog.Level
	Message string
	attrs   map[string]string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	out := record{Level: rec.Level, Message: rec.Message, attrs: map[string]string{}}
	rec.Attrs(func(a slog.Attr) bool {
		out.attrs[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, out)
	return nil
}

func (r *recorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &derivedRecorder{root: r, attrs: attrs}
}

func (r *recorder) WithGroup(string) slog.Handler { return r }

func (r *recorder) records() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]record(nil), r.recs...)
}

// derivedRecorder records into root with extra attributes.
type derivedRecorder struct {
	root  *recorder
	attrs []slog.Attr
}

func (d *derivedRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (d *derivedRecorder) Handle(ctx context.Context, rec slog.Record) error {
	rec = rec.Clone()
	rec.AddAttrs(d.attrs...)
	return d.root.Handle(ctx, rec)
}

func (d *derivedRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &derivedRecorder{root: d.root, attrs: append(append([]slog.Attr(nil), d.attrs...), attrs...)}
}

func (d *derivedRecorder) WithGroup(string) slog.Handler { return d }

func TestTransportSetTLS(t *testing.T) {
	testkit.CheckGoroutines(t)
	oldCA, newCA := testkit.NewCA(t), testkit.NewCA(t)
	newCA.ClusterID = oldCA.ClusterID // a rotation keeps the cluster
	id := newID(t)
	m := newTestStream(t, oldCA, manager(oldCA, id), nil)
	oldPeer := newTestStream(t, oldCA, manager(oldCA, newID(t)), nil)
	newPeer := newTestStream(t, newCA, manager(newCA, newID(t)), nil)

	if conn, err := newPeer.Dial(hraft.ServerAddress(m.Addr().String()), time.Second); err == nil {
		// TLS 1.3 lets the client finish first; the server still refuses.
		conn.Close()
	}
	assertNotAccepted(t, m)

	m.setTLS(newCA.TLSConfig(t, manager(newCA, id)))
	conn, err := newPeer.Dial(hraft.ServerAddress(m.Addr().String()), time.Second)
	if err != nil {
		t.Fatalf("Dial() from the new root after setTLS = %v", err)
	}
	conn.Close()
	acceptOne(t, m).Close()
	if conn, err := m.Dial(hraft.ServerAddress(oldPeer.Addr().String()), time.Second); err == nil {
		conn.Close()
		t.Errorf("Dial() to the old root after setTLS = nil error, want a refusal")
	}
}

// TestTransportFullSlotsEvictOldestSilent is the flood at the scale of one
// stream layer: with every handshake slot taken by silent connections, a
// manager still gets in, the oldest silent connections are the ones
// closed, and a peer that has sent its ClientHello is not evicted while a
// silent one is pending.
func TestTransportFullSlotsEvictOldestSilent(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	m := newTestStream(t, c, manager(c, newID(t)), nil)

	// The oldest connection of all has sent a ClientHello and stalls.
	speaker := dialRaw(t, m)
	if _, err := speaker.Write(clientHello(t)); err != nil {
		t.Fatalf("Write(ClientHello) = %v", err)
	}
	testkit.Eventually(t, "the server to read the ClientHello", testkit.True(func() bool { return m.pendingHellos() == 1 }))

	const extra = 10
	silent := make([]net.Conn, maxHandshakes+extra)
	for i := range silent {
		silent[i] = dialRaw(t, m)
	}
	testkit.Eventually(t, "the handshake slots to fill", testkit.True(func() bool { return m.tracked() == maxHandshakes }))

	// Well within helloTimeout, so that no deadline frees a slot.
	peer := newTestStream(t, c, manager(c, newID(t)), nil)
	conn, err := peer.Dial(hraft.ServerAddress(m.Addr().String()), time.Second)
	if err != nil {
		t.Fatalf("Dial() with every handshake slot taken = %v, want it through", err)
	}
	defer conn.Close()
	acceptOne(t, m).Close()
	// The extra silent connections and the manager's took the slots of
	// the oldest silent ones, not the speaker's.
	for i, conn := range silent[:extra+2] {
		assertClosedWithin(t, conn, helloTimeout/2, "silent connection "+strconv.Itoa(i))
	}
	if got := m.pendingHellos(); got != 1 {
		t.Errorf("pending connections that sent a ClientHello = %d, want 1 (the stalled one kept)", got)
	}
}

// TestTransportSilentPeerClosedAtHelloTimeout checks that a connection that
// sends nothing is closed after helloTimeout, not after the longer
// handshakeTimeout a real handshake is given.
func TestTransportSilentPeerClosedAtHelloTimeout(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	m := newTestStream(t, c, manager(c, newID(t)), nil)
	start := time.Now()
	conn := dialRaw(t, m)
	assertClosedWithin(t, conn, testkit.Wait, "a silent connection")
	if took := time.Since(start); took >= handshakeTimeout {
		t.Errorf("silent connection closed after %s, want about helloTimeout (%s), before handshakeTimeout (%s)", took, helloTimeout, handshakeTimeout)
	} else {
		t.Logf("silent connection closed after %s", took.Round(time.Millisecond))
	}
	for _, r := range m.logs.records() {
		if r.Level >= slog.LevelWarn {
			t.Errorf("log has %s %q for a silent connection, want nothing above Debug", r.Level, r.Message)
		}
	}
}

// dialRaw opens a plain TCP connection to s, closed when the test ends.
func dialRaw(t *testing.T, s *testStream) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr().String(), testkit.Wait)
	if err != nil {
		t.Fatalf("Dial(%s) = %v", s.Addr(), err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// assertClosedWithin reads from conn until the server closes it, failing
// if that takes d.
func assertClosedWithin(t *testing.T, conn net.Conn, d time.Duration, what string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 1024)
	for {
		_, err := conn.Read(buf)
		var ne net.Error
		switch {
		case err == nil:
			continue // the server's handshake messages, if any
		case errors.As(err, &ne) && ne.Timeout():
			t.Fatalf("%s still open after %s, want it closed by the server", what, d)
		}
		return
	}
}

// clientHello returns the first TLS record a manager's client sends: its
// ClientHello.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(a, &tls.Config{ServerName: string(ca.RoleManager)}).Handshake()
	}()
	buf := make([]byte, 64<<10)
	_ = b.SetReadDeadline(time.Now().Add(testkit.Wait))
	n, err := b.Read(buf)
	a.Close()
	b.Close()
	<-done
	if err != nil {
		t.Fatalf("reading a ClientHello = %v", err)
	}
	return buf[:n]
}

// pendingHellos returns how many pending connections have sent their
// whole ClientHello.
func (s *streamLayer) pendingHellos() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, hc := range s.pending {
		if hc.hello.Load() {
			n++
		}
	}
	return n
}
