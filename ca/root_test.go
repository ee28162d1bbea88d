package ca_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

func TestGenerateRoot(t *testing.T) {
	cluster := newID(t, 1)
	tests := []struct {
		name         string
		opts         []ca.RootOption
		wantValidity time.Duration
	}{
		{"default", nil, ca.DefaultRootValidity},
		{"two years", []ca.RootOption{ca.WithRootValidity(2 * 365 * 24 * time.Hour)}, 2 * 365 * 24 * time.Hour},
		{"minimum", []ca.RootOption{ca.WithRootValidity(ca.MinCAValidity)}, ca.MinCAValidity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.GenerateRoot(detRand(2), now, cluster, tt.opts...)
			if err != nil {
				t.Fatalf("GenerateRoot(%q) = %v, want nil", cluster, err)
			}
			c := mustParseOne(t, m.Cert)
			if got, want := c.Subject.CommonName, "swarm-ca"; got != want {
				t.Errorf("GenerateRoot: CN = %q, want %q", got, want)
			}
			if got := c.Subject.Organization; len(got) != 1 || got[0] != cluster {
				t.Errorf("GenerateRoot: O = %q, want [%q]", got, cluster)
			}
			if got := c.Subject.OrganizationalUnit; len(got) != 0 {
				t.Errorf("GenerateRoot: OU = %q, want none", got)
			}
			pub, ok := c.PublicKey.(*ecdsa.PublicKey)
			if !ok || pub.Curve != elliptic.P256() {
				t.Errorf("GenerateRoot: public key %T, want ECDSA P-256", c.PublicKey)
			}
			if got, want := c.SignatureAlgorithm, x509.ECDSAWithSHA256; got != want {
				t.Errorf("GenerateRoot: signature %v, want %v", got, want)
			}
			if !bytes.Equal(c.RawIssuer, c.RawSubject) {
				t.Errorf("GenerateRoot: issuer %s, want the subject %s", c.Issuer, c.Subject)
			}
			if err := c.CheckSignatureFrom(c); err != nil {
				t.Errorf("GenerateRoot: self-signature check = %v, want nil", err)
			}
			if !c.BasicConstraintsValid || !c.IsCA {
				t.Errorf("GenerateRoot: BasicConstraintsValid, IsCA = %v, %v, want true, true", c.BasicConstraintsValid, c.IsCA)
			}
			if got, want := c.KeyUsage, x509.KeyUsageCertSign|x509.KeyUsageCRLSign; got != want {
				t.Errorf("GenerateRoot: KeyUsage = %v, want %v", got, want)
			}
			if len(c.SubjectKeyId) == 0 {
				t.Errorf("GenerateRoot: no subject key ID")
			}
			if got := c.SerialNumber; got.Sign() <= 0 || got.BitLen() < 128 {
				t.Errorf("GenerateRoot: serial %x (%d bits), want positive and at least 128 bits", got, got.BitLen())
			}
			if got, want := c.NotAfter, now.Add(tt.wantValidity); !got.Equal(want) {
				t.Errorf("GenerateRoot: NotAfter = %v, want %v", got, want)
			}
			if back := now.Sub(c.NotBefore); back <= 0 || back > 15*time.Minute {
				t.Errorf("GenerateRoot: NotBefore = %v, %v before now, want a few minutes before", c.NotBefore, back)
			}

			// The key is PKCS#8 and belongs to the certificate; the
			// bundle is the root itself and there is no chain.
			if b, _ := pem.Decode(m.Key); b == nil || b.Type != "PRIVATE KEY" {
				t.Errorf("GenerateRoot: key is not a PKCS#8 PEM block: %.40q", m.Key)
			}
			key, err := ca.ParseKey(m.Key)
			if err != nil {
				t.Fatalf("ParseKey(root key) = %v", err)
			}
			if !publicKeyEqual(key.Public(), c.PublicKey) {
				t.Errorf("GenerateRoot: key does not match the certificate")
			}
			if !bytes.Equal(m.Bundle, m.Cert) {
				t.Errorf("GenerateRoot: Bundle differs from Cert")
			}
			if len(m.Chain) != 0 {
				t.Errorf("GenerateRoot: Chain = %q, want empty", m.Chain)
			}
			if _, _, err := ca.ParseBundle(m.Bundle); err != nil {
				t.Errorf("ParseBundle(root bundle) = %v", err)
			}
			if _, err := ca.NewSigner(m); err != nil {
				t.Errorf("NewSigner(root) = %v", err)
			}
		})
	}
}

