package manager

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/raft"
)

// Restored says what Restore made.
type Restored struct {
	// NodeID is the new manager's; State the state it starts from (the
	// backup's, with the restore recorded).
	NodeID string
	State  *fsm.State
}

// Restore makes, in cfg.DataDir (which must hold no node), the data
// directory of a manager that starts a one-manager cluster from st, the
// state of a backup, taken at Raft term term: the same cluster ID, CA,
// nodes, tokens and settings. The manager gets a new node ID and a
// certificate from the cluster's CA (or its external CA); the managers of
// the backup are removed (fsm.Recover), so that each joins again. Run it
// with Open (quorumca run). Nothing listens meanwhile: the addresses are
// recorded as cfg gives them. On any failure, what Restore wrote is
// removed.
func Restore(ctx context.Context, cfg Config, st *fsm.State, term uint64) (_ Restored, err error) {
	m, err := newManager(cfg)
	if err != nil {
		return Restored{}, err
	}
	cfg = m.cfg
	if !st.Initialized() {
		return Restored{}, fmt.Errorf("manager: the backup holds no cluster")
	}
	if err := agent.CheckFresh(cfg.DataDir); err != nil {
		return Restored{}, err
	}
	if entries, err := os.ReadDir(cfg.DataDir); err == nil && len(entries) > 0 {
		return Restored{}, fmt.Errorf("manager: restore into %s: it is not empty; restore into an empty or new directory", cfg.DataDir)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return Restored{}, fmt.Errorf("manager: %w", err)
	}
	defer func() {
		if err != nil {
			// CheckFresh found none of these: they are all ours to remove.
			os.RemoveAll(agent.CertDir(cfg.DataDir))
			os.RemoveAll(filepath.Join(cfg.DataDir, RaftDir))
			os.Remove(filepath.Join(cfg.DataDir, agent.NodeFile))
		}
	}()
	apiAddr := restoredAddr(cfg.AdvertiseAddr, cfg.ListenAddr)
	raftAddr := restoredAddr(cfg.RaftAdvertiseAddr, cfg.RaftListenAddr)

	nodeID, err := ca.NewID(cfg.Rand)
	if err != nil {
		return Restored{}, err
	}
	key, err := ca.GenerateKey(cfg.Rand)
	if err != nil {
		return Restored{}, err
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		return Restored{}, err
	}
	csr, err := ca.NewCSR(cfg.Rand, key, nodeID)
	if err != nil {
		return Restored{}, err
	}
	id := ca.Identity{NodeID: nodeID, Role: ca.RoleManager, ClusterID: st.ClusterID}
	issued, status, err := m.signNode(ctx, st, csr, key.Public(), id, st.CertExpiry)
	if err != nil {
		return Restored{}, fmt.Errorf("manager: sign the restored manager's certificate: %w", err)
	}
	gossipKey, err := m.newGossipKey()
	if err != nil {
		return Restored{}, err
	}
	self := fsm.Node{ID: nodeID, Role: ca.RoleManager, Addr: apiAddr, RaftAddr: raftAddr, Cert: certInfo(issued, status)}
	var lost []string
	for _, n := range st.Managers() {
		lost = append(lost, n.ID)
	}
	next, err := fsm.Apply(st, st.Index+1, fsm.Command{Version: fsm.Version, At: cfg.Now(), Recover: &fsm.Recover{
		Kind: fsm.RecoveryRestore, Manager: &self, Lost: lost, From: st.Index, GossipKey: gossipKey,
	}})
	if err != nil {
		return Restored{}, fmt.Errorf("manager: restore: %w", err)
	}

	dk, err := m.newDataKey()
	if err != nil {
		return Restored{}, err
	}
	nk := agent.NodeKey{Key: keyPEM, DataKey: dk}
	if next.Autolock {
		kek, err := ca.ParseUnlockKey(next.UnlockKey)
		if err != nil {
			return Restored{}, err
		}
		nk.KEK = &kek
	}
	if _, err := agent.NewManagerCredentials(cfg.DataDir, nk, issued.PEM, next.CA.Bundle); err != nil {
		return Restored{}, err
	}
	var keys *raft.Keys
	if !cfg.Unsealed {
		keys = &raft.Keys{Current: dk}
	}
	persist := func(w io.Writer) error { _, err := next.WriteTo(w); return err }
	if err := raft.Restore(filepath.Join(cfg.DataDir, RaftDir), keys, nodeID, raftAddr, next.Index, max(term, 1), persist); err != nil {
		return Restored{}, err
	}
	if _, err := agent.NewNodeStore(cfg.DataDir, agent.NodeConfig{
		NodeID: nodeID, ClusterID: st.ClusterID, Role: ca.RoleManager,
		Managers:   []string{apiAddr},
		ListenAddr: cfg.ListenAddr, AdvertiseAddr: cfg.AdvertiseAddr,
		RaftAddr: cfg.RaftListenAddr, RaftAdvertiseAddr: cfg.RaftAdvertiseAddr,
		GossipAddr: cfg.GossipAddr, GossipAdvertiseAddr: cfg.GossipAdvertiseAddr,
	}); err != nil {
		return Restored{}, err
	}
	m.log.Info("backup restored", "cluster_id", st.ClusterID, "node_id", nodeID, "index", st.Index,
		"nodes", next.Nodes.Len(), "lost_managers", lost)
	return Restored{NodeID: nodeID, State: next}, nil
}

// restoredAddr is the address a restored manager records for a listener
// it does not open yet: the explicit one, else the listen address (its
// unspecified host replaced as Advertise does). A listener on any free
// port (":0") records that; the manager records the port it gets when it
// first leads.
func restoredAddr(explicit, listen string) string {
	if explicit != "" {
		return explicit
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = hostIP()
	}
	return net.JoinHostPort(host, port)
}
