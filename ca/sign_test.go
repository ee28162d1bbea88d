package ca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// signFixture is a generated root and its Signer.
type signFixture struct {
	cluster string
	m       ca.Material
	s       *ca.Signer
	root    *x509.Certificate
}

func newSignFixture(t testing.TB, opts ...ca.RootOption) signFixture {
	t.Helper()
	cluster := newID(t, 100)
	m := root(t, 101, cluster, opts...)
	return signFixture{cluster: cluster, m: m, s: signer(t, m), root: mustParseOne(t, m.Cert)}
}

func (f signFixture) id(t testing.TB, seed uint64, role ca.Role) ca.Identity {
	t.Helper()
	return ca.Identity{NodeID: newID(t, seed), Role: role, ClusterID: f.cluster}
}

func TestSign(t *testing.T) {
	f := newSignFixture(t)
	keys := []struct {
		name        string
		key         crypto.Signer
		wantUsage   x509.KeyUsage
		wantPubType string
	}{
		{"ECDSA P-256", ecKey(t, elliptic.P256()), x509.KeyUsageDigitalSignature, "*ecdsa.PublicKey"},
		{"ECDSA P-384", ecKey(t, elliptic.P384()), x509.KeyUsageDigitalSignature, "*ecdsa.PublicKey"},
		{"ECDSA P-521", ecKey(t, elliptic.P521()), x509.KeyUsageDigitalSignature, "*ecdsa.PublicKey"},
		{"Ed25519", edKey(t), x509.KeyUsageDigitalSignature, "ed25519.PublicKey"},
		{"RSA 2048", rsaKey(t, 2048), x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, "*rsa.PublicKey"},
	}
	roles := []ca.Role{ca.RoleManager, ca.RoleWorker}
	validities := []time.Duration{ca.MinCertExpiry, ca.DefaultCertExpiry, 365 * 24 * time.Hour}
	seed := uint64(200)
	for _, k := range keys {
		for _, role := range roles {
			for _, validity := range validities {
				seed++
				id := f.id(t, seed, role)
				t.Run(k.name+"/"+role.Short()+"/"+validity.String(), func(t *testing.T) {
					csr := csrPEM(t, k.key, nil)
					iss, err := f.s.Sign(detRand(seed), now, csr, id, validity)
					if err != nil {
						t.Fatalf("Sign(%s, %+v, %v) = %v, want nil", k.name, id, validity, err)
					}
					certs := mustParse(t, iss.PEM)
					if len(certs) != 1 {
						t.Fatalf("Sign: %d certificates, want the leaf alone under a root signer", len(certs))
					}
					checkLeaf(t, certs[0], id, k.key.Public())
					if got := certs[0].KeyUsage; got != k.wantUsage {
						t.Errorf("Sign(%s): KeyUsage = %v, want %v", k.name, got, k.wantUsage)
					}
					if got, want := certs[0].SignatureAlgorithm, x509.ECDSAWithSHA256; got != want {
						t.Errorf("Sign(%s): signature %v, want %v for a P-256 root", k.name, got, want)
					}
					if got, want := certs[0].NotBefore, now.Add(-time.Hour); !got.Equal(want) {
						t.Errorf("Sign: NotBefore = %v, want %v", got, want)
					}
					if got, want := certs[0].NotAfter, now.Add(validity); !got.Equal(want) {
						t.Errorf("Sign: NotAfter = %v, want %v", got, want)
					}
					if !iss.NotBefore.Equal(certs[0].NotBefore) || !iss.NotAfter.Equal(certs[0].NotAfter) {
						t.Errorf("Sign: Issued times %v..%v, want the certificate's %v..%v", iss.NotBefore, iss.NotAfter, certs[0].NotBefore, certs[0].NotAfter)
					}
					if iss.Serial == nil || iss.Serial.Cmp(certs[0].SerialNumber) != 0 {
						t.Errorf("Sign: Issued.Serial = %v, want the certificate's %x", iss.Serial, certs[0].SerialNumber)
					}
					if err := certs[0].CheckSignatureFrom(f.root); err != nil {
						t.Errorf("Sign: leaf signature does not check against the root: %v", err)
					}
					gotID, status, err := ca.VerifyPEM(iss.PEM, f.m.Bundle, now)
					if err != nil || gotID != id {
						t.Fatalf("VerifyPEM(leaf) = %+v, %v, want %+v, nil", gotID, err, id)
					}
					if want := ca.StatusOf(f.root); !status.Equal(want) {
						t.Errorf("VerifyPEM(leaf): status %v, want %v", status, want)
					}
				})
			}
		}
	}
}