func TestGenerateRootDistinct(t *testing.T) {
	cluster := newID(t, 1)
	a := mustParseOne(t, root(t, 1, cluster).Cert)
	b := mustParseOne(t, root(t, 2, cluster).Cert)
	if publicKeyEqual(a.PublicKey, b.PublicKey) {
		t.Errorf("GenerateRoot twice: the same key both times")
	}
	if a.SerialNumber.Cmp(b.SerialNumber) == 0 {
		t.Errorf("GenerateRoot twice: the same serial %x both times", a.SerialNumber)
	}
}

func TestGenerateRootRefuses(t *testing.T) {
	cluster := newID(t, 1)
	tests := []struct {
		name    string
		cluster string
		opts    []ca.RootOption
		want    error
	}{
		{"empty cluster ID", "", nil, ca.ErrBadIdentity},
		{"validity a second under a year", cluster, []ca.RootOption{ca.WithRootValidity(ca.MinCAValidity - time.Second)}, ca.ErrExpiryTooShort},
		{"validity one hour", cluster, []ca.RootOption{ca.WithRootValidity(time.Hour)}, ca.ErrExpiryTooShort},
		{"zero validity", cluster, []ca.RootOption{ca.WithRootValidity(0)}, ca.ErrExpiryTooShort},
		{"negative validity", cluster, []ca.RootOption{ca.WithRootValidity(-ca.DefaultRootValidity)}, ca.ErrExpiryTooShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.GenerateRoot(detRand(1), now, tt.cluster, tt.opts...)
			if !errors.Is(err, tt.want) {
				t.Fatalf("GenerateRoot(%q) = %v, want %v", tt.cluster, err, tt.want)
			}
			if m.Cert != nil || m.Key != nil {
				t.Errorf("GenerateRoot(%q) returned material with its error", tt.cluster)
			}
		})
	}
}

func TestGenerateRootFailingReader(t *testing.T) {
	_, err := ca.GenerateRoot(errReader{}, now, newID(t, 1))
	if err == nil {
		t.Fatalf("GenerateRoot(failing reader) = nil error, want an error")
	}
}

