package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// enrollTimeout bounds each Enroll of this file.
const enrollTimeout = 5 * time.Second

// countingListener counts the connections it accepted.
type countingListener struct {
	net.Listener
	accepted atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return conn, err
}

// joinCA is a manager's CA service cut down to what a join calls: it serves
// a fixed root bundle, counts join requests, and admits them (signing the
// CSR with signWith) or, with signWith nil, refuses them.
type joinCA struct {
	api.UnimplementedCAServer
	addr     string
	ln       *countingListener
	bundle   []byte
	signWith *testkit.CA

	bundleCalls atomic.Int32
	issueCalls  atomic.Int32

	mu         sync.Mutex // guards the fields below
	bundlePeer string     // client address of the last GetRootBundle
	issuePeer  string     // client address of the last IssueNodeCertificate
	request    []byte     // the last IssueNodeCertificate request, marshalled
	proof      []byte     // its token proof
	csr        []byte     // its CSR
	ekm        []byte     // the keying material of the connection it came on
	issued     *api.IssueNodeCertificateResponse
}

// startJoinCA serves a joinCA on 127.0.0.1 over TLS, presenting server (a
// key and certificate chain) until the test ends.
func startJoinCA(t *testing.T, server testkit.Leaf, bundle []byte, signWith *testkit.CA) *joinCA {
	t.Helper()
	cert, err := tls.X509KeyPair(server.CertPEM, server.KeyPEM)
	if err != nil {
		t.Fatalf("tls.X509KeyPair(server) = %v", err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	ln := &countingListener{Listener: inner}
	f := &joinCA{addr: inner.Addr().String(), ln: ln, bundle: bundle, signWith: signWith}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	api.RegisterCAServer(srv, f)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return f
}

// peerAddr returns the client address of the connection a call came on.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func (f *joinCA) GetRootBundle(ctx context.Context, _ *api.GetRootBundleRequest) (*api.GetRootBundleResponse, error) {
	f.bundleCalls.Add(1)
	f.mu.Lock()
	f.bundlePeer = peerAddr(ctx)
	f.mu.Unlock()
	return &api.GetRootBundleResponse{Bundle: f.bundle}, nil
}

func (f *joinCA) IssueNodeCertificate(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	f.issueCalls.Add(1)
	raw, _ := proto.Marshal(req)
	var ekm []byte
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			ekm, _ = ti.State.ExportKeyingMaterial(ca.TokenExporterLabel, nil, ca.TokenExporterLength)
		}
	}
	f.mu.Lock()
	f.issuePeer, f.request, f.proof, f.csr, f.ekm = peerAddr(ctx), raw, req.GetTokenProof(), req.GetCsr(), ekm
	f.mu.Unlock()
	if f.signWith == nil {
		return nil, status.Error(codes.PermissionDenied, "test: this fake admits no one")
	}
	pub, err := ca.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	nodeID, err := ca.NewID(rand.Reader)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	id := ca.Identity{NodeID: nodeID, Role: ca.RoleWorker, ClusterID: f.signWith.ClusterID}
	issued, err := f.signWith.Signer().SignKey(rand.Reader, time.Now(), pub, id, 24*time.Hour)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &api.IssueNodeCertificateResponse{
		NodeId:      id.NodeID,
		Role:        string(id.Role),
		ClusterId:   id.ClusterID,
		Certificate: issued.PEM,
		Bundle:      f.bundle,
	}
	f.mu.Lock()
	f.issued = resp
	f.mu.Unlock()
	return resp, nil
}

// joinToken returns a join token pinning bundle, with a fresh secret.
func joinToken(t *testing.T, bundle []byte) string {
	t.Helper()
	secret, err := ca.NewSecret(rand.Reader)
	if err != nil {
		t.Fatalf("ca.NewSecret() = %v", err)
	}
	tok, err := ca.NewToken(bundle, secret)
	if err != nil {
		t.Fatalf("ca.NewToken() = %v", err)
	}
	return tok.String()
}

