package ca_test

import (
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

func TestVerify(t *testing.T) {
	f := newSignFixture(t)
	corp := newCorpChain(t)
	corpM := corp.material(t)
	corpS := signer(t, corpM)
	tests := []struct {
		name       string
		s          *ca.Signer
		bundle     []byte
		wantIssuer *x509.Certificate
	}{
		{"generated root", f.s, f.m.Bundle, f.root},
		{"corporate intermediate", corpS, corpM.Bundle, corp.inter.Cert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, role := range []ca.Role{ca.RoleManager, ca.RoleWorker} {
				id := ca.Identity{NodeID: newID(t, uint64(800+i)), Role: role, ClusterID: f.cluster}
				iss, err := tt.s.Sign(detRand(810), now, csrPEM(t, ecKey(t, elliptic.P256()), nil), id, ca.DefaultCertExpiry)
				if err != nil {
					t.Fatalf("Sign = %v", err)
				}
				want := ca.StatusOf(tt.wantIssuer)
				// At issue time, across the validity, and at its very end.
				for _, at := range []time.Time{now, now.Add(ca.DefaultCertExpiry / 2), iss.NotAfter} {
					gotID, status, err := ca.VerifyPEM(iss.PEM, tt.bundle, at)
					if err != nil {
						t.Fatalf("VerifyPEM(at %v) = %v, want nil", at, err)
					}
					if gotID != id {
						t.Errorf("VerifyPEM(at %v) identity = %+v, want %+v", at, gotID, id)
					}
					if !status.Equal(want) {
						t.Errorf("VerifyPEM(at %v) status = %v, want %v", at, status, want)
					}
				}
				// Verify on parsed values agrees.
				pool, _, err := ca.ParseBundle(tt.bundle)
				if err != nil {
					t.Fatal(err)
				}
				gotID, status, err := ca.Verify(mustParse(t, iss.PEM), pool, now)
				if err != nil || gotID != id || !status.Equal(want) {
					t.Errorf("Verify = %+v, %v, %v, want %+v, %v, nil", gotID, status, err, id, want)
				}
			}
		})
	}
}

