package api

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// ExternalCADown begins the message of the Unavailable error a manager
// returns when none of the cluster's external CAs answered. Unlike a lost
// quorum, which needs an operator, it is often brief (a CA restarting), so
// a joining node asks again until its join times out.
const ExternalCADown = "no external CA answered"

// ErrorDomain is the domain of the errdetails.ErrorInfo a manager attaches
// to its errors.
const ErrorDomain = "quorumca"

// Reasons a manager gives in errdetails.ErrorInfo, for programs to act on
// (never parse messages). authz's refusal reasons come the same way.
const (
	// ReasonNotLeader: this manager is not the leader; the call must be
	// made to the leader, whose API address is in the metadata under
	// MetaLeaderAddr when known.
	ReasonNotLeader = "NOT_LEADER"
	// ReasonNoLeader: no leader is known (no quorum, or an election).
	ReasonNoLeader = "NO_LEADER"
	// ReasonExternalCADown: no external CA answered; retry later.
	ReasonExternalCADown = "EXTERNAL_CA_DOWN"
	// ReasonBadToken: the join token admits nothing.
	ReasonBadToken = "BAD_TOKEN"
	// ReasonDiskFull: a manager's disk is full.
	ReasonDiskFull = "DISK_FULL"
	// ReasonBusy: too many calls of this kind at once; retry.
	ReasonBusy = "BUSY"
)

// Metadata keys of errdetails.ErrorInfo.
const (
	MetaLeaderAddr = "leader_addr"
	MetaLeaderID   = "leader_id"
)

// ErrorReason returns the reason and metadata a manager attached to err
// (a gRPC status error), or "" and nil.
func ErrorReason(err error) (string, map[string]string) {
	s, ok := status.FromError(err)
	if !ok || err == nil {
		return "", nil
	}
	for _, d := range s.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason(), info.GetMetadata()
		}
	}
	return "", nil
}

// HasReason reports whether err carries the given reason.
func HasReason(err error, reason string) bool {
	r, _ := ErrorReason(err)
	return r != "" && r == reason
}

// LeaderRedirect returns the leader's API address when err says the call
// must be made to the leader, and the manager that answered knew where it
// is.
func LeaderRedirect(err error) (string, bool) {
	r, meta := ErrorReason(err)
	if r != ReasonNotLeader || meta[MetaLeaderAddr] == "" {
		return "", false
	}
	return meta[MetaLeaderAddr], true
}

// IsExternalCADown reports whether err says the external CAs did not
// answer.
func IsExternalCADown(err error) bool { return HasReason(err, ReasonExternalCADown) }

// RetryAfter returns the wait a manager asked for in an
// errdetails.RetryInfo (a "busy, retry after" answer, reason BUSY).
func RetryAfter(err error) (time.Duration, bool) {
	s, ok := status.FromError(err)
	if !ok || err == nil {
		return 0, false
	}
	for _, d := range s.Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok && info.GetRetryDelay() != nil {
			if d := info.GetRetryDelay().AsDuration(); d > 0 {
				return d, true
			}
		}
	}
	return 0, false
}
