package manager

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// Errors of the lifecycle calls, mapped to gRPC codes in status.go.
var (
	// errNodeLive is returned when rm is asked for a live node without
	// --force.
	errNodeLive = errors.New("node is live")
	// errQuorum is returned when demoting or removing a manager would leave
	// the remaining managers without a reachable majority.
	errQuorum = errors.New("would break quorum")
)

// DefaultAdminCertTTL is the validity of an admin certificate unless asked
// otherwise.
const DefaultAdminCertTTL = 24 * time.Hour

// liveness remembers when each node last heartbeated to this manager (the
// leader gets them all).
type liveness struct {
	mu   sync.Mutex // guards seen
	seen map[string]time.Time
}

func (l *liveness) mark(id string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string]time.Time{}
	}
	l.seen[id] = at
}

func (l *liveness) last(id string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[id]
}

// live reports whether id heartbeated within three periods of now.
func (m *Manager) live(id string, now time.Time) bool {
	if id == m.node.NodeID {
		return true
	}
	last := m.seen.last(id)
	return !last.IsZero() && now.Sub(last) < 3*m.cfg.HeartbeatPeriod
}

func (s *service) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	c, err := s.m.requireNode(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.HeartbeatResponse, error) {
		m := s.m
		st := m.machine.State()
		n, ok := st.Node(c.id.NodeID)
		if !ok {
			return nil, toStatus(fmt.Errorf("%w: node %s is not a member of this cluster; join it again with a token", fsm.ErrUnknownNode, c.id.NodeID))
		}
		now := m.cfg.Now()
		m.seen.mark(n.ID, now)
		resp := &api.HeartbeatResponse{
			Role:              string(n.Role),
			Renew:             needsRenewal(st, n, c, now),
			CertExpirySeconds: int64(st.CertExpiry / time.Second),
			PeriodMs:          m.cfg.HeartbeatPeriod.Milliseconds(),
			Managers:          managerAddrs(st),
			Bundle:            st.CA.Bundle,
		}
		if r := st.LastRotation; r != nil {
			resp.BundleSince = r.CompletedAt.UnixNano()
		}
		if resp.Renew && st.Rotation != nil && !c.status.Equal(st.CAStatus) {
			// Every node hears of a rotation within one heartbeat period:
			// spread their renewals.
			resp.RenewJitterMs = m.cfg.RotationJitter.Milliseconds()
		}
		return resp, nil
	})
}

// needsRenewal reports whether the certificate c presented is out of date:
// another role than the node has now, another issuer than the current CA,
// or valid for longer than the cluster's cert expiry allows (after
// `update --cert-expiry` shortened it; only when the cluster signs itself).
func needsRenewal(st *fsm.State, n fsm.Node, c caller, now time.Time) bool {
	if c.id.Role != n.Role {
		return true
	}
	if !c.status.Equal(st.CAStatus) {
		return true
	}
	if !st.Signs() {
		// An external CA's signing profile decides the validity: renewing
		// would not shorten it.
		return false
	}
	const slack = time.Minute
	return len(c.chain) > 0 && c.chain[0].NotAfter.After(now.Add(st.CertExpiry+slack))
}