func TestImport(t *testing.T) {
	p256 := testkit.NewX509CA(t, "P-256 Root", ecKey(t, elliptic.P256()), nil, now)
	p384 := testkit.NewX509CA(t, "P-384 Root", ecKey(t, elliptic.P384()), nil, now)
	rsaRoot := testkit.NewX509CA(t, "RSA Root", rsaKey(t, 2048), nil, now)
	corp := newCorpChain(t)
	// A three-level chain: issuing CA, policy CA, root.
	policy := testkit.NewX509CA(t, "Example Policy CA", ecKey(t, elliptic.P256()), corp.root, now)
	issuing := testkit.NewX509CA(t, "Example Issuing CA 2", ecKey(t, elliptic.P256()), policy, now)
	// Exactly MinCAValidity left is enough.
	yearRoot := testkit.NewX509CA(t, "Year Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotAfter = now.Add(ca.MinCAValidity)
	})

	sec1, err := x509.MarshalECPrivateKey(p256.Key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := x509.MarshalPKCS1PrivateKey(rsaKey(t, 2048))

	tests := []struct {
		name      string
		certPEM   []byte
		keyPEM    []byte
		signing   *x509.Certificate   // want Cert
		root      *x509.Certificate   // want Bundle
		chain     []*x509.Certificate // want Chain
		wantSigAl x509.SignatureAlgorithm
	}{
		{"ECDSA P-256 root", p256.CertPEM(), p256.KeyPEM(t), p256.Cert, p256.Cert, nil, x509.ECDSAWithSHA256},
		{"ECDSA P-256 root, SEC 1 key", p256.CertPEM(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), p256.Cert, p256.Cert, nil, x509.ECDSAWithSHA256},
		{"ECDSA P-384 root", p384.CertPEM(), p384.KeyPEM(t), p384.Cert, p384.Cert, nil, x509.ECDSAWithSHA384},
		{"RSA 2048 root", rsaRoot.CertPEM(), rsaRoot.KeyPEM(t), rsaRoot.Cert, rsaRoot.Cert, nil, x509.SHA256WithRSA},
		{"RSA 2048 root, PKCS#1 key", rsaRoot.CertPEM(), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: pkcs1}), rsaRoot.Cert, rsaRoot.Cert, nil, x509.SHA256WithRSA},
		{"root with exactly a year left", yearRoot.CertPEM(), yearRoot.KeyPEM(t), yearRoot.Cert, yearRoot.Cert, nil, x509.ECDSAWithSHA256},
		{"corporate intermediate and root", concat(corp.inter.CertPEM(), corp.root.CertPEM()), corp.inter.KeyPEM(t),
			corp.inter.Cert, corp.root.Cert, []*x509.Certificate{corp.inter.Cert}, x509.ECDSAWithSHA256},
		{"three-level chain", concat(issuing.CertPEM(), policy.CertPEM(), corp.root.CertPEM()), issuing.KeyPEM(t),
			issuing.Cert, corp.root.Cert, []*x509.Certificate{issuing.Cert, policy.Cert}, x509.ECDSAWithSHA256},
		{"surrounding whitespace", concat([]byte("\n\n"), p256.CertPEM(), []byte("\n \t\r\n")), p256.KeyPEM(t), p256.Cert, p256.Cert, nil, x509.ECDSAWithSHA256},
	}
	cluster := newID(t, 1)
	id := ca.Identity{NodeID: newID(t, 2), Role: ca.RoleWorker, ClusterID: cluster}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.Import(tt.certPEM, tt.keyPEM, now)
			if err != nil {
				t.Fatalf("Import = %v, want nil", err)
			}
			if got := mustParseOne(t, m.Cert); !got.Equal(tt.signing) {
				t.Errorf("Import: Cert = %s, want %s", got.Subject, tt.signing.Subject)
			}
			if got := mustParseOne(t, m.Bundle); !got.Equal(tt.root) {
				t.Errorf("Import: Bundle = %s, want %s", got.Subject, tt.root.Subject)
			}
			if want := ca.EncodeCertificates(tt.chain...); !bytes.Equal(m.Chain, want) {
				t.Errorf("Import: Chain = %d bytes, want %d (%d certificates)", len(m.Chain), len(want), len(tt.chain))
			}
			if b, _ := pem.Decode(m.Key); b == nil || b.Type != "PRIVATE KEY" {
				t.Errorf("Import: key not normalised to PKCS#8: %.40q", m.Key)
			}
			key, err := ca.ParseKey(m.Key)
			if err != nil {
				t.Fatalf("ParseKey(imported key) = %v", err)
			}
			if !publicKeyEqual(key.Public(), tt.signing.PublicKey) {
				t.Errorf("Import: key does not match the signing certificate")
			}

			// The material signs leaves that verify under its bundle.
			s := signer(t, m)
			iss, err := s.Sign(detRand(3), now, csrPEM(t, ecKey(t, elliptic.P256()), nil), id, ca.DefaultCertExpiry)
			if err != nil {
				t.Fatalf("Sign = %v", err)
			}
			leaf := mustParse(t, iss.PEM)[0]
			if got := leaf.SignatureAlgorithm; got != tt.wantSigAl {
				t.Errorf("Sign: leaf signature %v, want %v", got, tt.wantSigAl)
			}
			gotID, _, err := ca.VerifyPEM(iss.PEM, m.Bundle, now)
			if err != nil {
				t.Fatalf("VerifyPEM(leaf, bundle) = %v, want nil", err)
			}
			if gotID != id {
				t.Errorf("VerifyPEM(leaf, bundle) = %+v, want %+v", gotID, id)
			}
		})
	}
}

