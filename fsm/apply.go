package fsm

import (
	"fmt"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// Result is what applying one command returns.
type Result struct {
	// State is the state after the command (the unchanged state, with its
	// Index advanced, when Err is set).
	State *State
	// Err says why the command was refused, wrapping an error of this
	// package.
	Err error
}

// Apply returns the state after applying cmd at Raft index to s. It never
// changes s; a refused command returns s with only its Index advanced, and
// the reason. It is deterministic: the same state and command always give
// the same result.
func Apply(s *State, index uint64, cmd Command) (*State, error) {
	if s == nil {
		s = &State{}
	}
	next, err := apply(s, cmd)
	if err != nil {
		refused := *s
		refused.Index = index
		return &refused, err
	}
	next.Index = index
	return next, nil
}

func apply(s *State, cmd Command) (*State, error) {
	if cmd.Init != nil {
		return applyInit(s, cmd.At, cmd.Init)
	}
	if !s.Initialized() {
		return nil, ErrNotInitialized
	}
	switch {
	case cmd.Issue != nil:
		return applyIssue(s, cmd.At, cmd.Issue)
	case cmd.RotateSecret != nil:
		return applyRotateSecret(s, cmd.RotateSecret)
	}
	return nil, fmt.Errorf("%w: no operation", ErrBadCommand)
}

func applyInit(s *State, at time.Time, in *Init) (*State, error) {
	if s.Initialized() {
		return nil, fmt.Errorf("%w: cluster %s", ErrInitialized, s.ClusterID)
	}
	switch {
	case in.ClusterID == "":
		return nil, fmt.Errorf("%w: init without a cluster ID", ErrBadCommand)
	case in.CertExpiry < ca.MinCertExpiry:
		return nil, fmt.Errorf("%w: cert expiry %s is under %s", ErrBadCommand, in.CertExpiry, ca.MinCertExpiry)
	case len(in.CA.Bundle) == 0 || len(in.CA.Cert) == 0:
		return nil, fmt.Errorf("%w: init without a CA", ErrBadCommand)
	case in.WorkerSecret == "" || in.ManagerSecret == "" || in.WorkerSecret == in.ManagerSecret:
		return nil, fmt.Errorf("%w: init needs two distinct join secrets", ErrBadCommand)
	case in.Manager.ID == "" || in.Manager.Role != ca.RoleManager:
		return nil, fmt.Errorf("%w: init needs its first manager", ErrBadCommand)
	}
	certs, err := ca.ParseCertificates(in.CA.Cert)
	if err != nil {
		return nil, fmt.Errorf("%w: init CA: %w", ErrBadCommand, err)
	}
	m := in.Manager
	m.JoinedAt = at
	return &State{
		ClusterID:     in.ClusterID,
		CertExpiry:    in.CertExpiry,
		CA:            in.CA,
		CAStatus:      ca.StatusOf(certs[0]),
		WorkerSecret:  in.WorkerSecret,
		ManagerSecret: in.ManagerSecret,
		Nodes:         map[string]Node{m.ID: m},
	}, nil
}

func applyIssue(s *State, at time.Time, in *Issue) (*State, error) {
	n := in.Node
	if n.ID == "" || (n.Role != ca.RoleManager && n.Role != ca.RoleWorker) || n.Cert.Serial == "" {
		return nil, fmt.Errorf("%w: issue needs a node ID, a role and a serial", ErrBadCommand)
	}
	if !n.Cert.Issuer.Equal(s.CAStatus) {
		return nil, fmt.Errorf("%w: certificate for %s was signed by %s, not the current CA %s", ErrStale, n.ID, n.Cert.Issuer, s.CAStatus)
	}
	old, exists := s.Nodes[n.ID]
	if in.Join {
		if exists {
			return nil, fmt.Errorf("%w: %s", ErrNodeExists, n.ID)
		}
		if HashSecret(s.Secret(n.Role)) != in.SecretHash {
			return nil, fmt.Errorf("%w: the %s join token was rotated while the join was in flight; join again with the new token", ErrStale, n.Role.Short())
		}
		n.JoinedAt = at
	} else {
		if !exists {
			return nil, fmt.Errorf("%w: %s", ErrUnknownNode, n.ID)
		}
		if n.Role != old.Role {
			return nil, fmt.Errorf("%w: node %s is a %s now, not a %s", ErrStale, n.ID, old.Role.Short(), n.Role.Short())
		}
		n.JoinedAt = old.JoinedAt
		if n.Addr == "" {
			n.Addr = old.Addr
		}
		if n.RaftAddr == "" {
			n.RaftAddr = old.RaftAddr
		}
	}
	n.Cert.IssuedAt = at
	next := s.clone()
	next.Nodes[n.ID] = n
	return next, nil
}

func applyRotateSecret(s *State, in *RotateSecret) (*State, error) {
	if in.Secret == "" {
		return nil, fmt.Errorf("%w: empty secret", ErrBadCommand)
	}
	next := s.clone()
	switch in.Role {
	case ca.RoleManager:
		if in.Secret == s.WorkerSecret {
			return nil, fmt.Errorf("%w: manager and worker secrets must differ", ErrBadCommand)
		}
		next.ManagerSecret = in.Secret
	case ca.RoleWorker:
		if in.Secret == s.ManagerSecret {
			return nil, fmt.Errorf("%w: manager and worker secrets must differ", ErrBadCommand)
		}
		next.WorkerSecret = in.Secret
	default:
		return nil, fmt.Errorf("%w: unknown role %q", ErrBadCommand, in.Role)
	}
	return next, nil
}
