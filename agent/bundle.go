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

// BundleFingerprint returns the SHA-256 of a bundle's first certificate, hex.
func BundleFingerprint(bundle []byte) string {
	certs, err := ca.ParseCertificates(bundle)
	if err != nil {
		return "?"
	}
	sum := sha256.Sum256(certs[0].Raw)
	return hex.EncodeToString(sum[:])
}