// TestEnrollDigestMismatchSendsNoToken: a manager serving a bundle other
// than the one the token pins (with a certificate that bundle does verify)
// is refused before the token goes out.
func TestEnrollDigestMismatchSendsNoToken(t *testing.T) {
	pinned := testkit.NewCA(t)
	served := testkit.NewCA(t)
	f := startJoinCA(t, served.Issue(t, ca.RoleManager), served.Bundle(), served)

	_, err := Enroll(t.Context(), JoinConfig{Token: joinToken(t, pinned.Bundle()), Remote: f.addr, Timeout: enrollTimeout})
	if !errors.Is(err, ca.ErrDigestMismatch) || !errors.Is(err, ErrJoinRefused) {
		t.Errorf("Enroll(token for another bundle) = %v, want %v wrapping %v", err, ErrJoinRefused, ca.ErrDigestMismatch)
	}
	if n := f.bundleCalls.Load(); n != 1 {
		t.Errorf("GetRootBundle calls = %d, want 1", n)
	}
	if n := f.issueCalls.Load(); n != 0 {
		t.Errorf("IssueNodeCertificate calls = %d, want 0: the token went to a manager that served the wrong bundle", n)
	}
}

// TestEnrollServerOutsideBundleSendsNoToken: a server that serves the
// bundle the token pins but whose own certificate that bundle does not
// verify as a manager's (a man in the middle who copied the public bundle,
// or a node of the cluster that is no manager) is refused before the token
// goes out.
func TestEnrollServerOutsideBundleSendsNoToken(t *testing.T) {
	cluster := testkit.NewCA(t)
	tests := []struct {
		name   string
		server testkit.Leaf
	}{
		{"another CA's manager", testkit.NewCA(t).Issue(t, ca.RoleManager)},
		{"the cluster's worker", cluster.Issue(t, ca.RoleWorker)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startJoinCA(t, tt.server, cluster.Bundle(), cluster)

			_, err := Enroll(t.Context(), JoinConfig{Token: joinToken(t, cluster.Bundle()), Remote: f.addr, Timeout: enrollTimeout})
			if !errors.Is(err, ErrJoinRefused) {
				t.Errorf("Enroll(server certificate of %s) = %v, want %v", tt.name, err, ErrJoinRefused)
			}
			if errors.Is(err, ca.ErrDigestMismatch) {
				t.Errorf("Enroll(server certificate of %s) = %v, want a refusal of the server certificate, not of the bundle", tt.name, err)
			}
			var unknown x509.UnknownAuthorityError
			var hostname x509.HostnameError
			if !errors.As(err, &unknown) && !errors.As(err, &hostname) {
				t.Errorf("Enroll(server certificate of %s) = %v, want an x509 verification error", tt.name, err)
			}
			if n := f.bundleCalls.Load(); n != 1 {
				t.Errorf("GetRootBundle calls = %d, want 1", n)
			}
			if n := f.issueCalls.Load(); n != 0 {
				t.Errorf("IssueNodeCertificate calls = %d, want 0: the token went to a server outside the bundle", n)
			}
		})
	}
}

// TestEnrollOneConnection: a join fetches the bundle and sends the token
// over one connection, and returns what the manager issued, checked.
func TestEnrollOneConnection(t *testing.T) {
	cluster := testkit.NewCA(t)
	f := startJoinCA(t, cluster.Issue(t, ca.RoleManager), cluster.Bundle(), cluster)
	token := joinToken(t, cluster.Bundle())

	e, err := Enroll(t.Context(), JoinConfig{Token: token, Remote: f.addr, Timeout: enrollTimeout})
	if err != nil {
		t.Fatalf("Enroll() = %v", err)
	}
	if n := f.ln.accepted.Load(); n != 1 {
		t.Errorf("connections accepted = %d, want 1", n)
	}
	if n := f.bundleCalls.Load(); n != 1 {
		t.Errorf("GetRootBundle calls = %d, want 1", n)
	}
	if n := f.issueCalls.Load(); n != 1 {
		t.Errorf("IssueNodeCertificate calls = %d, want 1", n)
	}

	f.mu.Lock()
	bundlePeer, issuePeer, issued := f.bundlePeer, f.issuePeer, f.issued
	f.mu.Unlock()
	if bundlePeer == "" || bundlePeer != issuePeer {
		t.Errorf("GetRootBundle came from %q, IssueNodeCertificate from %q, want the same connection", bundlePeer, issuePeer)
	}
	f.checkProof(t, token)
	if issued == nil {
		t.Fatal("the fake issued no certificate")
	}

	want := ca.Identity{NodeID: issued.GetNodeId(), Role: ca.Role(issued.GetRole()), ClusterID: issued.GetClusterId()}
	if e.Identity != want {
		t.Errorf("Enrollment.Identity = %+v, want %+v", e.Identity, want)
	}
	if e.Identity.ClusterID != cluster.ClusterID {
		t.Errorf("Enrollment.Identity.ClusterID = %q, want %q", e.Identity.ClusterID, cluster.ClusterID)
	}
	if !bytes.Equal(e.CertPEM, issued.GetCertificate()) {
		t.Errorf("Enrollment.CertPEM is not the certificate the manager issued")
	}
	if !bytes.Equal(e.Bundle, cluster.Bundle()) {
		t.Errorf("Enrollment.Bundle is not the bundle the token pins")
	}
	if _, err := ca.ParseKey(e.KeyPEM); err != nil {
		t.Errorf("ca.ParseKey(Enrollment.KeyPEM) = %v", err)
	}
	if _, err := tls.X509KeyPair(e.CertPEM, e.KeyPEM); err != nil {
		t.Errorf("tls.X509KeyPair(Enrollment.CertPEM, Enrollment.KeyPEM) = %v", err)
	}
	if !slices.Equal(e.Managers, []string{f.addr}) {
		t.Errorf("Enrollment.Managers = %v, want [%s] (the answer named none)", e.Managers, f.addr)
	}
}

