package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
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

// ErrJoinRefused is returned when the manager refused the join or served a
// bundle the token does not pin.
var ErrJoinRefused = errors.New("agent: join refused")

// Join admits this node to a cluster (DESIGN.md flow 2): parse the token,
// fetch the root bundle without verification, check the digest of the whole
// bundle against the token, reconnect verifying the manager against that
// bundle, send a CSR with the token, and store key (0600), certificate and
// bundle atomically, then node.json. Nothing is written unless the manager
// issued a certificate that checks out.
func Join(ctx context.Context, cfg JoinConfig) (JoinResult, error) {
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

	if err := CheckFresh(cfg.DataDir); err != nil {
		return JoinResult{}, err
	}
	tok, err := ca.ParseToken(cfg.Token)
	if err != nil {
		return JoinResult{}, err
	}
	if cfg.Remote == "" {
		return JoinResult{}, errors.New("agent: no manager address to join through")
	}

	bundle, err := fetchBundleUnverified(ctx, cfg.Remote)
	if err != nil {
		return JoinResult{}, err
	}
	if err := tok.VerifyBundle(bundle); err != nil {
		return JoinResult{}, fmt.Errorf("%w: %w", ErrJoinRefused, err)
	}
	roots, _, err := ca.ParseBundle(bundle)
	if err != nil {
		return JoinResult{}, fmt.Errorf("%w: manager served a bad bundle: %w", ErrJoinRefused, err)
	}

	key, err := ca.GenerateKey(cfg.Rand)
	if err != nil {
		return JoinResult{}, fmt.Errorf("agent: generate key: %w", err)
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		return JoinResult{}, err
	}
	csr, err := ca.NewCSR(cfg.Rand, key, "")
	if err != nil {
		return JoinResult{}, err
	}

	conn, err := grpc.NewClient(cfg.Remote, grpc.WithTransportCredentials(credentials.NewTLS(BundleClientTLS(roots, ManagerName))))
	if err != nil {
		return JoinResult{}, fmt.Errorf("agent: connect to %s: %w", cfg.Remote, err)
	}
	defer conn.Close()
	req := &api.IssueNodeCertificateRequest{Csr: csr, Token: tok.String(), Addr: cfg.Addr, RaftAddr: cfg.RaftAddr}
	var resp *api.IssueNodeCertificateResponse
	// A cluster whose external CAs do not answer says so: ask again until
	// the join times out (a lost quorum, which needs an operator, fails at
	// once). The cluster records nothing for a join it did not answer.
	for wait := time.Second; ; wait = min(2*wait, 5*time.Second) {
		resp, err = api.NewCAClient(conn).IssueNodeCertificate(ctx, req)
		if err == nil {
			break
		}
		if st := status.Convert(err); st.Code() != codes.Unavailable || !api.IsExternalCADown(st.Message()) {
			return JoinResult{}, fmt.Errorf("%w by %s: %w", ErrJoinRefused, cfg.Remote, err)
		}
		cfg.Logger.Warn("join: the cluster's external CA does not answer; retrying", "via", cfg.Remote, "in", wait, "err", status.Convert(err).Message())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return JoinResult{}, fmt.Errorf("agent: join through %s gave up after %s: %w", cfg.Remote, cfg.Timeout, err)
		case <-t.C:
		}
	}

	// Trust nothing the manager says about ourselves without checking it.
	if !bytes.Equal(resp.GetBundle(), bundle) {
		return JoinResult{}, fmt.Errorf("%w: the bundle changed during the join; try again", ErrJoinRefused)
	}
	id, _, err := ca.VerifyPEM(resp.GetCertificate(), bundle, time.Now())
	if err != nil {
		return JoinResult{}, fmt.Errorf("%w: issued certificate: %w", ErrJoinRefused, err)
	}
	if _, err := tls.X509KeyPair(resp.GetCertificate(), keyPEM); err != nil {
		return JoinResult{}, fmt.Errorf("%w: issued certificate is not for our key: %w", ErrJoinRefused, err)
	}
	if id.NodeID != resp.GetNodeId() || string(id.Role) != resp.GetRole() || id.ClusterID != resp.GetClusterId() {
		return JoinResult{}, fmt.Errorf("%w: certificate names %s/%s/%s, response %s/%s/%s", ErrJoinRefused, id.NodeID, id.Role, id.ClusterID, resp.GetNodeId(), resp.GetRole(), resp.GetClusterId())
	}

	creds, err := NewCredentials(cfg.DataDir, keyPEM, resp.GetCertificate(), bundle)
	if err != nil {
		return JoinResult{}, err
	}
	managers := resp.GetManagers()
	if len(managers) == 0 {
		managers = []string{cfg.Remote}
	}
	nc := cfg.Node
	nc.NodeID, nc.ClusterID, nc.Role, nc.Managers = id.NodeID, id.ClusterID, id.Role, managers
	if err := SaveNodeConfig(cfg.DataDir, nc); err != nil {
		return JoinResult{}, err
	}
	cfg.Logger.Info("joined cluster", "node_id", id.NodeID, "role", id.Role, "cluster_id", id.ClusterID, "via", cfg.Remote)
	return JoinResult{Credentials: creds, Node: nc}, nil
}

// fetchBundleUnverified asks a manager for its root bundle without
// verifying the manager: the bundle is checked against the token next.
func fetchBundleUnverified(ctx context.Context, remote string) ([]byte, error) {
	insecure := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} // checked by the token's digest
	conn, err := grpc.NewClient(remote, grpc.WithTransportCredentials(credentials.NewTLS(insecure)))
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