func TestImportRefuses(t *testing.T) {
	p256Key := ecKey(t, elliptic.P256())
	good := testkit.NewX509CA(t, "Good Root", p256Key, nil, now)
	corp := newCorpChain(t)
	other := testkit.NewX509CA(t, "Other Root", ecKey(t, elliptic.P256()), nil, now)

	leafLike := testkit.NewX509CA(t, "Not A CA", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.IsCA = false
		c.KeyUsage = x509.KeyUsageDigitalSignature
	})
	noConstraints := testkit.NewX509CA(t, "No Basic Constraints", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.BasicConstraintsValid = false
		c.IsCA = false
	})
	leafUnderRoot := testkit.NewX509CA(t, "Leaf Under Corp Root", ecKey(t, elliptic.P256()), corp.root, now, func(c *x509.Certificate) {
		c.IsCA = false
		c.KeyUsage = x509.KeyUsageDigitalSignature
	})
	expired := testkit.NewX509CA(t, "Expired Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotBefore = now.AddDate(-10, 0, 0)
		c.NotAfter = now.Add(-time.Second)
	})
	notYet := testkit.NewX509CA(t, "Future Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotBefore = now.Add(time.Hour)
	})
	shortLived := testkit.NewX509CA(t, "Short Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotAfter = now.Add(ca.MinCAValidity - time.Second)
	})
	expiredRoot := testkit.NewX509CA(t, "Expired Corp Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotBefore = now.AddDate(-10, 0, 0)
		c.NotAfter = now.Add(-time.Hour)
	})
	interOfExpired := testkit.NewX509CA(t, "Inter Of Expired", ecKey(t, elliptic.P256()), expiredRoot, now)
	p224 := testkit.NewX509CA(t, "P-224 Root", ecKey(t, elliptic.P224()), nil, now)
	p521 := testkit.NewX509CA(t, "P-521 Root", ecKey(t, elliptic.P521()), nil, now)
	ed := testkit.NewX509CA(t, "Ed25519 Root", edKey(t), nil, now)
	weak := testkit.NewX509CA(t, "RSA 1024 Root", rsaKey(t, 1024), nil, now)
	// A P-256 intermediate under a P-224 root: the root's key is refused.
	interOfP224 := testkit.NewX509CA(t, "Inter Of P-224", ecKey(t, elliptic.P256()), p224, now)

	// A root that allows no intermediate CA below it (pathlen:0): an
	// intermediate under it cannot issue anything that verifies.
	noInterRoot := testkit.NewX509CA(t, "No Intermediates Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.MaxPathLen, c.MaxPathLenZero = 0, true
	})
	interOfNoInter := testkit.NewX509CA(t, "Inter Of No Intermediates Root", ecKey(t, elliptic.P256()), noInterRoot, now)

	badDER := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x00}})
	legacyEncrypted := pem.EncodeToMemory(&pem.Block{
		Type:    "EC PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"},
		Bytes:   []byte("ciphertext"),
	})

	tests := []struct {
		name    string
		certPEM []byte
		keyPEM  []byte
		want    error
	}{
		{"not a CA", leafLike.CertPEM(), leafLike.KeyPEM(t), ca.ErrNotCA},
		{"no basic constraints", noConstraints.CertPEM(), noConstraints.KeyPEM(t), ca.ErrNotCA},
		{"leaf in the chain", concat(leafUnderRoot.CertPEM(), corp.root.CertPEM()), leafUnderRoot.KeyPEM(t), ca.ErrNotCA},
		{"intermediate alone", corp.inter.CertPEM(), corp.inter.KeyPEM(t), ca.ErrChainIncomplete},
		{"link not signed by the next", concat(corp.inter.CertPEM(), other.CertPEM()), corp.inter.KeyPEM(t), ca.ErrChainIncomplete},
		{"root followed by its intermediate", concat(corp.root.CertPEM(), corp.inter.CertPEM()), corp.root.KeyPEM(t), ca.ErrChainIncomplete},
		{"path length forbids the intermediate", concat(interOfNoInter.CertPEM(), noInterRoot.CertPEM()), interOfNoInter.KeyPEM(t), ca.ErrChainIncomplete},
		{"expired", expired.CertPEM(), expired.KeyPEM(t), ca.ErrExpiring},
		{"not yet valid", notYet.CertPEM(), notYet.KeyPEM(t), ca.ErrExpiring},
		{"a second under a year left", shortLived.CertPEM(), shortLived.KeyPEM(t), ca.ErrExpiring},
		{"expired root above a good intermediate", concat(interOfExpired.CertPEM(), expiredRoot.CertPEM()), interOfExpired.KeyPEM(t), ca.ErrExpiring},
		{"key does not match", good.CertPEM(), other.KeyPEM(t), ca.ErrKeyMismatch},
		{"root key given for the intermediate", concat(corp.inter.CertPEM(), corp.root.CertPEM()), corp.root.KeyPEM(t), ca.ErrKeyMismatch},
		{"P-224 CA", p224.CertPEM(), p224.KeyPEM(t), ca.ErrUnsupportedKey},
		{"P-521 CA", p521.CertPEM(), p521.KeyPEM(t), ca.ErrUnsupportedKey},
		{"P-224 root above a P-256 intermediate", concat(interOfP224.CertPEM(), p224.CertPEM()), interOfP224.KeyPEM(t), ca.ErrUnsupportedKey},
		{"Ed25519 CA", ed.CertPEM(), ed.KeyPEM(t), ca.ErrUnsupportedKey},
		{"Ed25519 key for a P-256 certificate", good.CertPEM(), testkit.KeyPEM(t, edKey(t)), ca.ErrUnsupportedKey},
		{"RSA 1024 CA", weak.CertPEM(), weak.KeyPEM(t), ca.ErrWeakKey},
		{"RSA 1024 key for a P-256 certificate", good.CertPEM(), testkit.KeyPEM(t, rsaKey(t, 1024)), ca.ErrWeakKey},
		{"empty certificate", nil, good.KeyPEM(t), ca.ErrMalformedPEM},
		{"certificate not PEM", []byte("-----BEGIN garbage"), good.KeyPEM(t), ca.ErrMalformedPEM},
		{"certificate block not DER", badDER, good.KeyPEM(t), ca.ErrMalformedPEM},
		{"key block where the certificate goes", good.KeyPEM(t), good.KeyPEM(t), ca.ErrMalformedPEM},
		{"trailing text after the certificate", concat(good.CertPEM(), []byte("trailing")), good.KeyPEM(t), ca.ErrMalformedPEM},
		{"empty key", good.CertPEM(), nil, ca.ErrMalformedPEM},
		{"key not PEM", good.CertPEM(), []byte("not a key"), ca.ErrMalformedPEM},
		{"key block not DER", good.CertPEM(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("not DER")}), ca.ErrMalformedPEM},
		{"certificate where the key goes", good.CertPEM(), good.CertPEM(), ca.ErrMalformedPEM},
		{"encrypted PKCS#8 key", good.CertPEM(), encrypted, ca.ErrMalformedPEM},
		{"legacy encrypted key", good.CertPEM(), legacyEncrypted, ca.ErrMalformedPEM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.Import(tt.certPEM, tt.keyPEM, now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Import = %v, want %v", err, tt.want)
			}
			if m.Cert != nil || m.Key != nil || m.Bundle != nil {
				t.Errorf("Import returned material with its error %v", err)
			}
		})
	}
}

