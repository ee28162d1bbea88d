package raft

import (
	"errors"
	"fmt"
)

// Errors returned by Node. Each comes wrapped in a message that says what
// happened and what to do; test for them with errors.Is.
var (
	// ErrNotLeader is returned by Apply, AddVoter, RemoveServer, Barrier and
	// VerifyLeader when this node is not the leader. It comes as a
	// *NotLeaderError that names the leader, if one is known, so that the
	// caller can forward the request there.
	ErrNotLeader = errors.New("raft: not the leader")

	// ErrNoQuorum is returned by Apply, AddVoter, RemoveServer, Barrier and
	// VerifyLeader when the leader could not commit within the deadline or
	// lost its leadership while committing: most often because fewer than a
	// majority of the managers are up and reachable. An Apply that fails
	// this way may still be committed later.
	ErrNoQuorum = errors.New("raft: no quorum")

	// ErrShutdown is returned by every Node method that needs Raft once
	// Shutdown has begun.
	ErrShutdown = errors.New("raft: node is shut down")
)

// NotLeaderError is the error a follower or candidate returns for a call
// only the leader can serve. It unwraps to ErrNotLeader.
type NotLeaderError struct {
	// LeaderID is the leader's node ID, or "" when no leader is known (an
	// election is under way, or there is no quorum).
	LeaderID string
	// LeaderAddr is the leader's Raft address, or "" when not known.
	LeaderAddr string
}

// Error says which node is the leader, if one is known.
func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return ErrNotLeader.Error() + "; no leader is known (an election may be under way, or a majority of managers is down)"
	}
	return fmt.Sprintf("%s; the leader is %s at %s", ErrNotLeader, e.LeaderID, e.LeaderAddr)
}

// Unwrap returns ErrNotLeader.
func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }
