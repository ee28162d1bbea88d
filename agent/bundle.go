package agent

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/quorumca/quorumca/ca"
)

// SocketFile is the control socket's name under the data directory.
const SocketFile = "quorumca.sock"

// BundleDigest names a trust bundle in heartbeats: the SHA-256 of its
// PEM, hex.
func BundleDigest(bundle []byte) string {
	sum := sha256.Sum256(bundle)
	return hex.EncodeToString(sum[:])
}

// BundleFingerprint returns the SHA-256 of a bundle's first certificate,
// hex (ca.BundleFingerprint).
func BundleFingerprint(bundle []byte) string { return ca.BundleFingerprint(bundle) }