// The message for an encrypted key says what to do.
func TestImportEncryptedKeySaysDecrypt(t *testing.T) {
	good := testkit.NewX509CA(t, "Good Root", ecKey(t, elliptic.P256()), nil, now)
	enc := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0x00}})
	_, err := ca.Import(good.CertPEM(), enc, now)
	if !errors.Is(err, ca.ErrMalformedPEM) || !strings.Contains(err.Error(), "decrypt") {
		t.Errorf("Import(encrypted key) = %v, want %v saying to decrypt the key", err, ca.ErrMalformedPEM)
	}
}

// An imported root's remaining validity is measured at the now given.
func TestImportUsesGivenTime(t *testing.T) {
	r := testkit.NewX509CA(t, "Root", ecKey(t, elliptic.P256()), nil, now) // valid to now+10y
	tests := []struct {
		at   time.Time
		want error
	}{
		{now, nil},
		{now.AddDate(8, 0, 0), nil},
		{r.Cert.NotAfter.Add(-ca.MinCAValidity), nil},
		{r.Cert.NotAfter.Add(-ca.MinCAValidity + time.Second), ca.ErrExpiring},
		{r.Cert.NotAfter, ca.ErrExpiring},
		{r.Cert.NotBefore.Add(-time.Second), ca.ErrExpiring},
		{r.Cert.NotBefore, nil},
	}
	for _, tt := range tests {
		_, err := ca.Import(r.CertPEM(), r.KeyPEM(t), tt.at)
		if !errors.Is(err, tt.want) {
			t.Errorf("Import(root, %v) = %v, want %v", tt.at, err, tt.want)
		}
	}
}
