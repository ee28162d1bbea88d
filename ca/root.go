package ca

import (
	"crypto"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"io"
	"math/big"
	"time"
)

// Defaults and limits for CA certificates.
const (
	// RootCN is the common name of a generated root.
	RootCN = "swarm-ca"
	// DefaultRootValidity is how long a generated root is valid: 20 years.
	DefaultRootValidity = 20 * 365 * 24 * time.Hour
	// MinCAValidity is the least validity an imported CA certificate must
	// have left.
	MinCAValidity = 365 * 24 * time.Hour
	// rootBackdate allows for clocks a little behind the one that made a root.
	rootBackdate = 5 * time.Minute
)

// Material is a CA in the serialisable form the cluster state keeps.
type Material struct {
	// Cert is the PEM certificate whose key signs node certificates: the
	// root itself, or an intermediate that chains to it.
	Cert []byte
	// Key is the PEM (PKCS#8) private key of Cert. It is empty when an
	// external CA holds the key and signs (see External).
	Key []byte
	// Chain holds the PEM certificates a node certificate carries after
	// itself, issuer first, up to but not including a root of Bundle. It is
	// empty when Cert is a self-signed root of Bundle.
	Chain []byte
	// Bundle is the PEM trust bundle: the self-signed root(s) nodes trust.
	Bundle []byte
}

// RootOption adjusts GenerateRoot.
type RootOption func(*rootOptions)

type rootOptions struct {
	validity time.Duration
}

// WithRootValidity sets how long a generated root is valid (default
// DefaultRootValidity).
func WithRootValidity(d time.Duration) RootOption {
	return func(o *rootOptions) { o.validity = d }
}

