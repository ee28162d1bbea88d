package ca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

func TestParseKey(t *testing.T) {
	p256 := ecKey(t, elliptic.P256())
	p384 := ecKey(t, elliptic.P384())
	ed := edKey(t)
	rsaK := rsaKey(t, 2048)
	sec1, err := x509.MarshalECPrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	certBlock := root(t, 1, newID(t, 1)).Cert
	tests := []struct {
		name string
		in   []byte
		want crypto.PublicKey
	}{
		{"PKCS#8 P-256", testkit.KeyPEM(t, p256), p256.Public()},
		{"PKCS#8 Ed25519", testkit.KeyPEM(t, ed), ed.Public()},
		{"PKCS#8 RSA", testkit.KeyPEM(t, rsaK), rsaK.Public()},
		{"SEC 1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), p384.Public()},
		{"PKCS#1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaK)}), rsaK.Public()},
		{"after a certificate", concat(certBlock, testkit.KeyPEM(t, p256)), p256.Public()},
		{"after text", concat([]byte("Key for the CA:\n"), testkit.KeyPEM(t, p256)), p256.Public()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ca.ParseKey(tt.in)
			if err != nil {
				t.Fatalf("ParseKey = %v, want nil", err)
			}
			if !publicKeyEqual(k.Public(), tt.want) {
				t.Errorf("ParseKey = %T, not the key given", k)
			}
			// MarshalKey writes PKCS#8 that parses back to the same key.
			out, err := ca.MarshalKey(k)
			if err != nil {
				t.Fatalf("MarshalKey = %v", err)
			}
			if b, rest := pem.Decode(out); b == nil || b.Type != "PRIVATE KEY" || len(rest) != 0 {
				t.Errorf("MarshalKey = %.40q, want one PRIVATE KEY block", out)
			}
			k2, err := ca.ParseKey(out)
			if err != nil || !publicKeyEqual(k2.Public(), tt.want) {
				t.Errorf("ParseKey(MarshalKey(key)) = %v, %v, want the same key", k2, err)
			}
		})
	}
}

func TestParseKeyRefuses(t *testing.T) {
	x, err := ecdh.X25519().GenerateKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	xDER, err := x509.MarshalPKCS8PrivateKey(x)
	if err != nil {
		t.Fatal(err)
	}
	p256 := testkit.KeyPEM(t, ecKey(t, elliptic.P256()))
	b, _ := pem.Decode(p256)
	legacy := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "DES-EDE3-CBC,0011223344556677"}, Bytes: []byte("ciphertext")})
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ca.ErrMalformedPEM},
		{"not PEM", []byte("not a key"), ca.ErrMalformedPEM},
		{"DER", b.Bytes, ca.ErrMalformedPEM},
		{"certificate only", root(t, 1, newID(t, 1)).Cert, ca.ErrMalformedPEM},
		{"PKCS#8 block of garbage", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("garbage")}), ca.ErrMalformedPEM},
		{"SEC 1 block of PKCS#8", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b.Bytes}), ca.ErrMalformedPEM},
		{"PKCS#1 block of garbage", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{0x30, 0}}), ca.ErrMalformedPEM},
		{"encrypted PKCS#8", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: b.Bytes}), ca.ErrMalformedPEM},
		{"encrypted PKCS#8 before a plain key", concat(pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: b.Bytes}), p256), ca.ErrMalformedPEM},
		{"legacy encrypted", legacy, ca.ErrMalformedPEM},
		{"X25519 cannot sign", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: xDER}), ca.ErrUnsupportedKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ca.ParseKey(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseKey = %v, %v, want %v", k, err, tt.want)
			}
			if k != nil {
				t.Errorf("ParseKey returned a key with its error")
			}
		})
	}
}

// The error for a key never holds the key's bytes.
func TestParseKeyErrorHidesKey(t *testing.T) {
	k := ecKey(t, elliptic.P256())
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	// A valid SEC 1 key in a PKCS#8 block fails to parse.
	in := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	_, err = ca.ParseKey(in)
	if !errors.Is(err, ca.ErrMalformedPEM) {
		t.Fatalf("ParseKey(SEC 1 in a PKCS#8 block) = %v, want %v", err, ca.ErrMalformedPEM)
	}
	d := k.D.Text(16)
	if strings.Contains(strings.ToLower(err.Error()), d) {
		t.Errorf("ParseKey error %q holds the private scalar", err)
	}
}

