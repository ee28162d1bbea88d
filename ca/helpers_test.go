package ca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// now is the fixed instant every test runs at. Whole seconds, so that
// certificate times (second precision) compare exactly.
var now = time.Date(2025, time.June, 1, 12, 0, 0, 0, time.UTC)

// detRand returns a deterministic random stream for seed. Go 1.26's key
// generation and signing ignore it, but everything the package draws itself
// (IDs, serials, secrets, renewal times) comes from it.
func detRand(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return mrand.NewChaCha8(s)
}

// constReader reads an endless run of one byte value.
type constReader byte

func (c constReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c)
	}
	return len(p), nil
}

// errReader fails every read.
type errReader struct{}

var errRead = errors.New("test: random source failed")

func (errReader) Read([]byte) (int, error) { return 0, errRead }

// RSA keys are slow to make: each size is generated once per test binary.
var (
	rsa1024 = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(crand.Reader, 1024) })
	rsa2048 = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(crand.Reader, 2048) })
)

func rsaKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	var (
		k   *rsa.PrivateKey
		err error
	)
	switch bits {
	case 1024:
		k, err = rsa1024()
	case 2048:
		k, err = rsa2048()
	default:
		t.Fatalf("rsaKey(%d): only 1024 and 2048 bits are kept", bits)
	}
	if err != nil {
		t.Fatalf("rsa.GenerateKey(%d) = %v", bits, err)
	}
	return k
}

func ecKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, crand.Reader)
	if err != nil {
		t.Fatalf("ecdsa.GenerateKey(%s) = %v", c.Params().Name, err)
	}
	return k
}

func edKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(crand.Reader)
	if err != nil {
		t.Fatalf("ed25519.GenerateKey = %v", err)
	}
	return k
}

// newID draws an ID from a deterministic stream.
func newID(t testing.TB, seed uint64) string {
	t.Helper()
	id, err := ca.NewID(detRand(seed))
	if err != nil {
		t.Fatalf("NewID = %v", err)
	}
	return id
}

var serialSeq atomic.Int64

func nextSerial() *big.Int { return big.NewInt(1000 + serialSeq.Add(1)) }

// corpChain is a corporate PKI: a root and an intermediate under it.
type corpChain struct {
	root, inter *testkit.CA
}

func newCorpChain(t testing.TB) corpChain {
	t.Helper()
	root := testkit.NewX509CA(t, "Example Root CA", ecKey(t, elliptic.P384()), nil, now)
	inter := testkit.NewX509CA(t, "Example Issuing CA", ecKey(t, elliptic.P256()), root, now)
	return corpChain{root: root, inter: inter}
}

// material imports the intermediate with its chain.
func (c corpChain) material(t testing.TB) ca.Material {
	t.Helper()
	certPEM := append(c.inter.CertPEM(), c.root.CertPEM()...)
	m, err := ca.Import(certPEM, c.inter.KeyPEM(t), now)
	if err != nil {
		t.Fatalf("Import(corporate intermediate + root) = %v", err)
	}
	return m
}

// root generates a cluster root at now.
func root(t testing.TB, seed uint64, clusterID string, opts ...ca.RootOption) ca.Material {
	t.Helper()
	m, err := ca.GenerateRoot(detRand(seed), now, clusterID, opts...)
	if err != nil {
		t.Fatalf("GenerateRoot(%q) = %v", clusterID, err)
	}
	return m
}

func signer(t testing.TB, m ca.Material) *ca.Signer {
	t.Helper()
	s, err := ca.NewSigner(m)
	if err != nil {
		t.Fatalf("NewSigner = %v", err)
	}
	return s
}

// csrPEM makes a PEM CSR for key from tmpl (a bare one when tmpl is nil).
func csrPEM(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "node"}}
	}
	der, err := x509.CreateCertificateRequest(crand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("x509.CreateCertificateRequest(%T) = %v", key, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// mustParse parses a PEM input that must hold certificates.
func mustParse(t testing.TB, p []byte) []*x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificates(p)
	if err != nil {
		t.Fatalf("ParseCertificates = %v", err)
	}
	return certs
}

func mustParseOne(t testing.TB, p []byte) *x509.Certificate {
	t.Helper()
	certs := mustParse(t, p)
	if len(certs) != 1 {
		t.Fatalf("ParseCertificates: %d certificates, want 1", len(certs))
	}
	return certs[0]
}

// pemBlocks splits PEM input into its blocks, each re-encoded.
func pemBlocks(p []byte) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		b, p = pem.Decode(p)
		if b == nil {
			return out
		}
		out = append(out, pem.EncodeToMemory(b))
	}
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func concat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
