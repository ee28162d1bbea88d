package manager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/progress"
)

// controlService is the administration API: the CLI on the control socket
// or with an admin certificate, and managers among themselves. The
// interceptor has authorized and routed every call before a method runs.
type controlService struct {
	api.UnimplementedControlServer
	m *Manager
}

// Errors of the lifecycle calls, mapped to gRPC codes in status.go.
var (
	// errNodeLive is returned when rm is asked for a live node without
	// --force.
	errNodeLive = errors.New("node is live")
	// errQuorum is returned when demoting or removing a manager would leave
	// the remaining managers without a reachable majority.
	errQuorum = errors.New("would break quorum")
)

// Status describes the cluster as this manager sees it.
func (s controlService) Status(ctx context.Context, _ *api.StatusRequest) (*api.StatusResponse, error) {
	m := s.m
	st := m.machine.State()
	leaderID, _ := m.raft.Leader()
	resp := &api.StatusResponse{
		ClusterId:         m.node.ClusterID,
		NodeId:            m.node.NodeID,
		Role:              string(ca.RoleManager),
		LeaderId:          leaderID,
		RootFingerprint:   fingerprint(m.creds.Bundle()),
		Nodes:             uint32(st.Nodes.Len()),
		CertExpirySeconds: int64(st.CertExpiry / time.Second),
	}
	if st.Initialized() {
		resp.RootFingerprint = fingerprint(st.CA.Bundle)
		if st.Rotation != nil {
			resp.Rotation = m.rotationOfLeader(ctx, st)
		}
	}
	if n, ok := st.Node(leaderID); ok {
		resp.LeaderAddr = n.Addr
	}
	resp.Problem = m.problem()
	servers, err := m.raft.Servers()
	if err != nil {
		return nil, err
	}
	resp.Managers = make([]*api.Manager, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		n, _ := st.Node(srv.ID)
		mg := &api.Manager{NodeId: srv.ID, Addr: n.Addr, RaftAddr: srv.Addr, Voter: srv.Voter, Leader: srv.ID == leaderID}
		resp.Managers[i] = mg
		if srv.ID == m.node.NodeID {
			mg.Reachability = "reachable"
			continue
		}
		wg.Go(func() { mg.Reachability = m.reachability(ctx, n.Addr) })
	}
	wg.Wait()
	return resp, nil
}

