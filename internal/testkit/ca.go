package testkit

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// CA is a certificate authority of the tests: a CA certificate and its
// key. NewCA makes a cluster's root, which issues node certificates the way
// the managers do; NewX509CA makes a CA certificate directly with
// crypto/x509, the way a corporate PKI would, for tests of what the
// cluster imports or is given.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// ClusterID is the cluster the CA serves; "" for NewX509CA's.
	ClusterID string
	material  ca.Material
	signer    *ca.Signer // nil for NewX509CA's
}

// LeafValidity is the validity of the certificates a CA issues.
const LeafValidity = 24 * time.Hour

// NewCA returns the root of a new cluster, generated at the real time:
// what it issues is valid now, for crypto/tls, which checks the wall
// clock.
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	clusterID, err := ca.NewID(rand.Reader)
	if err != nil {
		tb.Fatalf("ca.NewID() = %v", err)
	}
	m, err := ca.GenerateRoot(rand.Reader, time.Now(), clusterID)
	if err != nil {
		tb.Fatalf("ca.GenerateRoot() = %v", err)
	}
	return CAFrom(tb, clusterID, m)
}

// CAFrom returns the CA of cluster clusterID that signs with m (a root, or
// the material of a rotation).
func CAFrom(tb testing.TB, clusterID string, m ca.Material) *CA {
	tb.Helper()
	s, err := ca.NewSigner(m)
	if err != nil {
		tb.Fatalf("ca.NewSigner() = %v", err)
	}
	certs, err := ca.ParseCertificates(m.Cert)
	if err != nil {
		tb.Fatalf("ca.ParseCertificates(CA certificate) = %v", err)
	}
	key, err := ca.ParseKey(m.Key)
	if err != nil {
		tb.Fatalf("ca.ParseKey(CA key) = %v", err)
	}
	return &CA{Cert: certs[0], Key: key, ClusterID: clusterID, material: m, signer: s}
}

// NewX509CA certifies key as a CA named cn (organization "Example Corp"),
// valid from a day before at for ten years, signed by parent (self-signed
// when parent is nil). mods adjust the template before signing.
func NewX509CA(tb testing.TB, cn string, key crypto.Signer, parent *CA, at time.Time, mods ...func(*x509.Certificate)) *CA {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          Serial(tb),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Example Corp"}},
		NotBefore:             at.Add(-24 * time.Hour),
		NotAfter:              at.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, m := range mods {
		m(tmpl)
	}
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		tb.Fatalf("x509.CreateCertificate(%s) = %v", cn, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("x509.ParseCertificate(%s) = %v", cn, err)
	}
	return &CA{Cert: c, Key: key}
}

// Serial returns a random positive 127-bit serial number.
func Serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("rand.Int() = %v", err)
	}
	return n.Add(n, big.NewInt(1))
}

// CertPEM returns the CA certificate in PEM.
func (c *CA) CertPEM() []byte { return ca.EncodeCertificates(c.Cert) }

// KeyPEM returns the CA key in PEM.
func (c *CA) KeyPEM(tb testing.TB) []byte {
	tb.Helper()
	return KeyPEM(tb, c.Key)
}

// KeyPEM returns k in PEM, as ca.MarshalKey writes it.
func KeyPEM(tb testing.TB, k crypto.Signer) []byte {
	tb.Helper()
	p, err := ca.MarshalKey(k)
	if err != nil {
		tb.Fatalf("ca.MarshalKey(%T) = %v", k, err)
	}
	return p
}

// Bundle returns the trust bundle of NewCA's or CAFrom's cluster, in PEM.
func (c *CA) Bundle() []byte { return c.material.Bundle }

// Roots returns the cluster's trust bundle as a pool.
func (c *CA) Roots(tb testing.TB) *x509.CertPool {
	tb.Helper()
	pool, _, err := ca.ParseBundle(c.material.Bundle)
	if err != nil {
		tb.Fatalf("ca.ParseBundle() = %v", err)
	}
	return pool
}

// Signer returns the ca.Signer of NewCA's or CAFrom's CA.
func (c *CA) Signer() *ca.Signer { return c.signer }

// Leaf is a node key and the certificate chain a CA issued for it.
type Leaf struct {
	KeyPEM, CertPEM []byte
	ID              ca.Identity
	Serial          *big.Int
}

// TLS returns the leaf as a key pair.
func (l Leaf) TLS(tb testing.TB) tls.Certificate {
	tb.Helper()
	pair, err := tls.X509KeyPair(l.CertPEM, l.KeyPEM)
	if err != nil {
		tb.Fatalf("tls.X509KeyPair(%s) = %v", l.ID.NodeID, err)
	}
	return pair
}

// Issue signs, now, a certificate of a new node of role in the CA's
// cluster, for a fresh key.
func (c *CA) Issue(tb testing.TB, role ca.Role) Leaf {
	tb.Helper()
	nodeID, err := ca.NewID(rand.Reader)
	if err != nil {
		tb.Fatalf("ca.NewID() = %v", err)
	}
	return c.IssueFor(tb, ca.Identity{NodeID: nodeID, Role: role, ClusterID: c.ClusterID})
}

// IssueFor signs, now, a certificate naming id (whatever cluster it names)
// for a fresh key: a renewal, or a forgery.
func (c *CA) IssueFor(tb testing.TB, id ca.Identity) Leaf {
	tb.Helper()
	if c.signer == nil {
		tb.Fatalf("CA %s issues no node certificates: make it with NewCA or CAFrom", c.Cert.Subject)
	}
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatalf("ca.GenerateKey() = %v", err)
	}
	issued, err := c.signer.SignKey(rand.Reader, time.Now(), key.Public(), id, LeafValidity)
	if err != nil {
		tb.Fatalf("SignKey(%+v) = %v", id, err)
	}
	return Leaf{KeyPEM: KeyPEM(tb, key), CertPEM: issued.PEM, ID: id, Serial: issued.Serial}
}

// TLSConfig returns a TLS configuration that presents a certificate naming
// id and trusts the CA's cluster both ways.
func (c *CA) TLSConfig(tb testing.TB, id ca.Identity) *tls.Config {
	tb.Helper()
	roots := c.Roots(tb)
	return &tls.Config{
		Certificates: []tls.Certificate{c.IssueFor(tb, id).TLS(tb)},
		RootCAs:      roots,
		ClientCAs:    roots,
	}
}