func (s *service) ListNodes(ctx context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	// The leader has every node's heartbeats: ask it.
	return leaderOnly(ctx, s.m, c, req, func() (*api.ListNodesResponse, error) {
		m := s.m
		st := m.machine.State()
		now := m.cfg.Now()
		leaderID, _ := m.raft.Leader()
		var nodes []fsm.Node
		if id := req.GetNodeId(); id != "" {
			n, ok := st.Node(id)
			if !ok {
				if st.IsRemoved(id) {
					return nil, toStatus(fmt.Errorf("%w: node %s was removed", fsm.ErrUnknownNode, id))
				}
				return nil, toStatus(fmt.Errorf("%w: no node %s; see `quorumca node ls`", fsm.ErrUnknownNode, id))
			}
			nodes = []fsm.Node{n}
		} else {
			nodes = st.SortedNodes()
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
			if last := m.seen.last(n.ID); !last.IsZero() {
				an.LastSeen = last.Unix()
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
			wg.Add(1)
			go func() {
				defer wg.Done()
				an.Reachability = "unreachable"
				if n.Addr != "" && m.ping(ctx, n.Addr) == nil {
					an.Reachability = "reachable"
				}
			}()
		}
		wg.Wait()
		return &api.ListNodesResponse{Nodes: out}, nil
	})
}

// tlsStatus says whether a node's certificate was signed by the current CA
// ("ready"), is still to be renewed in the rotation in progress ("needs
// rotation"), or was left behind by a completed rotation while it was
// unreachable ("rejoin needed"). rotState is the node's state in the
// rotation in progress, if any: a node unreachable in it is named.
func tlsStatus(st *fsm.State, n fsm.Node, rotState string) string {
	switch {
	case st.Rotation != nil && rotState == rotSkipped:
		return "needs rotation (unreachable past the grace: skipped)"
	case st.Rotation != nil && rotState == rotDown:
		return "needs rotation (unreachable)"
	case n.Cert.Issuer.Equal(st.CAStatus):
		return "ready"
	case st.Rotation != nil:
		return "needs rotation"
	}
	return "rejoin needed"
}

func (s *service) SetRole(ctx context.Context, req *api.SetRoleRequest) (*api.SetRoleResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	role, err := ca.ParseRole(req.GetRole())
	if err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.SetRoleResponse, error) {
		m := s.m
		st := m.machine.State()
		n, ok := st.Node(req.GetNodeId())
		if !ok {
			return nil, toStatus(fmt.Errorf("%w: no node %s; see `quorumca node ls`", fsm.ErrUnknownNode, req.GetNodeId()))
		}
		if n.Role == role {
			return nil, toStatus(fmt.Errorf("%w: node %s is already a %s", fsm.ErrBadCommand, n.ID, role.Short()))
		}
		if n.Role == ca.RoleManager {
			if err := m.checkQuorumWithout(ctx, n.ID); err != nil {
				return nil, toStatus(err)
			}
		}
		if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), SetRole: &fsm.SetRole{NodeID: n.ID, Role: role}}); err != nil {
			return nil, toStatus(err)
		}
		m.log.Info("node role changed", "node_id", n.ID, "role", role)
		if role == ca.RoleWorker {
			// The reconcile loop retries this if it fails now.
			if err := m.raft.RemoveServer(ctx, n.ID); err != nil {
				m.log.Warn("remove demoted voter", "node_id", n.ID, "err", err)
			}
		}
		return &api.SetRoleResponse{}, nil
	})
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

func (s *service) RemoveNode(ctx context.Context, req *api.RemoveNodeRequest) (*api.RemoveNodeResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.RemoveNodeResponse, error) {
		m := s.m
		st := m.machine.State()
		n, ok := st.Node(req.GetNodeId())
		if !ok {
			if st.IsRemoved(req.GetNodeId()) {
				return nil, toStatus(fmt.Errorf("%w: node %s was already removed", fsm.ErrRemoved, req.GetNodeId()))
			}
			return nil, toStatus(fmt.Errorf("%w: no node %s; see `quorumca node ls`", fsm.ErrUnknownNode, req.GetNodeId()))
		}
		if n.ID == m.node.NodeID {
			return nil, toStatus(fmt.Errorf("%w: node %s is the leader you are talking to; demote it or remove it from another manager", errPermission, n.ID))
		}
		if !req.GetForce() && m.live(n.ID, m.cfg.Now()) {
			return nil, toStatus(fmt.Errorf("%w: node %s is ready; stop it first, or use --force", errNodeLive, n.ID))
		}
		if n.Role == ca.RoleManager {
			if err := m.checkQuorumWithout(ctx, n.ID); err != nil {
				return nil, toStatus(err)
			}
		}
		if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), RemoveNode: &fsm.RemoveNode{NodeID: n.ID}}); err != nil {
			return nil, toStatus(err)
		}
		m.log.Info("node removed", "node_id", n.ID, "role", n.Role)
		if n.Role == ca.RoleManager {
			if err := m.raft.RemoveServer(ctx, n.ID); err != nil {
				m.log.Warn("remove voter", "node_id", n.ID, "err", err)
			}
		}
		return &api.RemoveNodeResponse{}, nil
	})
}

