package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// JoinConfig says how to join a cluster.
type JoinConfig struct {
	// DataDir receives the credentials and node.json; it must hold no
	// member yet.
	DataDir string
	// Token is the SWMTKN-1 join token.
	Token string
	// Remote is the API address of any manager.
	Remote string
	// Addr and RaftAddr are the API and Raft addresses a joining manager
	// advertises; empty for workers.
	Addr, RaftAddr string
	// Node carries the listen and advertise addresses to record in
	// node.json; Join fills in the rest.
	Node NodeConfig
	// Rand supplies key and CSR randomness; default crypto/rand.
	Rand io.Reader
	// Timeout bounds the whole join; default 30s.
	Timeout time.Duration
	Logger  *slog.Logger
}

// JoinResult is what a successful join returns.
type JoinResult struct {
	Credentials *Credentials
	Node        NodeConfig
}

// ErrJoinRefused is returned when the manager refused the join, served a
// bundle the token does not pin, or presented a certificate that bundle
// does not vouch for as a manager's.
var ErrJoinRefused = errors.New("agent: join refused")

// Join admits this node to a cluster (DESIGN.md flow 2) and stores what it
// was issued: key (0600), certificate and bundle atomically, then
// node.json. Nothing is written unless the manager issued a certificate
// that checks out (see Enroll).
func Join(ctx context.Context, cfg JoinConfig) (JoinResult, error) {
	if err := CheckFresh(cfg.DataDir); err != nil {
		return JoinResult{}, err
	}
	e, err := Enroll(ctx, cfg)
	if err != nil {
		return JoinResult{}, err
	}
	creds, err := NewCredentials(cfg.DataDir, e.KeyPEM, e.CertPEM, e.Bundle)
	if err != nil {
		return JoinResult{}, err
	}
	nc := cfg.Node
	nc.NodeID, nc.ClusterID, nc.Role, nc.Managers = e.Identity.NodeID, e.Identity.ClusterID, e.Identity.Role, e.Managers
	if err := SaveNodeConfig(cfg.DataDir, nc); err != nil {
		return JoinResult{}, err
	}
	return JoinResult{Credentials: creds, Node: nc}, nil
}

// Enrollment is what a cluster issued a joining node, checked.
type Enrollment struct {
	// KeyPEM is the node's new private key; CertPEM its certificate (and
	// chain), Bundle the root bundle the token pins.
	KeyPEM, CertPEM, Bundle []byte
	Identity                ca.Identity
	// Managers are the API addresses of the cluster's managers, or the
	// one joined through when the answer named none.
	Managers []string
}

