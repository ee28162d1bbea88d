package ca

import (
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
)

// Role is a node's role, written in its certificate's OU.
type Role string

// The two roles of a cluster's nodes, and the role of administrators'
// client certificates (which name no node and serve nothing).
const (
	RoleManager Role = "swarm-manager"
	RoleWorker  Role = "swarm-worker"
	RoleAdmin   Role = "quorumca-admin"
)

// ParseRole maps a role as people write it ("manager", "worker") or as the
// certificate writes it ("swarm-manager", "swarm-worker") to a Role.
func ParseRole(s string) (Role, error) {
	switch s {
	case "manager", string(RoleManager):
		return RoleManager, nil
	case "worker", string(RoleWorker):
		return RoleWorker, nil
	}
	return "", fmt.Errorf("%w: unknown role %q; use manager or worker", ErrBadIdentity, s)
}

// Short returns "manager" or "worker".
func (r Role) Short() string {
	switch r {
	case RoleManager:
		return "manager"
	case RoleWorker:
		return "worker"
	}
	return string(r)
}

// Identity is who a node certificate names: CN = NodeID, OU = Role,
// O = ClusterID.
type Identity struct {
	NodeID    string
	Role      Role
	ClusterID string
}

// Validate checks that every field is present and well formed.
func (id Identity) Validate() error {
	if !validID(id.NodeID) {
		return fmt.Errorf("%w: node ID %q is not %d base-36 characters", ErrBadIdentity, id.NodeID, IDLength)
	}
	if id.Role != RoleManager && id.Role != RoleWorker && id.Role != RoleAdmin {
		return fmt.Errorf("%w: role %q; want %s or %s", ErrBadIdentity, id.Role, RoleManager, RoleWorker)
	}
	if !validID(id.ClusterID) {
		return fmt.Errorf("%w: cluster ID %q is not %d base-36 characters", ErrBadIdentity, id.ClusterID, IDLength)
	}
	return nil
}

// IdentityOf reads the identity a node certificate names, without checking
// who signed it (see Verify for that).
func IdentityOf(c *x509.Certificate) (Identity, error) {
	if len(c.Subject.OrganizationalUnit) != 1 || len(c.Subject.Organization) != 1 {
		return Identity{}, fmt.Errorf("%w: certificate %s must have exactly one OU and one O", ErrBadIdentity, c.Subject)
	}
	id := Identity{
		NodeID:    c.Subject.CommonName,
		Role:      Role(c.Subject.OrganizationalUnit[0]),
		ClusterID: c.Subject.Organization[0],
	}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// IDLength is the length of node and cluster IDs: 25 base-36 characters,
// enough for 128 random bits.
const IDLength = 25

// NewID draws 128 random bits from rand and writes them as 25 base-36
// characters, zero-padded: a node or cluster ID.
func NewID(rand io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return "", fmt.Errorf("ca: read random ID: %w", err)
	}
	return base36(b[:], IDLength), nil
}

// base36 writes b as a big-endian number in base 36, left-padded with zeros
// to width characters.
func base36(b []byte, width int) string {
	s := new(big.Int).SetBytes(b).Text(36)
	if len(s) >= width {
		return s
	}
	pad := make([]byte, width-len(s), width)
	for i := range pad {
		pad[i] = '0'
	}
	return string(append(pad, s...))
}

func validID(s string) bool { return validBase36(s, IDLength, 128) }
