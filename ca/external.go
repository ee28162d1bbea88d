package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"io"
	"slices"
	"time"
)

// External checks the certificates an external CA issues for the cluster.
// The external CA holds the key of Material.Cert and signs what the leader
// asks; nothing it returns is trusted until Check accepts it. External is
// safe for concurrent use.
type External struct {
	ch       checkedChain
	chainPEM []byte
	inter    *x509.CertPool
}

// NewExternal checks m, the material of an external CA (Cert, Chain and
// Bundle; no Key), as NewSigner checks a CA's.
func NewExternal(m Material) (*External, error) {
	if len(m.Key) > 0 {
		return nil, fmt.Errorf("%w: an external CA's material holds no key", ErrKeyMismatch)
	}
	ch, err := checkChain(m)
	if err != nil {
		return nil, err
	}
	inter := x509.NewCertPool()
	for _, c := range ch.chain {
		inter.AddCert(c)
	}
	return &External{ch: ch, chainPEM: append([]byte(nil), m.Chain...), inter: inter}, nil
}

// Certificate returns the certificate the external CA signs with.
func (e *External) Certificate() *x509.Certificate { return e.ch.cert }

// Check accepts a node certificate the external CA returned for a CSR of
// key pub, asked for identity id: the first certificate of certPEM must be
// signed by the CA's certificate, for pub, name exactly CN = node ID, OU =
// role, O = cluster ID (no other name), carry exactly the DNS names the
// cluster gives (role and node ID; none for admins) and no other, not be a
// CA, allow client (and, but for admins, server) authentication, and
// verify with the CA's chain under its bundle at now for at least
// MinCertExpiry. Certificates after the first are ignored: the cluster
// appends its own chain.
func (e *External) Check(now time.Time, certPEM []byte, pub crypto.PublicKey, id Identity) (Issued, error) {
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return Issued{}, fmt.Errorf("%w: %w", ErrExternalCA, err)
	}
	leaf := certs[0]
	if err := leaf.CheckSignatureFrom(e.ch.cert); err != nil || !bytes.Equal(leaf.RawIssuer, e.ch.cert.RawSubject) {
		return Issued{}, fmt.Errorf("%w: the certificate is issued by %s, not by the cluster's CA %s: is the external CA's URL right?", ErrExternalCA, leaf.Issuer, e.ch.cert.Subject)
	}
	if !publicKeyEqual(leaf.PublicKey, pub) {
		return Issued{}, fmt.Errorf("%w: the certificate is not for the key of the request", ErrExternalCA)
	}
	got, err := IdentityOf(leaf)
	if err != nil || got != id || len(leaf.Subject.Names) != 3 {
		return Issued{}, fmt.Errorf("%w: the certificate names %s; the cluster asked for CN=%s, OU=%s, O=%s and nothing else (a request that asks for more is refused)", ErrExternalCA, leaf.Subject, id.NodeID, id.Role, id.ClusterID)
	}
	want := []string{string(id.Role), id.NodeID}
	eku := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	if id.Role == RoleAdmin {
		want, eku = nil, eku[:1]
	}
	dns := slices.Clone(leaf.DNSNames)
	slices.Sort(dns)
	slices.Sort(want)
	if !slices.Equal(dns, want) || len(leaf.IPAddresses) > 0 || len(leaf.EmailAddresses) > 0 || len(leaf.URIs) > 0 {
		return Issued{}, fmt.Errorf("%w: the certificate's alternative names are DNS %q, IP %v, email %q, URI %v; the cluster asked for DNS %q alone", ErrExternalCA, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, leaf.URIs, want)
	}
	if leaf.IsCA {
		return Issued{}, fmt.Errorf("%w: the certificate for node %s is a CA certificate", ErrExternalCA, id.NodeID)
	}
	for _, u := range eku {
		// Name the usage outright: no extension, or "any", is not enough.
		if !slices.Contains(leaf.ExtKeyUsage, u) {
			return Issued{}, fmt.Errorf("%w: the certificate does not name %s among its usages (the external CA's signing profile must list \"client auth\" and \"server auth\")", ErrExternalCA, ekuName(u))
		}
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: e.ch.roots, Intermediates: e.inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{u},
		}); err != nil {
			return Issued{}, fmt.Errorf("%w: the certificate does not verify for %s under the cluster's root: %w (the external CA's signing profile must allow the usages \"signing\", \"client auth\" and \"server auth\")", ErrExternalCA, ekuName(u), err)
		}
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return Issued{}, fmt.Errorf("%w: the certificate's key usage lacks digital signature, which TLS needs (the external CA's signing profile must list \"signing\")", ErrExternalCA)
	}
	if leaf.NotAfter.After(e.ch.notAfter) {
		return Issued{}, fmt.Errorf("%w: the certificate outlives its CA's chain (until %s, the chain until %s)", ErrExternalCA, leaf.NotAfter.UTC().Format(time.RFC3339), e.ch.notAfter.UTC().Format(time.RFC3339))
	}
	if leaf.NotAfter.Sub(now) < MinCertExpiry {
		return Issued{}, fmt.Errorf("%w: the certificate expires at %s, less than %s from now; lengthen the external CA's signing profile expiry", ErrExternalCA, leaf.NotAfter.UTC().Format(time.RFC3339), MinCertExpiry)
	}
	out := make([]byte, 0, len(leaf.Raw)*4/3+128+len(e.chainPEM))
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})...)
	out = append(out, e.chainPEM...)
	return Issued{PEM: out, Serial: leaf.SerialNumber, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, nil
}

