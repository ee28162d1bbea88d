package manager

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
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
		if r := st.Recovery; r != nil {
			resp.Recovery = &api.Recovery{Kind: r.Kind, At: r.At.Unix(), From: r.From, Lost: r.Lost, Unconfirmed: r.Unconfirmed}
		}
	}
	if n, ok := st.Node(leaderID); ok {
		resp.LeaderAddr = n.Addr
	}
	resp.Problem = m.problem()
	resp.Health = m.health(st, leaderID, resp.Problem)
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

// Health returns this manager's api.Health*, and its problem if any.
func (m *Manager) Health() (string, string) {
	leaderID, _ := m.raft.Leader()
	problem := m.problem()
	return m.health(m.machine.State(), leaderID, problem), problem
}

// health is this manager's api.Health*: the worst thing wrong with it.
func (m *Manager) health(st *fsm.State, leaderID, problem string) string {
	switch {
	case st.IsRemoved(m.node.NodeID):
		return api.HealthRemoved
	case !m.cfg.Now().Before(m.creds.NotAfter()):
		return api.HealthCertExpired
	case problem != "": // a full disk, a log it cannot apply: the cause of a lost leader, often
		return api.HealthProblem
	case leaderID == "":
		return api.HealthNoLeader
	}
	return api.HealthOK
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
	st := m.machine.State()
	if expiry != 0 || grace != 0 || len(external) > 0 {
		var err error
		if st, err = m.propose(ctx, fsm.Command{At: m.cfg.Now(), UpdateConfig: &fsm.UpdateConfig{CertExpiry: expiry, RotationGrace: grace, External: external, ForCA: forCA}}); err != nil {
			return nil, err
		}
		m.log.Info("cluster updated", "cert_expiry", st.CertExpiry, "rotation_grace", st.Grace(), "external_cas", len(st.External), "by", callOf(ctx).actor())
		m.kickRotation()
	}
	resp := &api.UpdateResponse{}
	if req.Autolock != nil && req.GetAutolock() != st.Autolock {
		cmd := &fsm.SetAutolock{On: req.GetAutolock()}
		if cmd.On {
			var err error
			if cmd.UnlockKey, err = ca.NewUnlockKey(m.cfg.Rand); err != nil {
				return nil, err
			}
			resp.UnlockKey = cmd.UnlockKey
		}
		var err error
		if st, err = m.propose(ctx, fsm.Command{At: m.cfg.Now(), SetAutolock: cmd}); err != nil {
			return nil, err
		}
		m.log.Info("autolock changed", "autolock", st.Autolock, "by", callOf(ctx).actor())
	}
	resp.CertExpirySeconds = int64(st.CertExpiry / time.Second)
	resp.RotationGraceSeconds = int64(st.Grace() / time.Second)
	resp.ExternalCa = externalToAPI(st.External)
	resp.Autolock = st.Autolock
	return resp, nil
}
