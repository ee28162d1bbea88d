package ca

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"time"
)

// TLSStatus says which CA a node's certificate chains to: the issuer's
// subject and the SHA-256 of the issuer's public key. Two certificates
// signed by the same key have the same status, whether they reach the trust
// bundle directly or through a cross-signed intermediate.
type TLSStatus struct {
	// IssuerSubject is the issuer's DER-encoded subject.
	IssuerSubject []byte
	// IssuerKeyHash is the SHA-256 of the issuer's SubjectPublicKeyInfo.
	IssuerKeyHash [sha256.Size]byte
}

// StatusOf returns the TLS status of certificates issued by issuer.
func StatusOf(issuer *x509.Certificate) TLSStatus {
	return TLSStatus{
		IssuerSubject: append([]byte(nil), issuer.RawSubject...),
		IssuerKeyHash: sha256.Sum256(issuer.RawSubjectPublicKeyInfo),
	}
}

// Equal reports whether two statuses name the same issuer.
func (s TLSStatus) Equal(o TLSStatus) bool {
	return s.IssuerKeyHash == o.IssuerKeyHash && bytes.Equal(s.IssuerSubject, o.IssuerSubject)
}

// String describes the status for people: the issuer's name and a short
// key fingerprint.
func (s TLSStatus) String() string {
	var rdn pkix.RDNSequence
	name := "?"
	if _, err := asn1.Unmarshal(s.IssuerSubject, &rdn); err == nil {
		var n pkix.Name
		n.FillFromRDNSequence(&rdn)
		name = n.String()
	}
	return fmt.Sprintf("%s key:%x", name, s.IssuerKeyHash[:8])
}

// Verify checks a node certificate chain (leaf first, then intermediates)
// against roots at now, for TLS client and server use, and returns the
// identity it names and its TLS status.
func Verify(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) (Identity, TLSStatus, error) {
	if len(chain) == 0 {
		return Identity{}, TLSStatus{}, fmt.Errorf("%w: no certificate", ErrUntrusted)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	verified, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return Identity{}, TLSStatus{}, fmt.Errorf("%w: %s: %w", ErrUntrusted, leaf.Subject, err)
	}
	if len(verified[0]) < 2 {
		return Identity{}, TLSStatus{}, fmt.Errorf("%w: %s is a root of the bundle, not a node certificate", ErrUntrusted, leaf.Subject)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return Identity{}, TLSStatus{}, err
	}
	// Every verified chain has the leaf's issuer at index 1 (a node
	// certificate is never a root); all name the same subject and key.
	return id, StatusOf(verified[0][1]), nil
}

// VerifyPEM is Verify for a PEM chain and a PEM trust bundle.
func VerifyPEM(chainPEM, bundlePEM []byte, now time.Time) (Identity, TLSStatus, error) {
	chain, err := ParseCertificates(chainPEM)
	if err != nil {
		return Identity{}, TLSStatus{}, fmt.Errorf("certificate: %w", err)
	}
	roots, _, err := ParseBundle(bundlePEM)
	if err != nil {
		return Identity{}, TLSStatus{}, err
	}
	return Verify(chain, roots, now)
}

// IssuerOf returns the TLS status of a node certificate chain (leaf first)
// without a clock: the status of the chain's first intermediate, or else of
// the root in roots that signed the leaf. It does not check that the chain
// is trusted; use Verify for that. ok is false when no issuer is found.
func IssuerOf(chain []*x509.Certificate, roots []*x509.Certificate) (status TLSStatus, ok bool) {
	if len(chain) == 0 {
		return TLSStatus{}, false
	}
	if len(chain) > 1 {
		return StatusOf(chain[1]), true
	}
	leaf := chain[0]
	for _, r := range roots {
		if bytes.Equal(r.RawSubject, leaf.RawIssuer) && leaf.CheckSignatureFrom(r) == nil {
			return StatusOf(r), true
		}
	}
	return TLSStatus{}, false
}
