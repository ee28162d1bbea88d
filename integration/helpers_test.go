// Package integration holds quorumca's multi-node tests: clusters of real
// nodes in one process (internal/testkit/clustertest: real Raft on bolt
// stores in temporary directories, real gRPC over real TLS on 127.0.0.1
// ephemeral ports), attacked and driven through their APIs and sockets.
//
// QUORUMCA_TEST_LOG=1 sends the daemons' logs to stderr.
package integration

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// clientTLS is a client configuration that trusts roots, verifies a
// manager, and presents cert (none if nil) whatever the server asks for:
// what an attacker holding cert would use. (With tls.Config.Certificates,
// crypto/tls would withhold a certificate whose issuer the server does not
// list as acceptable, and the server's own check would go untested.)
func clientTLS(cert *tls.Certificate, roots *x509.CertPool) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: agent.ManagerName}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

// newCSR returns a CSR for a fresh key.
func newCSR(tb testing.TB) []byte {
	tb.Helper()
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatalf("GenerateKey() = %v", err)
	}
	csr, err := ca.NewCSR(rand.Reader, key, "")
	if err != nil {
		tb.Fatalf("NewCSR() = %v", err)
	}
	return csr
}

// hashTree returns, for every entry under dir, its mode and (for regular
// files) the SHA-256 of its content.
func hashTree(tb testing.TB, dir string) map[string]string {
	tb.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		v := info.Mode().String()
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			v += " " + hex.EncodeToString(sum[:])
		}
		out[rel] = v
		return nil
	})
	if err != nil {
		tb.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

// dirEntries returns the names in dir.
func dirEntries(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		tb.Fatalf("ReadDir(%s) = %v", dir, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// joinRequest is the join request a node makes for csr with token over
// conn: a proof of the token bound to conn's TLS connection, as
// agent.Enroll makes it. It calls GetRootBundle first, to learn the
// connection.
func joinRequest(tb testing.TB, conn *grpc.ClientConn, token string, csr []byte) *api.IssueNodeCertificateRequest {
	tb.Helper()
	tok, err := ca.ParseToken(token)
	if err != nil {
		tb.Fatalf("ca.ParseToken() = %v", err)
	}
	var p peer.Peer
	if _, err := api.NewCAClient(conn).GetRootBundle(testkit.Ctx(tb), &api.GetRootBundleRequest{}, grpc.Peer(&p)); err != nil {
		tb.Fatalf("GetRootBundle() = %v", err)
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		tb.Fatalf("GetRootBundle() came over %T, not TLS", p.AuthInfo)
	}
	ekm, err := ti.State.ExportKeyingMaterial(ca.TokenExporterLabel, nil, ca.TokenExporterLength)
	if err != nil {
		tb.Fatalf("ExportKeyingMaterial() = %v", err)
	}
	return &api.IssueNodeCertificateRequest{
		Csr: csr, TokenProof: ca.TokenProof(sha256.Sum256([]byte(tok.Secret)), ekm, csr), TokenDigest: tok.DigestString(),
	}
}

// containsAny reports whether s contains any of subs, ignoring case.
func containsAny(s string, subs ...string) bool {
	s = strings.ToLower(s)
	for _, sub := range subs {
		if strings.Contains(s, strings.ToLower(sub)) {
			return true
		}
	}
	return false
}

// refusedAt makes call on a fresh connection to addr with cfg (a new
// handshake each time) and returns nil if the server refused the client's
// certificate: PermissionDenied from the per-call check, or Unavailable
// because the server broke off the handshake, which a raw TLS handshake
// with cfg must then show as a TLS alert naming alert.
func refusedAt(tb testing.TB, addr string, cfg *tls.Config, alert string, call func(context.Context, *grpc.ClientConn) error) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		tb.Fatalf("grpc.NewClient(%s) = %v", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(tb.Context(), 5*time.Second)
	defer cancel()
	err = call(ctx, conn)
	switch status.Code(err) {
	case codes.OK:
		return errors.New("the call succeeded")
	case codes.PermissionDenied:
		tb.Logf("%s refused the call: %v", addr, err)
		return nil
	case codes.Unavailable:
		got, herr := tlsAlert(addr, cfg)
		if herr != nil {
			return fmt.Errorf("call: %v; raw handshake: %v", err, herr)
		}
		if !strings.Contains(got, alert) {
			return fmt.Errorf("call: %v; the server sent TLS alert %q, want %q", err, got, alert)
		}
		tb.Logf("%s refused the handshake: TLS alert %q", addr, got)
		return nil
	}
	return fmt.Errorf("%v (code %s), want PermissionDenied or a refused TLS handshake", err, status.Code(err))
}

// tlsAlert opens a raw TLS connection to addr with cfg and returns the
// alert the server sends when it refuses the client's certificate (in TLS
// 1.3 that comes after the client's side of the handshake is done), or an
// error if the server took the connection and started HTTP/2.
func tlsAlert(addr string, cfg *tls.Config) (string, error) {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err == nil {
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		_, err = conn.Read(b[:])
		if err == nil {
			return "", errors.New("the server took the connection")
		}
	}
	if msg := err.Error(); strings.Contains(msg, "remote error: tls: ") {
		return msg[strings.Index(msg, "remote error: tls: ")+len("remote error: tls: "):], nil
	}
	return "", err
}

func listNodesCall(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := api.NewControlClient(conn).ListNodes(ctx, &api.ListNodesRequest{})
	return err
}

func gossipCall(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := api.NewCAClient(conn).Gossip(ctx, &api.GossipRequest{})
	return err
}

func heartbeatCall(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := api.NewCAClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{})
	return err
}

func renewCall(ctx context.Context, conn *grpc.ClientConn) error {
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	csr, err := ca.NewCSR(rand.Reader, key, "")
	if err != nil {
		return err
	}
	_, err = api.NewCAClient(conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{Csr: csr})
	return err
}

// wantCode fails unless err has gRPC code want.
func wantCode(tb testing.TB, call string, err error, want codes.Code) {
	tb.Helper()
	if got := status.Code(err); got != want {
		tb.Errorf("%s = %v (code %s), want %s", call, err, got, want)
	}
}

// samePublicKey reports whether two certificates hold the same key.
func samePublicKey(a, b *x509.Certificate) bool {
	k, ok := a.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b.PublicKey)
}

// validityAt returns the instant frac of the way through leaf's validity.
func validityAt(leaf *x509.Certificate, frac float64) time.Time {
	return leaf.NotBefore.Add(time.Duration(frac * float64(leaf.NotAfter.Sub(leaf.NotBefore))))
}

// chainOf returns the certificate chain creds present, leaf first.
func chainOf(tb testing.TB, creds *agent.Credentials) []*x509.Certificate {
	tb.Helper()
	return parseChain(tb, creds.Certificate())
}

// parseChain parses the chain of a key pair, leaf first.
func parseChain(tb testing.TB, pair *tls.Certificate) []*x509.Certificate {
	tb.Helper()
	var out []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatalf("x509.ParseCertificate() = %v", err)
		}
		out = append(out, c)
	}
	return out
}

// parseRoot parses a PEM bundle of one root, and returns it as a pool and
// as a certificate.
func parseRoot(tb testing.TB, bundle []byte) (*x509.CertPool, *x509.Certificate) {
	tb.Helper()
	pool, roots, err := ca.ParseBundle(bundle)
	if err != nil || len(roots) != 1 {
		tb.Fatalf("ParseBundle() = %d roots, %v; want one root", len(roots), err)
	}
	return pool, roots[0]
}

// chainNames describes a chain for an error message: each certificate's
// subject and issuer.
func chainNames(chain []*x509.Certificate) string {
	var parts []string
	for _, c := range chain {
		parts = append(parts, fmt.Sprintf("[%s issued by %s]", c.Subject, c.Issuer))
	}
	return strings.Join(parts, " ")
}

// raftMember is one Raft server as Control.Status lists it (without who
// leads, which may change at any time).
type raftMember struct {
	ID, RaftAddr string
	Voter        bool
}

// members returns the sorted Raft configuration of a Status answer.
func members(st *api.StatusResponse) []raftMember {
	var out []raftMember
	for _, m := range st.GetManagers() {
		out = append(out, raftMember{ID: m.GetNodeId(), RaftAddr: m.GetRaftAddr(), Voter: m.GetVoter()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