// checkLeaf checks what every node certificate must say.
func checkLeaf(t *testing.T, c *x509.Certificate, id ca.Identity, pub crypto.PublicKey) {
	t.Helper()
	if got := c.Subject.CommonName; got != id.NodeID {
		t.Errorf("leaf CN = %q, want %q", got, id.NodeID)
	}
	if got := c.Subject.OrganizationalUnit; !slices.Equal(got, []string{string(id.Role)}) {
		t.Errorf("leaf OU = %q, want [%q]", got, id.Role)
	}
	if got := c.Subject.Organization; !slices.Equal(got, []string{id.ClusterID}) {
		t.Errorf("leaf O = %q, want [%q]", got, id.ClusterID)
	}
	// Nothing else in the subject: exactly three attributes.
	var rdn pkix.RDNSequence
	if _, err := asn1.Unmarshal(c.RawSubject, &rdn); err != nil {
		t.Fatalf("leaf subject does not parse: %v", err)
	}
	if n := len(rdn); n != 3 {
		t.Errorf("leaf subject %s has %d attributes, want 3 (O, OU, CN)", c.Subject, n)
	}
	if got, want := c.DNSNames, []string{string(id.Role), id.NodeID}; !slices.Equal(got, want) {
		t.Errorf("leaf DNS SANs = %q, want %q", got, want)
	}
	if len(c.IPAddresses) != 0 || len(c.URIs) != 0 || len(c.EmailAddresses) != 0 {
		t.Errorf("leaf SANs: IP %v, URI %v, email %v, want none", c.IPAddresses, c.URIs, c.EmailAddresses)
	}
	if got, want := c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(got, want) {
		t.Errorf("leaf ExtKeyUsage = %v, want %v", got, want)
	}
	if len(c.UnknownExtKeyUsage) != 0 {
		t.Errorf("leaf unknown ExtKeyUsage = %v, want none", c.UnknownExtKeyUsage)
	}
	if c.IsCA {
		t.Errorf("leaf IsCA = true, want false")
	}
	if c.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		t.Errorf("leaf KeyUsage = %v, want no CertSign or CRLSign", c.KeyUsage)
	}
	if got := c.SerialNumber; got.Sign() <= 0 || got.BitLen() < 128 {
		t.Errorf("leaf serial %x has %d bits, want positive and at least 128", got, got.BitLen())
	}
	if !publicKeyEqual(c.PublicKey, pub) {
		t.Errorf("leaf public key is not the CSR's key")
	}
	// RFC 5280 4.2.1.2: a Subject Key Identifier, derived from the key.
	if len(c.SubjectKeyId) != 20 || bytes.Equal(c.SubjectKeyId, c.AuthorityKeyId) {
		t.Errorf("leaf SubjectKeyId = %x (authority %x), want the leaf key's own 20-byte identifier", c.SubjectKeyId, c.AuthorityKeyId)
	}
}

// TestSignIgnoresForgedCSRSubject: a worker's CSR that names a manager of
// another cluster and asks for extra names and CA powers gets none of it.
func TestSignIgnoresForgedCSRSubject(t *testing.T) {
	f := newSignFixture(t)
	worker := f.id(t, 300, ca.RoleWorker)
	managerID := newID(t, 301)
	otherCluster := newID(t, 302)
	basicCA, err := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	if err != nil {
		t.Fatal(err)
	}
	key := ecKey(t, elliptic.P256())
	csr := csrPEM(t, key, &x509.CertificateRequest{
		Subject: pkix.Name{
			CommonName:         managerID,
			OrganizationalUnit: []string{string(ca.RoleManager), "admins"},
			Organization:       []string{otherCluster, f.cluster},
		},
		DNSNames:       []string{string(ca.RoleManager), managerID, "evil.example.com"},
		IPAddresses:    []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		URIs:           []*url.URL{{Scheme: "spiffe", Host: "cluster", Path: "/manager"}},
		EmailAddresses: []string{"root@example.com"},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: basicCA}, // basicConstraints CA:true
		},
	})
	iss, err := f.s.Sign(detRand(303), now, csr, worker, ca.DefaultCertExpiry)
	if err != nil {
		t.Fatalf("Sign(forged CSR, %+v) = %v, want nil", worker, err)
	}
	leaf := mustParse(t, iss.PEM)[0]
	checkLeaf(t, leaf, worker, key.Public())
	for _, bad := range []string{managerID, otherCluster, string(ca.RoleManager), "evil.example.com", "admins", "root@example.com", "spiffe"} {
		if bytes.Contains(leaf.Raw, []byte(bad)) {
			t.Errorf("Sign(forged CSR): certificate contains %q from the CSR", bad)
		}
	}
	gotID, _, err := ca.VerifyPEM(iss.PEM, f.m.Bundle, now)
	if err != nil || gotID != worker {
		t.Errorf("VerifyPEM(forged CSR's leaf) = %+v, %v, want %+v, nil", gotID, err, worker)
	}
}

