package manager

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/membership"
)

// caService is the CA API nodes call: the bundle, joins, renewals,
// heartbeats and the gossip key. The interceptor has authorized and
// routed every call before a method runs.
type caService struct {
	api.UnimplementedCAServer
	m *Manager
}

func (s caService) GetRootBundle(ctx context.Context, _ *api.GetRootBundleRequest) (*api.GetRootBundleResponse, error) {
	st := s.m.machine.State()
	if !st.Initialized() {
		// A manager still catching up serves the bundle it joined with.
		return &api.GetRootBundleResponse{Bundle: s.m.creds.Bundle()}, nil
	}
	return &api.GetRootBundleResponse{Bundle: st.CA.Bundle}, nil
}

// IssueNodeCertificate admits a joining node (DESIGN.md flow 3): the
// proof of the join token is checked here, on the node's own connection,
// and the leader admits it.
func (s caService) IssueNodeCertificate(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	m := s.m
	adm, err := m.checkJoin(ctx, req)
	if errors.Is(err, errBadToken) || errors.Is(err, errTokenRoot) {
		// This manager may lag behind a token or root rotation the
		// cluster has acknowledged (a follower, or a leader just elected):
		// catch up with the leader before refusing a token that may be
		// the current one.
		// One that cannot catch up cannot judge: it says so (Unavailable)
		// rather than refuse a token it may not know yet.
		if rerr := m.readIndex(ctx); rerr != nil {
			return nil, rerr
		}
		adm, err = m.checkJoin(ctx, req)
	}
	if err != nil {
		m.log.Warn("join refused", "from", callOf(ctx).Addr, "err", err)
		return nil, err
	}
	id, addr, err := m.leader(ctx)
	if err != nil {
		return nil, err
	}
	if id == m.node.NodeID {
		return m.admit(ctx, adm)
	}
	conn, err := m.peers.get(addr)
	if err != nil {
		return nil, err
	}
	resp, err := api.NewInternalClient(conn).Admit(ctx, adm)
	if reason, _ := api.ErrorReason(err); err != nil && reason == "" && status.Code(err) == codes.Unavailable {
		// Not the leader's answer: it could not be reached.
		return nil, fmt.Errorf("%w: the leader %s at %s does not answer: %s", errNoLeader, id, addr, status.Convert(err).Message())
	}
	return resp, err
}

// checkJoin checks a join request on the connection it came on: the
// token's root digest, its proof (bound to this TLS connection) against
// every secret that admits, the CSR and a manager's addresses. It returns
// what the leader needs to admit the node.
func (m *Manager) checkJoin(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.AdmitRequest, error) {
	if req.GetToken() != "" {
		return nil, errTokenSent
	}
	st := m.machine.State()
	if !st.Initialized() {
		return nil, fsm.ErrNotInitialized
	}
	if digest := (ca.Token{Digest: sha256.Sum256(st.CA.Bundle)}).DigestString(); subtle.ConstantTimeCompare([]byte(digest), []byte(req.GetTokenDigest())) != 1 {
		return nil, errTokenRoot
	}
	ekm, err := keyingMaterial(ctx)
	if err != nil {
		return nil, err
	}
	role, hash, tokenID, ok := matchTokenProof(st, ekm, req.GetCsr(), req.GetTokenProof(), m.cfg.Now())
	if !ok {
		return nil, errBadToken
	}
	if _, err := ca.ParseCSR(req.GetCsr()); err != nil {
		return nil, err
	}
	addr := req.GetAddr()
	if role == ca.RoleManager {
		if err := checkDialable("addr", addr); err != nil {
			return nil, err
		}
		if err := checkDialable("raft_addr", req.GetRaftAddr()); err != nil {
			return nil, err
		}
	}
	admit := &api.AdmitRequest{
		Csr: req.GetCsr(), Role: string(role), SecretHash: hash[:], TokenId: tokenID,
		Addr: addr, RaftAddr: req.GetRaftAddr(), PeerAddr: callOf(ctx).Addr,
	}
	// A host name is for people: one that is not is dropped, not refused.
	if h := req.GetHostname(); fsm.ValidHostname(h) {
		admit.Hostname = h
	}
	return admit, nil
}

