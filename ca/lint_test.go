package ca_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// TestLint: a root without key usage (openssl req -x509's default) is
// named, as is a signing CA that may not sign CRLs; a generated root and
// a proper corporate chain give nothing.
func TestLint(t *testing.T) {
	now := time.Now()
	noUsage := testkit.NewX509CA(t, "Corp Root", genKey(t), nil, now, func(c *x509.Certificate) { c.KeyUsage = 0 })
	issuing := testkit.NewX509CA(t, "Issuing CA", genKey(t), noUsage, now)
	noCRL := testkit.NewX509CA(t, "Issuing CA without cRLSign", genKey(t), issuing, now, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageCertSign })

	goodRoot := testkit.NewX509CA(t, "Good Root", genKey(t), nil, now)
	goodIssuing := testkit.NewX509CA(t, "Good Issuing CA", genKey(t), goodRoot, now)
	generated, err := ca.GenerateRoot(rand.Reader, now, "0123456789abcdefghijklmno")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		m    ca.Material
		want []string
	}{
		{"generated root", generated, nil},
		{"root without key usage", material(noUsage.Cert, issuing.Cert), []string{"CN=Corp Root,O=Example Corp has no key usage"}},
		{"signing CA without cRLSign", material(noCRL.Cert, issuing.Cert, noUsage.Cert), []string{"without cRLSign,O=Example Corp may not sign CRLs", "CN=Corp Root,O=Example Corp has no key usage"}},
		{"proper chain", material(goodIssuing.Cert, goodRoot.Cert), nil},
	} {
		got := ca.Lint(tc.m)
		if len(got) != len(tc.want) {
			t.Errorf("%s: Lint = %q, want %d findings", tc.name, got, len(tc.want))
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%s: finding %d = %q, want it to say %q", tc.name, i, got[i], w)
			}
		}
	}
}

func genKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// material is a CA of certs, the signing certificate first, the root last.
func material(certs ...*x509.Certificate) ca.Material {
	m := ca.Material{Cert: ca.EncodeCertificates(certs[0]), Bundle: ca.EncodeCertificates(certs[len(certs)-1])}
	if len(certs) > 1 {
		m.Chain = ca.EncodeCertificates(certs[:len(certs)-1]...)
	}
	return m
}
