package manager

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// service implements the CA and Control gRPC services of a manager.
type service struct {
	api.UnimplementedCAServer
	api.UnimplementedControlServer
	m *Manager
}

// leaderConn returns a connection to the leader for forwarding c's call, or
// nil when this manager is the leader and should handle it. It waits a
// little for an election in progress.
func (m *Manager) leaderConn(ctx context.Context, c caller) (*grpc.ClientConn, error) {
	wait := time.NewTimer(5 * time.Second)
	defer wait.Stop()
	for {
		if m.raft.IsLeader() {
			return nil, nil
		}
		if c.forwarded {
			return nil, errForwardLoop
		}
		if id, _ := m.raft.Leader(); id != "" && id != m.node.NodeID {
			n, ok := m.machine.State().Node(id)
			if !ok || n.Addr == "" {
				return nil, fmt.Errorf("%w: leader %s has no known API address yet", errNoLeader, id)
			}
			return m.peers.get(n.Addr)
		}
		select {
		case <-ctx.Done():
			return nil, errNoLeader
		case <-wait.C:
			return nil, errNoLeader
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *service) GetRootBundle(ctx context.Context, _ *api.GetRootBundleRequest) (*api.GetRootBundleResponse, error) {
	st := s.m.machine.State()
	if !st.Initialized() {
		// A manager still catching up serves the bundle it joined with.
		return &api.GetRootBundleResponse{Bundle: s.m.creds.Bundle()}, nil
	}
	return &api.GetRootBundleResponse{Bundle: st.CA.Bundle}, nil
}

func (s *service) IssueNodeCertificate(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	c, err := s.m.callerOf(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.IssueNodeCertificateResponse, error) {
		resp, err := s.m.issue(ctx, c, req)
		return resp, toStatus(err)
	})
}

// issue admits a joining node on the leader (DESIGN.md flow 3): check the
// token in constant time, sign, commit one entry for the node, then answer.
func (m *Manager) issue(ctx context.Context, c caller, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	st := m.machine.State()
	if !st.Initialized() {
		return nil, fsm.ErrNotInitialized
	}
	tok, err := ca.ParseToken(req.GetToken())
	if err != nil {
		return nil, err
	}
	if tok.VerifyBundle(st.CA.Bundle) != nil {
		return nil, errTokenRoot
	}
	// Compare against both secrets every time, in constant time.
	isWorker := ca.SecretEqual(tok.Secret, st.WorkerSecret)
	isManager := ca.SecretEqual(tok.Secret, st.ManagerSecret)
	extra, isExtra := matchExtraToken(st, tok.Secret, m.cfg.Now())
	var role ca.Role
	switch {
	case isManager:
		role = ca.RoleManager
	case isWorker:
		role = ca.RoleWorker
	case isExtra:
		role = extra.Role
	default:
		m.log.Warn("join refused: bad token", "from", c.addr)
		return nil, errBadToken
	}
	pub, err := ca.ParseCSR(req.GetCsr())
	if err != nil {
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
	} else if addr == "" {
		addr = c.addr
	}
	nodeID, err := ca.NewID(m.cfg.Rand)
	if err != nil {
		return nil, err
	}
	id := ca.Identity{NodeID: nodeID, Role: role, ClusterID: st.ClusterID}
	issued, status, err := m.signNode(ctx, st, req.GetCsr(), pub, id, st.CertExpiry)
	if err != nil {
		return nil, err
	}
	now := m.cfg.Now()
	n := fsm.Node{ID: nodeID, Role: role, Addr: addr, Cert: certInfo(issued, status)}
	if role == ca.RoleManager {
		n.RaftAddr = req.GetRaftAddr()
	}
	in := &fsm.Issue{Node: n, Join: true, SecretHash: fsm.HashSecret(st.Secret(role))}
	if !isManager && !isWorker {
		in.TokenID, in.SecretHash = extra.ID, extra.SecretHash
	}
	next, err := m.propose(ctx, fsm.Command{At: now, Issue: in})
	if err != nil {
		return nil, err
	}
	// A node that just joined is alive: do not list it as down until
	// its first heartbeat.
	m.seen.mark(nodeID, now)
	m.log.Info("node joined", "node_id", nodeID, "role", role, "serial", n.Cert.Serial, "from", c.addr)
	return &api.IssueNodeCertificateResponse{
		NodeId:      nodeID,
		Role:        string(role),
		ClusterId:   st.ClusterID,
		Certificate: issued.PEM,
		Bundle:      next.CA.Bundle,
		Managers:    managerAddrs(next),
	}, nil
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

func (s *service) RenewNodeCertificate(ctx context.Context, req *api.RenewNodeCertificateRequest) (*api.RenewNodeCertificateResponse, error) {
	c, err := s.m.requireNode(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.RenewNodeCertificateResponse, error) {
		resp, err := s.m.renew(ctx, c, req)
		return resp, toStatus(err)
	})
}

// renew signs a fresh CSR for an existing node (DESIGN.md flow 4). The
// identity is the verified certificate's node ID; the role is the one the
// cluster state holds now.
func (m *Manager) renew(ctx context.Context, c caller, req *api.RenewNodeCertificateRequest) (*api.RenewNodeCertificateResponse, error) {
	st := m.machine.State()
	node, ok := st.Node(c.id.NodeID)
	if !ok {
		return nil, fmt.Errorf("%w: node %s is not a member of this cluster; join it again with a token", fsm.ErrUnknownNode, c.id.NodeID)
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
	m.seen.mark(node.ID, now)
	m.log.Info("node renewed", "node_id", node.ID, "role", node.Role, "serial", n.Cert.Serial)
	return &api.RenewNodeCertificateResponse{
		Role:        string(node.Role),
		Certificate: issued.PEM,
		Bundle:      next.CA.Bundle,
		Managers:    managerAddrs(next),
	}, nil
}

func (s *service) Status(ctx context.Context, _ *api.StatusRequest) (*api.StatusResponse, error) {
	if _, err := s.m.requireManager(ctx); err != nil {
		return nil, toStatus(err)
	}
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
			resp.Rotation = m.viewRotation(st, m.cfg.Now(), false).info
		}
	}
	if n, ok := st.Node(leaderID); ok {
		resp.LeaderAddr = n.Addr
	}
	servers, err := m.raft.Servers()
	if err != nil {
		return nil, toStatus(err)
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			mg.Reachability = "unreachable"
			if n.Addr == "" {
				return
			}
			if m.ping(ctx, n.Addr) == nil {
				mg.Reachability = "reachable"
			}
		}()
	}
	wg.Wait()
	return resp, nil
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

