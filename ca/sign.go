package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"slices"
	"time"
)

// Defaults and limits for node certificates.
const (
	// DefaultCertExpiry is the validity of node certificates unless the
	// cluster says otherwise: 90 days.
	DefaultCertExpiry = 2160 * time.Hour
	// MinCertExpiry is the shortest validity a cluster may set.
	MinCertExpiry = time.Hour
	// leafBackdate allows for node clocks behind the signer's.
	leafBackdate = time.Hour
)

// Signer signs node certificates with a CA's key. It parses its Material
// once; Sign is safe for concurrent use.
type Signer struct {
	cert     *x509.Certificate
	key      crypto.Signer
	chainPEM []byte // appended to every leaf
	notAfter time.Time
	sigAlg   x509.SignatureAlgorithm
}

// NewSigner checks m (the key matches the certificate, and the certificate
// with its chain verifies against the bundle) and returns a Signer for it.
func NewSigner(m Material) (*Signer, error) {
	certs, err := ParseCertificates(m.Cert)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := ParseKey(m.Key)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !publicKeyEqual(key.Public(), certs[0].PublicKey) {
		return nil, fmt.Errorf("%w: the key is not the key of %s", ErrKeyMismatch, certs[0].Subject)
	}
	ch, err := checkChain(m)
	if err != nil {
		return nil, err
	}
	return &Signer{
		cert:     ch.cert,
		key:      key,
		chainPEM: append([]byte(nil), m.Chain...),
		notAfter: ch.notAfter,
		sigAlg:   signatureAlgorithm(ch.cert.PublicKey),
	}, nil
}

// checkedChain is a Material's signing certificate and chain, checked
// against its bundle.
type checkedChain struct {
	cert  *x509.Certificate
	chain []*x509.Certificate
	roots *x509.CertPool
	// notAfter is the earliest expiry on the way to the bundle: no leaf
	// may outlive it.
	notAfter time.Time
}

// checkChain checks that m's certificate, with its chain, verifies against
// its bundle and leaves room below it for a leaf. It needs no key, so it
// also checks the material of an external CA.
func checkChain(m Material) (checkedChain, error) {
	certs, err := ParseCertificates(m.Cert)
	if err != nil {
		return checkedChain{}, fmt.Errorf("CA certificate: %w", err)
	}
	cert := certs[0]
	if err := checkCAKey(cert.PublicKey); err != nil {
		return checkedChain{}, fmt.Errorf("CA certificate: %w", err)
	}
	roots, rootCerts, err := ParseBundle(m.Bundle)
	if err != nil {
		return checkedChain{}, err
	}
	var chain []*x509.Certificate
	if len(m.Chain) > 0 {
		if chain, err = ParseCertificates(m.Chain); err != nil {
			return checkedChain{}, fmt.Errorf("CA chain: %w", err)
		}
	}
	if len(chain) == 0 && !slices.ContainsFunc(rootCerts, cert.Equal) {
		return checkedChain{}, fmt.Errorf("%w: CA certificate %s is not a root of the bundle and has no chain", ErrChainIncomplete, cert.Subject)
	}
	inter := x509.NewCertPool()
	notAfter := cert.NotAfter
	for _, c := range chain {
		inter.AddCert(c)
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	// Leaves must reach the bundle: the signing certificate itself is a
	// root of the bundle, or the chain's first certificate names the same
	// subject and key (the signing intermediate, or a cross-signed copy of
	// a new root) and verifies through the rest of the chain. Check at the
	// latest NotBefore of them all, roots included, so that the check needs
	// no clock.
	head := cert
	if len(chain) > 0 {
		head = chain[0]
		if !bytes.Equal(head.RawSubject, cert.RawSubject) || !publicKeyEqual(head.PublicKey, cert.PublicKey) {
			return checkedChain{}, fmt.Errorf("%w: the chain's first certificate %s is not the signing certificate %s", ErrChainIncomplete, head.Subject, cert.Subject)
		}
	}
	verified, err := head.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   latest(cert.NotBefore, append(slices.Clip(chain), rootCerts...)),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return checkedChain{}, fmt.Errorf("%w: CA certificate %s does not chain to the bundle: %w", ErrChainIncomplete, cert.Subject, err)
	}
	for i, c := range verified[0] {
		// A leaf will have i CA certificates between it and c.
		if c.MaxPathLen >= 0 && i > c.MaxPathLen {
			return checkedChain{}, fmt.Errorf("%w: %s allows %d CA certificates below it, a node certificate would have %d", ErrChainIncomplete, c.Subject, c.MaxPathLen, i)
		}
		// A leaf must not outlive the root it chains to either.
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return checkedChain{cert: cert, chain: chain, roots: roots, notAfter: notAfter}, nil
}

func latest(t time.Time, certs []*x509.Certificate) time.Time {
	for _, c := range certs {
		if c.NotBefore.After(t) {
			t = c.NotBefore
		}
	}
	return t
}

// signatureAlgorithm picks the signature a CA key makes: ECDSA with the
// curve's matching hash, SHA-256 with RSA.
func signatureAlgorithm(pub crypto.PublicKey) x509.SignatureAlgorithm {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P384() {
			return x509.ECDSAWithSHA384
		}
		return x509.ECDSAWithSHA256
	case *rsa.PublicKey:
		return x509.SHA256WithRSA
	}
	return x509.UnknownSignatureAlgorithm
}

