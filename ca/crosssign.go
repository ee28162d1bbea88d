package ca

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"time"
)

// CrossSign makes the intermediate that lets trust in an old CA reach a new
// root: a CA:true certificate with the new root's subject, public key and key
// ID, signed by oldKey as oldCert. A leaf signed by the new root's key then
// verifies under the old root (leaf + intermediate) and under the new root
// (leaf alone). It is valid from now until the earlier of the two expiries.
func CrossSign(rand io.Reader, now time.Time, oldCert *x509.Certificate, oldKey crypto.Signer, newRoot *x509.Certificate) (*x509.Certificate, error) {
	if !publicKeyEqual(oldKey.Public(), oldCert.PublicKey) {
		return nil, fmt.Errorf("%w: the old key is not the key of %s", ErrKeyMismatch, oldCert.Subject)
	}
	if publicKeyEqual(newRoot.PublicKey, oldCert.PublicKey) {
		return nil, fmt.Errorf("%w; a rotation needs a new key", ErrKeyReused)
	}
	if !newRoot.BasicConstraintsValid || !newRoot.IsCA {
		return nil, fmt.Errorf("new root %s: %w", newRoot.Subject, ErrNotCA)
	}
	serial, err := randomSerial(rand)
	if err != nil {
		return nil, err
	}
	// Name the old key as the authority. When both roots have the same
	// subject (one cluster's roots do), x509 takes the certificate for
	// self-signed and leaves the authority key ID out; OpenSSL then stops
	// the chain there: "self-signed certificate in certificate chain".
	akid := oldCert.SubjectKeyId
	if len(akid) == 0 {
		if akid, err = subjectKeyID(oldCert.PublicKey); err != nil {
			return nil, err
		}
	}
	notAfter := newRoot.NotAfter
	if oldCert.NotAfter.Before(notAfter) {
		notAfter = oldCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               newRoot.Subject,
		NotBefore:             now.Add(-rootBackdate).UTC(),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            newRoot.MaxPathLen,
		MaxPathLenZero:        newRoot.MaxPathLenZero,
		SubjectKeyId:          newRoot.SubjectKeyId,
		AuthorityKeyId:        akid,
		SignatureAlgorithm:    signatureAlgorithm(oldCert.PublicKey),
	}
	// Keep the new root's exact subject encoding, so that name chaining
	// from leaves signed under it matches byte for byte.
	tmpl.RawSubject = newRoot.RawSubject
	der, err := x509.CreateCertificate(rand, tmpl, oldCert, newRoot.PublicKey, oldKey)
	if err != nil {
		return nil, fmt.Errorf("ca: cross-sign: %w", err)
	}
	return x509.ParseCertificate(der)
}

// Rotation returns the Material a cluster signs with while it rotates from
// old to next: next's key and certificate, with a chain that carries next's
// own chain, then next's root cross-signed by old's key, then old's chain,
// and old's bundle (the one nodes still trust). Leaves it signs verify under
// old.Bundle and under next.Bundle. next must use a new key. old must hold
// its key; next need not (an external CA's material).
func Rotation(rand io.Reader, now time.Time, old, next Material) (Material, error) {
	newRoot, err := CheckNewCA(old, next)
	if err != nil {
		return Material{}, err
	}
	oldCerts, err := ParseCertificates(old.Cert)
	if err != nil {
		return Material{}, fmt.Errorf("current CA certificate: %w", err)
	}
	oldKey, err := ParseKey(old.Key)
	if err != nil {
		return Material{}, fmt.Errorf("current CA key: %w", err)
	}
	cross, err := CrossSign(rand, now, oldCerts[0], oldKey, newRoot)
	if err != nil {
		return Material{}, err
	}
	return RotationWith(old, next, cross)
}

// CheckNewCA checks that next can follow old in a rotation: its bundle
// holds exactly one root, and neither that root nor next's signing
// certificate uses a key of old. It returns next's root.
func CheckNewCA(old, next Material) (*x509.Certificate, error) {
	oldCerts, err := ParseCertificates(old.Cert)
	if err != nil {
		return nil, fmt.Errorf("current CA certificate: %w", err)
	}
	nextCerts, err := ParseCertificates(next.Cert)
	if err != nil {
		return nil, fmt.Errorf("new CA certificate: %w", err)
	}
	_, nextRoots, err := ParseBundle(next.Bundle)
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	if len(nextRoots) != 1 {
		return nil, fmt.Errorf("new CA: %w: the bundle must hold exactly one root, has %d", ErrChainIncomplete, len(nextRoots))
	}
	_, oldRoots, err := ParseBundle(old.Bundle)
	if err != nil {
		return nil, fmt.Errorf("current CA: %w", err)
	}
	for _, r := range append(oldRoots, oldCerts[0]) {
		if publicKeyEqual(r.PublicKey, nextRoots[0].PublicKey) || publicKeyEqual(r.PublicKey, nextCerts[0].PublicKey) {
			return nil, fmt.Errorf("%w; a rotation needs a new key", ErrKeyReused)
		}
	}
	return nextRoots[0], nil
}

// RotationWith is Rotation for a new root that was already cross-signed by
// old's CA (an external CA cross-signs through its CA profile; see
// CrossSignRequest and CheckCrossSigned).
func RotationWith(old, next Material, cross *x509.Certificate) (Material, error) {
	chain := append([]byte(nil), next.Chain...)
	chain = append(chain, EncodeCertificates(cross)...)
	chain = append(chain, old.Chain...)
	m := Material{Cert: next.Cert, Key: next.Key, Chain: chain, Bundle: old.Bundle}
	var err error
	if len(m.Key) > 0 {
		_, err = NewSigner(m)
	} else {
		_, err = NewExternal(m)
	}
	if err != nil {
		return Material{}, fmt.Errorf("ca: rotation material does not verify: %w", err)
	}
	return m, nil
}
