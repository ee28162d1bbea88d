package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// nodeConn is a joined node's established mutual-TLS connection to the
// leader, as its heartbeats keep it (a node that joined through a follower
// is redirected to the leader by its first heartbeat, as a real node is).
type nodeConn struct {
	joined
	conn *grpc.ClientConn
}

// connect opens each node's connection and heartbeats once over it, so
// that the handshake is done before renewals are timed.
func connect(ctx context.Context, nodes []joined, c int) ([]nodeConn, error) {
	conns := make([]nodeConn, len(nodes))
	_, err := run(ctx, len(nodes), c, func(ctx context.Context, i int) error {
		n := nodes[i]
		pair, err := tls.X509KeyPair(n.CertPEM, n.KeyPEM)
		if err != nil {
			return err
		}
		roots, _, err := ca.ParseBundle(n.Bundle)
		if err != nil {
			return err
		}
		cfg := agent.BundleClientTLS(roots, agent.ManagerName)
		cfg.Certificates = []tls.Certificate{pair}
		addr := n.via
		for hop := 0; ; hop++ {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
			if err != nil {
				return err
			}
			conns[i] = nodeConn{joined: n, conn: conn}
			hctx, cancel := context.WithTimeout(ctx, rpcTimeout)
			_, err = api.NewCAClient(conn).Heartbeat(hctx, &api.HeartbeatRequest{BundleDigest: agent.BundleDigest(n.Bundle)})
			cancel()
			leader, redirected := api.LeaderRedirect(err)
			if !redirected || hop > 0 {
				return err
			}
			conn.Close()
			addr = leader
		}
	})
	if err != nil {
		closeAll(conns)
		return nil, fmt.Errorf("connect joined nodes: %w", err)
	}
	return conns, nil
}

func closeAll(conns []nodeConn) {
	for _, c := range conns {
		if c.conn != nil {
			c.conn.Close()
		}
	}
}

// renewOne does what a node's renewal does: a fresh key and CSR, the call,
// and the checks of the answer before the node would store it.
func renewOne(ctx context.Context, n nodeConn) error {
	keyPEM, csr, err := newKeyCSR()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := api.NewCAClient(n.conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{Csr: csr})
	if err != nil {
		return err
	}
	if string(resp.GetBundle()) != string(n.Bundle) {
		return errors.New("the renewal answered another trust bundle than the node holds")
	}
	return checkIssued(resp.GetCertificate(), keyPEM, n.Bundle, n.Identity)
}

// newKeyCSR makes a fresh key, as a node does for each certificate, and
// its CSR.
func newKeyCSR() (keyPEM, csr []byte, err error) {
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if keyPEM, err = ca.MarshalKey(key); err != nil {
		return nil, nil, err
	}
	csr, err = ca.NewCSR(rand.Reader, key, "")
	return keyPEM, csr, err
}

// checkIssued checks a certificate as a node does before storing it: it
// chains to the bundle, is for our key, and names us.
func checkIssued(certPEM, keyPEM, bundle []byte, want ca.Identity) error {
	id, _, err := ca.VerifyPEM(certPEM, bundle, time.Now())
	if err != nil {
		return err
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return err
	}
	if id != want {
		return fmt.Errorf("issued certificate names %v, want %v", id, want)
	}
	return nil
}

// benchRenew renews every node once over its established connection, c at
// a time, then runs the sign-only ceiling.
func benchRenew(ctx context.Context, nodes []joined, c int) (Result, error) {
	if len(nodes) == 0 {
		return Result{}, errors.New("renew: no joined nodes")
	}
	conns, err := connect(ctx, nodes, c)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	n := len(conns)
	stopProfile := profile("renew")
	got, err := run(ctx, n, c, func(ctx context.Context, i int) error { return renewOne(ctx, conns[i]) })
	if perr := stopProfile(); err == nil && perr != nil {
		err = fmt.Errorf("cpu profile: %w", perr)
	}
	if err != nil {
		return Result{}, fmt.Errorf("renew: %w", err)
	}
	ceil, err := signCeiling(ctx, n, c)
	if err != nil {
		return Result{}, fmt.Errorf("renew ceiling: %w", err)
	}
	r := result("renew", c, got, ceil)
	r.Goals = []Goal{atLeast("renewals/s", 3000, r.Rate, "")}
	return r, nil
}

// signCeiling is the cryptography of a renewal and nothing else, in one
// process: the node's fresh key and CSR, the CA's parse and signature, the
// node's checks of the result.
func signCeiling(ctx context.Context, n, c int) (*Ceiling, error) {
	clusterID, root, signer, err := ceilingRoot(time.Now())
	if err != nil {
		return nil, err
	}
	got, err := run(ctx, n, c, func(ctx context.Context, i int) error {
		keyPEM, csr, err := newKeyCSR()
		if err != nil {
			return err
		}
		pub, err := ca.ParseCSR(csr)
		if err != nil {
			return err
		}
		nodeID, err := ca.NewID(rand.Reader)
		if err != nil {
			return err
		}
		id := ca.Identity{NodeID: nodeID, Role: ca.RoleWorker, ClusterID: clusterID}
		issued, err := signer.SignKey(rand.Reader, time.Now(), pub, id, ca.DefaultCertExpiry)
		if err != nil {
			return err
		}
		return checkIssued(issued.PEM, keyPEM, root.Bundle, id)
	})
	if err != nil {
		return nil, err
	}
	return ceiling("sign only: fresh key, CSR, parse, sign and the node's checks, in one process, no network, no Raft", got), nil
}
