package ca_test

import (
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// BenchmarkSign is the cost of one node certificate: PEM CSR in, PEM chain
// out, through Signer.Sign with a generated P-256 root.
func BenchmarkSign(b *testing.B) {
	_, s, id := fuzzSigner(b)
	csr := csrPEM(b, ecKey(b, elliptic.P256()), nil)
	r := detRand(1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(r, now, csr, id, ca.DefaultCertExpiry); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignCeiling is the least any signer must do for the same
// certificate: parse the CSR, check its signature, and sign an equivalent
// template with the same root key. BenchmarkSign's ns/op over this one's
// is the package's overhead.
func BenchmarkSignCeiling(b *testing.B) {
	m, _, id := fuzzSigner(b)
	rootCert := mustParseOne(b, m.Cert)
	rootKey, err := ca.ParseKey(m.Key)
	if err != nil {
		b.Fatal(err)
	}
	block, _ := pem.Decode(csrPEM(b, ecKey(b, elliptic.P256()), nil))
	der := block.Bytes
	r := detRand(1)
	var serial [20]byte
	b.ReportAllocs()
	for b.Loop() {
		req, err := x509.ParseCertificateRequest(der)
		if err != nil {
			b.Fatal(err)
		}
		if err := req.CheckSignature(); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r, serial[:]); err != nil {
			b.Fatal(err)
		}
		serial[0] = serial[0]&0x7f | 0x40
		tmpl := &x509.Certificate{
			SerialNumber: new(big.Int).SetBytes(serial[:]),
			Subject: pkix.Name{
				CommonName:         id.NodeID,
				OrganizationalUnit: []string{string(id.Role)},
				Organization:       []string{id.ClusterID},
			},
			DNSNames:              []string{string(id.Role), id.NodeID},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(ca.DefaultCertExpiry),
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			SignatureAlgorithm:    x509.ECDSAWithSHA256,
			BasicConstraintsValid: true,
		}
		if _, err := x509.CreateCertificate(r, tmpl, rootCert, req.PublicKey, rootKey); err != nil {
			b.Fatal(err)
		}
	}
}