func ekuName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "server authentication"
	}
	return "client authentication"
}

// CheckExternalCSR checks a node's CSR before it goes to an external CA.
// The request to the CA replaces the CSR's common name, organisation and
// unit, and its alternative names, but a CFSSL signer keeps any other
// subject attribute of the CSR (country, locality, serial number...): so
// the CSR's subject may name CN, O and OU and nothing else. The CA's
// answer is checked again all the same (External.Check).
//
// It returns the CSR checked, as PEM, to send as it is.
func CheckExternalCSR(csr []byte) ([]byte, error) {
	req, err := parseCSR(csr)
	if err != nil {
		return nil, err
	}
	for _, atv := range req.Subject.Names {
		if !atv.Type.Equal(oidCN) && !atv.Type.Equal(oidO) && !atv.Type.Equal(oidOU) {
			return nil, fmt.Errorf("%w: the subject names %s; a CSR sent to an external CA may only name CN, O and OU, which the cluster replaces", ErrBadCSR, req.Subject)
		}
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.Raw}), nil
}

// Attribute types a node CSR's subject may carry.
var (
	oidCN = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidO  = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidOU = asn1.ObjectIdentifier{2, 5, 4, 11}

	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
)

// CrossSignRequest makes the certificate signing request an external CA
// signs, with a CA profile, to cross-sign newRoot: newRoot's exact subject,
// signed with newRoot's key.
func CrossSignRequest(rand io.Reader, newRoot *x509.Certificate, newKey crypto.Signer) ([]byte, error) {
	if !publicKeyEqual(newKey.Public(), newRoot.PublicKey) {
		return nil, fmt.Errorf("%w: the key given is not the key of the new root %s", ErrKeyMismatch, newRoot.Subject)
	}
	// Ask for a CA certificate outright: a CFSSL whose "CA" profile is
	// missing then refuses, rather than answering a leaf.
	bc, err := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	if err != nil {
		return nil, fmt.Errorf("ca: cross-sign request: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand, &x509.CertificateRequest{
		RawSubject:      newRoot.RawSubject,
		ExtraExtensions: []pkix.Extension{{Id: oidBasicConstraints, Critical: true, Value: bc}},
	}, newKey)
	if err != nil {
		return nil, fmt.Errorf("ca: create cross-sign request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// CheckCrossSigned accepts the certificate an external CA returned for
// CrossSignRequest: a CA certificate with newRoot's subject (byte for byte,
// so that leaves chain through it) and key, issued by old's signing
// certificate, that with old's chain verifies under old's bundle at now.
func CheckCrossSigned(now time.Time, old Material, certPEM []byte, newRoot *x509.Certificate) (*x509.Certificate, error) {
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: cross-signed root: %w", ErrExternalCA, err)
	}
	cross := certs[0]
	ch, err := checkChain(old)
	if err != nil {
		return nil, fmt.Errorf("current CA: %w", err)
	}
	switch {
	case !bytes.Equal(cross.RawSubject, newRoot.RawSubject):
		return nil, fmt.Errorf("%w: the cross-signed certificate names %s, not the new root's exact subject %s", ErrExternalCA, cross.Subject, newRoot.Subject)
	case bytes.Equal(cross.RawSubject, cross.RawIssuer):
		// Go (so CFSSL) leaves the authority key ID out of such a
		// certificate, and OpenSSL takes it for self-signed.
		return nil, fmt.Errorf("%w: the new root has the same subject as the current CA (%s): OpenSSL would take the cross-signed certificate for a self-signed one; give the new root another subject", ErrExternalCA, cross.Subject)
	case !publicKeyEqual(cross.PublicKey, newRoot.PublicKey):
		return nil, fmt.Errorf("%w: the cross-signed certificate is not for the new root's key", ErrExternalCA)
	case !cross.BasicConstraintsValid || !cross.IsCA:
		return nil, fmt.Errorf("%w: the cross-signed certificate is not a CA: the current external CA's \"CA\" signing profile must set ca_constraint is_ca", ErrExternalCA)
	case len(newRoot.SubjectKeyId) > 0 && !bytes.Equal(cross.SubjectKeyId, newRoot.SubjectKeyId):
		// Leaves of the new root name its key ID as their authority;
		// OpenSSL will not chain them through a certificate with another.
		return nil, fmt.Errorf("%w: the cross-signed certificate has key ID %x, the new root %x: OpenSSL would not chain through it; use a new root whose key ID is the SHA-1 of its public key (RFC 5280 method 1)", ErrExternalCA, cross.SubjectKeyId, newRoot.SubjectKeyId)
	case cross.CheckSignatureFrom(ch.cert) != nil:
		return nil, fmt.Errorf("%w: the cross-signed certificate is issued by %s, not by the current CA %s", ErrExternalCA, cross.Issuer, ch.cert.Subject)
	}
	inter := x509.NewCertPool()
	for _, c := range ch.chain {
		inter.AddCert(c)
	}
	if _, err := cross.Verify(x509.VerifyOptions{
		Roots: ch.roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("%w: the cross-signed certificate does not verify under the current root: %w", ErrExternalCA, err)
	}
	return cross, nil
}