func TestSignSerialsDistinct(t *testing.T) {
	f := newSignFixture(t)
	csr := csrPEM(t, ecKey(t, elliptic.P256()), nil)
	id := f.id(t, 400, ca.RoleWorker)
	r := detRand(401)
	seen := map[string]bool{}
	for i := range 64 {
		iss, err := f.s.Sign(r, now, csr, id, ca.DefaultCertExpiry)
		if err != nil {
			t.Fatalf("Sign #%d = %v", i, err)
		}
		if iss.Serial.BitLen() < 128 {
			t.Errorf("Sign #%d: serial %x has %d bits, want at least 128", i, iss.Serial, iss.Serial.BitLen())
		}
		k := iss.Serial.String()
		if seen[k] {
			t.Fatalf("Sign #%d: serial %x issued twice", i, iss.Serial)
		}
		seen[k] = true
	}
}

// The validity is cut to the CA's own expiry.
func TestSignClampsToCAExpiry(t *testing.T) {
	f := newSignFixture(t, ca.WithRootValidity(ca.MinCAValidity))
	caEnd := f.root.NotAfter
	csr := csrPEM(t, ecKey(t, elliptic.P256()), nil)
	id := f.id(t, 500, ca.RoleManager)
	tests := []struct {
		name     string
		at       time.Time
		validity time.Duration
		want     time.Time
	}{
		{"inside", now, 30 * 24 * time.Hour, now.Add(30 * 24 * time.Hour)},
		{"ends with the CA", now, ca.MinCAValidity, caEnd},
		{"past the CA", now, 2 * ca.MinCAValidity, caEnd},
		{"CA ends in half an hour", caEnd.Add(-30 * time.Minute), ca.DefaultCertExpiry, caEnd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss, err := f.s.Sign(detRand(501), tt.at, csr, id, tt.validity)
			if err != nil {
				t.Fatalf("Sign(at %v, %v) = %v", tt.at, tt.validity, err)
			}
			if !iss.NotAfter.Equal(tt.want) {
				t.Errorf("Sign(at %v, %v): NotAfter = %v, want %v", tt.at, tt.validity, iss.NotAfter, tt.want)
			}
			if leaf := mustParse(t, iss.PEM)[0]; !leaf.NotAfter.Equal(tt.want) {
				t.Errorf("Sign(at %v, %v): certificate NotAfter = %v, want %v", tt.at, tt.validity, leaf.NotAfter, tt.want)
			}
			if _, _, err := ca.VerifyPEM(iss.PEM, f.m.Bundle, tt.at); err != nil {
				t.Errorf("VerifyPEM(at %v) = %v", tt.at, err)
			}
		})
	}
	// Once the CA has expired nothing can be issued.
	for _, at := range []time.Time{caEnd, caEnd.Add(time.Hour)} {
		if _, err := f.s.Sign(detRand(502), at, csr, id, ca.DefaultCertExpiry); !errors.Is(err, ca.ErrExpiring) {
			t.Errorf("Sign(at %v, CA expired at %v) = %v, want %v", at, caEnd, err, ca.ErrExpiring)
		}
	}
}

