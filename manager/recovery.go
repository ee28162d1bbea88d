package manager

import (
	"context"
	"errors"
	"fmt"

	"github.com/quorumca/quorumca/fsm"
)

// Recovering from a lost majority with force-new-cluster: raft.Open made
// this manager the only voter and reports what it did (raft.Recovery).
// Once it leads, this manager records it in the state (fsm.Recover): the
// lost managers are removed (each must join again, from an empty data
// directory, with a manager token), the gossip key they held is replaced,
// and the nodes whose certificate an entry the recovery committed
// recorded are marked unconfirmed: that entry may never have been
// answered. Only then is the recovery finished; a crash before that
// records it at the next start.

// recordRecovery records the pending forced new cluster, if any, in the
// state, and finishes it.
func (m *Manager) recordRecovery(ctx context.Context) error {
	rec := m.raft.PendingRecovery()
	if rec == nil {
		return nil
	}
	st := m.machine.State()
	if r := st.Recovery; r == nil || r.Kind != fsm.RecoveryForceNewCluster || r.From != rec.Last {
		key, err := m.newGossipKey()
		if err != nil {
			return err
		}
		cmd := &fsm.Recover{Kind: fsm.RecoveryForceNewCluster, Lost: rec.Lost, From: rec.Last, GossipKey: key}
		if rec.Last > rec.Committed {
			cmd.UnconfirmedAfter = rec.Committed
		}
		if st, err = m.propose(ctx, fsm.Command{At: m.cfg.Now(), Recover: cmd}); err != nil {
			return fmt.Errorf("record the forced new cluster: %w", err)
		}
		m.log.Warn("force-new-cluster recorded: the lost managers are removed and must join again with a manager token, from an empty data directory",
			"lost", st.Recovery.Lost, "unconfirmed", st.Recovery.Unconfirmed,
			"entries_committed_by_recovery", rec.Last-rec.Committed)
	}
	return m.raft.FinishRecovery()
}

// recoveryUpkeep records a pending recovery; a failure is tried again at
// the next reconcile.
func (m *Manager) recoveryUpkeep(ctx context.Context) {
	if err := m.recordRecovery(ctx); err != nil && ctx.Err() == nil {
		m.log.Warn("force-new-cluster", "err", err)
	}
}

// confirm records that a node marked unconfirmed showed the certificate
// the state records for it.
func (m *Manager) confirm(ctx context.Context, id string) {
	if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), ConfirmNodes: &fsm.ConfirmNodes{IDs: []string{id}}}); err != nil && !errors.Is(err, context.Canceled) {
		m.log.Warn("confirm node", "node_id", id, "err", err)
	}
}
