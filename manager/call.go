package manager

import (
	"context"
	"crypto/x509"
	"net"
	"slices"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/audit"
	"github.com/quorumca/quorumca/raft"
)

// Metadata a manager adds when it relays an administration call to the
// leader, naming the original caller. The leader believes it only from a
// manager that the state holds as a manager and that is a Raft voter
// (authz.Decide).
const (
	mdForwardedChain = "quorumca-forwarded-chain-bin"
	mdForwardedAddr  = "quorumca-forwarded-addr"
	mdForwardedLocal = "quorumca-forwarded-local"
	// mdForwardedUID is the user of the relaying manager's control socket
	// (for records only: it grants nothing).
	mdForwardedUID = "quorumca-forwarded-uid"
)

// call is who made the call being served, as the policy established it,
// and from where.
type call struct {
	authz.Caller
	// Addr is the caller's network address (the original caller's, for a
	// relayed call), or "local" for the control socket.
	Addr string
	// UID is the user of the control socket's peer, or -1.
	UID int
	// RequestID names the call in the audit log, on every manager it
	// passes through.
	RequestID string
	// commits collects what the call committed, for the audit log.
	commits *commitLog
}

type callKey struct{}

// callOf returns the caller the interceptor established for ctx.
func callOf(ctx context.Context) call {
	c, _ := ctx.Value(callKey{}).(call)
	return c
}

// actor names the caller for logs and records.
func (c call) actor() string {
	s := c.Kind.String()
	switch c.Kind {
	case authz.Host:
		if c.UID >= 0 {
			s = "local uid " + strconv.Itoa(c.UID)
		}
	case authz.Node, authz.Admin:
		s += " " + c.ID.NodeID
	}
	if c.Forwarder != "" {
		s += " via " + c.Forwarder
	}
	return s
}

// requestOf describes the call in ctx for the policy.
func (m *Manager) requestOf(ctx context.Context, method string, arrival authz.Arrival) (authz.Request, call) {
	r := authz.Request{Method: method, Arrival: arrival, Now: m.cfg.Now()}
	c := call{Addr: "local", UID: -1}
	p, _ := peer.FromContext(ctx)
	if arrival == authz.Local {
		if li, ok := p.AuthInfo.(localInfo); ok {
			c.UID = li.uid
		}
		return r, c
	}
	if p != nil && p.Addr != nil {
		c.Addr = p.Addr.String()
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
		r.Verified, r.Presented = ti.State.VerifiedChains[0], ti.State.PeerCertificates
	}
	md, _ := metadata.FromIncomingContext(ctx)
	chain, addr, local := md.Get(mdForwardedChain), md.Get(mdForwardedAddr), md.Get(mdForwardedLocal)
	if len(chain) == 0 && len(addr) == 0 && len(local) == 0 {
		return r, c
	}
	r.Arrival = authz.Forwarded
	r.ForwardedLocal = len(local) > 0
	if len(addr) > 0 {
		c.Addr = addr[0]
	}
	if uid := md.Get(mdForwardedUID); r.ForwardedLocal && len(uid) > 0 {
		if n, err := strconv.Atoi(uid[0]); err == nil && n >= 0 {
			c.UID = n
		}
	}
	for _, der := range chain {
		cert, err := x509.ParseCertificate([]byte(der))
		if err != nil {
			// An unreadable chain names nobody: the policy refuses the
			// relay as anonymous.
			r.ForwardedChain = nil
			break
		}
		r.ForwardedChain = append(r.ForwardedChain, cert)
	}
	return r, c
}

// view is what the policy reads of this manager now.
func (m *Manager) view() authz.View {
	return authz.View{State: m.machine.State(), Roots: m.bundleRoots(), Voter: m.isVoter}
}

// isVoter reports whether node id is a Raft voter in the latest
// configuration this manager knows.
func (m *Manager) isVoter(id string) bool {
	servers, err := m.raft.Servers()
	if err != nil {
		return false
	}
	return slices.ContainsFunc(servers, func(s raft.Server) bool { return s.ID == id && s.Voter })
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
		return nil // every chain is then verified again, and refused
	}
	m.roots.Store(&parsedBundle{pem: string(b), certs: certs})
	return certs
}

// parsedBundle is a trust bundle and its roots.
type parsedBundle struct {
	pem   string
	certs []*x509.Certificate
}

// forwardContext makes the outgoing context for relaying c's call to the
// leader.
func forwardContext(ctx context.Context, c call) context.Context {
	kv := []string{mdForwardedAddr, c.Addr}
	if c.Kind == authz.Host {
		kv = append(kv, mdForwardedLocal, "1")
		if c.UID >= 0 {
			kv = append(kv, mdForwardedUID, strconv.Itoa(c.UID))
		}
	}
	for _, cert := range c.Chain {
		kv = append(kv, mdForwardedChain, string(cert.Raw))
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// passRequestID gives every call a manager makes to another while it
// serves a call the request ID of the call it serves (a relay, a join's
// admission), so that the lines of both managers' audit logs share it.
func passRequestID(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if id := callOf(ctx).RequestID; id != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, audit.RequestIDHeader, id)
	}
	return invoke(ctx, method, req, reply, cc, opts...)
}

// checkHandshake runs at every TLS handshake with a client certificate:
// removed nodes and revoked admin certificates are refused before any call.
func (m *Manager) checkHandshake(id ca.Identity, leaf *x509.Certificate) error {
	return authz.CheckHandshake(id, leaf.SerialNumber.Text(16), m.machine.State())
}

// checkRaftPeer decides whether a manager may take part in Raft.
func (m *Manager) checkRaftPeer(id ca.Identity, serial string) error {
	return authz.CheckRaftPeer(id, serial, m.machine.State())
}

// peerAddr is the address of the peer of ctx's call, for records.
func peerAddr(ctx context.Context) net.Addr {
	if p, ok := peer.FromContext(ctx); ok {
		return p.Addr
	}
	return nil
}

// Time a call waits for an election before it is answered "no leader".
const electionWait = 5 * time.Second