func TestVerifyRefuses(t *testing.T) {
	f := newSignFixture(t)
	id := f.id(t, 900, ca.RoleWorker)
	iss, err := f.s.Sign(detRand(901), now, csrPEM(t, ecKey(t, elliptic.P256()), nil), id, ca.DefaultCertExpiry)
	if err != nil {
		t.Fatalf("Sign = %v", err)
	}
	// Another cluster's root, and a leaf it signed for the same identity.
	foreign := root(t, 902, newID(t, 903))
	foreignIss, err := signer(t, foreign).Sign(detRand(904), now, csrPEM(t, ecKey(t, elliptic.P256()), nil), id, ca.DefaultCertExpiry)
	if err != nil {
		t.Fatalf("Sign(foreign) = %v", err)
	}
	corp := newCorpChain(t)
	corpM := corp.material(t)
	corpIss, err := signer(t, corpM).Sign(detRand(905), now, csrPEM(t, ecKey(t, elliptic.P256()), nil), id, ca.DefaultCertExpiry)
	if err != nil {
		t.Fatalf("Sign(corporate) = %v", err)
	}
	corpLeafAlone := pemBlocks(corpIss.PEM)[0]

	// A leaf the root signed outside Sign: no client/server auth, and one
	// with a subject that is no node identity.
	rootKey, err := ca.ParseKey(f.m.Key)
	if err != nil {
		t.Fatal(err)
	}
	rootCA := &testkit.CA{Cert: f.root, Key: rootKey}
	codeSigning := testkit.NewX509CA(t, id.NodeID, ecKey(t, elliptic.P256()), rootCA, now, func(c *x509.Certificate) {
		c.Subject = pkix.Name{CommonName: id.NodeID, OrganizationalUnit: []string{string(id.Role)}, Organization: []string{id.ClusterID}}
		c.IsCA, c.KeyUsage = false, x509.KeyUsageDigitalSignature
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}
	})
	noIdentity := testkit.NewX509CA(t, "alice", ecKey(t, elliptic.P256()), rootCA, now, func(c *x509.Certificate) {
		c.IsCA, c.KeyUsage = false, x509.KeyUsageDigitalSignature
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})

	tests := []struct {
		name   string
		chain  []byte
		bundle []byte
		at     time.Time
		want   error
	}{
		{"foreign cluster's leaf", foreignIss.PEM, f.m.Bundle, now, ca.ErrUntrusted},
		{"leaf under the foreign bundle", iss.PEM, foreign.Bundle, now, ca.ErrUntrusted},
		{"expired", iss.PEM, f.m.Bundle, now.Add(ca.DefaultCertExpiry + time.Hour), ca.ErrUntrusted},
		{"a second after NotAfter", iss.PEM, f.m.Bundle, iss.NotAfter.Add(time.Second), ca.ErrUntrusted},
		{"before NotBefore", iss.PEM, f.m.Bundle, iss.NotBefore.Add(-time.Second), ca.ErrUntrusted},
		{"corporate leaf without its intermediate", corpLeafAlone, corpM.Bundle, now, ca.ErrUntrusted},
		{"code-signing leaf", codeSigning.CertPEM(), f.m.Bundle, now, ca.ErrUntrusted},
		{"leaf naming no node", noIdentity.CertPEM(), f.m.Bundle, now, ca.ErrBadIdentity},
		{"bundle not self-signed", corpIss.PEM, corpM.Chain, now, ca.ErrChainIncomplete},
		{"bundle not a CA", iss.PEM, concat(f.m.Bundle, pemBlocks(iss.PEM)[0]), now, ca.ErrNotCA},
		{"empty bundle", iss.PEM, nil, now, ca.ErrMalformedPEM},
		{"empty chain", nil, f.m.Bundle, now, ca.ErrMalformedPEM},
		{"chain not PEM", []byte("garbage"), f.m.Bundle, now, ca.ErrMalformedPEM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotID, status, err := ca.VerifyPEM(tt.chain, tt.bundle, tt.at)
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyPEM(at %v) = %v, want %v", tt.at, err, tt.want)
			}
			if gotID != (ca.Identity{}) || status.IssuerSubject != nil {
				t.Errorf("VerifyPEM(at %v) = %+v, %v with its error, want zero values", tt.at, gotID, status)
			}
		})
	}
}

// TestVerifyKeepsX509Cause: Verify's error wraps crypto/x509's, so that a
// caller can tell an unknown authority from an expired certificate or a
// wrong usage with errors.As, not by reading the message.
func TestVerifyKeepsX509Cause(t *testing.T) {
	f := newSignFixture(t)
	id := f.id(t, 950, ca.RoleWorker)
	iss, err := f.s.Sign(detRand(951), now, csrPEM(t, ecKey(t, elliptic.P256()), nil), id, ca.DefaultCertExpiry)
	if err != nil {
		t.Fatalf("Sign = %v", err)
	}
	foreign := root(t, 952, newID(t, 953))
	rootKey, err := ca.ParseKey(f.m.Key)
	if err != nil {
		t.Fatal(err)
	}
	codeSigning := testkit.NewX509CA(t, id.NodeID, ecKey(t, elliptic.P256()), &testkit.CA{Cert: f.root, Key: rootKey}, now, func(c *x509.Certificate) {
		c.Subject = pkix.Name{CommonName: id.NodeID, OrganizationalUnit: []string{string(id.Role)}, Organization: []string{id.ClusterID}}
		c.IsCA, c.KeyUsage = false, x509.KeyUsageDigitalSignature
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}
	})

	t.Run("unknown authority", func(t *testing.T) {
		_, _, err := ca.VerifyPEM(iss.PEM, foreign.Bundle, now)
		var unknown x509.UnknownAuthorityError
		if !errors.Is(err, ca.ErrUntrusted) || !errors.As(err, &unknown) {
			t.Fatalf("VerifyPEM(under another root) = %v, want ca.ErrUntrusted wrapping x509.UnknownAuthorityError", err)
		}
		if unknown.Cert == nil || !unknown.Cert.Equal(mustParseOne(t, iss.PEM)) {
			t.Errorf("x509.UnknownAuthorityError.Cert = %v, want the leaf", unknown.Cert)
		}
	})
	for _, tc := range []struct {
		name  string
		chain []byte
		at    time.Time
		want  x509.InvalidReason
	}{
		{"expired", iss.PEM, iss.NotAfter.Add(time.Second), x509.Expired},
		{"code signing only", codeSigning.CertPEM(), now, x509.IncompatibleUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ca.VerifyPEM(tc.chain, f.m.Bundle, tc.at)
			var invalid x509.CertificateInvalidError
			if !errors.Is(err, ca.ErrUntrusted) || !errors.As(err, &invalid) {
				t.Fatalf("VerifyPEM = %v, want ca.ErrUntrusted wrapping x509.CertificateInvalidError", err)
			}
			if invalid.Reason != tc.want {
				t.Errorf("x509.CertificateInvalidError.Reason = %v, want %v", invalid.Reason, tc.want)
			}
		})
	}
}

