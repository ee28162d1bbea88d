package ca

import (
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
)

// ParseCertificates parses every CERTIFICATE block of a PEM input, in order.
// It refuses input with no certificate, a certificate that does not parse,
// or non-whitespace text that is not PEM.
func ParseCertificates(certPEM []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := certPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: found a %q block where certificates were expected", ErrMalformedPEM, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %w", ErrMalformedPEM, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no CERTIFICATE block found", ErrMalformedPEM)
	}
	if len(trimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: trailing data after certificate %d", ErrMalformedPEM, len(certs))
	}
	return certs, nil
}

// EncodeCertificates encodes certificates as consecutive PEM blocks.
func EncodeCertificates(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseBundle parses a PEM trust bundle into a pool of roots. Every
// certificate in it must be a self-signed CA.
func ParseBundle(bundlePEM []byte) (*x509.CertPool, []*x509.Certificate, error) {
	certs, err := ParseCertificates(bundlePEM)
	if err != nil {
		return nil, nil, fmt.Errorf("trust bundle: %w", err)
	}
	pool := x509.NewCertPool()
	for i, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, nil, fmt.Errorf("trust bundle: certificate %d (%s): %w", i+1, c.Subject, ErrNotCA)
		}
		if !selfSigned(c) {
			return nil, nil, fmt.Errorf("trust bundle: certificate %d (%s) is not self-signed: %w", i+1, c.Subject, ErrChainIncomplete)
		}
		pool.AddCert(c)
	}
	return pool, certs, nil
}

func selfSigned(c *x509.Certificate) bool {
	return string(c.RawIssuer) == string(c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func pkixName(cn, ou, o string) pkix.Name {
	var n pkix.Name
	n.CommonName = cn
	if ou != "" {
		n.OrganizationalUnit = []string{ou}
	}
	if o != "" {
		n.Organization = []string{o}
	}
	return n
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// BundleFingerprint returns the SHA-256 of a bundle's first certificate,
// hex: how the root is named to people. "?" when the bundle holds none.
func BundleFingerprint(bundle []byte) string {
	certs, err := ParseCertificates(bundle)
	if err != nil {
		return "?"
	}
	sum := sha256.Sum256(certs[0].Raw)
	return hex.EncodeToString(sum[:])
}