// Enroll is the network half of a join, and writes nothing: parse the
// token, connect and fetch the root bundle, check the digest of the whole
// bundle against the token, check the manager's certificate against that
// bundle, generate a key, send its CSR with the token over the same
// connection, and check what comes back (chain to the bundle, our key, the
// identity the answer names). cfg.DataDir is not used.
func Enroll(ctx context.Context, cfg JoinConfig) (Enrollment, error) {
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	tok, err := ca.ParseToken(cfg.Token)
	if err != nil {
		return Enrollment{}, err
	}
	if cfg.Remote == "" {
		return Enrollment{}, errors.New("agent: no manager address to join through")
	}

	// One connection serves the whole join: it is opened before the bundle
	// is known, so its server certificate is checked once the token has
	// pinned the bundle, and before the token goes over it. It is the only
	// connection: should it drop, the join fails rather than redial one
	// that nobody checked.
	conn, err := grpc.NewClient("passthrough:///"+cfg.Remote,
		grpc.WithTransportCredentials(credentials.NewTLS(unverifiedTLS())),
		grpc.WithContextDialer(singleDial(cfg.Remote)))
	if err != nil {
		return Enrollment{}, fmt.Errorf("agent: connect to %s: %w", cfg.Remote, err)
	}
	defer conn.Close()
	var server peer.Peer
	got, err := api.NewCAClient(conn).GetRootBundle(ctx, &api.GetRootBundleRequest{}, grpc.Peer(&server))
	if err != nil {
		return Enrollment{}, fmt.Errorf("agent: fetch root bundle from %s: %w", cfg.Remote, err)
	}
	bundle := got.GetBundle()
	if err := tok.VerifyBundle(bundle); err != nil {
		return Enrollment{}, fmt.Errorf("%w: %w", ErrJoinRefused, err)
	}
	roots, _, err := ca.ParseBundle(bundle)
	if err != nil {
		return Enrollment{}, fmt.Errorf("%w: manager served a bad bundle: %w", ErrJoinRefused, err)
	}
	info, ok := server.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Enrollment{}, fmt.Errorf("%w: %s answered without TLS", ErrJoinRefused, cfg.Remote)
	}
	if err := VerifyServer(info.State, roots, ManagerName); err != nil {
		return Enrollment{}, fmt.Errorf("%w: %s is not a manager of the cluster the token names: %w", ErrJoinRefused, cfg.Remote, err)
	}

	key, err := ca.GenerateKey(cfg.Rand)
	if err != nil {
		return Enrollment{}, fmt.Errorf("agent: generate key: %w", err)
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		return Enrollment{}, err
	}
	csr, err := ca.NewCSR(cfg.Rand, key, "")
	if err != nil {
		return Enrollment{}, err
	}

	// The token never travels: prove knowledge of its secret, bound to
	// this connection and this CSR. A server that is not a manager of the
	// cluster (a removed manager, whose certificate the bundle still
	// covers) learns nothing it could use elsewhere.
	ekm, err := info.State.ExportKeyingMaterial(ca.TokenExporterLabel, nil, ca.TokenExporterLength)
	if err != nil {
		return Enrollment{}, fmt.Errorf("agent: join through %s: the connection exports no keying material: %w", cfg.Remote, err)
	}
	req := &api.IssueNodeCertificateRequest{
		Csr: csr, TokenProof: ca.TokenProof(sha256.Sum256([]byte(tok.Secret)), ekm, csr), TokenDigest: tok.DigestString(),
		Addr: cfg.Addr, RaftAddr: cfg.RaftAddr,
	}
	if h, err := os.Hostname(); err == nil {
		req.Hostname = h
	}
	var resp *api.IssueNodeCertificateResponse
	// A cluster whose external CAs do not answer says so: ask again until
	// the join times out (a lost quorum, which needs an operator, fails at
	// once). The cluster records nothing for a join it did not answer.
	for wait := time.Second; ; wait = min(2*wait, 5*time.Second) {
		resp, err = api.NewCAClient(conn).IssueNodeCertificate(ctx, req)
		if err == nil {
			break
		}
		st := status.Convert(err)
		if st.Code() == codes.Unavailable && !api.IsExternalCADown(err) || st.Code() == codes.DeadlineExceeded {
			// Not an answer: the connection or the manager failed.
			return Enrollment{}, fmt.Errorf("agent: join through %s failed: %w", cfg.Remote, err)
		}
		if st.Code() != codes.Unavailable {
			return Enrollment{}, fmt.Errorf("%w by %s: %w", ErrJoinRefused, cfg.Remote, err)
		}
		cfg.Logger.Warn("join: the cluster's external CA does not answer; retrying", "via", cfg.Remote, "in", wait, "err", status.Convert(err).Message())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Enrollment{}, fmt.Errorf("agent: join through %s gave up after %s: %w", cfg.Remote, cfg.Timeout, err)
		case <-t.C:
		}
	}

	// Trust nothing the manager says about ourselves without checking it.
	if !bytes.Equal(resp.GetBundle(), bundle) {
		return Enrollment{}, fmt.Errorf("%w: the bundle changed during the join; try again", ErrJoinRefused)
	}
	chain, err := ca.ParseCertificates(resp.GetCertificate())
	if err != nil {
		return Enrollment{}, fmt.Errorf("%w: issued certificate: %w", ErrJoinRefused, err)
	}
	// roots are the bundle's, checked once above.
	id, _, err := ca.Verify(chain, roots, time.Now())
	if err != nil {
		return Enrollment{}, fmt.Errorf("%w: issued certificate: %w", ErrJoinRefused, err)
	}
	if _, err := tls.X509KeyPair(resp.GetCertificate(), keyPEM); err != nil {
		return Enrollment{}, fmt.Errorf("%w: issued certificate is not for our key: %w", ErrJoinRefused, err)
	}
	if id.NodeID != resp.GetNodeId() || string(id.Role) != resp.GetRole() || id.ClusterID != resp.GetClusterId() {
		return Enrollment{}, fmt.Errorf("%w: certificate names %s/%s/%s, response %s/%s/%s", ErrJoinRefused, id.NodeID, id.Role, id.ClusterID, resp.GetNodeId(), resp.GetRole(), resp.GetClusterId())
	}
	managers := resp.GetManagers()
	if len(managers) == 0 {
		managers = []string{cfg.Remote}
	}
	cfg.Logger.Info("joined cluster", "node_id", id.NodeID, "role", id.Role, "cluster_id", id.ClusterID, "via", cfg.Remote)
	return Enrollment{KeyPEM: keyPEM, CertPEM: resp.GetCertificate(), Bundle: bundle, Identity: id, Managers: managers}, nil
}

// fetchBundleUnverified asks a manager for its root bundle without
// verifying the manager. The caller must judge the answer by something
// else (a node left behind by a rotation only compares it with its own).
func fetchBundleUnverified(ctx context.Context, remote string) ([]byte, error) {
	conn, err := grpc.NewClient(remote, grpc.WithTransportCredentials(credentials.NewTLS(unverifiedTLS())))
	if err != nil {
		return nil, fmt.Errorf("agent: connect to %s: %w", remote, err)
	}
	defer conn.Close()
	resp, err := api.NewCAClient(conn).GetRootBundle(ctx, &api.GetRootBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("agent: fetch root bundle from %s: %w", remote, err)
	}
	return resp.GetBundle(), nil
}

// unverifiedTLS is the configuration of a connection made before the
// bundle is known: the server's certificate is checked afterwards, against
// the bundle the token pins.
func unverifiedTLS() *tls.Config {
	return ca.HardenTLS(&tls.Config{InsecureSkipVerify: true})
}

// singleDial returns a gRPC dialer that connects to addr once, and fails
// any reconnection.
func singleDial(addr string) func(context.Context, string) (net.Conn, error) {
	var dialed atomic.Bool
	return func(ctx context.Context, _ string) (net.Conn, error) {
		if dialed.Swap(true) {
			return nil, fmt.Errorf("agent: the connection to %s was lost during the join; join again", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}
