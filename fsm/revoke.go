package fsm

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// Revocation is a node certificate revoked before it expired: every valid
// certificate of a removed node, and those `quorumca cert revoke` named.
// Every manager refuses it (but the one a live node holds now, for the
// renewal it is asked for); the CRLs list it until it expires.
type Revocation struct {
	NodeID   string    `json:"node_id"`
	NotAfter time.Time `json:"not_after"`
	At       time.Time `json:"at"`
	// Reason is the RFC 5280 reason code (ca.Reason...).
	Reason int `json:"reason,omitempty"`
}

// RevokeCert revokes a certificate, by serial: a node's current or earlier
// one, or an admin certificate. A node whose current certificate is
// revoked renews with a fresh key at its next heartbeat.
type RevokeCert struct {
	// Serial is the certificate's serial in lower-case hex.
	Serial string `json:"serial"`
	Reason int    `json:"reason,omitempty"`
}

// CRLSet is what the cluster publishes of its revocations: one CRL per CA
// key in use (the current one, and during a rotation the previous root's
// too), signed by the leader, all with the same number.
type CRLSet struct {
	// Number grows with every set.
	Number     uint64    `json:"number"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update"`
	// Covers names what the set was signed over (the revocations and the
	// CA certificates): a change calls for a new set.
	Covers string `json:"covers"`
	// PEM holds the CRLs, as crl.pem holds them.
	PEM []byte `json:"pem"`
}

// SetCRLs publishes a new set of CRLs, whose number must be above the
// current one's.
type SetCRLs struct {
	CRLs CRLSet `json:"crls"`
}

// IsRevoked reports whether the node certificate serial was revoked.
func (s *State) IsRevoked(serial string) bool {
	_, ok := s.Revoked[serial]
	return ok
}

// RevokedAt returns every certificate revoked and not expired at t, node
// and admin certificates alike, by serial: what the CRLs list.
func (s *State) RevokedAt(t time.Time) []ca.Revoked {
	var out []ca.Revoked
	for serial, r := range s.Revoked {
		if t.Before(r.NotAfter) {
			out = append(out, ca.Revoked{Serial: serial, At: r.At, Reason: r.Reason})
		}
	}
	for serial, a := range s.Admins {
		if a.Revoked() && t.Before(a.NotAfter) {
			out = append(out, ca.Revoked{Serial: serial, At: a.RevokedAt, Reason: a.Reason})
		}
	}
	slices.SortFunc(out, func(a, b ca.Revoked) int { return strings.Compare(a.Serial, b.Serial) })
	return out
}

func (s *State) cloneRevoked() {
	s.Revoked = maps.Clone(s.Revoked)
	if s.Revoked == nil {
		s.Revoked = map[string]Revocation{}
	}
}

// revokeAll revokes every certificate of n still valid at at. The caller
// has cloned Revoked.
func (s *State) revokeAll(n Node, at time.Time, reason int) {
	for _, c := range append(slices.Clone(n.Prev), n.Cert) {
		if at.Before(c.NotAfter) && c.Serial != "" {
			s.Revoked[c.Serial] = Revocation{NodeID: n.ID, NotAfter: c.NotAfter, At: at, Reason: reason}
		}
	}
}

func applyRevokeCert(s *State, at time.Time, in *RevokeCert) (*State, error) {
	serial := in.Serial
	if serial == "" || strings.ToLower(serial) != serial {
		return nil, fmt.Errorf("%w: revoke a certificate by its serial in lower-case hex", ErrBadCommand)
	}
	if ca.ReasonName(in.Reason) == fmt.Sprint(in.Reason) {
		return nil, fmt.Errorf("%w: revocation reason %d", ErrBadCommand, in.Reason)
	}
	if s.IsRevoked(serial) {
		return nil, fmt.Errorf("%w: certificate %s is revoked already", ErrBadCommand, serial)
	}
	if a, ok := s.Admins[serial]; ok {
		if a.Revoked() {
			return nil, fmt.Errorf("%w: admin certificate %s is revoked already", ErrBadCommand, serial)
		}
		next := s.clone()
		next.cloneAdmins()
		a.RevokedAt, a.Reason = at, in.Reason
		next.Admins[serial] = a
		return next, nil
	}
	for _, n := range s.Nodes.All() {
		for _, c := range append(slices.Clone(n.Prev), n.Cert) {
			if c.Serial != serial {
				continue
			}
			if !at.Before(c.NotAfter) {
				return nil, fmt.Errorf("%w: certificate %s of node %s expired at %s: nothing to revoke", ErrUnknownCert, serial, n.ID, c.NotAfter.Format(time.RFC3339))
			}
			next := s.clone()
			next.cloneRevoked()
			next.Revoked[serial] = Revocation{NodeID: n.ID, NotAfter: c.NotAfter, At: at, Reason: in.Reason}
			return next, nil
		}
	}
	return nil, fmt.Errorf("%w: no valid node or admin certificate has serial %s", ErrUnknownCert, serial)
}

func applySetCRLs(s *State, in *SetCRLs) (*State, error) {
	c := in.CRLs
	switch {
	case s.CRLs != nil && c.Number <= s.CRLs.Number:
		return nil, fmt.Errorf("%w: CRL number %d is not above the current %d", ErrStale, c.Number, s.CRLs.Number)
	case len(c.PEM) == 0 || !c.NextUpdate.After(c.ThisUpdate) || c.Covers == "":
		return nil, fmt.Errorf("%w: a CRL set needs its CRLs, a validity and what it covers", ErrBadCommand)
	}
	next := s.clone()
	next.CRLs = &c
	return next, nil
}