// GenerateRoot makes a self-signed ECDSA P-256 root: CN swarm-ca, O =
// clusterID, CA:true, key usage CertSign|CRLSign, valid from a few minutes
// before now.
func GenerateRoot(rand io.Reader, now time.Time, clusterID string, opts ...RootOption) (Material, error) {
	o := rootOptions{validity: DefaultRootValidity}
	for _, opt := range opts {
		opt(&o)
	}
	if clusterID == "" {
		return Material{}, fmt.Errorf("%w: empty cluster ID", ErrBadIdentity)
	}
	if o.validity < MinCAValidity {
		return Material{}, fmt.Errorf("%w: root validity %s; use at least %s", ErrExpiryTooShort, o.validity, MinCAValidity)
	}
	key, err := GenerateKey(rand)
	if err != nil {
		return Material{}, fmt.Errorf("ca: generate root key: %w", err)
	}
	serial, err := randomSerial(rand)
	if err != nil {
		return Material{}, err
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return Material{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkixName(RootCN, "", clusterID),
		NotBefore:             now.Add(-rootBackdate).UTC(),
		NotAfter:              now.Add(o.validity).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski,
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
	}
	der, err := x509.CreateCertificate(rand, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return Material{}, fmt.Errorf("ca: sign root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Material{}, fmt.Errorf("ca: parse new root: %w", err)
	}
	keyPEM, err := MarshalKey(key)
	if err != nil {
		return Material{}, err
	}
	certPEM := EncodeCertificates(cert)
	return Material{Cert: certPEM, Key: keyPEM, Bundle: certPEM}, nil
}

// Import validates a CA given as files (--ca-cert, --ca-key) and returns its
// Material. certPEM is either a self-signed root, or a CA certificate
// followed by its chain up to and including a self-signed root; keyPEM is the
// key of the first certificate. The bundle becomes that root, and node
// certificates carry the certificates between.
//
// Import refuses, each with its own error: malformed PEM (ErrMalformedPEM),
// a certificate that is not a CA (ErrNotCA), a chain that does not reach a
// self-signed root (ErrChainIncomplete), a certificate expired or with less
// than MinCAValidity left at now (ErrExpiring), a key that does not match
// (ErrKeyMismatch), and keys other than ECDSA P-256/P-384 or RSA >= 2048
// bits (ErrUnsupportedKey, ErrWeakKey).
func Import(certPEM, keyPEM []byte, now time.Time) (Material, error) {
	certs, err := importCerts(certPEM, now)
	if err != nil {
		return Material{}, err
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return Material{}, fmt.Errorf("CA key: %w", err)
	}
	if err := checkCAKey(key.Public()); err != nil {
		return Material{}, fmt.Errorf("CA key: %w", err)
	}
	if !publicKeyEqual(key.Public(), certs[0].PublicKey) {
		return Material{}, fmt.Errorf("%w: the key given is not the key of %s", ErrKeyMismatch, certs[0].Subject)
	}
	normKey, err := MarshalKey(key)
	if err != nil {
		return Material{}, err
	}
	m := materialOf(certs)
	m.Key = normKey
	// Signatures linked one by one do not make a usable chain (path length
	// constraints, for one): refuse what NewSigner refuses.
	if _, err := NewSigner(m); err != nil {
		return Material{}, err
	}
	return m, nil
}

// ImportExternal validates the certificates of a CA whose key the cluster
// does not hold (an external CA): certPEM is its signing certificate,
// followed by its chain up to and including a self-signed root, or the
// self-signed root alone. The certificate rules are Import's; the Material
// returned has no Key.
func ImportExternal(certPEM []byte, now time.Time) (Material, error) {
	certs, err := importCerts(certPEM, now)
	if err != nil {
		return Material{}, err
	}
	m := materialOf(certs)
	if _, err := checkChain(m); err != nil {
		return Material{}, err
	}
	return m, nil
}

// importCerts parses and checks a CA certificate and its chain as Import
// and ImportExternal take them.
func importCerts(certPEM []byte, now time.Time) ([]*x509.Certificate, error) {
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	for i, c := range certs {
		name := certName(i, c)
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("%s: %w; give a certificate with basic constraints CA:true", name, ErrNotCA)
		}
		if err := checkCAKey(c.PublicKey); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if now.Before(c.NotBefore) {
			return nil, fmt.Errorf("%s: %w: not valid before %s", name, ErrExpiring, c.NotBefore.UTC().Format(time.RFC3339))
		}
		if !now.Before(c.NotAfter) {
			return nil, fmt.Errorf("%s: %w: expired at %s", name, ErrExpiring, c.NotAfter.UTC().Format(time.RFC3339))
		}
		if c.NotAfter.Sub(now) < MinCAValidity {
			return nil, fmt.Errorf("%s: %w: expires %s, less than a year from now; use a CA valid for at least a year", name, ErrExpiring, c.NotAfter.UTC().Format(time.RFC3339))
		}
		if i+1 < len(certs) {
			parent := certs[i+1]
			if err := c.CheckSignatureFrom(parent); err != nil {
				return nil, fmt.Errorf("%s is not signed by certificate %d (%s): %w: %w", name, i+2, parent.Subject, ErrChainIncomplete, err)
			}
		}
	}
	root := certs[len(certs)-1]
	if !selfSigned(root) {
		return nil, fmt.Errorf("%s is not self-signed: %w; append the issuing CA's certificates up to its root", certName(len(certs)-1, root), ErrChainIncomplete)
	}
	return certs, nil
}

// materialOf lays out checked certificates as Material: the first signs,
// the last is the bundle, and the ones before the root are the chain.
func materialOf(certs []*x509.Certificate) Material {
	m := Material{
		Cert:   EncodeCertificates(certs[0]),
		Bundle: EncodeCertificates(certs[len(certs)-1]),
	}
	if len(certs) > 1 {
		m.Chain = EncodeCertificates(certs[:len(certs)-1]...)
	}
	return m
}

func certName(i int, c *x509.Certificate) string {
	return fmt.Sprintf("certificate %d (%s)", i+1, c.Subject)
}

// randomSerial draws a positive serial number of up to 159 bits (at least
// 128 bits of randomness, as CA/B Forum rules and SwarmKit ask).
func randomSerial(rand io.Reader) (*big.Int, error) {
	var b [20]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return nil, fmt.Errorf("ca: read random serial: %w", err)
	}
	b[0] &= 0x7f
	b[0] |= 0x40 // keep it positive and at least 150 bits long
	return new(big.Int).SetBytes(b[:]), nil
}

// subjectKeyID derives a key identifier as RFC 5280 section 4.2.1.2 method
// 1 does: the SHA-1 of the subjectPublicKey BIT STRING (not of the whole
// SubjectPublicKeyInfo). Go's x509, CFSSL and OpenSSL derive it the same
// way, so a root cross-signed by any of them keeps the key ID that leaves
// name as their authority, which OpenSSL needs to build the chain.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	sum := sha1.Sum(info.PublicKey.Bytes) // an identifier, not a security property
	return sum[:], nil
}