// A leaf is clamped to the earliest expiry of every certificate it needs,
// the bundle's root included, not only the signing certificate's.
func TestSignClampsToChainExpiry(t *testing.T) {
	rootEnd := now.Add(ca.MinCAValidity + 24*time.Hour)
	corpRoot := testkit.NewX509CA(t, "Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) { c.NotAfter = rootEnd })
	inter := testkit.NewX509CA(t, "Inter", ecKey(t, elliptic.P256()), corpRoot, now) // outlives its root
	m, err := ca.Import(concat(inter.CertPEM(), corpRoot.CertPEM()), inter.KeyPEM(t), now)
	if err != nil {
		t.Fatalf("Import = %v", err)
	}
	id := ca.Identity{NodeID: newID(t, 1), Role: ca.RoleWorker, ClusterID: newID(t, 2)}
	iss, err := signer(t, m).Sign(detRand(3), now, csrPEM(t, ecKey(t, elliptic.P256()), nil), id, 2*ca.MinCAValidity)
	if err != nil {
		t.Fatalf("Sign = %v", err)
	}
	if !iss.NotAfter.Equal(rootEnd) {
		t.Errorf("Sign(validity %v) under a root that ends %v: NotAfter = %v, want %v", 2*ca.MinCAValidity, rootEnd, iss.NotAfter, rootEnd)
	}
	if _, _, err := ca.VerifyPEM(iss.PEM, m.Bundle, iss.NotAfter); err != nil {
		t.Errorf("VerifyPEM(leaf, at its NotAfter %v) = %v, want nil", iss.NotAfter, err)
	}
}

func TestSignRefuses(t *testing.T) {
	f := newSignFixture(t)
	good := f.id(t, 600, ca.RoleWorker)
	p256 := ecKey(t, elliptic.P256())
	goodCSR := csrPEM(t, p256, nil)

	// Tamper with one byte of the signed part (the subject's CN).
	tamperDER := func() []byte {
		b, _ := pem.Decode(csrPEM(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "tamper-me"}}))
		der := bytes.Clone(b.Bytes)
		i := bytes.Index(der, []byte("tamper-me"))
		if i < 0 {
			t.Fatalf("CN not found in CSR DER")
		}
		der[i] ^= 0x01
		if _, err := x509.ParseCertificateRequest(der); err != nil {
			t.Fatalf("tampered CSR no longer parses: %v", err)
		}
		return der
	}()
	tampered := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tamperDER})
	// Tamper with the signature itself.
	sigDER := func() []byte {
		b, _ := pem.Decode(goodCSR)
		der := bytes.Clone(b.Bytes)
		der[len(der)-3] ^= 0x40
		return der
	}()

	tests := []struct {
		name     string
		csr      []byte
		id       ca.Identity
		validity time.Duration
		want     error
	}{
		{"tampered subject", tampered, good, ca.DefaultCertExpiry, ca.ErrCSRSignature},
		{"tampered subject, DER", tamperDER, good, ca.DefaultCertExpiry, ca.ErrCSRSignature},
		{"tampered signature", sigDER, good, ca.DefaultCertExpiry, ca.ErrCSRSignature},
		{"RSA 1024 key", csrPEM(t, rsaKey(t, 1024), nil), good, ca.DefaultCertExpiry, ca.ErrWeakKey},
		{"ECDSA P-224 key", csrPEM(t, ecKey(t, elliptic.P224()), nil), good, ca.DefaultCertExpiry, ca.ErrUnsupportedKey},
		{"garbage", []byte("this is not a CSR"), good, ca.DefaultCertExpiry, ca.ErrBadCSR},
		{"empty", nil, good, ca.DefaultCertExpiry, ca.ErrBadCSR},
		{"garbage in a CSR block", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), good, ca.DefaultCertExpiry, ca.ErrBadCSR},
		{"certificate block", f.m.Cert, good, ca.DefaultCertExpiry, ca.ErrBadCSR},
		{"private key block", f.m.Key, good, ca.DefaultCertExpiry, ca.ErrBadCSR},
		{"expiry under an hour", goodCSR, good, ca.MinCertExpiry - time.Second, ca.ErrExpiryTooShort},
		{"zero expiry", goodCSR, good, 0, ca.ErrExpiryTooShort},
		{"negative expiry", goodCSR, good, -ca.DefaultCertExpiry, ca.ErrExpiryTooShort},
		{"empty node ID", goodCSR, ca.Identity{Role: ca.RoleWorker, ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"short node ID", goodCSR, ca.Identity{NodeID: good.NodeID[1:], Role: ca.RoleWorker, ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"long node ID", goodCSR, ca.Identity{NodeID: good.NodeID + "0", Role: ca.RoleWorker, ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"upper-case node ID", goodCSR, ca.Identity{NodeID: "ABCDEFGHIJKLMNOPQRSTUVWXY", Role: ca.RoleWorker, ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"node ID over 128 bits", goodCSR, ca.Identity{NodeID: "zzzzzzzzzzzzzzzzzzzzzzzzz", Role: ca.RoleWorker, ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"node ID with a comma", goodCSR, ca.Identity{NodeID: "abcdefghijkl,mnopqrstuvwx", Role: ca.RoleWorker, ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"unknown role", goodCSR, ca.Identity{NodeID: good.NodeID, Role: "swarm-admin", ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"short role name", goodCSR, ca.Identity{NodeID: good.NodeID, Role: "manager", ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"empty role", goodCSR, ca.Identity{NodeID: good.NodeID, ClusterID: f.cluster}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"empty cluster ID", goodCSR, ca.Identity{NodeID: good.NodeID, Role: ca.RoleWorker}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
		{"bad cluster ID", goodCSR, ca.Identity{NodeID: good.NodeID, Role: ca.RoleWorker, ClusterID: "my-cluster"}, ca.DefaultCertExpiry, ca.ErrBadIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss, err := f.s.Sign(detRand(601), now, tt.csr, tt.id, tt.validity)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Sign(%+v, %v) = %v, want %v", tt.id, tt.validity, err, tt.want)
			}
			if iss.PEM != nil {
				t.Errorf("Sign returned a certificate with its error")
			}
		})
	}
	// The same CSR and identity are fine with a proper expiry: the
	// refusals above are for the reason named.
	if _, err := f.s.Sign(detRand(602), now, goodCSR, good, ca.MinCertExpiry); err != nil {
		t.Errorf("Sign(good CSR, %+v, %v) = %v, want nil", good, ca.MinCertExpiry, err)
	}
}

func TestSignFailingReader(t *testing.T) {
	f := newSignFixture(t)
	_, err := f.s.Sign(errReader{}, now, csrPEM(t, ecKey(t, elliptic.P256()), nil), f.id(t, 1, ca.RoleWorker), ca.DefaultCertExpiry)
	if !errors.Is(err, errRead) {
		t.Errorf("Sign(failing reader) = %v, want %v", err, errRead)
	}
}

func TestSignKey(t *testing.T) {
	f := newSignFixture(t)
	good := f.id(t, 700, ca.RoleManager)
	x25519, err := ecdh.X25519().GenerateKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pub  crypto.PublicKey
		id   ca.Identity
		want error
	}{
		{"ECDSA P-256", ecKey(t, elliptic.P256()).Public(), good, nil},
		{"Ed25519", edKey(t).Public(), good, nil},
		{"RSA 2048", rsaKey(t, 2048).Public(), good, nil},
		{"RSA 1024", rsaKey(t, 1024).Public(), good, ca.ErrWeakKey},
		{"ECDSA P-224", ecKey(t, elliptic.P224()).Public(), good, ca.ErrUnsupportedKey},
		{"X25519", x25519.PublicKey(), good, ca.ErrUnsupportedKey},
		{"nil key", nil, good, ca.ErrUnsupportedKey},
		{"bad identity", ecKey(t, elliptic.P256()).Public(), ca.Identity{NodeID: "x", Role: ca.RoleWorker, ClusterID: f.cluster}, ca.ErrBadIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss, err := f.s.SignKey(detRand(701), now, tt.pub, tt.id, ca.DefaultCertExpiry)
			if !errors.Is(err, tt.want) {
				t.Fatalf("SignKey(%T, %+v) = %v, want %v", tt.pub, tt.id, err, tt.want)
			}
			if err != nil {
				return
			}
			leaf := mustParseOne(t, iss.PEM)
			checkLeaf(t, leaf, tt.id, tt.pub)
		})
	}
}

func TestParseCSR(t *testing.T) {
	p256 := ecKey(t, elliptic.P256())
	ed := edKey(t)
	pemCSR := csrPEM(t, p256, nil)
	b, _ := pem.Decode(pemCSR)
	newType := pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: b.Bytes})
	tests := []struct {
		name string
		csr  []byte
		want crypto.PublicKey
	}{
		{"PEM", pemCSR, p256.Public()},
		{"DER", b.Bytes, p256.Public()},
		{"NEW CERTIFICATE REQUEST", newType, p256.Public()},
		{"Ed25519", csrPEM(t, ed, nil), ed.Public()},
		{"RSA 2048", csrPEM(t, rsaKey(t, 2048), nil), rsaKey(t, 2048).Public()},
		{"ECDSA P-521", csrPEM(t, ecKey(t, elliptic.P521()), nil), nil}, // key checked below
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub, err := ca.ParseCSR(tt.csr)
			if err != nil {
				t.Fatalf("ParseCSR = %v, want nil", err)
			}
			want := tt.want
			if want == nil {
				req, err := x509.ParseCertificateRequest(pemOrDER(tt.csr))
				if err != nil {
					t.Fatal(err)
				}
				want = req.PublicKey
			}
			if !publicKeyEqual(pub, want) {
				t.Errorf("ParseCSR = %T key, not the CSR's key", pub)
			}
		})
	}
}

func pemOrDER(p []byte) []byte {
	if b, _ := pem.Decode(p); b != nil {
		return b.Bytes
	}
	return p
}
