package manager

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// peerConns keeps one mutual-TLS gRPC connection per manager address, for
// forwarding to the leader and pinging peers; reusing them saves a TLS
// handshake per forwarded call.
type peerConns struct {
	creds *agent.Credentials

	mu    sync.Mutex // guards conns and draining
	conns map[string]*grpc.ClientConn
	// draining are replaced connections left open for their calls in
	// flight (see renewed).
	draining []*grpc.ClientConn
}

func newPeerConns(creds *agent.Credentials) *peerConns {
	return &peerConns{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

func (p *peerConns) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(p.creds.ClientTLS(agent.ManagerName))),
		grpc.WithChainUnaryInterceptor(nameLeader, passRequestID))
	if err != nil {
		return nil, fmt.Errorf("manager: connect to %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

// nameLeader says, in the Unavailable error of a call forwarded to the
// leader, that it was forwarded there: a follower that still believes in a
// leader that just went down would otherwise answer with a bare
// "connection refused" to some address.
func nameLeader(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoke(ctx, method, req, reply, cc, opts...)
	if md, _ := metadata.FromOutgoingContext(ctx); len(md.Get(mdForwardedAddr)) == 0 {
		return err
	}
	if s, ok := status.FromError(err); ok && s.Code() == codes.Unavailable {
		// Keep the leader's details (its reason): only the message grows.
		p := s.Proto()
		p.Message = fmt.Sprintf("forwarded to the leader at %s: %s", cc.Target(), p.GetMessage())
		return status.ErrorProto(p)
	}
	return err
}

// renewed drops the connections after this manager's certificate
// changed: a TLS connection keeps the client certificate of its handshake,
// and once a rotation completes the other managers refuse the old one.
// New calls dial afresh; the old connections close after a grace, so that
// calls in flight on them finish.
func (p *peerConns) renewed() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) == 0 {
		return
	}
	old := p.conns
	p.conns = map[string]*grpc.ClientConn{}
	for _, c := range old {
		p.draining = append(p.draining, c)
	}
	time.AfterFunc(peerDrainGrace, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range old {
			c.Close()
			p.draining = slices.DeleteFunc(p.draining, func(d *grpc.ClientConn) bool { return d == c })
		}
	})
}

// peerDrainGrace is how long a replaced peer connection stays open for
// the calls in flight on it.
const peerDrainGrace = 30 * time.Second

func (p *peerConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
	for _, c := range p.draining {
		c.Close()
	}
	p.draining = nil
}

// serverCreds is the API's TLS: joining nodes come without a certificate,
// so client certificates are verified when given, and checked per call.
func serverCreds(c *agent.Credentials, check agent.PeerCheck) credentials.TransportCredentials {
	return credentials.NewTLS(c.ServerTLS(tls.VerifyClientCertIfGiven, check))
}

func certInfo(iss ca.Issued, status ca.TLSStatus) fsm.CertInfo {
	return fsm.CertInfo{
		Serial:    serialHex(iss.Serial),
		NotBefore: iss.NotBefore,
		NotAfter:  iss.NotAfter,
		Issuer:    status,
	}
}

func serialHex(n *big.Int) string { return n.Text(16) }

// fingerprint is the SHA-256 of the first certificate of a PEM bundle, hex.
var fingerprint = agent.BundleFingerprint