func (s *service) Ping(ctx context.Context, _ *api.PingRequest) (*api.PingResponse, error) {
	if _, err := s.m.requireManager(ctx); err != nil {
		return nil, toStatus(err)
	}
	return &api.PingResponse{NodeId: s.m.node.NodeID}, nil
}

func (s *service) JoinToken(ctx context.Context, req *api.JoinTokenRequest) (*api.JoinTokenResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	role, err := ca.ParseRole(req.GetRole())
	if err != nil {
		return nil, toStatus(err)
	}
	if !req.GetRotate() {
		resp, err := tokenResponse(s.m.machine.State(), role)
		return resp, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.JoinTokenResponse, error) {
		secret, err := ca.NewSecret(s.m.cfg.Rand)
		if err != nil {
			return nil, err
		}
		st, err := s.m.propose(ctx, fsm.Command{At: s.m.cfg.Now(), RotateSecret: &fsm.RotateSecret{Role: role, Secret: secret}})
		if err != nil {
			return nil, err
		}
		s.m.log.Info("join token rotated", "role", role)
		return tokenResponse(st, role)
	})
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

func (s *service) AddVoter(ctx context.Context, req *api.AddVoterRequest) (*api.AddVoterResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if c.local || !c.authenticated() {
		return nil, toStatus(fmt.Errorf("%w: AddVoter names the caller by its certificate; call it over mutual TLS", errPermission))
	}
	if err := checkDialable("raft_addr", req.GetRaftAddr()); err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.AddVoterResponse, error) {
		n, ok := s.m.machine.State().Node(c.id.NodeID)
		if !ok || n.Role != ca.RoleManager {
			return nil, toStatus(fmt.Errorf("%w: node %s is not a manager in the cluster state", errPermission, c.id.NodeID))
		}
		if addr := req.GetAddr(); addr != "" && (addr != n.Addr || req.GetRaftAddr() != n.RaftAddr) {
			if err := checkDialable("addr", addr); err != nil {
				return nil, toStatus(err)
			}
			if _, err := s.m.propose(ctx, fsm.Command{At: s.m.cfg.Now(), SetAddrs: &fsm.SetAddrs{NodeID: n.ID, Addr: addr, RaftAddr: req.GetRaftAddr()}}); err != nil {
				return nil, toStatus(err)
			}
		}
		if err := s.m.raft.AddVoter(ctx, c.id.NodeID, req.GetRaftAddr()); err != nil {
			return nil, toStatus(err)
		}
		s.m.log.Info("raft voter added", "node_id", c.id.NodeID, "raft_addr", req.GetRaftAddr())
		return &api.AddVoterResponse{}, nil
	})
}

// leaderOnly runs handle when this manager is the leader. Otherwise it
// relays the very call being served (its gRPC method and request) to the
// leader over mutual TLS, naming the original caller, and returns the
// leader's answer.
func leaderOnly[T any, PT interface {
	*T
	proto.Message
}](ctx context.Context, m *Manager, c caller, req proto.Message, handle func() (PT, error)) (PT, error) {
	conn, err := m.leaderConn(ctx, c)
	if err != nil {
		return nil, toStatus(err)
	}
	if conn == nil {
		resp, err := handle()
		return resp, toStatus(err)
	}
	method, ok := grpc.Method(ctx)
	if !ok {
		panic("manager: leaderOnly outside a gRPC call") // broken invariant
	}
	resp := PT(new(T))
	if err := conn.Invoke(forwardContext(ctx, c), method, req, resp); err != nil {
		return nil, err
	}
	return resp, nil
}
