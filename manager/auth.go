package manager

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/quorumca/quorumca/ca"
)

const tlsVerifyIfGiven = tls.VerifyClientCertIfGiven

// Metadata a follower adds when it forwards a call to the leader. The
// leader believes it only from a verified manager of this cluster, and
// verifies the forwarded chain itself.
const (
	mdForwardedChain = "quorumca-forwarded-chain-bin"
	mdForwardedAddr  = "quorumca-forwarded-addr"
	mdForwardedLocal = "quorumca-forwarded-local"
)

// caller is who made a call.
type caller struct {
	// local is set for calls on the control socket: the daemon's own host
	// administrator.
	local bool
	// addr is the caller's network address (the original caller's, for a
	// forwarded call).
	addr string
	// id is the identity of a verified client certificate of this
	// cluster; zero when the caller showed none.
	id ca.Identity
	// chain is that certificate's chain, leaf first.
	chain []*x509.Certificate
	// status is the TLS status of that certificate (who signed it).
	status ca.TLSStatus
	// forwarded is set when a follower relayed the call.
	forwarded bool
}

func (c caller) authenticated() bool { return c.id.NodeID != "" }

// Errors about callers, mapped to gRPC codes in status.go.
var (
	// errUnauthenticated is returned when a call that needs a node
	// certificate came without one.
	errUnauthenticated = errors.New("this call needs a node certificate of this cluster (mutual TLS)")
	// errPermission is returned when the caller's certificate does not
	// allow the call.
	errPermission = errors.New("permission denied")
)

