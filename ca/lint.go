package ca

import (
	"crypto/x509"
	"fmt"
)

// Lint returns what, in an imported CA's certificates (m.Cert, m.Chain,
// m.Bundle), works for quorumca but not for every consumer of its
// certificates: a CA certificate without the key usage extension
// (`openssl verify -x509_strict` refuses the chain, as RFC 5280 asks it
// to), or whose key usage lacks cRLSign (the cluster then signs no CRL
// with it). Each finding says what to do.
func Lint(m Material) []string {
	var certs []*x509.Certificate
	for _, b := range [][]byte{m.Cert, m.Chain, m.Bundle} {
		if cs, err := ParseCertificates(b); err == nil {
			certs = append(certs, cs...)
		}
	}
	if len(certs) == 0 {
		return nil
	}
	signer := certs[0]
	var out []string
	seen := map[string]bool{}
	for _, c := range certs {
		if seen[string(c.Raw)] {
			continue
		}
		seen[string(c.Raw)] = true
		switch {
		case c.KeyUsage == 0:
			out = append(out, fmt.Sprintf("CA certificate %s has no key usage extension: strict verifiers (openssl verify -x509_strict) refuse chains through it; reissue it with keyUsage=critical,keyCertSign,cRLSign", c.Subject))
		case c.KeyUsage&x509.KeyUsageCRLSign == 0 && c.Equal(signer):
			out = append(out, fmt.Sprintf("CA certificate %s may not sign CRLs (no cRLSign key usage): the cluster publishes no CRL for the certificates it issues; reissue it with keyUsage=critical,keyCertSign,cRLSign", c.Subject))
		}
	}
	return out
}