// keyingMaterial exports the keying material of the TLS connection ctx's
// call came on, which a join token's proof is bound to.
func keyingMaterial(ctx context.Context) ([]byte, error) {
	p, _ := peer.FromContext(ctx)
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, fmt.Errorf("%w: joins are made over TLS only", errBadToken)
	}
	ekm, err := ti.State.ExportKeyingMaterial(ca.TokenExporterLabel, nil, ca.TokenExporterLength)
	if err != nil {
		return nil, fmt.Errorf("%w: the connection exports no keying material: %v", errBadToken, err)
	}
	return ekm, nil
}

// matchTokenProof finds the secret proof proves: the standing worker and
// manager secrets, then the usable extra tokens. Every candidate is
// checked, each in constant time.
func matchTokenProof(st *fsm.State, ekm, csr, proof []byte, now time.Time) (role ca.Role, hash [32]byte, tokenID string, ok bool) {
	try := func(r ca.Role, h [32]byte, id string) {
		if ca.CheckTokenProof(h, ekm, csr, proof) && !ok {
			role, hash, tokenID, ok = r, h, id, true
		}
	}
	try(ca.RoleWorker, fsm.HashSecret(st.WorkerSecret), "")
	try(ca.RoleManager, fsm.HashSecret(st.ManagerSecret), "")
	for _, t := range sortedTokens(st) {
		if t.Usable(now) {
			try(t.Role, t.SecretHash, t.ID)
		}
	}
	return role, hash, tokenID, ok
}

// admit signs a joining node's certificate on the leader and commits one
// entry for the node, then answers; nothing is handed out that is not
// committed. The join's proof was checked by the manager the node reached.
func (m *Manager) admit(ctx context.Context, a *api.AdmitRequest) (*api.IssueNodeCertificateResponse, error) {
	st := m.machine.State()
	role, err := ca.ParseRole(a.GetRole())
	if err != nil || role == ca.RoleAdmin || len(a.GetSecretHash()) != sha256.Size {
		return nil, fmt.Errorf("%w: admission for role %q with a %d-byte secret hash", fsm.ErrBadCommand, a.GetRole(), len(a.GetSecretHash()))
	}
	// The manager that checked the proof may lag behind a rotation of the
	// secret: sign nothing for a secret that no longer admits.
	if !admits(st, role, [32]byte(a.GetSecretHash()), a.GetTokenId(), m.cfg.Now()) {
		// A leader just elected may not have applied its predecessor's
		// last entries yet (a rotation to this very secret): catch up,
		// then judge; a leader that cannot cannot judge.
		if err := m.leaderReady(ctx); err != nil {
			return nil, err
		}
		st = m.machine.State()
		if !admits(st, role, [32]byte(a.GetSecretHash()), a.GetTokenId(), m.cfg.Now()) {
			return nil, fmt.Errorf("%w (it was rotated or revoked)", errBadToken)
		}
	}
	pub, err := ca.ParseCSR(a.GetCsr())
	if err != nil {
		return nil, err
	}
	nodeID, err := ca.NewID(m.cfg.Rand)
	if err != nil {
		return nil, err
	}
	id := ca.Identity{NodeID: nodeID, Role: role, ClusterID: st.ClusterID}
	issued, status, err := m.signNode(ctx, st, a.GetCsr(), pub, id, st.CertExpiry)
	if err != nil {
		return nil, err
	}
	n := fsm.Node{ID: nodeID, Role: role, Addr: a.GetAddr(), Cert: certInfo(issued, status)}
	if h := a.GetHostname(); fsm.ValidHostname(h) {
		n.Hostname = h
	}
	if role == ca.RoleManager {
		n.RaftAddr = a.GetRaftAddr()
	} else if n.Addr == "" {
		n.Addr = hostOf(a.GetPeerAddr())
	}
	now := m.cfg.Now()
	next, err := m.propose(ctx, fsm.Command{At: now, Issue: &fsm.Issue{
		Node: n, Join: true, SecretHash: [32]byte(a.GetSecretHash()), TokenID: a.GetTokenId(),
	}})
	if err != nil {
		return nil, err
	}
	// A node that just joined is alive: it is not listed as down until
	// its first heartbeat.
	m.obs.seen(nodeID, now)
	m.log.Info("node joined", "node_id", nodeID, "role", role, "serial", n.Cert.Serial, "from", a.GetPeerAddr(), "via", callOf(ctx).actor())
	return &api.IssueNodeCertificateResponse{
		NodeId: nodeID, Role: string(role), ClusterId: st.ClusterID,
		Certificate: issued.PEM, Bundle: next.CA.Bundle, Managers: managerAddrs(next),
	}, nil
}