// callerOf identifies the caller of ctx: the control socket, a verified
// client certificate of this cluster, or (forwarded by a manager) the
// original caller's certificate, verified here.
func (m *Manager) callerOf(ctx context.Context) (caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return caller{}, errUnauthenticated
	}
	if _, ok := p.Addr.(*net.UnixAddr); ok {
		return caller{local: true, addr: "local"}, nil
	}
	c := caller{addr: p.Addr.String()}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
		chain := ti.State.VerifiedChains[0]
		id, err := ca.IdentityOf(chain[0])
		if err != nil {
			return caller{}, fmt.Errorf("%w: %w", errPermission, err)
		}
		if id.ClusterID != m.node.ClusterID {
			return caller{}, fmt.Errorf("%w: certificate of cluster %s, not this one", errPermission, id.ClusterID)
		}
		c.id, c.chain = id, ti.State.PeerCertificates
		if len(chain) > 1 {
			c.status = ca.StatusOf(chain[1])
		}
		// The handshake verified the chain against the bundle of its day;
		// a connection can outlive that bundle (a rotation completed) or
		// the certificate itself.
		if err := m.stillTrusted(chain, ti.State.PeerCertificates); err != nil {
			return caller{}, err
		}
	}
	if c.authenticated() {
		if err := m.checkPeer(c.id); err != nil {
			return caller{}, err
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	fwd := md.Get(mdForwardedChain)
	fwdAddr := md.Get(mdForwardedAddr)
	if len(fwdAddr) == 0 && len(fwd) == 0 {
		return c, nil
	}
	if c.id.Role != ca.RoleManager {
		return caller{}, fmt.Errorf("%w: only managers forward calls", errPermission)
	}
	orig := caller{forwarded: true, local: len(md.Get(mdForwardedLocal)) > 0}
	if len(fwdAddr) > 0 {
		orig.addr = fwdAddr[0]
	}
	if len(fwd) > 0 {
		chain := make([]*x509.Certificate, 0, len(fwd))
		for _, der := range fwd {
			cert, err := x509.ParseCertificate([]byte(der))
			if err != nil {
				return caller{}, fmt.Errorf("%w: forwarded certificate: %v", errPermission, err)
			}
			chain = append(chain, cert)
		}
		id, status, err := ca.Verify(chain, m.creds.Roots(), m.cfg.Now())
		if err != nil {
			return caller{}, fmt.Errorf("%w: forwarded certificate: %w", errPermission, err)
		}
		if id.ClusterID != m.node.ClusterID {
			return caller{}, fmt.Errorf("%w: forwarded certificate of cluster %s", errPermission, id.ClusterID)
		}
		orig.id, orig.chain, orig.status = id, chain, status
		if err := m.checkPeer(id); err != nil {
			return caller{}, err
		}
	}
	return orig, nil
}

// stillTrusted checks, at each call, a client chain verified at the
// handshake: its root must still be in this manager's bundle and its
// certificate unexpired; otherwise it is verified again.
func (m *Manager) stillTrusted(verified, presented []*x509.Certificate) error {
	now := m.cfg.Now()
	if now.Before(verified[0].NotAfter) && slices.ContainsFunc(m.bundleRoots(), verified[len(verified)-1].Equal) {
		return nil
	}
	if _, _, err := ca.Verify(presented, m.creds.Roots(), now); err != nil {
		return fmt.Errorf("%w: %w", errPermission, err)
	}
	return nil
}

// bundleRoots returns the roots of this manager's trust bundle, parsed
// once per bundle.
func (m *Manager) bundleRoots() []*x509.Certificate {
	b := m.creds.Bundle()
	if r := m.roots.Load(); r != nil && r.pem == string(b) {
		return r.certs
	}
	_, certs, err := ca.ParseBundle(b)
	if err != nil {
		return nil // verified again, and refused, by the caller
	}
	m.roots.Store(&parsedBundle{pem: string(b), certs: certs})
	return certs
}

// parsedBundle is a trust bundle and its roots.
type parsedBundle struct {
	pem   string
	certs []*x509.Certificate
}

// requireNode returns the caller if it presented a node certificate of
// this cluster.
func (m *Manager) requireNode(ctx context.Context) (caller, error) {
	c, err := m.callerOf(ctx)
	if err != nil {
		return caller{}, err
	}
	if !c.authenticated() {
		return caller{}, errUnauthenticated
	}
	return c, nil
}

// requireManager returns the caller if it is the control socket or a
// manager of this cluster; workers are refused.
func (m *Manager) requireManager(ctx context.Context) (caller, error) {
	c, err := m.callerOf(ctx)
	if err != nil {
		return caller{}, err
	}
	if c.local {
		return c, nil
	}
	if !c.authenticated() {
		return caller{}, errUnauthenticated
	}
	if c.id.Role != ca.RoleManager && c.id.Role != ca.RoleAdmin {
		return caller{}, fmt.Errorf("%w: node %s is a %s; this call is for managers and administrators", errPermission, c.id.NodeID, c.id.Role.Short())
	}
	if err := m.checkManagerPeer(c.id); err != nil {
		return caller{}, err
	}
	return c, nil
}

// checkPeer refuses the certificates of removed nodes. It runs at every
// TLS handshake and again per call.
func (m *Manager) checkPeer(id ca.Identity) error {
	if m.machine.State().IsRemoved(id.NodeID) {
		return fmt.Errorf("%w: node %s was removed from the cluster; join it again with a new token", errPermission, id.NodeID)
	}
	return nil
}

// checkManagerPeer is checkPeer for the Raft transport and manager-only
// calls: it also refuses the manager certificate of a node the cluster has
// demoted since (that node may still renew into its worker certificate).
func (m *Manager) checkManagerPeer(id ca.Identity) error {
	if err := m.checkPeer(id); err != nil {
		return err
	}
	if id.Role == ca.RoleManager {
		if n, ok := m.machine.State().Node(id.NodeID); ok && n.Role != ca.RoleManager {
			return fmt.Errorf("%w: node %s was demoted to %s; its manager certificate no longer counts", errPermission, id.NodeID, n.Role.Short())
		}
	}
	return nil
}

// forwardContext makes the outgoing context for relaying c's call to the
// leader.
func forwardContext(ctx context.Context, c caller) context.Context {
	kv := []string{mdForwardedAddr, c.addr}
	if c.local {
		kv = append(kv, mdForwardedLocal, "1")
	}
	for _, cert := range c.chain {
		kv = append(kv, mdForwardedChain, string(cert.Raw))
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