// reachability says whether the manager at addr answers, and what keeps it
// from serving if it says so (a full disk).
func (m *Manager) reachability(ctx context.Context, addr string) string {
	if addr == "" {
		return "unreachable"
	}
	conn, err := m.peers.get(addr)
	if err != nil {
		return "unreachable"
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := api.NewControlClient(conn).Ping(ctx, &api.PingRequest{})
	switch {
	case err != nil:
		return "unreachable"
	case resp.GetProblem() != "":
		return "reachable (" + resp.GetProblem() + ")"
	}
	return "reachable"
}

// rotationOfLeader is the rotation's progress as the leader sees it (it
// alone hears every node's heartbeats): this manager's own view if it
// leads, else the leader's answer, else only what the state says.
func (m *Manager) rotationOfLeader(ctx context.Context, st *fsm.State) *api.Rotation {
	if m.raft.IsLeader() {
		return m.viewRotation(st, m.cfg.Now(), false).info
	}
	if id, _ := m.raft.Leader(); id != "" {
		if n, ok := st.Node(id); ok && n.Addr != "" {
			if conn, err := m.peers.get(n.Addr); err == nil {
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				if resp, err := api.NewControlClient(conn).GetCA(cctx, &api.GetCARequest{}); err == nil && resp.GetRotation().GetInProgress() {
					return resp.GetRotation()
				}
			}
		}
	}
	return &api.Rotation{InProgress: true, StartedAt: st.Rotation.StartedAt.Unix(), NewRootFingerprint: fingerprint(st.Rotation.Bundle),
		Total: uint32(st.Nodes.Len()), GraceSeconds: int64(st.Grace() / time.Second)}
}

// ping checks that the manager at addr answers over mutual TLS.
func (m *Manager) ping(ctx context.Context, addr string) error {
	conn, err := m.peers.get(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = api.NewControlClient(conn).Ping(ctx, &api.PingRequest{})
	return err
}

// Ping answers at once, with what keeps this manager from serving, if
// anything.
func (s controlService) Ping(context.Context, *api.PingRequest) (*api.PingResponse, error) {
	return &api.PingResponse{NodeId: s.m.node.NodeID, Problem: s.m.problem()}, nil
}

// problem says what keeps this manager from serving, "" if nothing: a log
// it cannot apply on (a newer quorumca wrote it: upgrade this manager),
// a full disk.
func (m *Manager) problem() string {
	var out []string
	if err := m.machine.Halted(); err != nil {
		out = append(out, fmt.Sprintf("on manager %s (%s): %v", m.node.NodeID, m.apiAddr, err))
	}
	if disk := m.diskProblem(); disk != nil {
		out = append(out, disk.Error())
	}
	return strings.Join(out, "; ")
}

// JoinToken returns a role's join token, and rotates its secret first if
// asked.
func (s controlService) JoinToken(ctx context.Context, req *api.JoinTokenRequest) (*api.JoinTokenResponse, error) {
	m := s.m
	role, err := ca.ParseRole(req.GetRole())
	if err != nil {
		return nil, err
	}
	st := m.machine.State()
	if req.GetRotate() {
		secret, err := ca.NewSecret(m.cfg.Rand)
		if err != nil {
			return nil, err
		}
		if st, err = m.propose(ctx, fsm.Command{At: m.cfg.Now(), RotateSecret: &fsm.RotateSecret{Role: role, Secret: secret}}); err != nil {
			return nil, err
		}
		m.log.Info("join token rotated", "role", role, "by", callOf(ctx).actor())
	}
	return tokenResponse(st, role)
}

func tokenResponse(st *fsm.State, role ca.Role) (*api.JoinTokenResponse, error) {
	if !st.Initialized() {
		return nil, fsm.ErrNotInitialized
	}
	tok, err := st.Token(role)
	if err != nil {
		return nil, err
	}
	return &api.JoinTokenResponse{Token: tok.String(), Managers: managerAddrs(st)}, nil
}

// AddVoter makes the calling manager (named by its certificate) a Raft
// voter, at the Raft address it gives.
func (s controlService) AddVoter(ctx context.Context, req *api.AddVoterRequest) (*api.AddVoterResponse, error) {
	m := s.m
	c := callOf(ctx)
	if err := checkDialable("raft_addr", req.GetRaftAddr()); err != nil {
		return nil, err
	}
	n, ok := m.machine.State().Node(c.ID.NodeID)
	if !ok {
		return nil, fmt.Errorf("%w: node %s", fsm.ErrUnknownNode, c.ID.NodeID)
	}
	if addr := req.GetAddr(); addr != "" && (addr != n.Addr || req.GetRaftAddr() != n.RaftAddr) {
		if err := checkDialable("addr", addr); err != nil {
			return nil, err
		}
		if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), SetAddrs: &fsm.SetAddrs{NodeID: n.ID, Addr: addr, RaftAddr: req.GetRaftAddr()}}); err != nil {
			return nil, err
		}
	}
	if err := m.raft.AddVoter(ctx, c.ID.NodeID, req.GetRaftAddr()); err != nil {
		return nil, err
	}
	m.log.Info("raft voter added", "node_id", c.ID.NodeID, "raft_addr", req.GetRaftAddr())
	return &api.AddVoterResponse{}, nil
}