func (s *service) Update(ctx context.Context, req *api.UpdateRequest) (*api.UpdateResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	expiry := time.Duration(req.GetCertExpirySeconds()) * time.Second
	if req.GetCertExpirySeconds() < 0 || (req.GetCertExpirySeconds() != 0 && expiry < ca.MinCertExpiry) {
		return nil, toStatus(fmt.Errorf("%w: --cert-expiry %s is under the minimum of %s", fsm.ErrBadCommand, expiry, ca.MinCertExpiry))
	}
	grace := time.Duration(req.GetRotationGraceSeconds()) * time.Second
	if req.GetRotationGraceSeconds() < 0 || (req.GetRotationGraceSeconds() != 0 && grace < fsm.MinRotationGrace) {
		return nil, toStatus(fmt.Errorf("%w: --rotation-grace %s is under the minimum of %s", fsm.ErrBadCommand, grace, fsm.MinRotationGrace))
	}
	external := externalFromAPI(req.GetExternalCa())
	if err := fsm.CheckExternal(external); err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.UpdateResponse, error) {
		var forCA *ca.TLSStatus
		if len(external) > 0 {
			st := s.m.machine.State()
			forCA = &st.CAStatus
			if st.Signs() {
				return nil, toStatus(fmt.Errorf("%w: this cluster signs with its own key; to move to an external CA, rotate to it: quorumca ca --rotate --external-ca ...", fsm.ErrBadCommand))
			}
			// Every CA given must answer, and sign with the cluster's
			// certificate: a typo must not become the CA of record.
			if err := s.m.verifyExternal(ctx, external, st.CA, st.ClusterID); err != nil {
				return nil, toStatus(err)
			}
		}
		st, err := s.m.propose(ctx, fsm.Command{At: s.m.cfg.Now(), UpdateConfig: &fsm.UpdateConfig{CertExpiry: expiry, RotationGrace: grace, External: external, ForCA: forCA}})
		if err != nil {
			return nil, toStatus(err)
		}
		s.m.log.Info("cluster updated", "cert_expiry", st.CertExpiry, "rotation_grace", st.Grace(), "external_cas", len(st.External))
		s.m.kickRotation()
		return &api.UpdateResponse{
			CertExpirySeconds:    int64(st.CertExpiry / time.Second),
			RotationGraceSeconds: int64(st.Grace() / time.Second),
			ExternalCa:           externalToAPI(st.External),
		}, nil
	})
}

func (s *service) CreateToken(ctx context.Context, req *api.CreateTokenRequest) (*api.CreateTokenResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	role, err := ca.ParseRole(req.GetRole())
	if err != nil {
		return nil, toStatus(err)
	}
	if req.GetTtlSeconds() < 0 || req.GetUses() < 0 {
		return nil, toStatus(fmt.Errorf("%w: --ttl and --uses must not be negative", fsm.ErrBadCommand))
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.CreateTokenResponse, error) {
		m := s.m
		secret, err := ca.NewSecret(m.cfg.Rand)
		if err != nil {
			return nil, toStatus(err)
		}
		id, err := ca.NewID(m.cfg.Rand)
		if err != nil {
			return nil, toStatus(err)
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
			return nil, toStatus(err)
		}
		tok, err := ca.NewToken(st.CA.Bundle, secret)
		if err != nil {
			return nil, toStatus(err)
		}
		m.log.Info("join token created", "token_id", id, "role", role, "uses", t.UsesLeft, "expires", t.ExpiresAt)
		return &api.CreateTokenResponse{Id: id, Token: tok.String(), Managers: managerAddrs(st)}, nil
	})
}

func (s *service) ListTokens(ctx context.Context, req *api.ListTokensRequest) (*api.ListTokensResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	// The leader has every token committed so far.
	return leaderOnly(ctx, s.m, c, req, func() (*api.ListTokensResponse, error) {
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
	})
}

func (s *service) RevokeToken(ctx context.Context, req *api.RevokeTokenRequest) (*api.RevokeTokenResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.RevokeTokenResponse, error) {
		if _, err := s.m.propose(ctx, fsm.Command{At: s.m.cfg.Now(), RevokeToken: &fsm.RevokeToken{ID: req.GetId()}}); err != nil {
			return nil, toStatus(err)
		}
		s.m.log.Info("join token revoked", "token_id", req.GetId())
		return &api.RevokeTokenResponse{}, nil
	})
}

// matchExtraToken finds the usable extra token whose secret is secret,
// comparing the secret's hash with every token's in constant time.
func matchExtraToken(st *fsm.State, secret string, now time.Time) (fsm.ExtraToken, bool) {
	h := sha256.Sum256([]byte(secret))
	var found fsm.ExtraToken
	ok := 0
	for _, t := range st.Tokens {
		eq := subtle.ConstantTimeCompare(h[:], t.SecretHash[:])
		if eq == 1 && t.Usable(now) {
			found, ok = t, 1
		}
	}
	return found, ok == 1
}

