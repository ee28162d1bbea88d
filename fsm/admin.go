package fsm

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// AdminCert records an admin client certificate the cluster issued
// (`quorumca admin-cert create`). Managers accept an admin certificate only
// while the state records it unrevoked; it leaves the state when it
// expires.
type AdminCert struct {
	// Serial is the certificate's serial number in hex, lower case.
	Serial string `json:"serial"`
	// ID is the certificate's common name.
	ID string `json:"id"`
	// IssuedBy says who asked for it (the control socket's user, and the
	// manager it reached).
	IssuedBy string    `json:"issued_by"`
	IssuedAt time.Time `json:"issued_at"`
	NotAfter time.Time `json:"not_after"`
	// RevokedAt is when `admin-cert rm` (or `cert revoke`) revoked it;
	// zero while it is good. Reason is the RFC 5280 reason code.
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	Reason    int       `json:"reason,omitempty"`
}

// Revoked reports whether the certificate was revoked.
func (a AdminCert) Revoked() bool { return !a.RevokedAt.IsZero() }

// IssueAdmin records an admin certificate the leader signed.
type IssueAdmin struct {
	Cert AdminCert `json:"cert"`
}

// RevokeAdmin revokes admin certificates: those named by Serials, or,
// with All, every one not revoked yet.
type RevokeAdmin struct {
	Serials []string `json:"serials,omitempty"`
	All     bool     `json:"all,omitempty"`
}

// Admin returns the record of the admin certificate with the given serial.
func (s *State) Admin(serial string) (AdminCert, bool) {
	a, ok := s.Admins[serial]
	return a, ok
}

// SortedAdmins returns the admin certificates, oldest first.
func (s *State) SortedAdmins() []AdminCert {
	out := make([]AdminCert, 0, len(s.Admins))
	for _, a := range s.Admins {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b AdminCert) int {
		if c := a.IssuedAt.Compare(b.IssuedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Serial, b.Serial)
	})
	return out
}

func (s *State) cloneAdmins() {
	m := make(map[string]AdminCert, len(s.Admins)+1)
	for k, v := range s.Admins {
		m[k] = v
	}
	s.Admins = m
}

func applyIssueAdmin(s *State, at time.Time, in *IssueAdmin) (*State, error) {
	a := in.Cert
	switch {
	case a.Serial == "" || strings.ToLower(a.Serial) != a.Serial:
		return nil, fmt.Errorf("%w: admin certificate without a lower-case hex serial", ErrBadCommand)
	case a.ID == "":
		return nil, fmt.Errorf("%w: admin certificate without an ID", ErrBadCommand)
	case !a.NotAfter.After(at):
		return nil, fmt.Errorf("%w: admin certificate %s expired at %s", ErrBadCommand, a.Serial, a.NotAfter.Format(time.RFC3339))
	}
	if _, ok := s.Admins[a.Serial]; ok {
		return nil, fmt.Errorf("%w: admin certificate serial %s already recorded", ErrBadCommand, a.Serial)
	}
	a.IssuedAt, a.RevokedAt = at, time.Time{}
	next := s.clone()
	next.cloneAdmins()
	next.Admins[a.Serial] = a
	return next, nil
}

func applyRevokeAdmin(s *State, at time.Time, in *RevokeAdmin) (*State, error) {
	if in.All == (len(in.Serials) > 0) {
		return nil, fmt.Errorf("%w: revoke either named admin certificates or all of them", ErrBadCommand)
	}
	for _, serial := range in.Serials {
		if _, ok := s.Admins[serial]; !ok {
			return nil, fmt.Errorf("%w: %s", ErrUnknownAdmin, serial)
		}
	}
	next := s.clone()
	next.cloneAdmins()
	for serial, a := range next.Admins {
		if a.Revoked() || !(in.All || slices.Contains(in.Serials, serial)) {
			continue
		}
		a.RevokedAt = at
		next.Admins[serial] = a
	}
	return next, nil
}