type unknownSigner struct{ crypto.Signer }

func TestMarshalKeyRefusesUnknown(t *testing.T) {
	if _, err := ca.MarshalKey(unknownSigner{}); !errors.Is(err, ca.ErrUnsupportedKey) {
		t.Errorf("MarshalKey(unknown signer) = %v, want %v", err, ca.ErrUnsupportedKey)
	}
}

func TestGenerateKeyAndNewCSR(t *testing.T) {
	k, err := ca.GenerateKey(detRand(1))
	if err != nil {
		t.Fatalf("GenerateKey = %v", err)
	}
	if k.Curve != elliptic.P256() {
		t.Errorf("GenerateKey: curve %s, want P-256", k.Curve.Params().Name)
	}
	csr, err := ca.NewCSR(detRand(2), k, "a hint")
	if err != nil {
		t.Fatalf("NewCSR = %v", err)
	}
	b, _ := pem.Decode(csr)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("NewCSR = %.40q, want a CERTIFICATE REQUEST block", csr)
	}
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Fatalf("x509.ParseCertificateRequest(NewCSR) = %v", err)
	}
	if req.Subject.CommonName != "a hint" {
		t.Errorf("NewCSR: CN = %q, want %q", req.Subject.CommonName, "a hint")
	}
	pub, err := ca.ParseCSR(csr)
	if err != nil {
		t.Fatalf("ParseCSR(NewCSR) = %v", err)
	}
	if !publicKeyEqual(pub, k.Public()) {
		t.Errorf("ParseCSR(NewCSR(key)) is not key")
	}
	if _, err := ca.NewCSR(detRand(3), failingSigner{k}, "x"); err == nil {
		t.Errorf("NewCSR(failing signer) = nil error, want an error")
	}
}

// failingSigner is a crypto.Signer whose Sign always fails.
type failingSigner struct{ k *ecdsa.PrivateKey }

func (f failingSigner) Public() crypto.PublicKey { return f.k.Public() }
func (f failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("test: signer failed")
}

func TestParseCertificates(t *testing.T) {
	cluster := newID(t, 1)
	a := root(t, 1, cluster).Cert
	bb := root(t, 2, cluster).Cert
	ca1, cb := mustParseOne(t, a), mustParseOne(t, bb)
	tests := []struct {
		name string
		in   []byte
		want []*x509.Certificate
	}{
		{"one", a, []*x509.Certificate{ca1}},
		{"two in order", concat(a, bb), []*x509.Certificate{ca1, cb}},
		{"two reversed", concat(bb, a), []*x509.Certificate{cb, ca1}},
		{"CRLF and blank lines", concat([]byte("\r\n\r\n"), bytes.ReplaceAll(a, []byte("\n"), []byte("\r\n")), []byte("\r\n\t ")), []*x509.Certificate{ca1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.ParseCertificates(tt.in)
			if err != nil {
				t.Fatalf("ParseCertificates = %v, want nil", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("ParseCertificates = %d certificates, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !got[i].Equal(tt.want[i]) {
					t.Errorf("ParseCertificates[%d] = %s, want %s", i, got[i].Subject, tt.want[i].Subject)
				}
			}
			if enc := ca.EncodeCertificates(got...); !bytes.Equal(enc, ca.EncodeCertificates(tt.want...)) {
				t.Errorf("EncodeCertificates(ParseCertificates(x)) differs")
			}
		})
	}
	if got := ca.EncodeCertificates(); len(got) != 0 {
		t.Errorf("EncodeCertificates() = %q, want empty", got)
	}
}

func TestParseCertificatesRefuses(t *testing.T) {
	m := root(t, 1, newID(t, 1))
	b, _ := pem.Decode(m.Cert)
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"whitespace", []byte(" \n\t")},
		{"DER", b.Bytes},
		{"text", []byte("hello")},
		{"key block", m.Key},
		{"certificate then key", concat(m.Cert, m.Key)},
		{"certificate block of garbage", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")})},
		{"good then garbage certificate", concat(m.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0}}))},
		{"trailing text", concat(m.Cert, []byte("trailing"))},
		{"truncated second block", concat(m.Cert, m.Cert[:len(m.Cert)/2])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.ParseCertificates(tt.in)
			if !errors.Is(err, ca.ErrMalformedPEM) || got != nil {
				t.Errorf("ParseCertificates(%s) = %d certificates, %v, want nil, %v", tt.name, len(got), err, ca.ErrMalformedPEM)
			}
		})
	}
}