// checkProof checks that the last join request carried no secret of the
// token, only a proof of it that holds for the connection it came on.
func (f *joinCA) checkProof(t *testing.T, token string) {
	t.Helper()
	tok, err := ca.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if bytes.Contains(f.request, []byte(tok.Secret)) {
		t.Errorf("the join request carries the token's secret")
	}
	hash := sha256.Sum256([]byte(tok.Secret))
	if !ca.CheckTokenProof(hash, f.ekm, f.csr, f.proof) {
		t.Errorf("the join request's proof does not hold for the token and its connection")
	}
	if ca.CheckTokenProof(hash, bytes.Repeat([]byte{1}, ca.TokenExporterLength), f.csr, f.proof) {
		t.Errorf("the join request's proof holds for another connection: it could be replayed")
	}
}

// TestEnrollPhishedSendsNothingUsable is the phishing case: a server that
// the bundle covers but that is no longer a manager of the cluster (a
// removed manager keeps a certificate the bundle vouches for) receives a
// join. What it gets is a proof bound to its own connection: the token's
// secret never reaches it, and the proof admits nobody elsewhere.
func TestEnrollPhishedSendsNothingUsable(t *testing.T) {
	cluster := testkit.NewCA(t)
	removed := startJoinCA(t, cluster.Issue(t, ca.RoleManager), cluster.Bundle(), nil)
	token := joinToken(t, cluster.Bundle())
	if _, err := Enroll(t.Context(), JoinConfig{Token: token, Remote: removed.addr, Timeout: enrollTimeout}); err == nil {
		t.Fatalf("Enroll(through a fake manager that admits no one) = nil, want an error")
	}
	if n := removed.issueCalls.Load(); n != 1 {
		t.Fatalf("IssueNodeCertificate calls = %d, want 1", n)
	}
	removed.checkProof(t, token)
}

// TestSingleDialRefusesReconnect: the join's dialer connects once, and
// fails any later dial without connecting.
func TestSingleDialRefusesReconnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	defer ln.Close()
	tcp := ln.(*net.TCPListener)
	addr := ln.Addr().String()

	ctx, cancel := context.WithTimeout(t.Context(), enrollTimeout)
	defer cancel()
	dial := singleDial(addr)

	conn, err := dial(ctx, "ignored")
	if err != nil {
		t.Fatalf("first dial = %v, want a connection", err)
	}
	defer conn.Close()
	if got := conn.RemoteAddr().String(); got != addr {
		t.Errorf("first dial connected to %s, want %s", got, addr)
	}
	// The dial returned once the handshake completed, so the connection is
	// in the accept queue already.
	tcp.SetDeadline(time.Now().Add(enrollTimeout))
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatalf("Accept() after the first dial = %v", err)
	}
	accepted.Close()

	conn2, err := dial(ctx, addr)
	if err == nil {
		conn2.Close()
		t.Fatal("second dial connected, want an error")
	}
	if !strings.Contains(err.Error(), "lost during the join") {
		t.Errorf("second dial = %v, want an error saying the connection was lost during the join", err)
	}
	// A dial that had connected would have left its connection in the
	// accept queue by the time it returned.
	if queued(tcp) {
		t.Errorf("second dial opened a connection, want none")
	}
}

// queued reports whether a connection waits in ln's accept queue. Accept
// takes a queued connection at once; the deadline only bounds the wait
// for one that is not there. (A deadline already past would not do:
// Accept then fails before it looks at the queue.)
func queued(ln *net.TCPListener) bool {
	ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
	defer ln.SetDeadline(time.Time{})
	conn, err := ln.Accept()
	if err != nil {
		return false
	}
	conn.Close()
	return true
}