func (s *service) IssueAdminCertificate(ctx context.Context, req *api.IssueAdminCertificateRequest) (*api.IssueAdminCertificateResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.IssueAdminCertificateResponse, error) {
		m := s.m
		ttl := time.Duration(req.GetTtlSeconds()) * time.Second
		st := m.machine.State()
		if ttl == 0 {
			ttl = min(DefaultAdminCertTTL, st.CertExpiry)
		}
		if ttl > st.CertExpiry {
			return nil, toStatus(fmt.Errorf("%w: admin certificate TTL %s is longer than the cluster's cert expiry %s", fsm.ErrBadCommand, ttl, st.CertExpiry))
		}
		pub, err := ca.ParseCSR(req.GetCsr())
		if err != nil {
			return nil, toStatus(err)
		}
		id, err := ca.NewID(m.cfg.Rand)
		if err != nil {
			return nil, toStatus(err)
		}
		issued, _, err := m.signNode(ctx, st, req.GetCsr(), pub, ca.Identity{NodeID: id, Role: ca.RoleAdmin, ClusterID: st.ClusterID}, ttl)
		if err != nil {
			return nil, toStatus(err)
		}
		if issued.NotAfter.After(m.cfg.Now().Add(ttl + time.Minute)) {
			m.log.Warn("the external CA's signing profile made the admin certificate outlive the TTL asked", "id", id, "ttl", ttl, "not_after", issued.NotAfter)
		}
		m.log.Info("admin certificate issued", "id", id, "serial", serialHex(issued.Serial), "not_after", issued.NotAfter, "by", c.addr)
		return &api.IssueAdminCertificateResponse{Certificate: issued.PEM, Bundle: st.CA.Bundle}, nil
	})
}

// leaderLoop runs on every manager and does the leader's upkeep while this
// manager leads: Raft voters follow the state (demoted and removed managers
// leave), and expired removals and tokens are pruned.
func (m *Manager) leaderLoop(ctx context.Context) {
	tick := time.NewTicker(m.cfg.ReconcilePeriod)
	defer tick.Stop()
	for {
		reconcile := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			reconcile = true
		case <-m.rotationKick:
		}
		if !m.raft.IsLeader() {
			continue
		}
		if reconcile {
			m.reconcile(ctx)
		}
		m.driveRotation(ctx)
	}
}

func (m *Manager) reconcile(ctx context.Context) {
	st := m.machine.State()
	if !st.Initialized() {
		return
	}
	servers, err := m.raft.Servers()
	if err != nil {
		return
	}
	for _, srv := range servers {
		if n, ok := st.Node(srv.ID); ok && n.Role == ca.RoleManager {
			continue
		}
		if srv.ID == m.node.NodeID {
			continue // a demoted leader steps down through SetRole
		}
		if err := m.raft.RemoveServer(ctx, srv.ID); err != nil {
			m.log.Warn("reconcile: remove voter", "node_id", srv.ID, "err", err)
		} else {
			m.log.Info("reconcile: removed voter no longer a manager", "node_id", srv.ID)
		}
	}
	if len(st.GossipKey) == 0 {
		// A cluster made before gossip existed: give it a key.
		key := make([]byte, fsm.GossipKeySize)
		if _, err := io.ReadFull(m.cfg.Rand, key); err != nil {
			m.log.Error("gossip key", "err", err)
		} else if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), SetGossipKey: &fsm.SetGossipKey{Key: key}}); err != nil {
			m.log.Warn("set gossip key", "err", err)
		} else {
			m.log.Info("cluster gossip key created")
		}
	}
	now := m.cfg.Now()
	if st.NeedsPrune(now) {
		if _, err := m.propose(ctx, fsm.Command{At: now, Prune: &fsm.Prune{}}); err != nil {
			m.log.Warn("prune", "err", err)
		}
	}
}

func sortedTokens(st *fsm.State) []fsm.ExtraToken {
	out := make([]fsm.ExtraToken, 0, len(st.Tokens))
	for _, t := range st.Tokens {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b fsm.ExtraToken) int { return strings.Compare(a.ID, b.ID) })
	return out
}