// ListNodes lists the nodes, as the leader sees them (it has every node's
// heartbeats).
func (s controlService) ListNodes(ctx context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	m := s.m
	st := m.machine.State()
	now := m.cfg.Now()
	leaderID, _ := m.raft.Leader()
	nodes, err := selectNodes(st, req.GetNodeId())
	if err != nil {
		return nil, err
	}
	rotState := map[string]string{}
	if st.Rotation != nil {
		for _, rn := range m.viewRotation(st, now, false).info.GetNodes() {
			rotState[rn.GetId()] = rn.GetState()
		}
	}
	out := make([]*api.Node, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		an := &api.Node{
			Id: n.ID, Role: string(n.Role), Addr: n.Addr, RaftAddr: n.RaftAddr,
			Status: "down", Leader: n.ID == leaderID,
			CertSerial: n.Cert.Serial, CertNotAfter: n.Cert.NotAfter.Unix(),
			TlsStatus: tlsStatus(st, n, rotState[n.ID]), JoinedAt: n.JoinedAt.Unix(),
		}
		if ob, ok := m.obs.get(n.ID); ok {
			an.LastSeen = ob.at.Unix()
		}
		if m.live(n.ID, now) {
			an.Status = "ready"
		}
		out[i] = an
		if n.Role != ca.RoleManager {
			continue
		}
		if n.ID == m.node.NodeID {
			an.Reachability = "reachable"
			continue
		}
		wg.Go(func() { an.Reachability = m.reachability(ctx, n.Addr) })
	}
	wg.Wait()
	return &api.ListNodesResponse{Nodes: out}, nil
}

// selectNodes returns the node named id, or every node for "".
func selectNodes(st *fsm.State, id string) ([]fsm.Node, error) {
	if id == "" {
		return st.SortedNodes(), nil
	}
	n, ok := st.Node(id)
	if !ok {
		if st.IsRemoved(id) {
			return nil, fmt.Errorf("%w: node %s was removed", fsm.ErrUnknownNode, id)
		}
		return nil, fmt.Errorf("%w: no node %s; see `quorumca node ls`", fsm.ErrUnknownNode, id)
	}
	return []fsm.Node{n}, nil
}

// tlsStatus says whether a node's certificate was signed by the current CA
// ("ready"), is still to be renewed in the rotation in progress ("needs
// rotation"), or was left behind by a completed rotation while it was
// unreachable ("rejoin needed"). rotState is the node's state in the
// rotation in progress, if any: a node unreachable in it is named.
func tlsStatus(st *fsm.State, n fsm.Node, rotState string) string {
	switch {
	case st.Rotation != nil && rotState == string(progress.Skipped):
		return "needs rotation (unreachable past the grace: skipped)"
	case st.Rotation != nil && rotState == string(progress.Down):
		return "needs rotation (unreachable)"
	case n.Cert.Issuer.Equal(st.CAStatus):
		return "ready"
	case st.Rotation != nil:
		return "needs rotation"
	}
	return "rejoin needed"
}

// SetRole promotes a worker or demotes a manager.
func (s controlService) SetRole(ctx context.Context, req *api.SetRoleRequest) (*api.SetRoleResponse, error) {
	m := s.m
	role, err := ca.ParseRole(req.GetRole())
	if err != nil {
		return nil, err
	}
	st := m.machine.State()
	n, ok := st.Node(req.GetNodeId())
	if !ok {
		return nil, fmt.Errorf("%w: no node %s; see `quorumca node ls`", fsm.ErrUnknownNode, req.GetNodeId())
	}
	if n.Role == role {
		return nil, fmt.Errorf("%w: node %s is already a %s", fsm.ErrBadCommand, n.ID, role.Short())
	}
	if n.Role == ca.RoleManager {
		if err := m.checkQuorumWithout(ctx, n.ID); err != nil {
			return nil, err
		}
	}
	if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), SetRole: &fsm.SetRole{NodeID: n.ID, Role: role}}); err != nil {
		return nil, err
	}
	m.log.Info("node role changed", "node_id", n.ID, "role", role, "by", callOf(ctx).actor())
	if role == ca.RoleWorker {
		// The leader loop retries this if it fails now.
		if err := m.raft.RemoveServer(ctx, n.ID); err != nil {
			m.log.Warn("remove demoted voter", "node_id", n.ID, "err", err)
		}
	}
	return &api.SetRoleResponse{}, nil
}

