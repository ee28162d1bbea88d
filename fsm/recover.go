package fsm

import (
	"fmt"
	"slices"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// The kinds of recovery from a lost majority.
const (
	// RecoveryForceNewCluster: a surviving manager made itself the only
	// voter (quorumca run --force-new-cluster).
	RecoveryForceNewCluster = "force-new-cluster"
	// RecoveryRestore: a backup was restored on a new manager
	// (quorumca restore).
	RecoveryRestore = "restore"
)

// Recover records that the cluster was brought back from a lost majority,
// keeping its identity: cluster ID, CA, nodes, tokens and settings.
type Recover struct {
	// Kind is RecoveryForceNewCluster or RecoveryRestore.
	Kind string `json:"kind"`
	// Manager, for a restore, is the manager the backup was restored on,
	// with the certificate it was issued: it enters the state as the one
	// manager the cluster has.
	Manager *Node `json:"manager,omitempty"`
	// Lost are the managers that are no longer Raft voters. They leave
	// Nodes for Removed: their certificates are refused, and each must
	// join again with a manager token, from an empty data directory.
	Lost []string `json:"lost,omitempty"`
	// UnconfirmedAfter, when set, is the last index the survivor knew to
	// be committed: the entries after it were committed by the recovery
	// itself, and may never have been answered. A node whose certificate
	// one of them recorded is marked Unconfirmed.
	UnconfirmedAfter uint64 `json:"unconfirmed_after,omitempty"`
	// From is where the state comes from: the backup's index for a
	// restore, the survivor's last log index for force-new-cluster.
	From uint64 `json:"from"`
	// GossipKey replaces the gossip key, which the lost managers hold.
	GossipKey []byte `json:"gossip_key"`
}

// Recovery is the record of the last recovery.
type Recovery struct {
	Kind string    `json:"kind"`
	At   time.Time `json:"at"`
	// Index is the entry that recorded the recovery; From as in Recover.
	Index uint64 `json:"index"`
	From  uint64 `json:"from"`
	// Lost are the managers removed; Unconfirmed the nodes marked.
	Lost        []string `json:"lost,omitempty"`
	Unconfirmed []string `json:"unconfirmed,omitempty"`
}

// ConfirmNodes clears Unconfirmed on nodes that showed the leader the
// certificate the state records for them. IDs that are not unconfirmed
// are ignored.
type ConfirmNodes struct {
	IDs []string `json:"ids"`
}

func applyRecover(s *State, at time.Time, index uint64, in *Recover) (*State, error) {
	switch in.Kind {
	case RecoveryRestore:
		if in.Manager == nil {
			return nil, fmt.Errorf("%w: a restore needs the manager it was restored on", ErrBadCommand)
		}
	case RecoveryForceNewCluster:
		if in.Manager != nil {
			return nil, fmt.Errorf("%w: force-new-cluster keeps its own manager and adds none", ErrBadCommand)
		}
	default:
		return nil, fmt.Errorf("%w: unknown recovery %q", ErrBadCommand, in.Kind)
	}
	if len(in.GossipKey) == 0 {
		return nil, fmt.Errorf("%w: a recovery replaces the gossip key, which the lost managers hold", ErrBadCommand)
	}
	if err := checkNewGossipKey(s, in.GossipKey); err != nil {
		return nil, err
	}
	next := s.clone()
	next.GossipKey = in.GossipKey
	next.cloneRemoved()
	next.cloneRevoked()
	rec := &Recovery{Kind: in.Kind, At: at, Index: index, From: in.From}
	for _, id := range in.Lost {
		if n, ok := next.Nodes.Get(id); ok && n.Role == ca.RoleManager {
			next.remove(n, at)
			rec.Lost = append(rec.Lost, id)
		}
	}
	if m := in.Manager; m != nil {
		if m.ID == "" || m.Role != ca.RoleManager || m.Cert.Serial == "" {
			return nil, fmt.Errorf("%w: the restored manager needs a node ID, the manager role and a serial", ErrBadCommand)
		}
		if _, ok := next.Nodes.Get(m.ID); ok || next.IsRemoved(m.ID) {
			return nil, fmt.Errorf("%w: %s", ErrNodeExists, m.ID)
		}
		if !m.Cert.Issuer.Equal(s.CAStatus) {
			return nil, fmt.Errorf("%w: the restored manager's certificate was signed by %s, not the current CA %s", ErrStale, m.Cert.Issuer, s.CAStatus)
		}
		n := *m
		n.JoinedAt, n.Unconfirmed = at, false
		n.Cert.IssuedAt, n.Cert.Index = at, index
		n.CertsValidUntil = n.Cert.NotAfter
		next.Nodes = next.Nodes.With(n)
	}
	if len(next.Managers()) == 0 {
		return nil, fmt.Errorf("%w: the recovery would leave no manager", ErrLastManager)
	}
	if in.UnconfirmedAfter > 0 {
		for _, n := range next.Nodes.All() {
			if n.Cert.Index > in.UnconfirmedAfter && !n.Unconfirmed {
				n.Unconfirmed = true
				next.Nodes = next.Nodes.With(n)
				rec.Unconfirmed = append(rec.Unconfirmed, n.ID)
			}
		}
		slices.Sort(rec.Unconfirmed)
	}
	next.Recovery = rec
	return next, nil
}

func applyConfirmNodes(s *State, in *ConfirmNodes) (*State, error) {
	next := s.clone()
	for _, id := range in.IDs {
		if n, ok := next.Nodes.Get(id); ok && n.Unconfirmed {
			n.Unconfirmed = false
			next.Nodes = next.Nodes.With(n)
		}
	}
	return next, nil
}
