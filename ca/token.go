package ca

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"math/big"
	"strings"
)

// Join token layout: SWMTKN-1-<digest>-<secret>.
const (
	tokenPrefix  = "SWMTKN"
	tokenVersion = "1"
	// DigestLength is the width of a token's digest: SHA-256 in base 36.
	DigestLength = 50
	// SecretLength is the width of a token's secret: 128 bits in base 36.
	SecretLength = 25
)

// Token is a parsed join token.
type Token struct {
	// Digest is the SHA-256 of the PEM root bundle the token pins.
	Digest [sha256.Size]byte
	// Secret admits the bearer; 25 base-36 characters.
	Secret string
}

// String writes the token in its SWMTKN-1 form.
func (t Token) String() string {
	return tokenPrefix + "-" + tokenVersion + "-" + base36(t.Digest[:], DigestLength) + "-" + t.Secret
}

// NewSecret draws a 128-bit token secret from rand, as 25 base-36
// characters.
func NewSecret(rand io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return "", fmt.Errorf("ca: read random secret: %w", err)
	}
	return base36(b[:], SecretLength), nil
}

// NewToken makes a token that pins bundlePEM and carries secret.
func NewToken(bundlePEM []byte, secret string) (Token, error) {
	if !validBase36(secret, SecretLength, 128) {
		return Token{}, fmt.Errorf("%w: secret is not %d base-36 characters", ErrMalformedToken, SecretLength)
	}
	return Token{Digest: sha256.Sum256(bundlePEM), Secret: secret}, nil
}

// ParseToken parses a SWMTKN-1 join token. Its error names the part that
// is malformed and never repeats the secret.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	parts := strings.Split(s, "-")
	if len(parts) != 4 {
		return Token{}, fmt.Errorf("%w: want 4 parts SWMTKN-1-<digest>-<secret> separated by '-', got %d", ErrMalformedToken, len(parts))
	}
	if parts[0] != tokenPrefix {
		return Token{}, fmt.Errorf("%w: prefix is not %s", ErrMalformedToken, tokenPrefix)
	}
	if parts[1] != tokenVersion {
		return Token{}, fmt.Errorf("%w: version %q is not supported; want %s", ErrMalformedToken, truncate(parts[1], 8), tokenVersion)
	}
	if !validBase36(parts[2], DigestLength, 256) {
		return Token{}, fmt.Errorf("%w: the root digest is not %d base-36 characters", ErrMalformedToken, DigestLength)
	}
	if !validBase36(parts[3], SecretLength, 128) {
		return Token{}, fmt.Errorf("%w: the secret is not %d base-36 characters", ErrMalformedToken, SecretLength)
	}
	var t Token
	n, _ := new(big.Int).SetString(parts[2], 36)
	n.FillBytes(t.Digest[:])
	t.Secret = parts[3]
	return t, nil
}

// VerifyBundle checks that bundlePEM, whole, hashes to the token's digest.
// A bundle with an extra root appended does not.
func (t Token) VerifyBundle(bundlePEM []byte) error {
	sum := sha256.Sum256(bundlePEM)
	if subtle.ConstantTimeCompare(sum[:], t.Digest[:]) != 1 {
		return fmt.Errorf("%w: the manager served a bundle with SHA-256 %x; check the token and the manager address", ErrDigestMismatch, sum)
	}
	return nil
}

// SecretEqual compares two token secrets in constant time.
func SecretEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func validBase36(s string, width, maxBits int) bool {
	if len(s) != width {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	n, ok := new(big.Int).SetString(s, 36)
	return ok && n.BitLen() <= maxBits
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// TokenExporterLabel is the TLS exporter label (RFC 5705, RFC 8446 7.5) of
// the keying material a join token's proof is bound to.
const TokenExporterLabel = "EXPERIMENTAL-quorumca-join-token"

// TokenExporterLength is how many bytes of keying material the proof
// covers.
const TokenExporterLength = 32

// tokenProofContext separates token proofs from any other HMAC keyed the
// same way.
const tokenProofContext = "quorumca join token proof v1\x00"

// TokenProof proves knowledge of a join token's secret without sending
// it: HMAC-SHA256 keyed by the SHA-256 of the secret (secretHash), over
// the keying material ekm exported from the TLS connection the join is
// made on, and the SHA-256 of the CSR it sends. A server that is not a
// manager of the cluster learns nothing it could replay: the proof holds
// for that one connection and CSR only.
func TokenProof(secretHash [sha256.Size]byte, ekm, csr []byte) []byte {
	h := hmac.New(sha256.New, secretHash[:])
	csrSum := sha256.Sum256(csr)
	h.Write([]byte(tokenProofContext))
	h.Write(ekm)
	h.Write(csrSum[:])
	return h.Sum(nil)
}

// CheckTokenProof reports, in constant time, whether proof is TokenProof
// of the secret whose SHA-256 is secretHash, for ekm and csr.
func CheckTokenProof(secretHash [sha256.Size]byte, ekm, csr, proof []byte) bool {
	return hmac.Equal(TokenProof(secretHash, ekm, csr), proof)
}

// DigestString writes a token's root digest as tokens do (base 36).
func (t Token) DigestString() string { return base36(t.Digest[:], DigestLength) }
