package manager

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/raft"
)

// A manager's keys at rest (node.key): its private key and its Raft data
// key, which seals every log entry and snapshot it writes (each manager
// its own). With autolock on, both are sealed under the KEK of the
// cluster's unlock key, which the managers replicate: a manager that
// restarts is locked until it is given the key.
//
// Every change of them is one atomic write of node.key, so a crash leaves
// the old keys or the new ones:
//   - autolock on: node.key is sealed under the new KEK and the data key
//     is replaced (the old one was on disk in clear), the old one kept as
//     previous: what Raft wrote under it still opens. At the next start
//     Raft seals its stores again under the new key (raft.Open), and the
//     previous key is dropped.
//   - the unlock key rotated: node.key is sealed again under the new KEK.
//     A manager that was down meanwhile is locked under the key it last
//     knew: unlocked with that one, it catches up and moves to the new.
//   - autolock off: node.key is written in clear again.

// keks returns the KEK of the unlock key the manager was given, if any.
func (m *Manager) keks() ([]ca.KEK, error) {
	if m.cfg.UnlockKey == "" {
		return nil, nil
	}
	kek, err := ca.ParseUnlockKey(m.cfg.UnlockKey)
	if err != nil {
		return nil, err
	}
	return []ca.KEK{kek}, nil
}

// loadCredentials loads the manager's credentials (a *agent.LockedError
// when node.key is sealed under an unlock key it was not given) and gives
// it a data key if it has none yet (it joined, was promoted, or comes from
// a release that did not seal its stores).
func (m *Manager) loadCredentials() error {
	keks, err := m.keks()
	if err != nil {
		return err
	}
	if m.creds, err = agent.LoadCredentials(m.cfg.DataDir, keks...); err != nil {
		return err
	}
	if len(m.creds.NodeKey().DataKey) > 0 {
		return nil
	}
	dk, err := m.newDataKey()
	if err != nil {
		return err
	}
	return m.creds.SetNodeKey(func(nk *agent.NodeKey) { nk.DataKey = dk })
}

// initialKeys makes the first manager's node.key: its private key, a data
// key, and, with autolock from the start, the unlock key it is sealed
// under (returned, for the Init command).
func (m *Manager) initialKeys(opts InitOptions, keyPEM []byte) (string, agent.NodeKey, error) {
	dk, err := m.newDataKey()
	if err != nil {
		return "", agent.NodeKey{}, err
	}
	nk := agent.NodeKey{Key: keyPEM, DataKey: dk}
	if !opts.Autolock {
		return "", nk, nil
	}
	unlockKey, err := ca.NewUnlockKey(m.cfg.Rand)
	if err != nil {
		return "", agent.NodeKey{}, err
	}
	kek, err := ca.ParseUnlockKey(unlockKey)
	if err != nil {
		return "", agent.NodeKey{}, err
	}
	nk.KEK = &kek
	return unlockKey, nk, nil
}

func (m *Manager) newDataKey() ([]byte, error) {
	dk := make([]byte, raft.DataKeySize)
	if _, err := io.ReadFull(m.cfg.Rand, dk); err != nil {
		return nil, fmt.Errorf("manager: data key: %w", err)
	}
	return dk, nil
}

// dropPreviousDataKey forgets the data key a rotation replaced, once Raft
// has sealed everything again under the current one (raft.Open did).
func (m *Manager) dropPreviousDataKey() error {
	if len(m.creds.NodeKey().PrevDataKey) == 0 || m.cfg.Unsealed {
		return nil
	}
	if err := m.step("drop-previous-data-key"); err != nil {
		return err
	}
	return m.creds.SetNodeKey(func(nk *agent.NodeKey) { nk.PrevDataKey = nil })
}

// protectKeys keeps node.key sealed as the state says: under the KEK of
// its unlock key with autolock on, in clear with it off. Turning autolock
// on also replaces the data key (see above).
func (m *Manager) protectKeys(st *fsm.State) error {
	if !st.Initialized() {
		return nil
	}
	var want *ca.KEK
	if st.Autolock {
		kek, err := ca.ParseUnlockKey(st.UnlockKey)
		if err != nil {
			return err
		}
		want = &kek
	}
	nk := m.creds.NodeKey()
	if (nk.KEK == nil && want == nil) || (nk.KEK != nil && want != nil && nk.KEK.ID == want.ID) {
		return nil
	}
	turningOn := nk.KEK == nil && want != nil
	var dk []byte
	if turningOn && len(nk.PrevDataKey) == 0 && !m.cfg.Unsealed {
		var err error
		if dk, err = m.newDataKey(); err != nil {
			return err
		}
	}
	if err := m.step("protect-keys"); err != nil {
		return err
	}
	if err := m.creds.SetNodeKey(func(nk *agent.NodeKey) {
		nk.KEK = want
		if dk != nil {
			nk.PrevDataKey, nk.DataKey = nk.DataKey, dk
		}
	}); err != nil {
		return err
	}
	switch {
	case want == nil:
		m.log.Info("autolock off: this manager's keys are in clear")
	case turningOn:
		m.log.Info("autolock on: this manager's keys are sealed under the unlock key", "unlock_key_id", want.ID)
	default:
		m.log.Info("the unlock key changed: this manager's keys are sealed under the new one", "unlock_key_id", want.ID)
	}
	return nil
}

// errCrash is what a test's step hook returns to stop a key change where
// a kill would.
var errCrash = errors.New("manager: stopped at a test's failpoint")

// step calls the test hook for a step of a key change; a hook that
// returns an error stops the change there, as a kill would.
func (m *Manager) step(name string) error {
	if m.cfg.testStep == nil {
		return nil
	}
	return m.cfg.testStep(name)
}

// UnlockKey returns the cluster's unlock key, after a rotation if asked.
func (s controlService) UnlockKey(ctx context.Context, req *api.UnlockKeyRequest) (*api.UnlockKeyResponse, error) {
	m := s.m
	st := m.machine.State()
	if !st.Autolock {
		return nil, fmt.Errorf("%w: autolock is off: there is no unlock key; turn it on with `quorumca update --autolock=true`", fsm.ErrBadCommand)
	}
	if req.GetRotate() {
		key, err := ca.NewUnlockKey(m.cfg.Rand)
		if err != nil {
			return nil, err
		}
		if st, err = m.propose(ctx, fsm.Command{At: m.cfg.Now(), RotateUnlockKey: &fsm.RotateUnlockKey{UnlockKey: key}}); err != nil {
			return nil, err
		}
		kek, _ := ca.ParseUnlockKey(key)
		m.log.Info("unlock key rotated", "unlock_key_id", kek.ID, "by", callOf(ctx).actor())
	}
	return &api.UnlockKeyResponse{UnlockKey: st.UnlockKey}, nil
}

// Unlock is for a locked manager; this one runs.
func (s controlService) Unlock(context.Context, *api.UnlockRequest) (*api.UnlockResponse, error) {
	return nil, fmt.Errorf("%w: this manager is not locked", fsm.ErrBadCommand)
}
