package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// Version is the command encoding this package writes. Decode refuses
// commands of a later version (and with fields it does not know), and a
// Machine halts at them, so that a manager running an older binary stops
// rather than misreads the log.
const Version = 1

// Command is one change to the state, as it is written to the Raft log:
// exactly one of its operation fields is set. At is the leader's clock when
// it proposed the command; Apply uses it in place of reading a clock.
type Command struct {
	Version int       `json:"v"`
	At      time.Time `json:"at"`

	Init         *Init         `json:"init,omitempty"`
	Issue        *Issue        `json:"issue,omitempty"`
	RotateSecret *RotateSecret `json:"rotate_secret,omitempty"`
	SetRole      *SetRole      `json:"set_role,omitempty"`
	RemoveNode   *RemoveNode   `json:"remove_node,omitempty"`
	Prune        *Prune        `json:"prune,omitempty"`
	UpdateConfig *UpdateConfig `json:"update_config,omitempty"`
	CreateToken  *CreateToken  `json:"create_token,omitempty"`
	RevokeToken  *RevokeToken  `json:"revoke_token,omitempty"`
	SetAddrs     *SetAddrs     `json:"set_addrs,omitempty"`

	StartRotation    *StartRotation    `json:"start_rotation,omitempty"`
	CompleteRotation *CompleteRotation `json:"complete_rotation,omitempty"`
	SetGossipKey     *SetGossipKey     `json:"set_gossip_key,omitempty"`

	IssueAdmin  *IssueAdmin  `json:"issue_admin,omitempty"`
	RevokeAdmin *RevokeAdmin `json:"revoke_admin,omitempty"`

	SetAutolock     *SetAutolock     `json:"set_autolock,omitempty"`
	RotateUnlockKey *RotateUnlockKey `json:"rotate_unlock_key,omitempty"`

	Recover      *Recover      `json:"recover,omitempty"`
	ConfirmNodes *ConfirmNodes `json:"confirm_nodes,omitempty"`

	RevokeCert *RevokeCert `json:"revoke_cert,omitempty"`
	SetCRLs    *SetCRLs    `json:"set_crls,omitempty"`
}

// SetGossipKey gives a cluster made before gossip existed its gossip key.
// It is refused once the cluster has one.
type SetGossipKey struct {
	Key []byte `json:"key"`
}

// StartRotation begins a root CA rotation. CA is the signing material while
// it runs (ca.Rotation made it: the new key, the cross-signed chain, the
// current bundle); Chain and Bundle are the new CA's own chain and bundle,
// which replace them when the rotation completes.
type StartRotation struct {
	CA     ca.Material `json:"ca"`
	Chain  []byte      `json:"chain,omitempty"`
	Bundle []byte      `json:"bundle"`
	// CertExpiry, when set, also changes the validity of the certificates
	// issued from now on.
	CertExpiry time.Duration `json:"cert_expiry,omitempty"`
	// External lists the external CAs of the new CA, when it is one: CA
	// then holds no key.
	External []ExternalCA `json:"external,omitempty"`
}

// CompleteRotation ends the rotation in progress: the bundle becomes the
// new root alone, both join secrets are replaced (the tokens' digest
// changes anyway), and the extra tokens, whose digests named the old root,
// are dropped. Every node must have a certificate of the new CA but those
// in Skipped, which were unreachable for longer than the grace.
type CompleteRotation struct {
	Skipped       []string `json:"skipped,omitempty"`
	WorkerSecret  string   `json:"worker_secret"`
	ManagerSecret string   `json:"manager_secret"`
	// GossipKey, when set, replaces the gossip key: nodes skipped by the
	// rotation (and any node that kept the old key) are left out.
	GossipKey []byte `json:"gossip_key,omitempty"`
}

// SetAddrs records a manager's API and Raft addresses, when a promoted
// worker starts its manager side.
type SetAddrs struct {
	NodeID   string `json:"node_id"`
	Addr     string `json:"addr"`
	RaftAddr string `json:"raft_addr"`
}

