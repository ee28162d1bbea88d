package ca_test

import (
	"crypto/rand"
	"math/big"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// TestSignCRL: a CRL signed for the root verifies under it and lists the
// entries with their reasons, number and validity; ParseCRLs reads it
// back from PEM.
func TestSignCRL(t *testing.T) {
	f := newSignFixture(t)
	entries := []ca.Revoked{
		{Serial: "1f2e3d", At: now.Add(-time.Hour), Reason: ca.ReasonKeyCompromise},
		{Serial: "abc", At: now.Add(-time.Minute), Reason: ca.ReasonCessationOfOperation},
	}
	pem, err := ca.SignCRL(rand.Reader, ca.CRLIssuer{Cert: f.root, Key: f.m.Key}, 7, now, now.Add(24*time.Hour), entries)
	if err != nil {
		t.Fatalf("SignCRL() = %v", err)
	}
	crls, err := ca.ParseCRLs(append([]byte("junk before\n"), pem...))
	if err != nil || len(crls) != 1 {
		t.Fatalf("ParseCRLs() = %d CRLs, %v; want 1", len(crls), err)
	}
	crl := crls[0]
	if err := crl.CheckSignatureFrom(f.root); err != nil {
		t.Errorf("the CRL does not verify under its issuer: %v", err)
	}
	if crl.Number.Cmp(big.NewInt(7)) != 0 || !crl.ThisUpdate.Equal(now) || !crl.NextUpdate.Equal(now.Add(24*time.Hour)) {
		t.Errorf("CRL number %v, validity %v..%v; want 7, %v..%v", crl.Number, crl.ThisUpdate, crl.NextUpdate, now, now.Add(24*time.Hour))
	}
	if len(crl.RevokedCertificateEntries) != 2 {
		t.Fatalf("the CRL lists %d entries, want 2", len(crl.RevokedCertificateEntries))
	}
	for i, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Text(16) != entries[i].Serial || e.ReasonCode != entries[i].Reason {
			t.Errorf("entry %d = %s reason %d, want %s reason %d", i, e.SerialNumber.Text(16), e.ReasonCode, entries[i].Serial, entries[i].Reason)
		}
	}
	otherKey, _ := ca.GenerateKey(rand.Reader)
	otherPEM, _ := ca.MarshalKey(otherKey)
	if _, err := ca.SignCRL(rand.Reader, ca.CRLIssuer{Cert: f.root, Key: otherPEM}, 1, now, now.Add(time.Hour), nil); err == nil {
		t.Errorf("SignCRL() with another CA's key succeeded")
	}
	if _, err := ca.SignCRL(rand.Reader, ca.CRLIssuer{Cert: f.root, Key: f.m.Key}, 1, now, now.Add(time.Hour), []ca.Revoked{{Serial: "xyz"}}); err == nil {
		t.Errorf("SignCRL() with a serial that is not hex succeeded")
	}
}

func TestParseReason(t *testing.T) {
	for name, want := range map[string]int{"keyCompromise": 1, "KEYCOMPROMISE": 1, "superseded": 4, "cessationOfOperation": 5, "unspecified": 0} {
		if got, err := ca.ParseReason(name); err != nil || got != want {
			t.Errorf("ParseReason(%q) = %d, %v; want %d", name, got, err, want)
		}
	}
	if _, err := ca.ParseReason("because"); err == nil {
		t.Errorf("ParseReason(because) = nil error")
	}
	if ca.ReasonName(ca.ReasonKeyCompromise) != "keyCompromise" {
		t.Errorf("ReasonName(1) = %q", ca.ReasonName(1))
	}
}