// checkQuorumWithout refuses to take manager id out of the Raft voters
// when it is the last one, or when the managers left would not have a
// reachable majority.
func (m *Manager) checkQuorumWithout(ctx context.Context, id string) error {
	servers, err := m.raft.Servers()
	if err != nil {
		return err
	}
	st := m.machine.State()
	var remaining, reachable int
	for _, srv := range servers {
		if !srv.Voter || srv.ID == id {
			continue
		}
		remaining++
		if srv.ID == m.node.NodeID {
			reachable++
			continue
		}
		if n, ok := st.Node(srv.ID); ok && n.Addr != "" && m.ping(ctx, n.Addr) == nil {
			reachable++
		}
	}
	if remaining == 0 {
		return fmt.Errorf("%w: %s is the last manager; promote another node first", fsm.ErrLastManager, id)
	}
	if reachable < remaining/2+1 {
		return fmt.Errorf("%w: only %d of the %d other managers are reachable, and %d are needed; bring managers back first", errQuorum, reachable, remaining, remaining/2+1)
	}
	return nil
}

// RemoveNode removes a node: its certificates are refused from then on,
// and the gossip key is replaced so that its gossip is no longer heard.
func (s controlService) RemoveNode(ctx context.Context, req *api.RemoveNodeRequest) (*api.RemoveNodeResponse, error) {
	m := s.m
	st := m.machine.State()
	n, ok := st.Node(req.GetNodeId())
	if !ok {
		if st.IsRemoved(req.GetNodeId()) {
			return nil, fmt.Errorf("%w: node %s was already removed", fsm.ErrRemoved, req.GetNodeId())
		}
		return nil, fmt.Errorf("%w: no node %s; see `quorumca node ls`", fsm.ErrUnknownNode, req.GetNodeId())
	}
	if n.ID == m.node.NodeID {
		return nil, fmt.Errorf("%w: node %s is the leader you are talking to; demote it or remove it from another manager", fsm.ErrBadCommand, n.ID)
	}
	if !req.GetForce() && m.live(n.ID, m.cfg.Now()) {
		return nil, fmt.Errorf("%w: node %s is ready; stop it first, or use --force", errNodeLive, n.ID)
	}
	if n.Role == ca.RoleManager {
		if err := m.checkQuorumWithout(ctx, n.ID); err != nil {
			return nil, err
		}
	}
	key, err := m.newGossipKey()
	if err != nil {
		return nil, err
	}
	if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), RemoveNode: &fsm.RemoveNode{NodeID: n.ID, GossipKey: key}}); err != nil {
		return nil, err
	}
	m.log.Info("node removed", "node_id", n.ID, "role", n.Role, "by", callOf(ctx).actor())
	if n.Role == ca.RoleManager {
		if err := m.raft.RemoveServer(ctx, n.ID); err != nil {
			m.log.Warn("remove voter", "node_id", n.ID, "err", err)
		}
	}
	return &api.RemoveNodeResponse{}, nil
}

// Update changes the cluster's settings.
func (s controlService) Update(ctx context.Context, req *api.UpdateRequest) (*api.UpdateResponse, error) {
	m := s.m
	expiry := time.Duration(req.GetCertExpirySeconds()) * time.Second
	if req.GetCertExpirySeconds() < 0 || (req.GetCertExpirySeconds() != 0 && expiry < ca.MinCertExpiry) {
		return nil, fmt.Errorf("%w: --cert-expiry %s is under the minimum of %s", fsm.ErrBadCommand, expiry, ca.MinCertExpiry)
	}
	grace := time.Duration(req.GetRotationGraceSeconds()) * time.Second
	if req.GetRotationGraceSeconds() < 0 || (req.GetRotationGraceSeconds() != 0 && grace < fsm.MinRotationGrace) {
		return nil, fmt.Errorf("%w: --rotation-grace %s is under the minimum of %s", fsm.ErrBadCommand, grace, fsm.MinRotationGrace)
	}
	external := externalFromAPI(req.GetExternalCa())
	if err := fsm.CheckExternal(external); err != nil {
		return nil, err
	}
	var forCA *ca.TLSStatus
	if len(external) > 0 {
		st := m.machine.State()
		forCA = &st.CAStatus
		if st.Signs() {
			return nil, fmt.Errorf("%w: this cluster signs with its own key; to move to an external CA, rotate to it: quorumca ca --rotate --external-ca ...", fsm.ErrBadCommand)
		}
		// Every CA given must answer, and sign with the cluster's
		// certificate: a typo must not become the CA of record.
		if err := m.verifyExternal(ctx, external, st.CA, st.ClusterID); err != nil {
			return nil, err
		}
	}
	st, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), UpdateConfig: &fsm.UpdateConfig{CertExpiry: expiry, RotationGrace: grace, External: external, ForCA: forCA}})
	if err != nil {
		return nil, err
	}
	m.log.Info("cluster updated", "cert_expiry", st.CertExpiry, "rotation_grace", st.Grace(), "external_cas", len(st.External), "by", callOf(ctx).actor())
	m.kickRotation()
	return &api.UpdateResponse{
		CertExpirySeconds:    int64(st.CertExpiry / time.Second),
		RotationGraceSeconds: int64(st.Grace() / time.Second),
		ExternalCa:           externalToAPI(st.External),
	}, nil
}