// SetRole promotes a worker or demotes a manager. The node renews to get a
// certificate with its new role.
type SetRole struct {
	NodeID string  `json:"node_id"`
	Role   ca.Role `json:"role"`
}

// RemoveNode removes a node: it leaves Nodes and enters Removed until its
// last certificate expires.
type RemoveNode struct {
	NodeID string `json:"node_id"`
	// GossipKey, when set, replaces the gossip key, so that the removed
	// node's gossip is ignored once the others have moved to it.
	GossipKey []byte `json:"gossip_key,omitempty"`
}

// Prune drops the Removed entries whose certificates have all expired by
// the command's time, the extra tokens that can no longer admit, and the
// admin certificates that expired.
type Prune struct{}

// UpdateConfig changes cluster settings; a zero field keeps its value.
type UpdateConfig struct {
	CertExpiry time.Duration `json:"cert_expiry,omitempty"`
	// RotationGrace is how long a rotation waits for an unreachable node.
	RotationGrace time.Duration `json:"rotation_grace,omitempty"`
	// External replaces the list of external CAs of a cluster that an
	// external CA signs for. ForCA is the CA the leader checked them
	// against: Apply refuses the list if the CA changed meanwhile.
	External []ExternalCA  `json:"external,omitempty"`
	ForCA    *ca.TLSStatus `json:"for_ca,omitempty"`
}

// MinRotationGrace is the shortest rotation grace `update` accepts.
const MinRotationGrace = time.Second

// CreateToken adds an extra join token.
type CreateToken struct {
	Token ExtraToken `json:"token"`
}

// RevokeToken removes an extra join token.
type RevokeToken struct {
	ID string `json:"id"`
}

// Init creates the cluster: its ID, CA, join secrets and first manager.
type Init struct {
	ClusterID  string        `json:"cluster_id"`
	CertExpiry time.Duration `json:"cert_expiry"`
	CA         ca.Material   `json:"ca"`
	// External lists the external CAs that sign for CA when it holds no
	// key.
	External      []ExternalCA `json:"external,omitempty"`
	WorkerSecret  string       `json:"worker_secret"`
	ManagerSecret string       `json:"manager_secret"`
	// GossipKey encrypts the cluster's gossip.
	GossipKey []byte `json:"gossip_key"`
	// UnlockKey, when set, turns autolock on from the start.
	UnlockKey string `json:"unlock_key,omitempty"`
	// Manager is the first manager, with the certificate it was issued.
	Manager Node `json:"manager"`
}

// Issue records a certificate the leader signed: a node joining (Join set)
// or an existing node renewing.
type Issue struct {
	Node Node `json:"node"`
	// Join marks a new node. SecretHash is then the SHA-256 of the join
	// secret that admitted it; Apply refuses the join if that secret is no
	// longer the role's secret (it was rotated between check and commit).
	Join       bool     `json:"join,omitempty"`
	SecretHash [32]byte `json:"secret_hash,omitzero"`
	// TokenID names the extra token that admitted the join, if any: Apply
	// checks it is still usable and spends one use.
	TokenID string `json:"token_id,omitempty"`
}

// RotateSecret replaces the join secret of a role, invalidating its old
// token at once.
type RotateSecret struct {
	Role   ca.Role `json:"role"`
	Secret string  `json:"secret"`
}

// GossipKeySize is the size of the cluster's gossip key (AES-256).
const GossipKeySize = 32

// HashSecret returns the SHA-256 of a join secret, as Issue carries it.
func HashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// Bounds of an external CA's auth key, in bytes: 128 bits at least, and no
// more than HMAC-SHA256's block (a longer key is hashed down to 32 bytes).
const (
	MinAuthKey = 16
	MaxAuthKey = 64
)