// Certificate returns the signing certificate.
func (s *Signer) Certificate() *x509.Certificate { return s.cert }

// Issued describes a certificate Sign made.
type Issued struct {
	// PEM is the leaf followed by the chain it carries.
	PEM       []byte
	Serial    *big.Int
	NotBefore time.Time
	NotAfter  time.Time
}

// ParseCSR parses a PEM (or DER) certificate signing request, checks its
// self-signature and its key, and returns its public key.
func ParseCSR(csr []byte) (crypto.PublicKey, error) {
	req, err := parseCSR(csr)
	if err != nil {
		return nil, err
	}
	return req.PublicKey, nil
}

func parseCSR(csr []byte) (*x509.CertificateRequest, error) {
	der := csr
	if block, _ := pem.Decode(csr); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: found a %q block; send a CERTIFICATE REQUEST", ErrBadCSR, block.Type)
		}
		der = block.Bytes
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := checkNodeKey(req.PublicKey); err != nil {
		return nil, err
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCSRSignature, err)
	}
	return req, nil
}

// Sign issues a node certificate for the public key of csr, naming id and
// valid for validity (clamped to the CA's own expiry). Nothing but the
// public key is taken from the CSR: its subject, SANs and extensions are
// ignored. The certificate has CN = node ID, OU = role, O = cluster ID, DNS
// SANs role and node ID, serverAuth and clientAuth, a random serial, and a
// NotBefore an hour before now.
func (s *Signer) Sign(rand io.Reader, now time.Time, csr []byte, id Identity, validity time.Duration) (Issued, error) {
	pub, err := ParseCSR(csr)
	if err != nil {
		return Issued{}, err
	}
	return s.SignKey(rand, now, pub, id, validity)
}

// SignKey is Sign for a public key already taken from a checked CSR.
func (s *Signer) SignKey(rand io.Reader, now time.Time, pub crypto.PublicKey, id Identity, validity time.Duration) (Issued, error) {
	if err := id.Validate(); err != nil {
		return Issued{}, err
	}
	if err := checkNodeKey(pub); err != nil {
		return Issued{}, err
	}
	if validity < MinCertExpiry {
		return Issued{}, fmt.Errorf("%w: %s; use at least %s", ErrExpiryTooShort, validity, MinCertExpiry)
	}
	notBefore := now.Add(-leafBackdate).UTC().Truncate(time.Second)
	notAfter := now.Add(validity).UTC().Truncate(time.Second)
	if notAfter.After(s.notAfter) {
		notAfter = s.notAfter
	}
	if !notAfter.After(now) {
		return Issued{}, fmt.Errorf("%w: the CA certificate expired at %s; rotate the root", ErrExpiring, s.notAfter.Format(time.RFC3339))
	}
	serial, err := randomSerial(rand)
	if err != nil {
		return Issued{}, err
	}
	skid, err := subjectKeyID(pub)
	if err != nil {
		return Issued{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:       serial,
		SubjectKeyId:       skid,
		Subject:            pkixName(id.NodeID, string(id.Role), id.ClusterID),
		DNSNames:           []string{string(id.Role), id.NodeID},
		NotBefore:          notBefore,
		NotAfter:           notAfter,
		KeyUsage:           leafKeyUsage(pub),
		ExtKeyUsage:        []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		SignatureAlgorithm: s.sigAlg,
		// BasicConstraintsValid with IsCA false: say plainly this is no CA.
		BasicConstraintsValid: true,
	}
	if id.Role == RoleAdmin {
		// An administrator's certificate only ever authenticates a client.
		tmpl.DNSNames = nil
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand, tmpl, s.cert, pub, s.key)
	if err != nil {
		return Issued{}, fmt.Errorf("ca: sign node certificate: %w", err)
	}
	out := make([]byte, 0, len(der)*4/3+128+len(s.chainPEM))
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	out = append(out, s.chainPEM...)
	return Issued{PEM: out, Serial: serial, NotBefore: notBefore, NotAfter: notAfter}, nil
}

// leafKeyUsage is digital signature, and key encipherment for RSA keys,
// which TLS 1.2's RSA key exchange needs.
func leafKeyUsage(pub crypto.PublicKey) x509.KeyUsage {
	if _, ok := pub.(*rsa.PublicKey); ok {
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	}
	return x509.KeyUsageDigitalSignature
}
