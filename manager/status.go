package manager

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/raft"
)

// Domain errors of the manager, mapped to gRPC codes by toStatus.
var (
	// errBadToken is returned for a join token whose secret admits nothing.
	errBadToken = errors.New("invalid join token: its secret matches neither the worker nor the manager token; ask a manager for the current one (quorumca join-token worker)")
	// errTokenRoot is returned for a join token that pins another root.
	errTokenRoot = errors.New("invalid join token: it pins a different root CA than this cluster's; ask a manager for the current token")
	// errNoLeader is returned when no leader is known to forward to.
	errNoLeader = errors.New("no leader: no quorum of managers; check that a majority of managers is up")
	// errForwardLoop is returned when a forwarded call reaches a manager
	// that is not the leader either (leadership is moving); retry.
	errForwardLoop = errors.New("leadership is changing; retry")
)

// toStatus is the one place where errors become gRPC status codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, errUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, errPermission), errors.Is(err, errBadToken), errors.Is(err, errTokenRoot):
		code = codes.PermissionDenied
	case errors.Is(err, raft.ErrNoQuorum), errors.Is(err, raft.ErrNotLeader), errors.Is(err, errNoLeader),
		errors.Is(err, errForwardLoop), errors.Is(err, raft.ErrShutdown), errors.Is(err, errExternalDown):
		code = codes.Unavailable
	case errors.Is(err, fsm.ErrStale):
		code = codes.Aborted
	case errors.Is(err, fsm.ErrUnknownNode), errors.Is(err, fsm.ErrRemoved), errors.Is(err, fsm.ErrUnknownToken):
		code = codes.NotFound
	case errors.Is(err, fsm.ErrTokenUnusable):
		code = codes.PermissionDenied
	case errors.Is(err, fsm.ErrLastManager), errors.Is(err, errNodeLive), errors.Is(err, errQuorum),
		errors.Is(err, errNotRotatable), errors.Is(err, fsm.ErrRotating), errors.Is(err, errExternalRefused),
		errors.Is(err, ca.ErrExternalCA):
		code = codes.FailedPrecondition
	case errors.Is(err, fsm.ErrNodeExists):
		code = codes.AlreadyExists
	case errors.Is(err, fsm.ErrNotInitialized):
		code = codes.FailedPrecondition
	case errors.Is(err, ca.ErrMalformedToken), errors.Is(err, ca.ErrBadCSR), errors.Is(err, ca.ErrCSRSignature),
		errors.Is(err, ca.ErrUnsupportedKey), errors.Is(err, ca.ErrWeakKey), errors.Is(err, ca.ErrBadIdentity),
		errors.Is(err, ca.ErrMalformedPEM), errors.Is(err, fsm.ErrBadCommand), errors.Is(err, ca.ErrExpiryTooShort),
		errors.Is(err, ca.ErrNotCA), errors.Is(err, ca.ErrChainIncomplete), errors.Is(err, ca.ErrExpiring),
		errors.Is(err, ca.ErrKeyMismatch), errors.Is(err, ca.ErrKeyReused):
		code = codes.InvalidArgument
	}
	return status.Error(code, err.Error())
}