// CreateToken adds a join token that expires or runs out.
func (s controlService) CreateToken(ctx context.Context, req *api.CreateTokenRequest) (*api.CreateTokenResponse, error) {
	m := s.m
	role, err := ca.ParseRole(req.GetRole())
	if err != nil {
		return nil, err
	}
	if req.GetTtlSeconds() < 0 || req.GetUses() < 0 {
		return nil, fmt.Errorf("%w: --ttl and --uses must not be negative", fsm.ErrBadCommand)
	}
	secret, err := ca.NewSecret(m.cfg.Rand)
	if err != nil {
		return nil, err
	}
	id, err := ca.NewID(m.cfg.Rand)
	if err != nil {
		return nil, err
	}
	id = id[:12]
	now := m.cfg.Now()
	t := fsm.ExtraToken{ID: id, Role: role, SecretHash: fsm.HashSecret(secret), UsesLeft: -1}
	if req.GetUses() > 0 {
		t.UsesLeft = int(req.GetUses())
	}
	if req.GetTtlSeconds() > 0 {
		t.ExpiresAt = now.Add(time.Duration(req.GetTtlSeconds()) * time.Second)
	}
	st, err := m.propose(ctx, fsm.Command{At: now, CreateToken: &fsm.CreateToken{Token: t}})
	if err != nil {
		return nil, err
	}
	tok, err := ca.NewToken(st.CA.Bundle, secret)
	if err != nil {
		return nil, err
	}
	m.log.Info("join token created", "token_id", id, "role", role, "uses", t.UsesLeft, "expires", t.ExpiresAt, "by", callOf(ctx).actor())
	return &api.CreateTokenResponse{Id: id, Token: tok.String(), Managers: managerAddrs(st)}, nil
}

// ListTokens lists the extra join tokens still usable (never their
// secrets).
func (s controlService) ListTokens(context.Context, *api.ListTokensRequest) (*api.ListTokensResponse, error) {
	st := s.m.machine.State()
	now := s.m.cfg.Now()
	resp := &api.ListTokensResponse{}
	for _, t := range sortedTokens(st) {
		if !t.Usable(now) {
			continue
		}
		at := &api.Token{Id: t.ID, Role: string(t.Role), UsesLeft: int32(t.UsesLeft), CreatedAt: t.CreatedAt.Unix()}
		if !t.ExpiresAt.IsZero() {
			at.ExpiresAt = t.ExpiresAt.Unix()
		}
		resp.Tokens = append(resp.Tokens, at)
	}
	return resp, nil
}

// RevokeToken removes an extra join token.
func (s controlService) RevokeToken(ctx context.Context, req *api.RevokeTokenRequest) (*api.RevokeTokenResponse, error) {
	if _, err := s.m.propose(ctx, fsm.Command{At: s.m.cfg.Now(), RevokeToken: &fsm.RevokeToken{ID: req.GetId()}}); err != nil {
		return nil, err
	}
	s.m.log.Info("join token revoked", "token_id", req.GetId(), "by", callOf(ctx).actor())
	return &api.RevokeTokenResponse{}, nil
}

func sortedTokens(st *fsm.State) []fsm.ExtraToken {
	out := make([]fsm.ExtraToken, 0, len(st.Tokens))
	for _, t := range st.Tokens {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b fsm.ExtraToken) int { return strings.Compare(a.ID, b.ID) })
	return out
}
