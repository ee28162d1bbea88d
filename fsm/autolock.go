package fsm

import (
	"fmt"

	"github.com/quorumca/quorumca/ca"
)

// SetAutolock turns autolock on (with a new unlock key) or off. With it
// on, every manager keeps its private key and Raft data keys sealed under
// the unlock key: a manager that restarts is locked until it is given the
// key.
type SetAutolock struct {
	On bool `json:"on"`
	// UnlockKey is the new unlock key when On; empty when off.
	UnlockKey string `json:"unlock_key,omitempty"`
}

// RotateUnlockKey replaces the unlock key of a cluster with autolock on.
type RotateUnlockKey struct {
	UnlockKey string `json:"unlock_key"`
}

func applySetAutolock(s *State, in *SetAutolock) (*State, error) {
	switch {
	case in.On == s.Autolock:
		return nil, fmt.Errorf("%w: autolock is %s already", ErrBadCommand, onOff(s.Autolock))
	case in.On:
		if _, err := ca.ParseUnlockKey(in.UnlockKey); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadCommand, err)
		}
	case in.UnlockKey != "":
		return nil, fmt.Errorf("%w: turning autolock off takes no unlock key", ErrBadCommand)
	}
	next := s.clone()
	next.Autolock, next.UnlockKey = in.On, in.UnlockKey
	return next, nil
}

func applyRotateUnlockKey(s *State, in *RotateUnlockKey) (*State, error) {
	if !s.Autolock {
		return nil, fmt.Errorf("%w: autolock is off: there is no unlock key to rotate; turn it on with `quorumca update --autolock=true`", ErrBadCommand)
	}
	if _, err := ca.ParseUnlockKey(in.UnlockKey); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCommand, err)
	}
	if in.UnlockKey == s.UnlockKey {
		return nil, fmt.Errorf("%w: the new unlock key is the current one", ErrBadCommand)
	}
	next := s.clone()
	next.UnlockKey = in.UnlockKey
	return next, nil
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}
