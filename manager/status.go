package manager

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/cfssl"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/raft"
)

// Domain errors of the manager, mapped to gRPC codes by toStatus.
var (
	// errBadToken is returned for a join token whose secret admits nothing.
	errBadToken = errors.New("invalid join token: its secret matches neither the worker nor the manager token; ask a manager for the current one (quorumca join-token worker)")
	// errTokenRoot is returned for a join token that pins another root.
	errTokenRoot = errors.New("invalid join token: it pins a different root CA than this cluster's; ask a manager for the current token")
	// errTokenSent is returned for a join request that carries a token:
	// tokens never travel, only proofs of them.
	errTokenSent = errors.New("this join request carries the join token itself; managers take only a proof of it: upgrade the joining node's quorumca")
	// errNoLeader is returned when no leader is known to forward to.
	errNoLeader = errors.New("no leader: no quorum of managers; check that a majority of managers is up")
	// errForwardLoop is returned when a forwarded call reaches a manager
	// that is not the leader either (leadership is moving); retry.
	errForwardLoop = errors.New("leadership is changing; retry")
	// errCaughtUp is returned for a node's call that reached a leader
	// just elected before it had applied the node's join: retry.
	errCaughtUp = errors.New("this manager has just caught up with the cluster's state; retry")
)

// classes maps domain errors to gRPC codes and, for programs, reasons. The
// first that matches wins.
var classes = []struct {
	errs   []error
	code   codes.Code
	reason string
}{
	{[]error{context.DeadlineExceeded}, codes.DeadlineExceeded, ""},
	{[]error{context.Canceled}, codes.Canceled, ""},
	{[]error{authz.ErrUnauthenticated}, codes.Unauthenticated, ""},
	{[]error{authz.ErrNotReady}, codes.Unavailable, ""},
	{[]error{authz.ErrDenied}, codes.PermissionDenied, ""},
	{[]error{errBadToken, errTokenRoot}, codes.PermissionDenied, api.ReasonBadToken},
	{[]error{raft.ErrDiskFull}, codes.Unavailable, api.ReasonDiskFull},
	{[]error{raft.ErrNoQuorum, raft.ErrNotLeader, errNoLeader, errForwardLoop, raft.ErrShutdown, errCaughtUp}, codes.Unavailable, api.ReasonNoLeader},
	{[]error{cfssl.ErrDown}, codes.Unavailable, api.ReasonExternalCADown},
	{[]error{fsm.ErrStale}, codes.Aborted, ""},
	{[]error{fsm.ErrUnknownNode, fsm.ErrRemoved, fsm.ErrUnknownToken, fsm.ErrUnknownAdmin, fsm.ErrUnknownCert}, codes.NotFound, ""},
	{[]error{fsm.ErrTokenUnusable}, codes.PermissionDenied, api.ReasonBadToken},
	{[]error{fsm.ErrLastManager, errNodeLive, errQuorum, errNotRotatable, fsm.ErrRotating, cfssl.ErrRefused,
		ca.ErrExternalCA, fsm.ErrNotInitialized, fsm.ErrNewer}, codes.FailedPrecondition, ""},
	{[]error{fsm.ErrNodeExists}, codes.AlreadyExists, ""},
	{[]error{ca.ErrMalformedToken, ca.ErrBadCSR, ca.ErrCSRSignature, ca.ErrUnsupportedKey, ca.ErrWeakKey,
		ca.ErrBadIdentity, ca.ErrMalformedPEM, fsm.ErrBadCommand, ca.ErrExpiryTooShort, ca.ErrNotCA,
		ca.ErrChainIncomplete, ca.ErrExpiring, ca.ErrKeyMismatch, ca.ErrKeyReused, errTokenSent}, codes.InvalidArgument, ""},
}

// toStatus is the one place where errors become gRPC status codes, with
// an errdetails.ErrorInfo reason where programs act on one. An error that
// is a status already passes unchanged.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var nl *notLeaderError
	if errors.As(err, &nl) {
		return withReason(status.New(codes.Unavailable, err.Error()), api.ReasonNotLeader,
			map[string]string{api.MetaLeaderAddr: nl.addr, api.MetaLeaderID: nl.id}).Err()
	}
	code, reason := codes.Internal, ""
	for _, c := range classes {
		if matches(err, c.errs) {
			code, reason = c.code, c.reason
			break
		}
	}
	var ae *authz.Error
	if errors.As(err, &ae) {
		reason = ae.Reason
	}
	st := status.New(code, err.Error())
	if reason != "" {
		st = withReason(st, reason, nil)
	}
	return st.Err()
}

func matches(err error, targets []error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// withReason attaches an errdetails.ErrorInfo to st.
func withReason(st *status.Status, reason string, meta map[string]string) *status.Status {
	d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: api.ErrorDomain, Metadata: meta})
	if err != nil {
		return st
	}
	return d
}
