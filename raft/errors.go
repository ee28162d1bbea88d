package raft

import (
	"errors"
	"fmt"
	"syscall"
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

	// ErrDiskFull is returned by DiskError, and by Apply, AddVoter,
	// RemoveServer, Barrier and VerifyLeader in place of ErrNoQuorum, when
	// this node's last write to its Raft stores failed because its disk is
	// full (ENOSPC). A leader whose log write fails steps down, so without
	// this the failure reads as a lost quorum. It comes as a *DiskFullError
	// naming the file.
	ErrDiskFull = errors.New("raft: disk full")
)

// DiskFullError says which file this node could not write for lack of
// space. It unwraps to ErrDiskFull and to the write's error, which wraps
// syscall.ENOSPC.
type DiskFullError struct {
	// File is the file being written: DataDir/raft.db, or a snapshot's
	// directory under DataDir/snapshots.
	File string
	// Err is the error of the failed write.
	Err error
}

// Error names the file and says what to do.
func (e *DiskFullError) Error() string {
	return fmt.Sprintf("%s: writing %s: %s; free space on this manager's disk", ErrDiskFull, e.File, syscall.ENOSPC)
}

// Unwrap returns ErrDiskFull and the write's error.
func (e *DiskFullError) Unwrap() []error { return []error{ErrDiskFull, e.Err} }

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
