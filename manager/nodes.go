package manager

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/progress"
)

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
	nodes, next, err := pageOf(nodes, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	rotState := map[string]string{}
	if st.Rotation != nil {
		page := make(map[string]bool, len(nodes))
		for _, n := range nodes {
			page[n.ID] = true
		}
		for _, rn := range m.viewRotationOf(st, now, false, page).info.GetNodes() {
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
			Unconfirmed: n.Unconfirmed, Hostname: n.Hostname,
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
	return &api.ListNodesResponse{Nodes: out, NextPageToken: next}, nil
}

// MaxNodesPage bounds the nodes of one ListNodes answer: at a few hundred
// bytes a node, well under gRPC's 4 MB message limit.
const MaxNodesPage = 5000

// pageOf returns the page of sorted (in SortedNodes' order) that follows
// token, of at most size nodes (MaxNodesPage for 0 or more), and the
// token of the next page ("" for none). A token names the last node of its
// page by its place in that order, so a page goes on where the last one
// ended even when nodes joined or left in between.
func pageOf(sorted []fsm.Node, size uint32, token string) ([]fsm.Node, string, error) {
	if size == 0 || size > MaxNodesPage {
		size = MaxNodesPage
	}
	start := 0
	if token != "" {
		rank, id, ok := strings.Cut(token, "/")
		if !ok || (rank != "0" && rank != "1") || id == "" {
			return nil, "", fmt.Errorf("%w: page token %q is not one a ListNodes answer gave; start again without one", fsm.ErrBadCommand, token)
		}
		after := sortKey{rank == "0", id}
		start = sort.Search(len(sorted), func(i int) bool { return after.before(keyOf(sorted[i])) })
	}
	end := min(start+int(size), len(sorted))
	page := sorted[start:end]
	if end == len(sorted) {
		return page, "", nil
	}
	last := keyOf(page[len(page)-1])
	rank := "1"
	if last.manager {
		rank = "0"
	}
	return page, rank + "/" + last.id, nil
}

// sortKey is a node's place in SortedNodes' order.
type sortKey struct {
	manager bool
	id      string
}

func keyOf(n fsm.Node) sortKey { return sortKey{n.Role == ca.RoleManager, n.ID} }

// before reports whether k comes strictly before o.
func (k sortKey) before(o sortKey) bool {
	if k.manager != o.manager {
		return k.manager
	}
	return k.id < o.id
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
	// authz admits any node of the cluster (authz.OperatorOrSelf), for
	// itself alone: a worker that leaves.
	if c := callOf(ctx); c.Kind == authz.Node && !(c.ID.Role == ca.RoleManager && c.Role == ca.RoleManager) && req.GetNodeId() != c.ID.NodeID {
		return nil, fmt.Errorf("%w: node %s may remove only itself (quorumca leave), not %s; removing another node is for managers and administrators", authz.ErrDenied, c.ID.NodeID, req.GetNodeId())
	}
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