func TestVerifyEmptyChain(t *testing.T) {
	pool, _, err := ca.ParseBundle(newSignFixture(t).m.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Verify(nil, pool, now); !errors.Is(err, ca.ErrUntrusted) {
		t.Errorf("Verify(no certificates) = %v, want %v", err, ca.ErrUntrusted)
	}
}

// A self-signed certificate that names a node and sits in the bundle is a
// root, not a node certificate: Verify refuses it (and does not panic).
func TestVerifyRootAsLeaf(t *testing.T) {
	id := ca.Identity{NodeID: newID(t, 1), Role: ca.RoleManager, ClusterID: newID(t, 2)}
	self := testkit.NewX509CA(t, id.NodeID, ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.Subject = pkix.Name{CommonName: id.NodeID, OrganizationalUnit: []string{string(id.Role)}, Organization: []string{id.ClusterID}}
	})
	_, _, err := ca.VerifyPEM(self.CertPEM(), self.CertPEM(), now)
	if !errors.Is(err, ca.ErrUntrusted) {
		t.Errorf("VerifyPEM(root as its own leaf) = %v, want %v", err, ca.ErrUntrusted)
	}
}

func TestTLSStatus(t *testing.T) {
	f := newSignFixture(t)
	other := mustParseOne(t, root(t, 1001, f.cluster).Cert) // same subject, new key
	a, b := ca.StatusOf(f.root), ca.StatusOf(f.root)
	if !a.Equal(b) {
		t.Errorf("StatusOf(root).Equal(StatusOf(root)) = false, want true")
	}
	c := ca.StatusOf(other)
	if a.Equal(c) {
		t.Errorf("StatusOf(root).Equal(StatusOf(same subject, other key)) = true, want false")
	}
	corp := newCorpChain(t)
	if a.Equal(ca.StatusOf(corp.inter.Cert)) {
		t.Errorf("StatusOf(root).Equal(StatusOf(other CA)) = true, want false")
	}
	s := a.String()
	for _, want := range []string{"CN=swarm-ca", "O=" + f.cluster, "key:"} {
		if !strings.Contains(s, want) {
			t.Errorf("TLSStatus.String() = %q, want it to contain %q", s, want)
		}
	}
	if s == c.String() {
		t.Errorf("TLSStatus.String() = %q for two keys, want the key fingerprint to differ", s)
	}
	// Changing the copy does not change the certificate.
	a.IssuerSubject[0] ^= 0xff
	if !ca.StatusOf(f.root).Equal(b) {
		t.Errorf("StatusOf shares its subject bytes with the certificate")
	}
}