func TestParseBundle(t *testing.T) {
	cluster := newID(t, 1)
	a, b := root(t, 1, cluster), root(t, 2, cluster)
	pool, certs, err := ca.ParseBundle(concat(a.Bundle, b.Bundle))
	if err != nil || len(certs) != 2 || pool == nil {
		t.Fatalf("ParseBundle(two roots) = %v, %d certificates, %v, want a pool of 2", pool, len(certs), err)
	}
	corp := newCorpChain(t)
	iss := issue(t, a, 3, ca.Identity{NodeID: newID(t, 4), Role: ca.RoleWorker, ClusterID: cluster})
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"intermediate", corp.inter.CertPEM(), ca.ErrChainIncomplete},
		{"root then intermediate", concat(corp.root.CertPEM(), corp.inter.CertPEM()), ca.ErrChainIncomplete},
		{"leaf", iss.PEM, ca.ErrNotCA},
		{"garbage", []byte("garbage"), ca.ErrMalformedPEM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, certs, err := ca.ParseBundle(tt.in)
			if !errors.Is(err, tt.want) || pool != nil || certs != nil {
				t.Errorf("ParseBundle(%s) = %v, %v, %v, want nil, nil, %v", tt.name, pool, certs, err, tt.want)
			}
		})
	}
}

func TestNewSigner(t *testing.T) {
	cluster := newID(t, 1)
	m := root(t, 1, cluster)
	other := root(t, 2, cluster)
	corp := newCorpChain(t)
	corpM := corp.material(t)
	s := signer(t, m)
	if !s.Certificate().Equal(mustParseOne(t, m.Cert)) {
		t.Errorf("NewSigner(m).Certificate() is not m's certificate")
	}
	with := func(f func(*ca.Material)) ca.Material {
		c := m
		f(&c)
		return c
	}
	withCorp := func(f func(*ca.Material)) ca.Material {
		c := corpM
		f(&c)
		return c
	}
	tests := []struct {
		name string
		m    ca.Material
		want error
	}{
		{"key of another root", with(func(c *ca.Material) { c.Key = other.Key }), ca.ErrKeyMismatch},
		{"bundle of another root", with(func(c *ca.Material) { c.Bundle = other.Bundle }), ca.ErrChainIncomplete},
		{"no bundle", with(func(c *ca.Material) { c.Bundle = nil }), ca.ErrMalformedPEM},
		{"no certificate", with(func(c *ca.Material) { c.Cert = nil }), ca.ErrMalformedPEM},
		{"no key", with(func(c *ca.Material) { c.Key = nil }), ca.ErrMalformedPEM},
		{"garbage chain", with(func(c *ca.Material) { c.Chain = []byte("garbage") }), ca.ErrMalformedPEM},
		{"intermediate without its chain", withCorp(func(c *ca.Material) { c.Chain = nil }), ca.ErrChainIncomplete},
		{"chain of another CA", withCorp(func(c *ca.Material) { c.Chain = other.Cert }), ca.ErrChainIncomplete},
		{"intermediate as the bundle", withCorp(func(c *ca.Material) { c.Bundle = c.Cert }), ca.ErrChainIncomplete},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ca.NewSigner(tt.m)
			if !errors.Is(err, tt.want) || s != nil {
				t.Errorf("NewSigner(%s) = %v, %v, want nil, %v", tt.name, s, err, tt.want)
			}
		})
	}
}