// admits reports whether the secret whose hash is hash admits role now:
// the role's standing secret, or the usable extra token tokenID.
func admits(st *fsm.State, role ca.Role, hash [32]byte, tokenID string, now time.Time) bool {
	if tokenID == "" {
		want := fsm.HashSecret(st.Secret(role))
		return subtle.ConstantTimeCompare(want[:], hash[:]) == 1
	}
	t, ok := st.Tokens[tokenID]
	return ok && t.Role == role && t.Usable(now) && subtle.ConstantTimeCompare(t.SecretHash[:], hash[:]) == 1
}

// hostOf is the address a worker joined from, as recorded: its
// host:port as the manager saw it.
func hostOf(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return ""
	}
	return addr
}

func checkDialable(field, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" || port == "0" {
		return fmt.Errorf("%w: a joining manager must advertise %s as host:port, got %q", fsm.ErrBadCommand, field, addr)
	}
	return nil
}

func managerAddrs(st *fsm.State) []string {
	var out []string
	for _, n := range st.Managers() {
		if n.Addr != "" {
			out = append(out, n.Addr)
		}
	}
	return out
}

// RenewNodeCertificate signs a fresh CSR for an existing node (DESIGN.md
// flow 4). The identity is the verified certificate's node ID; the role is
// the one the cluster state holds now.
func (s caService) RenewNodeCertificate(ctx context.Context, req *api.RenewNodeCertificateRequest) (*api.RenewNodeCertificateResponse, error) {
	m := s.m
	c := callOf(ctx)
	// A turn first: a busy answer costs no parsing, and the state is
	// read once the turn has come.
	release, err := m.acquireSign(ctx)
	if err != nil {
		if _, ok := m.machine.State().Node(c.ID.NodeID); ok {
			// A node told to come back later is alive all the same:
			// it retries before its next heartbeat.
			m.obs.seen(c.ID.NodeID, m.cfg.Now())
		}
		return nil, err
	}
	defer release()
	st, node, err := m.memberOf(ctx, c.ID.NodeID)
	if err != nil {
		return nil, err
	}
	pub, err := ca.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	id := ca.Identity{NodeID: node.ID, Role: node.Role, ClusterID: st.ClusterID}
	issued, status, err := m.signNode(ctx, st, req.GetCsr(), pub, id, st.CertExpiry)
	if err != nil {
		return nil, err
	}
	now := m.cfg.Now()
	n := node
	n.Cert = certInfo(issued, status)
	next, err := m.propose(ctx, fsm.Command{At: now, Issue: &fsm.Issue{Node: n}})
	if err != nil {
		return nil, err
	}
	m.obs.seen(node.ID, now)
	m.log.Info("node renewed", "node_id", node.ID, "role", node.Role, "serial", n.Cert.Serial)
	return &api.RenewNodeCertificateResponse{
		Role: string(node.Role), Certificate: issued.PEM, Bundle: next.CA.Bundle, Managers: managerAddrs(next),
	}, nil
}

