package fsm

import (
	"errors"
	"fmt"
)

// Errors Apply returns in a Result. They describe why a command was refused;
// a refused command leaves the state as it was (but for Index).
var (
	// ErrNotInitialized is returned for any command but Init before Init.
	ErrNotInitialized = errors.New("fsm: cluster not initialized")
	// ErrInitialized is returned for Init on an initialized state.
	ErrInitialized = errors.New("fsm: cluster already initialized")
	// ErrNodeExists is returned when a join names a node ID already in use.
	ErrNodeExists = errors.New("fsm: node ID already in use")
	// ErrUnknownNode is returned for a command naming a node not in the
	// cluster (never joined, or removed).
	ErrUnknownNode = errors.New("fsm: unknown node")
	// ErrBadCommand is returned for a command that does not decode or whose
	// fields are invalid.
	ErrBadCommand = errors.New("fsm: bad command")
	// ErrStale is returned when a command was prepared against state that
	// has since changed (for example a certificate signed under a CA that
	// has been replaced, or a token secret rotated meanwhile).
	ErrStale = errors.New("fsm: command prepared against stale state")
	// ErrRemoved is returned for a command about a node that was removed.
	ErrRemoved = errors.New("fsm: node was removed from the cluster")
	// ErrLastManager is returned when a command would leave no manager.
	ErrLastManager = errors.New("fsm: the cluster's last manager cannot be demoted or removed")
	// ErrTokenUnusable is returned for a join admitted by an extra token
	// that expired, ran out or was revoked meanwhile.
	ErrTokenUnusable = errors.New("fsm: join token expired, used up or revoked")
	// ErrUnknownToken is returned for a command naming no extra token.
	ErrUnknownToken = errors.New("fsm: unknown join token")
	// ErrRotating is returned for a rotation while another is in progress.
	ErrRotating = errors.New("fsm: a root CA rotation is already in progress")
	// ErrUnknownAdmin is returned for a command naming an admin
	// certificate the state does not record (never issued, or expired and
	// pruned).
	ErrUnknownAdmin = errors.New("fsm: unknown admin certificate")
	// ErrUnknownCert is returned for a revocation of a serial no valid
	// certificate the state records has.
	ErrUnknownCert = errors.New("fsm: unknown certificate")
)

// ErrNewer is returned for what a newer quorumca wrote and this package
// cannot read without misreading it: a command of a later version or with
// a field it does not know, or a snapshot of a later format. The errors
// that match it are *NewerError; the manager must be upgraded.
var ErrNewer = errors.New("fsm: written by a newer quorumca")

// NewerError describes a command or a snapshot a newer quorumca wrote. It
// matches ErrNewer, and for a command also ErrBadCommand.
type NewerError struct {
	// Snapshot is set for a snapshot, clear for a command.
	Snapshot bool
	// Version is the command's version or the snapshot's format; Max is
	// the latest this package reads.
	Version, Max int
	// Unknown, for a command of a version this package reads, is the
	// decoder's word on the field it does not know.
	Unknown string
	// Index is the command's Raft index when a Machine met it, else 0.
	Index uint64
}

// Error says to upgrade this manager, and names both versions.
func (e *NewerError) Error() string {
	if e.Snapshot {
		return fmt.Sprintf("fsm: upgrade this manager: the snapshot is of format %d, this binary reads up to format %d", e.Version, e.Max)
	}
	at := ""
	if e.Index > 0 {
		at = fmt.Sprintf(" at index %d", e.Index)
	}
	if e.Unknown != "" {
		return fmt.Sprintf("fsm: upgrade this manager: the log holds a command of version %d%s with a field this binary does not know (%s), this binary reads up to version %d", e.Version, at, e.Unknown, e.Max)
	}
	return fmt.Sprintf("fsm: upgrade this manager: the log holds a command of version %d%s, this binary reads up to version %d", e.Version, at, e.Max)
}

// Unwrap makes e match ErrNewer, and ErrBadCommand for a command.
func (e *NewerError) Unwrap() []error {
	if e.Snapshot {
		return []error{ErrNewer}
	}
	return []error{ErrNewer, ErrBadCommand}
}