// CheckExternal checks a list of external CAs as a command carries it.
func CheckExternal(cas []ExternalCA) error {
	for i, e := range cas {
		if e.Protocol != ProtocolCFSSL {
			return fmt.Errorf("%w: external CA %d: protocol %q; the only one known is %q", ErrBadCommand, i+1, e.Protocol, ProtocolCFSSL)
		}
		u, err := url.Parse(e.URL)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" {
			return fmt.Errorf("%w: external CA %d: URL %q; give an https:// URL", ErrBadCommand, i+1, e.URL)
		}
		// The URL shows in logs, errors and status: it must hold no
		// secret.
		if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("%w: external CA %d: the URL must be https://HOST[:PORT][/PATH], with no user, password, query or fragment", ErrBadCommand, i+1)
		}
		if len(e.CACert) > 0 {
			if _, err := ca.ParseCertificates(e.CACert); err != nil {
				return fmt.Errorf("%w: external CA %d: cacert: %w", ErrBadCommand, i+1, err)
			}
		}
		// The length alone: the message must not show the key.
		if n := len(e.AuthKey); n > 0 && (n < MinAuthKey || n > MaxAuthKey) {
			return fmt.Errorf("%w: external CA %d: authkey is %d bytes; give %d to %d bytes (%d to %d hex digits), as CFSSL's auth_keys hold", ErrBadCommand, i+1, n, MinAuthKey, MaxAuthKey, 2*MinAuthKey, 2*MaxAuthKey)
		}
	}
	return nil
}

// Encode serialises a command for the Raft log, stamping Version.
func Encode(c Command) ([]byte, error) {
	c.Version = Version
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("fsm: encode command: %w", err)
	}
	return b, nil
}

// Decode parses a command from the Raft log. A command a newer quorumca
// wrote, of a later version or with a field this package does not know
// (even nested), is refused with a *NewerError, which matches ErrNewer
// and ErrBadCommand: reading it as far as this package understands it
// would apply something else than the managers that wrote it did. Any
// other command that does not decode is refused with ErrBadCommand.
func Decode(b []byte) (Command, error) {
	var c Command
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err := dec.Decode(&c)
	if err == nil {
		if _, end := dec.Token(); end != io.EOF {
			err = errors.New("data after the command")
		}
	}
	if err != nil {
		return Command{}, classify(b, err)
	}
	if c.Version > Version {
		return Command{}, &NewerError{Version: c.Version, Max: Version}
	}
	if c.Version < 1 {
		return Command{}, fmt.Errorf("%w: version %d; this manager reads versions 1 to %d", ErrBadCommand, c.Version, Version)
	}
	n := 0
	for _, set := range []bool{
		c.Init != nil, c.Issue != nil, c.RotateSecret != nil, c.SetRole != nil, c.RemoveNode != nil,
		c.Prune != nil, c.UpdateConfig != nil, c.CreateToken != nil, c.RevokeToken != nil, c.SetAddrs != nil,
		c.StartRotation != nil, c.CompleteRotation != nil, c.SetGossipKey != nil,
		c.IssueAdmin != nil, c.RevokeAdmin != nil, c.SetAutolock != nil, c.RotateUnlockKey != nil,
		c.Recover != nil, c.ConfirmNodes != nil, c.RevokeCert != nil, c.SetCRLs != nil,
	} {
		if set {
			n++
		}
	}
	if n != 1 {
		return Command{}, fmt.Errorf("%w: %d operations in one command; want exactly 1", ErrBadCommand, n)
	}
	return c, nil
}

// classify says why b, which the strict decoder refused with err, does
// not decode: it is of a later version (whatever else it holds), it has a
// field this package does not know (the lenient decoder, which differs
// only in that, takes it), or it is not a command at all.
func classify(b []byte, err error) error {
	var head struct {
		Version int `json:"v"`
	}
	if json.Unmarshal(b, &head) == nil && head.Version > Version {
		return &NewerError{Version: head.Version, Max: Version}
	}
	var c Command
	lenient := json.Unmarshal(b, &c)
	if lenient != nil {
		return fmt.Errorf("%w: %v", ErrBadCommand, lenient)
	}
	return &NewerError{Version: c.Version, Max: Version, Unknown: err.Error()}
}