// Heartbeat records that the calling node is alive and which certificate
// it presented (the proof a rotation counts on), and tells it what to do.
func (s caService) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	m := s.m
	c := callOf(ctx)
	st, n, err := m.memberOf(ctx, c.ID.NodeID)
	if err != nil {
		return nil, err
	}
	now := m.cfg.Now()
	ob := observation{at: now, serial: c.Serial, issuer: c.Status, bundle: req.GetBundleDigest()}
	prev, heard := m.obs.heard(n.ID, ob, req.GetReloading())
	period := m.heartbeatPeriod(st.Nodes.Len())
	m.periods.tell(period, now)
	resp := &api.HeartbeatResponse{
		Role:              string(n.Role),
		Renew:             needsRenewal(st, n, c, now),
		CertExpirySeconds: int64(st.CertExpiry / time.Second),
		PeriodMs:          period.Milliseconds(),
		Managers:          managerAddrs(st),
		GossipKeyId:       membership.KeyID(st.GossipKey),
	}
	// The bundle travels only to a node that holds another one: in a
	// large cluster it would be most of every answer.
	if req.GetBundleDigest() != m.bundleDigest(st) {
		resp.Bundle = st.CA.Bundle
	}
	if r := st.LastRotation; r != nil {
		resp.BundleSince = r.CompletedAt.UnixNano()
	}
	if crls := st.CRLs; crls != nil && crls.Number > req.GetCrlNumber() {
		resp.Crl, resp.CrlNumber = crls.PEM, crls.Number
	}
	if resp.Renew && st.Rotation != nil && !c.Status.Equal(st.CAStatus) {
		resp.RenewJitterMs = rotationJitter(st.Rotation.StartedAt, now, period, m.cfg.RotationJitter).Milliseconds()
	}
	if heardNews(prev, heard, ob, m.livePeriod(now)) {
		m.kickRotation()
	}
	if n.Unconfirmed && c.Serial == n.Cert.Serial {
		m.confirm(ctx, n.ID)
	}
	return resp, nil
}

// memberOf returns the state and the node id of it. An absence is judged
// only once this leader has applied every entry committed before its term:
// a leader just elected may not have applied its predecessor's join of the
// node yet, and must not tell a member that it is none (the history checks
// caught a renewal refused so).
func (m *Manager) memberOf(ctx context.Context, id string) (*fsm.State, fsm.Node, error) {
	st := m.machine.State()
	if n, ok := st.Node(id); ok {
		return st, n, nil
	}
	if err := m.leaderReady(ctx); err != nil {
		return nil, fsm.Node{}, err
	}
	if _, ok := m.machine.State().Node(id); ok {
		// A member after all. The call was authorized against the state
		// as it was (its caller not known yet): it is asked again, and
		// judged whole on the state caught up with.
		return nil, fsm.Node{}, errCaughtUp
	}
	return nil, fsm.Node{}, fmt.Errorf("%w: node %s is not a member of this cluster; join it again with a token", fsm.ErrUnknownNode, id)
}

// needsRenewal reports whether the certificate c presented is out of date:
// another role than the node has now, another issuer than the current CA,
// one the state does not record (issued by an entry a restore or a forced
// new cluster lost), one revoked (the node renews with a fresh key), or
// valid for longer than the cluster's cert expiry
// allows (after `update --cert-expiry` shortened it; only when the cluster
// signs itself).
func needsRenewal(st *fsm.State, n fsm.Node, c call, now time.Time) bool {
	if c.ID.Role != n.Role || !c.Status.Equal(st.CAStatus) || !n.Knows(c.Serial) || st.IsRevoked(c.Serial) {
		return true
	}
	if !st.Signs() {
		// An external CA's signing profile decides the validity: renewing
		// would not shorten it.
		return false
	}
	const slack = time.Minute
	return len(c.Chain) > 0 && c.Chain[0].NotAfter.After(now.Add(st.CertExpiry+slack))
}

// Gossip hands a member of the cluster the gossip key and the addresses to
// join through: this manager's own and the other managers' it sees.
func (s caService) Gossip(ctx context.Context, _ *api.GossipRequest) (*api.GossipResponse, error) {
	st := s.m.machine.State()
	if len(st.GossipKey) == 0 {
		return nil, fmt.Errorf("%w: this manager has not caught up with the cluster state yet", errNoLeader)
	}
	resp := &api.GossipResponse{Key: st.GossipKey, KeyId: membership.KeyID(st.GossipKey)}
	if g := s.m.gossip; g != nil {
		if mem := g.Member(); mem != nil {
			resp.Peers = append(resp.Peers, mem.Addr())
			for _, p := range mem.Peers() {
				if p.Meta.Role == ca.RoleManager && p.NodeID != callOf(ctx).ID.NodeID {
					resp.Peers = append(resp.Peers, p.Addr)
				}
			}
		}
	}
	return resp, nil
}

// internalService holds the calls managers make to one another.
type internalService struct {
	api.UnimplementedInternalServer
	m *Manager
}

// Admit admits a node whose join another manager checked.
func (s internalService) Admit(ctx context.Context, req *api.AdmitRequest) (*api.IssueNodeCertificateResponse, error) {
	return s.m.admit(ctx, req)
}
