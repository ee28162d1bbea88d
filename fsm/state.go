// Package fsm is quorumca's replicated state and the commands that change
// it. It is pure: Apply is a deterministic function of the state and the
// command (the leader stamps the time into each command), and nothing here
// touches the network, the disk, the clock or global randomness.
//
// The state is an immutable value: Apply builds a new State and never
// mutates the old one, so a snapshot is just the pointer.
package fsm

import (
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// State is the cluster's replicated state. Treat it as immutable: it is
// shared between Apply, snapshots and readers.
type State struct {
	// Index is the Raft index of the last command applied.
	Index uint64 `json:"index"`
	// ClusterID names the cluster; empty until Init is applied.
	ClusterID string `json:"cluster_id"`
	// CertExpiry is the validity of node certificates issued from now on.
	CertExpiry time.Duration `json:"cert_expiry"`
	// CA is the signing material: certificate, key, chain and trust bundle.
	CA ca.Material `json:"ca"`
	// External lists the external CAs that sign for CA when the cluster
	// holds no key (CA.Key is empty), tried in order. Empty when the
	// cluster signs itself.
	External []ExternalCA `json:"external,omitempty"`
	// CAStatus is the TLS status of certificates CA signs; Apply refuses
	// to record a certificate signed under any other.
	CAStatus ca.TLSStatus `json:"ca_status"`
	// WorkerSecret and ManagerSecret admit joining nodes; the join tokens
	// are these secrets with the digest of CA.Bundle.
	WorkerSecret  string `json:"worker_secret"`
	ManagerSecret string `json:"manager_secret"`
	// Nodes holds every member of the cluster by node ID.
	Nodes NodeMap `json:"nodes,omitzero"`
	// Removed holds the nodes removed from the cluster whose certificates
	// have not all expired yet, by node ID, with the time the last of them
	// expires: every manager refuses their certificates until then. Prune
	// drops entries that have expired, so the list never outgrows the
	// removals of one cert-expiry period.
	Removed map[string]time.Time `json:"removed,omitempty"`
	// Tokens holds the extra join tokens (join-token create), by ID.
	Tokens map[string]ExtraToken `json:"tokens,omitempty"`
	// Admins holds the admin certificates issued and not yet expired, by
	// serial; Prune drops them once expired.
	Admins map[string]AdminCert `json:"admins,omitempty"`
	// GossipKey encrypts the cluster's gossip; nodes fetch it over mutual
	// TLS once they hold a certificate. It is replaced when a node is
	// removed and when a root rotation completes, so that removed nodes
	// are left out of the gossip.
	GossipKey []byte `json:"gossip_key"`
	// Autolock says whether every manager keeps its keys sealed under
	// UnlockKey (a manager restarts locked until it is given the key).
	Autolock  bool   `json:"autolock,omitempty"`
	UnlockKey string `json:"unlock_key,omitempty"`
	// RotationGrace is how long a node may be unreachable in gossip before
	// a root rotation stops waiting for it; zero means
	// DefaultRotationGrace.
	RotationGrace time.Duration `json:"rotation_grace,omitempty"`
	// Rotation is the root CA rotation in progress, nil when none is.
	Rotation *Rotation `json:"rotation,omitempty"`
	// LastRotation records the last rotation that completed.
	LastRotation *RotationRecord `json:"last_rotation,omitempty"`
	// Recovery records the last time the cluster was brought back from a
	// lost majority: force-new-cluster, or a restore from a backup.
	Recovery *Recovery `json:"recovery,omitempty"`
	// Revoked holds the node certificates revoked before they expire, by
	// serial; Prune drops them once expired. CRLs is what the cluster
	// publishes of them (and of revoked admin certificates); nil until the
	// leader signs the first set, and while the cluster holds no key (an
	// external CA signs).
	Revoked map[string]Revocation `json:"revoked,omitempty"`
	CRLs    *CRLSet               `json:"crls,omitempty"`
}

// ExternalCA is one external CA endpoint: a CFSSL server whose sign API
// (POST URL/api/v1/cfssl/sign) signs node certificates with the key of
// State.CA.Cert.
type ExternalCA struct {
	// Protocol is the API the CA speaks; only ProtocolCFSSL is known.
	Protocol string `json:"protocol"`
	// URL is the https:// base URL of the CA.
	URL string `json:"url"`
	// CACert is the PEM bundle that verifies the CA's HTTPS certificate;
	// empty for the system's roots.
	CACert []byte `json:"ca_cert,omitempty"`
	// AuthKey is the key of the CA's CFSSL "standard" auth_keys entry
	// (raw, not hex): when set, sign requests go to
	// URL/api/v1/cfssl/authsign with an HMAC-SHA256 token. A secret, like
	// CA.Key: String leaves it out, and so must every answer and log.
	AuthKey []byte `json:"auth_key,omitempty"`
}

// String describes e for logs and errors, without its auth key.
func (e ExternalCA) String() string {
	s := e.Protocol + " " + e.URL
	if len(e.AuthKey) > 0 {
		s += " (authkey: set)"
	}
	return s
}

// ProtocolCFSSL is the external CA protocol of CloudFlare's CFSSL.
const ProtocolCFSSL = "cfssl"

// Signs reports whether the cluster holds the key it signs with, rather
// than an external CA.
func (s *State) Signs() bool { return s != nil && len(s.CA.Key) > 0 }

// DefaultRotationGrace is how long a rotation waits for an unreachable
// node unless `update --rotation-grace` says otherwise.
const DefaultRotationGrace = 10 * time.Minute

// Grace returns the rotation grace in force.
func (s *State) Grace() time.Duration {
	if s.RotationGrace > 0 {
		return s.RotationGrace
	}
	return DefaultRotationGrace
}

// Rotation is a root CA rotation in progress (DESIGN.md flow 5). While it
// runs, State.CA signs with the new key and carries the new root
// cross-signed by the old key in its chain, and State.CA.Bundle is still
// the old bundle, so that new certificates verify under the old root and
// the new one. The old key stays (FromCA) only to sign the old root's CRL,
// and goes when the rotation completes.
type Rotation struct {
	StartedAt time.Time `json:"started_at"`
	// From is the TLS status certificates had before the rotation.
	From ca.TLSStatus `json:"from"`
	// Chain and Bundle are what State.CA's chain and bundle become when
	// the rotation completes: the new CA's own chain, and its root alone.
	Chain  []byte `json:"chain,omitempty"`
	Bundle []byte `json:"bundle"`
	// FromCA is the CA material before the rotation, key included when
	// the cluster held it: its CRL is still needed by consumers that check
	// the whole chain (the cross-signed certificate is its), until the
	// rotation completes and it is dropped.
	FromCA ca.Material `json:"from_ca,omitzero"`
}

// RotationRecord describes a completed rotation.
type RotationRecord struct {
	StartedAt   time.Time `json:"started_at"`
	CompletedAt time.Time `json:"completed_at"`
	// Skipped names the nodes that were unreachable for longer than the
	// grace and were left on the old root: they must rejoin.
	Skipped []string `json:"skipped,omitempty"`
}

// WasSkipped reports whether the last rotation left node id behind.
func (s *State) WasSkipped(id string) bool {
	return s.LastRotation != nil && slices.Contains(s.LastRotation.Skipped, id)
}

// ExtraToken is a join token beside the two standing ones, that expires or
// runs out. Only the SHA-256 of its secret is kept.
type ExtraToken struct {
	ID         string   `json:"id"`
	Role       ca.Role  `json:"role"`
	SecretHash [32]byte `json:"secret_hash"`
	// ExpiresAt is when it stops admitting; zero for never.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// UsesLeft is how many more joins it admits; -1 for unlimited.
	UsesLeft  int       `json:"uses_left"`
	CreatedAt time.Time `json:"created_at"`
}

// Usable reports whether the token still admits a node at t.
func (t ExtraToken) Usable(at time.Time) bool {
	return t.UsesLeft != 0 && (t.ExpiresAt.IsZero() || at.Before(t.ExpiresAt))
}

// IsRemoved reports whether nodeID was removed and its certificates must
// be refused.
func (s *State) IsRemoved(nodeID string) bool {
	_, ok := s.Removed[nodeID]
	return ok
}

// Node is one member of the cluster as the managers know it.
type Node struct {
	ID   string  `json:"id"`
	Role ca.Role `json:"role"`
	// Addr is the node's advertised API address (managers) or the address
	// it joined from (workers).
	Addr string `json:"addr,omitempty"`
	// RaftAddr is a manager's Raft address; empty for workers.
	RaftAddr string `json:"raft_addr,omitempty"`
	// Hostname is the host name the node gave when it joined (see
	// ValidHostname), for people; empty if it gave none.
	Hostname string `json:"hostname,omitempty"`
	// Cert describes the node's current certificate; Prev the ones it had
	// before, while they are valid (at most MaxPrevCerts, latest last).
	Cert CertInfo   `json:"cert"`
	Prev []CertInfo `json:"prev_certs,omitempty"`
	// CertsValidUntil is the latest NotAfter of any certificate issued to
	// the node: how long its removal must be remembered.
	CertsValidUntil time.Time `json:"certs_valid_until"`
	// JoinedAt is when the node joined, by the leader's clock.
	JoinedAt time.Time `json:"joined_at"`
	// Unconfirmed marks a node whose certificate an entry recorded that a
	// recovery (force-new-cluster) committed without knowing whether it
	// had been committed before: the node may never have received it. It
	// is cleared when the node shows that certificate, or renews.
	Unconfirmed bool `json:"unconfirmed,omitempty"`
}

// CertInfo describes a certificate the cluster issued.
type CertInfo struct {
	// Serial is the certificate's serial number in hex.
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Issuer is the TLS status the certificate has: who signed it.
	Issuer ca.TLSStatus `json:"issuer"`
	// IssuedAt is when it was issued, by the leader's clock.
	IssuedAt time.Time `json:"issued_at"`
	// Index is the Raft index of the entry that recorded it (zero for
	// certificates recorded before this field was).
	Index uint64 `json:"index,omitempty"`
}

// MaxPrevCerts bounds how many earlier certificates a node's record keeps.
const MaxPrevCerts = 8

// Knows reports whether serial (hex) is one of the node's valid
// certificates: its current one, or one it had before.
func (n Node) Knows(serial string) bool {
	if n.Cert.Serial == serial {
		return true
	}
	return slices.ContainsFunc(n.Prev, func(c CertInfo) bool { return c.Serial == serial })
}

// Initialized reports whether Init has been applied.
func (s *State) Initialized() bool { return s != nil && s.ClusterID != "" }

// Node returns the node with the given ID.
func (s *State) Node(id string) (Node, bool) {
	return s.Nodes.Get(id)
}

// SortedNodes returns the nodes ordered by role (managers first), then ID.
func (s *State) SortedNodes() []Node {
	out := make([]Node, 0, s.Nodes.Len())
	for _, n := range s.Nodes.All() {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Role != out[j].Role {
			return out[i].Role == ca.RoleManager
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Managers returns the manager nodes, ordered by ID. It looks at them
// only: it is on the path of every join and renewal.
func (s *State) Managers() []Node {
	var out []Node
	for n := range s.Nodes.Managers() {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Secret returns the join secret of role.
func (s *State) Secret(role ca.Role) string {
	if role == ca.RoleManager {
		return s.ManagerSecret
	}
	return s.WorkerSecret
}

// Token returns the join token of role: its secret with the digest of the
// trust bundle.
func (s *State) Token(role ca.Role) (ca.Token, error) {
	return ca.NewToken(s.CA.Bundle, s.Secret(role))
}

// clone returns a shallow copy of s for Apply to change. Its maps are
// shared: Nodes is changed through With and Without, which copy, and
// Removed, Tokens and Admins must be copied with cloneRemoved, cloneTokens
// and cloneAdmins before they change.
func (s *State) clone() *State {
	c := *s
	return &c
}

func (s *State) cloneRemoved() {
	r := make(map[string]time.Time, len(s.Removed)+1)
	for k, v := range s.Removed {
		r[k] = v
	}
	s.Removed = r
}

func (s *State) cloneTokens() {
	t := make(map[string]ExtraToken, len(s.Tokens)+1)
	for k, v := range s.Tokens {
		t[k] = v
	}
	s.Tokens = t
}

// ValidHostname reports whether h may be recorded as a node's host name:
// at most 253 characters of letters, digits, '.', '-' and '_' (nothing a
// terminal would take for a command).
func ValidHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
