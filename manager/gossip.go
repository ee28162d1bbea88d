package manager

import (
	"context"
	"fmt"

	"github.com/quorumca/quorumca/fsm"
)

// acceptGossip believes gossip only about nodes of the cluster that were
// not removed. (Gossip decides nothing a rotation counts on: that comes
// from authenticated heartbeats.)
func (m *Manager) acceptGossip(id string) error {
	st := m.machine.State()
	if !st.Initialized() {
		return nil // catching up: the state cannot tell yet
	}
	if st.IsRemoved(id) {
		return fmt.Errorf("node %s was removed", id)
	}
	if _, ok := st.Node(id); !ok {
		return fmt.Errorf("node %s is not a member of the cluster", id)
	}
	return nil
}

// followState keeps this manager in step with the state it applies: its
// own trust bundle (after a rotation completes, the old root stops being
// trusted here at once, not at the next heartbeat) and its gossip key
// (replaced when a node is removed or a rotation completes).
func (m *Manager) followState(ctx context.Context) {
	var last *fsm.State
	for {
		st, changed := m.machine.Watch()
		if st.Initialized() && st.Rotation == nil && string(st.CA.Bundle) != string(m.creds.Bundle()) {
			if err := m.creds.UpdateBundle(st.CA.Bundle, m.cfg.Now()); err != nil {
				m.log.Warn("this manager's certificate does not verify under the new bundle; renewing", "err", err)
				m.renewer.RenewSoon()
			} else {
				m.log.Info("trust bundle updated", "root", fingerprint(st.CA.Bundle))
			}
		}
		if len(st.GossipKey) > 0 {
			m.gossip.UseKey(st.GossipKey)
		}
		if err := m.protectKeys(st); err != nil {
			m.log.Error("seal this manager's keys as the cluster's autolock says", "err", err)
		}
		if rotationMoved(last, st) {
			m.kickRotation()
		}
		last = st
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// kickRotation asks the leader loop to look at the rotation now.
func (m *Manager) kickRotation() {
	select {
	case m.rotationKick <- struct{}{}:
	default:
	}
}
