package ca_test

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// extCA is an external CA (a CFSSL server) as the tests see it: the
// material the cluster holds, without a key, and the certificate and key
// the CA signs with, a stand-in for the server's, to make what the server
// would return.
type extCA struct {
	m    ca.Material
	cert *x509.Certificate
	key  crypto.Signer
}

// newExtRoot makes an external CA that signs with a root of its own,
// named cn.
func newExtRoot(t testing.TB, cn string, mods ...func(*x509.Certificate)) extCA {
	t.Helper()
	r := testkit.NewX509CA(t, cn, ecKey(t, elliptic.P256()), nil, now, mods...)
	return importExt(t, r, r.CertPEM())
}

// newExtInter makes an external CA that signs with the intermediate of a
// corporate chain; the chain is returned too.
func newExtInter(t testing.TB) (extCA, corpChain) {
	t.Helper()
	corp := newCorpChain(t)
	return importExt(t, corp.inter, concat(corp.inter.CertPEM(), corp.root.CertPEM())), corp
}

// importExt imports certPEM as the material of an external CA that signs
// with signing.
func importExt(t testing.TB, signing *testkit.CA, certPEM []byte) extCA {
	t.Helper()
	m, err := ca.ImportExternal(certPEM, now)
	if err != nil {
		t.Fatalf("ImportExternal(%s) = %v", signing.Cert.Subject, err)
	}
	return extCA{m: m, cert: signing.Cert, key: signing.Key}
}

func (e extCA) checker(t testing.TB) *ca.External {
	t.Helper()
	x, err := ca.NewExternal(e.m)
	if err != nil {
		t.Fatalf("NewExternal(%s) = %v", e.cert.Subject, err)
	}
	return x
}

// nodeTemplate is the certificate a well-configured external CA returns
// for id: CN = node ID, OU = role, O = cluster, DNS role and node ID
// (none for an administrator), server and client authentication (client
// alone for an administrator), valid from an hour ago for DefaultCertExpiry.
func nodeTemplate(id ca.Identity) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject: pkix.Name{
			CommonName:         id.NodeID,
			OrganizationalUnit: []string{string(id.Role)},
			Organization:       []string{id.ClusterID},
		},
		DNSNames:              []string{string(id.Role), id.NodeID},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(ca.DefaultCertExpiry),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if id.Role == ca.RoleAdmin {
		tmpl.DNSNames = nil
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	return tmpl
}

// signLeaf signs tmpl for pub with e's key, as the external CA would, and
// returns the certificate in PEM.
func (e extCA) signLeaf(t testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.CreateCertificate(crand.Reader, tmpl, e.cert, pub, e.key)
	if err != nil {
		t.Fatalf("x509.CreateCertificate(leaf under %s) = %v", e.cert.Subject, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// sha1KeyID is the key ID CFSSL (and OpenSSL) derive: the SHA-1 of the
// subjectPublicKey bit string (RFC 5280 method 1).
func sha1KeyID(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(info.PublicKey.Bytes)
	return sum[:]
}

// withSHA1KeyID gives a CA template the key ID CFSSL would: an external
// root that an external CA can cross-sign.
func withSHA1KeyID(t testing.TB, key crypto.Signer) func(*x509.Certificate) {
	return func(c *x509.Certificate) { c.SubjectKeyId = sha1KeyID(t, key.Public()) }
}

// utf8Subject encodes n with every value a UTF8String: the same name as Go
// writes it (PrintableString), in other bytes.
func utf8Subject(t testing.TB, n pkix.Name) []byte {
	t.Helper()
	rdn := n.ToRDNSequence()
	for i := range rdn {
		for j := range rdn[i] {
			s, ok := rdn[i][j].Value.(string)
			if !ok {
				t.Fatalf("subject attribute %v is a %T, want a string", rdn[i][j].Type, rdn[i][j].Value)
			}
			rdn[i][j].Value = asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagUTF8String, Bytes: []byte(s)}
		}
	}
	b, err := asn1.Marshal(rdn)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withRDN encodes n followed by one more attribute: names that pkix.Name
// cannot write, such as a second CN (ExtraNames would replace the first).
func withRDN(t testing.TB, n pkix.Name, typ asn1.ObjectIdentifier, value string) []byte {
	t.Helper()
	rdn := append(n.ToRDNSequence(), pkix.RelativeDistinguishedNameSET{{Type: typ, Value: value}})
	b, err := asn1.Marshal(rdn)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// crossSign signs a CrossSignRequest as the external CA e's "CA" profile
// would: a CA certificate for the CSR's exact subject and key, with the
// key ID CFSSL derives. mods adjust the template; one that sets
// tmpl.PublicKey certifies that key instead of the CSR's.
func (e extCA) crossSign(t testing.TB, csr []byte, mods ...func(*x509.Certificate)) []byte {
	t.Helper()
	b, _ := pem.Decode(csr)
	if b == nil {
		t.Fatalf("cross-sign request is not PEM: %.40q", csr)
	}
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Fatalf("x509.ParseCertificateRequest(cross-sign request) = %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		RawSubject:            req.RawSubject,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          sha1KeyID(t, req.PublicKey),
	}
	for _, m := range mods {
		m(tmpl)
	}
	pub := req.PublicKey
	if tmpl.PublicKey != nil {
		pub = tmpl.PublicKey
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, e.cert, pub, e.key)
	if err != nil {
		t.Fatalf("x509.CreateCertificate(cross-signed under %s) = %v", e.cert.Subject, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// nodeChain is the chain a node is given for id under m: signed by the
// cluster when m holds its key; otherwise signed with signKey as signCert
// (the external CA) and accepted by NewExternal(m).Check.
func nodeChain(t *testing.T, m ca.Material, signCert *x509.Certificate, signKey crypto.Signer, id ca.Identity) []byte {
	t.Helper()
	pub := ecKey(t, elliptic.P256()).Public()
	if len(m.Key) > 0 {
		iss, err := signer(t, m).SignKey(detRand(77), now, pub, id, ca.DefaultCertExpiry)
		if err != nil {
			t.Fatalf("SignKey(%+v) = %v", id, err)
		}
		return iss.PEM
	}
	x, err := ca.NewExternal(m)
	if err != nil {
		t.Fatalf("NewExternal = %v", err)
	}
	leaf := extCA{cert: signCert, key: signKey}.signLeaf(t, nodeTemplate(id), pub)
	iss, err := x.Check(now, leaf, pub, id)
	if err != nil {
		t.Fatalf("External.Check(%+v) = %v, want nil", id, err)
	}
	return iss.PEM
}

func TestExternalCheck(t *testing.T) {
	cluster := newID(t, 1)
	rootCA := newExtRoot(t, "CFSSL Root CA")
	interCA, corp := newExtInter(t)
	manager := ca.Identity{NodeID: newID(t, 2), Role: ca.RoleManager, ClusterID: cluster}
	worker := ca.Identity{NodeID: newID(t, 3), Role: ca.RoleWorker, ClusterID: cluster}
	admin := ca.Identity{NodeID: newID(t, 4), Role: ca.RoleAdmin, ClusterID: cluster}
	p256 := ecKey(t, elliptic.P256())
	tests := []struct {
		name  string
		ext   extCA
		id    ca.Identity
		key   crypto.Signer
		mod   func(*x509.Certificate)
		extra []byte // returned after the leaf
		at    time.Time
	}{
		{name: "root, manager", ext: rootCA, id: manager, key: p256},
		{name: "root, worker", ext: rootCA, id: worker, key: p256},
		{name: "root, admin", ext: rootCA, id: admin, key: p256},
		{name: "intermediate, manager", ext: interCA, id: manager, key: p256},
		{name: "intermediate, admin", ext: interCA, id: admin, key: p256},
		{name: "Ed25519 node key", ext: rootCA, id: worker, key: edKey(t)},
		{name: "RSA node key", ext: interCA, id: worker, key: rsaKey(t, 2048)},
		{name: "DNS names in the other order", ext: rootCA, id: manager, key: p256, mod: func(c *x509.Certificate) {
			c.DNSNames = []string{manager.NodeID, string(manager.Role)}
		}},
		{name: "client auth first", ext: rootCA, id: worker, key: p256, mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
		}},
		{name: "admin with server auth too", ext: rootCA, id: admin, key: p256, mod: func(c *x509.Certificate) {
			// One CFSSL profile signs every certificate the cluster asks for.
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		}},
		{name: "exactly MinCertExpiry left", ext: rootCA, id: worker, key: p256, mod: func(c *x509.Certificate) {
			c.NotAfter = now.Add(ca.MinCertExpiry)
		}},
		{name: "the CA's chain after the leaf is ignored", ext: interCA, id: worker, key: p256,
			extra: concat(corp.inter.CertPEM(), corp.root.CertPEM())},
		{name: "another certificate after the leaf is ignored", ext: rootCA, id: worker, key: p256,
			extra: testkit.NewX509CA(t, "Stray", ecKey(t, elliptic.P256()), nil, now).CertPEM()},
		{name: "checked later in its validity", ext: rootCA, id: worker, key: p256, at: now.Add(30 * 24 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := tt.at
			if at.IsZero() {
				at = now
			}
			pub := tt.key.Public()
			tmpl := nodeTemplate(tt.id)
			if tt.mod != nil {
				tt.mod(tmpl)
			}
			leafPEM := tt.ext.signLeaf(t, tmpl, pub)
			leaf := mustParseOne(t, leafPEM)
			iss, err := tt.ext.checker(t).Check(at, concat(leafPEM, tt.extra), pub, tt.id)
			if err != nil {
				t.Fatalf("Check(%+v) = %v, want nil", tt.id, err)
			}
			if want := concat(leafPEM, tt.ext.m.Chain); !bytes.Equal(iss.PEM, want) {
				t.Errorf("Check: PEM has %d certificates (%d bytes), want the leaf and Material.Chain (%d certificates)",
					len(pemBlocks(iss.PEM)), len(iss.PEM), len(pemBlocks(want)))
			}
			if iss.Serial == nil || iss.Serial.Cmp(leaf.SerialNumber) != 0 {
				t.Errorf("Check: Serial = %v, want the leaf's %v", iss.Serial, leaf.SerialNumber)
			}
			if !iss.NotBefore.Equal(leaf.NotBefore) || !iss.NotAfter.Equal(leaf.NotAfter) {
				t.Errorf("Check: validity %v..%v, want the leaf's %v..%v", iss.NotBefore, iss.NotAfter, leaf.NotBefore, leaf.NotAfter)
			}
			id, status, err := ca.VerifyPEM(iss.PEM, tt.ext.m.Bundle, at)
			if err != nil {
				t.Fatalf("VerifyPEM(Check's chain, bundle) = %v, want nil", err)
			}
			if id != tt.id {
				t.Errorf("VerifyPEM identity = %+v, want %+v", id, tt.id)
			}
			if want := ca.StatusOf(tt.ext.cert); !status.Equal(want) {
				t.Errorf("VerifyPEM status = %v, want the external CA's %v", status, want)
			}
		})
	}
}

func TestExternalCheckRefuses(t *testing.T) {
	cluster := newID(t, 1)
	rootCA := newExtRoot(t, "CFSSL Root CA")
	interCA, corp := newExtInter(t)
	other := newExtRoot(t, "Other Root CA")
	sameName := newExtRoot(t, "CFSSL Root CA") // another key
	corpRoot := extCA{cert: corp.root.Cert, key: corp.root.Key}
	// An issuing CA that may only serve: its leaves cannot be clients.
	serverOnly := func() extCA {
		r := testkit.NewX509CA(t, "Server Only Root", ecKey(t, elliptic.P256()), nil, now)
		i := testkit.NewX509CA(t, "Server Only Issuing", ecKey(t, elliptic.P256()), r, now, func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		})
		return importExt(t, i, concat(i.CertPEM(), r.CertPEM()))
	}()

	worker := ca.Identity{NodeID: newID(t, 2), Role: ca.RoleWorker, ClusterID: cluster}
	admin := ca.Identity{NodeID: newID(t, 3), Role: ca.RoleAdmin, ClusterID: cluster}
	otherNode := newID(t, 4)
	otherCluster := newID(t, 5)
	key := ecKey(t, elliptic.P256())
	otherKey := ecKey(t, elliptic.P256())
	badDER := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})

	tests := []struct {
		name    string
		checker extCA // default rootCA
		signer  *extCA
		id      ca.Identity // default worker
		certFor crypto.PublicKey
		mod     func(*x509.Certificate)
		pem     []byte // returned in place of a signed leaf
		at      time.Time
		msg     string
	}{
		{name: "signed by another CA", signer: &other, msg: "issued by"},
		{name: "signed by another CA of the same name", signer: &sameName, msg: "issued by"},
		{name: "signed by the root above the signing intermediate", checker: interCA, signer: &corpRoot, msg: "issued by"},
		{name: "for another public key", certFor: otherKey.Public(), msg: "not for the key"},
		{name: "the CA's own certificate", pem: rootCA.m.Cert, msg: "not for the key"},
		{name: "CN names another node", mod: func(c *x509.Certificate) { c.Subject.CommonName = otherNode }, msg: "names"},
		{name: "OU names another role", mod: func(c *x509.Certificate) { c.Subject.OrganizationalUnit = []string{string(ca.RoleManager)} }, msg: "names"},
		{name: "O names another cluster", mod: func(c *x509.Certificate) { c.Subject.Organization = []string{otherCluster} }, msg: "names"},
		{name: "a second OU", mod: func(c *x509.Certificate) {
			c.Subject.OrganizationalUnit = append(c.Subject.OrganizationalUnit, string(ca.RoleManager))
		}, msg: "names"},
		{name: "no OU", mod: func(c *x509.Certificate) { c.Subject.OrganizationalUnit = nil }, msg: "names"},
		{name: "C=XX from a forged CSR", mod: func(c *x509.Certificate) { c.Subject.Country = []string{"XX"} }, msg: "names"},
		{name: "L from a forged CSR", mod: func(c *x509.Certificate) { c.Subject.Locality = []string{"Paris"} }, msg: "names"},
		{name: "serialNumber from a forged CSR", mod: func(c *x509.Certificate) { c.Subject.SerialNumber = "1" }, msg: "names"},
		{name: "a second CN naming another node", mod: func(c *x509.Certificate) {
			c.RawSubject = withRDN(t, c.Subject, asn1.ObjectIdentifier{2, 5, 4, 3}, otherNode)
		}, msg: "names"},
		{name: "the CN twice", mod: func(c *x509.Certificate) {
			c.RawSubject = withRDN(t, c.Subject, asn1.ObjectIdentifier{2, 5, 4, 3}, worker.NodeID)
		}, msg: "names"},
		{name: "the O twice", mod: func(c *x509.Certificate) {
			c.RawSubject = withRDN(t, c.Subject, asn1.ObjectIdentifier{2, 5, 4, 10}, cluster)
		}, msg: "names"},
		{name: "an attribute of unknown type", mod: func(c *x509.Certificate) {
			c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: "x"}}
		}, msg: "names"},
		{name: "asked for an admin, named a worker", id: admin, msg: "names"},
		{name: "an extra DNS name", mod: func(c *x509.Certificate) { c.DNSNames = append(c.DNSNames, "evil.example.com") }, msg: "alternative names"},
		{name: "DNS role missing", mod: func(c *x509.Certificate) { c.DNSNames = []string{worker.NodeID} }, msg: "alternative names"},
		{name: "DNS node ID missing", mod: func(c *x509.Certificate) { c.DNSNames = []string{string(worker.Role)} }, msg: "alternative names"},
		{name: "no DNS names", mod: func(c *x509.Certificate) { c.DNSNames = nil }, msg: "alternative names"},
		{name: "a DNS name twice", mod: func(c *x509.Certificate) { c.DNSNames = append(c.DNSNames, worker.NodeID) }, msg: "alternative names"},
		{name: "DNS names for an admin", id: admin, mod: func(c *x509.Certificate) {
			c.Subject.OrganizationalUnit = []string{string(ca.RoleAdmin)}
			c.Subject.CommonName = admin.NodeID
			c.DNSNames = []string{admin.NodeID}
		}, msg: "alternative names"},
		{name: "an IP SAN", mod: func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)} }, msg: "alternative names"},
		{name: "an email SAN", mod: func(c *x509.Certificate) { c.EmailAddresses = []string{"root@example.com"} }, msg: "alternative names"},
		{name: "a URI SAN", mod: func(c *x509.Certificate) { c.URIs = []*url.URL{{Scheme: "spiffe", Host: "cluster", Path: "/x"}} }, msg: "alternative names"},
		{name: "a CA certificate", mod: func(c *x509.Certificate) {
			c.IsCA = true
			c.KeyUsage |= x509.KeyUsageCertSign
		}, msg: "CA certificate"},
		{name: "server auth only", mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}, msg: "client authentication"},
		{name: "client auth only", mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}, msg: "server authentication"},
		{name: "code signing only", mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}
		}, msg: "among its usages"},
		{name: "no extended key usage", mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = nil
		}, msg: "among its usages"},
		{name: "any usage", mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
		}, msg: "among its usages"},
		{name: "admin with server auth only", id: admin, mod: func(c *x509.Certificate) {
			c.Subject.OrganizationalUnit = []string{string(ca.RoleAdmin)}
			c.Subject.CommonName = admin.NodeID
			c.DNSNames = nil
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}, msg: "client authentication"},
		{name: "the issuing CA forbids client auth", checker: serverOnly, signer: &serverOnly, msg: "client authentication"},
		{name: "expired", mod: func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = now.Add(-48*time.Hour), now.Add(-time.Second)
		}, msg: "does not verify"},
		{name: "not yet valid", mod: func(c *x509.Certificate) { c.NotBefore = now.Add(time.Hour) }, msg: "does not verify"},
		{name: "59 minutes left", mod: func(c *x509.Certificate) { c.NotAfter = now.Add(59 * time.Minute) }, msg: "expires"},
		{name: "a second short of MinCertExpiry", mod: func(c *x509.Certificate) { c.NotAfter = now.Add(ca.MinCertExpiry - time.Second) }, msg: "expires"},
		{name: "checked after it expired", at: now.Add(ca.DefaultCertExpiry + time.Second), msg: "does not verify"},
		{name: "checked with less than MinCertExpiry left", at: now.Add(ca.DefaultCertExpiry - time.Minute), msg: "expires"},
		{name: "garbage", pem: []byte("<html>502 Bad Gateway</html>")},
		{name: "empty", pem: []byte{}},
		{name: "truncated PEM", pem: []byte("-----BEGIN CERTIFICATE-----\nMIIB")},
		{name: "certificate not DER", pem: badDER},
		{name: "a CSR", pem: csrPEM(t, key, nil)},
		{name: "a private key", pem: testkit.KeyPEM(t, key)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checker := tt.checker
			if checker.cert == nil {
				checker = rootCA
			}
			sign := checker
			if tt.signer != nil {
				sign = *tt.signer
			}
			id := tt.id
			if id == (ca.Identity{}) {
				id = worker
			}
			at := tt.at
			if at.IsZero() {
				at = now
			}
			certPEM := tt.pem
			if certPEM == nil {
				certFor := tt.certFor
				if certFor == nil {
					certFor = key.Public()
				}
				tmpl := nodeTemplate(worker)
				if tt.mod != nil {
					tt.mod(tmpl)
				}
				certPEM = sign.signLeaf(t, tmpl, certFor)
			}
			iss, err := checker.checker(t).Check(at, certPEM, key.Public(), id)
			if !errors.Is(err, ca.ErrExternalCA) {
				t.Fatalf("Check = %v, want %v", err, ca.ErrExternalCA)
			}
			if tt.msg != "" && !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Check = %q, want a message naming %q", err, tt.msg)
			}
			if iss.PEM != nil || iss.Serial != nil || !iss.NotBefore.IsZero() || !iss.NotAfter.IsZero() {
				t.Errorf("Check returned %+v with its error, want nothing", iss)
			}
		})
	}

	// The same leaf, unchanged, is accepted: the refusals above are for
	// the reason named.
	leaf := rootCA.signLeaf(t, nodeTemplate(worker), key.Public())
	if _, err := rootCA.checker(t).Check(now, leaf, key.Public(), worker); err != nil {
		t.Errorf("Check(proper leaf) = %v, want nil", err)
	}
	// No key to compare with: refused, not a panic.
	if _, err := rootCA.checker(t).Check(now, leaf, nil, worker); !errors.Is(err, ca.ErrExternalCA) {
		t.Errorf("Check(nil key) = %v, want %v", err, ca.ErrExternalCA)
	}
}

func TestNewExternal(t *testing.T) {
	rootCA := newExtRoot(t, "CFSSL Root CA")
	interCA, corp := newExtInter(t)
	for _, e := range []extCA{rootCA, interCA} {
		x, err := ca.NewExternal(e.m)
		if err != nil {
			t.Fatalf("NewExternal(%s) = %v, want nil", e.cert.Subject, err)
		}
		if got := x.Certificate(); !got.Equal(e.cert) {
			t.Errorf("NewExternal(%s).Certificate() = %s, want the signing certificate", e.cert.Subject, got.Subject)
		}
	}

	withKey := rootCA.m
	withKey.Key = testkit.KeyPEM(t, rootCA.key)
	noChain := interCA.m
	noChain.Chain = nil
	otherBundle := rootCA.m
	otherBundle.Bundle = testkit.NewX509CA(t, "Other Root", ecKey(t, elliptic.P256()), nil, now).CertPEM()
	p224 := testkit.NewX509CA(t, "P-224 Root", ecKey(t, elliptic.P224()), nil, now)
	tests := []struct {
		name string
		m    ca.Material
		want error
	}{
		{"material with a key", withKey, ca.ErrKeyMismatch},
		{"intermediate without its chain", noChain, ca.ErrChainIncomplete},
		{"certificate of another bundle", otherBundle, ca.ErrChainIncomplete},
		{"chain not leading to the signing certificate", ca.Material{Cert: interCA.m.Cert, Chain: corp.root.CertPEM(), Bundle: interCA.m.Bundle}, ca.ErrChainIncomplete},
		{"P-224 CA", ca.Material{Cert: p224.CertPEM(), Bundle: p224.CertPEM()}, ca.ErrUnsupportedKey},
		{"certificate not PEM", ca.Material{Cert: []byte("x"), Bundle: rootCA.m.Bundle}, ca.ErrMalformedPEM},
		{"no bundle", ca.Material{Cert: rootCA.m.Cert}, ca.ErrMalformedPEM},
		{"empty", ca.Material{}, ca.ErrMalformedPEM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x, err := ca.NewExternal(tt.m)
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewExternal = %v, want %v", err, tt.want)
			}
			if x != nil {
				t.Errorf("NewExternal returned a checker with its error")
			}
		})
	}
}

func TestCheckExternalCSR(t *testing.T) {
	key := ecKey(t, elliptic.P256())
	cluster := newID(t, 1)
	node := newID(t, 2)
	plain, err := ca.NewCSR(crand.Reader, key, node)
	if err != nil {
		t.Fatalf("NewCSR = %v", err)
	}
	b, _ := pem.Decode(plain)
	sigDER := bytes.Clone(b.Bytes)
	sigDER[len(sigDER)-3] ^= 0x40
	named := func(n pkix.Name) []byte { return csrPEM(t, key, &x509.CertificateRequest{Subject: n}) }
	tests := []struct {
		name string
		csr  []byte
		want error
	}{
		{"NewCSR: CN only", plain, nil},
		{"DER", b.Bytes, nil},
		{"empty subject", named(pkix.Name{}), nil},
		{"CN, O and OU", named(pkix.Name{CommonName: node, Organization: []string{cluster}, OrganizationalUnit: []string{string(ca.RoleWorker)}}), nil},
		{"a forged CN, O and OU", named(pkix.Name{CommonName: "someone", Organization: []string{"other", "more"}, OrganizationalUnit: []string{string(ca.RoleManager), "admins"}}), nil},
		{"Ed25519 key", csrPEM(t, edKey(t), nil), nil},
		{"C", named(pkix.Name{CommonName: node, Country: []string{"XX"}}), ca.ErrBadCSR},
		{"L", named(pkix.Name{CommonName: node, Locality: []string{"Paris"}}), ca.ErrBadCSR},
		{"ST", named(pkix.Name{CommonName: node, Province: []string{"Ile-de-France"}}), ca.ErrBadCSR},
		{"street", named(pkix.Name{CommonName: node, StreetAddress: []string{"1 rue de la Paix"}}), ca.ErrBadCSR},
		{"postal code", named(pkix.Name{CommonName: node, PostalCode: []string{"75001"}}), ca.ErrBadCSR},
		{"serialNumber", named(pkix.Name{CommonName: node, SerialNumber: "42"}), ca.ErrBadCSR},
		{"emailAddress", named(pkix.Name{CommonName: node, ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, Value: "root@example.com"},
		}}), ca.ErrBadCSR},
		{"an attribute of unknown type", named(pkix.Name{CommonName: node, ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: "x"},
		}}), ca.ErrBadCSR},
		{"C alone", named(pkix.Name{Country: []string{"XX"}}), ca.ErrBadCSR},
		{"tampered signature", sigDER, ca.ErrCSRSignature},
		{"RSA 1024 key", csrPEM(t, rsaKey(t, 1024), nil), ca.ErrWeakKey},
		{"garbage", []byte("not a CSR"), ca.ErrBadCSR},
		{"empty", nil, ca.ErrBadCSR},
		{"certificate block", testkit.NewX509CA(t, "Root", key, nil, now).CertPEM(), ca.ErrBadCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.CheckExternalCSR(tt.csr)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("CheckExternalCSR = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCrossSignRequest(t *testing.T) {
	cluster := newID(t, 1)
	gen := root(t, 2, cluster)
	genKey, err := ca.ParseKey(gen.Key)
	if err != nil {
		t.Fatal(err)
	}
	// A root whose subject Go would encode otherwise: the request must
	// carry its bytes, not a re-encoding.
	utf8Key := ecKey(t, elliptic.P384())
	utf8Root := testkit.NewX509CA(t, "UTF-8 Root", utf8Key, nil, now, func(c *x509.Certificate) {
		c.RawSubject = utf8Subject(t, pkix.Name{CommonName: "UTF-8 Root", Organization: []string{"Example Corp"}})
	})
	tests := []struct {
		name string
		root *x509.Certificate
		key  crypto.Signer
	}{
		{"generated root", mustParseOne(t, gen.Cert), genKey},
		{"root with UTF8String names", utf8Root.Cert, utf8Key},
		{"RSA root", testkit.NewX509CA(t, "RSA Root", rsaKey(t, 2048), nil, now).Cert, rsaKey(t, 2048)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ca.CrossSignRequest(crand.Reader, tt.root, tt.key)
			if err != nil {
				t.Fatalf("CrossSignRequest = %v, want nil", err)
			}
			b, rest := pem.Decode(csr)
			if b == nil || b.Type != "CERTIFICATE REQUEST" || len(bytes.TrimSpace(rest)) != 0 {
				t.Fatalf("CrossSignRequest = %.60q, want one CERTIFICATE REQUEST block", csr)
			}
			req, err := x509.ParseCertificateRequest(b.Bytes)
			if err != nil {
				t.Fatalf("x509.ParseCertificateRequest = %v", err)
			}
			if err := req.CheckSignature(); err != nil {
				t.Errorf("request signature = %v, want it to verify", err)
			}
			if !bytes.Equal(req.RawSubject, tt.root.RawSubject) {
				t.Errorf("request subject %s, want the root's %s byte for byte", req.Subject, tt.root.Subject)
			}
			if !publicKeyEqual(req.PublicKey, tt.root.PublicKey) {
				t.Errorf("request key is not the root's")
			}
			if len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses)+len(req.URIs) != 0 {
				t.Errorf("request asks for alternative names %q %v %q %v, want none", req.DNSNames, req.IPAddresses, req.EmailAddresses, req.URIs)
			}
			var sawCA bool
			for _, ext := range req.Extensions {
				if !ext.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 19}) {
					continue
				}
				var bc struct {
					IsCA bool `asn1:"optional"`
				}
				if rest, err := asn1.Unmarshal(ext.Value, &bc); err != nil || len(rest) != 0 {
					t.Fatalf("basic constraints %x do not parse: %v", ext.Value, err)
				}
				sawCA = bc.IsCA && ext.Critical
			}
			if !sawCA {
				t.Errorf("request extensions %v, want critical basic constraints CA:true", req.Extensions)
			}
			// The cluster's own parser takes it.
			if pub, err := ca.ParseCSR(csr); err != nil || !publicKeyEqual(pub, tt.root.PublicKey) {
				t.Errorf("ParseCSR(cross-sign request) = %T, %v, want the root's key", pub, err)
			}
		})
	}

	// A key that is not the root's.
	csr, err := ca.CrossSignRequest(crand.Reader, mustParseOne(t, gen.Cert), utf8Key)
	if !errors.Is(err, ca.ErrKeyMismatch) {
		t.Errorf("CrossSignRequest(another key) = %v, want %v", err, ca.ErrKeyMismatch)
	}
	if csr != nil {
		t.Errorf("CrossSignRequest returned a request with its error")
	}
}

// nextCA is a CA a rotation goes to, with the key its root signs the
// cross-sign request with and what signs its leaves.
type nextCA struct {
	m        ca.Material
	rootKey  crypto.Signer
	signCert *x509.Certificate
	signKey  crypto.Signer
}

func generatedNext(t testing.TB, seed uint64, cluster string) nextCA {
	t.Helper()
	m := root(t, seed, cluster)
	k, err := ca.ParseKey(m.Key)
	if err != nil {
		t.Fatal(err)
	}
	return nextCA{m: m, rootKey: k, signCert: mustParseOne(t, m.Cert), signKey: k}
}

// externalNext is an external CA's root, with the key ID CFSSL derives so
// that an external CA can cross-sign it.
func externalNext(t testing.TB, cn string) nextCA {
	t.Helper()
	k := ecKey(t, elliptic.P256())
	r := testkit.NewX509CA(t, cn, k, nil, now, withSHA1KeyID(t, k))
	e := importExt(t, r, r.CertPEM())
	return nextCA{m: e.m, rootKey: k, signCert: e.cert, signKey: e.key}
}

// externalInterNext is an external CA that signs with an intermediate.
func externalInterNext(t testing.TB) nextCA {
	t.Helper()
	rk := ecKey(t, elliptic.P256())
	r := testkit.NewX509CA(t, "New Corp Root", rk, nil, now, withSHA1KeyID(t, rk))
	i := testkit.NewX509CA(t, "New Corp Issuing CA", ecKey(t, elliptic.P256()), r, now)
	e := importExt(t, i, concat(i.CertPEM(), r.CertPEM()))
	return nextCA{m: e.m, rootKey: rk, signCert: i.Cert, signKey: i.Key}
}

// TestExternalCrossSign: an external CA cross-signs a new root through
// CrossSignRequest and CheckCrossSigned, and RotationWith makes material
// whose leaves verify under the old bundle and the new one.
func TestExternalCrossSign(t *testing.T) {
	cluster := newID(t, 1)
	oldRoot := newExtRoot(t, "Old CFSSL Root")
	oldInter, _ := newExtInter(t)
	tests := []struct {
		name string
		old  extCA
		next nextCA
		// reencode signs the request's subject as CFSSL does, from the
		// parsed name rather than its bytes.
		reencode bool
	}{
		{name: "external root to generated root", old: oldRoot, next: generatedNext(t, 2, cluster)},
		{name: "external root to generated root, subject re-encoded", old: oldRoot, next: generatedNext(t, 3, cluster), reencode: true},
		{name: "external intermediate to generated root", old: oldInter, next: generatedNext(t, 4, cluster)},
		{name: "external root to external root", old: oldRoot, next: externalNext(t, "New CFSSL Root")},
		{name: "external intermediate to external intermediate", old: oldInter, next: externalInterNext(t)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := ca.Identity{NodeID: newID(t, uint64(10+i)), Role: ca.RoleWorker, ClusterID: cluster}
			newRoot, err := ca.CheckNewCA(tt.old.m, tt.next.m)
			if err != nil {
				t.Fatalf("CheckNewCA = %v, want nil", err)
			}
			csr, err := ca.CrossSignRequest(crand.Reader, newRoot, tt.next.rootKey)
			if err != nil {
				t.Fatalf("CrossSignRequest = %v", err)
			}
			var mods []func(*x509.Certificate)
			if tt.reencode {
				mods = append(mods, func(c *x509.Certificate) { c.Subject, c.RawSubject = newRoot.Subject, nil })
			}
			answer := tt.old.crossSign(t, csr, mods...)
			// CFSSL may answer with more than the certificate asked for.
			cross, err := ca.CheckCrossSigned(now, tt.old.m, concat(answer, tt.old.m.Bundle), newRoot)
			if err != nil {
				t.Fatalf("CheckCrossSigned = %v, want nil", err)
			}
			if want := mustParseOne(t, answer); !cross.Equal(want) {
				t.Errorf("CheckCrossSigned returned %s, want the external CA's answer", cross.Subject)
			}
			if !bytes.Equal(cross.RawSubject, newRoot.RawSubject) || !publicKeyEqual(cross.PublicKey, newRoot.PublicKey) || !cross.IsCA {
				t.Errorf("cross-signed certificate: subject %s, CA %v; want the new root's subject and key, a CA", cross.Subject, cross.IsCA)
			}

			rot, err := ca.RotationWith(tt.old.m, tt.next.m, cross)
			if err != nil {
				t.Fatalf("RotationWith = %v, want nil", err)
			}
			if !bytes.Equal(rot.Cert, tt.next.m.Cert) || !bytes.Equal(rot.Key, tt.next.m.Key) {
				t.Errorf("RotationWith: Cert and Key are not the new CA's")
			}
			if !bytes.Equal(rot.Bundle, tt.old.m.Bundle) {
				t.Errorf("RotationWith: Bundle is not the old bundle")
			}
			if want := concat(tt.next.m.Chain, ca.EncodeCertificates(cross), tt.old.m.Chain); !bytes.Equal(rot.Chain, want) {
				t.Errorf("RotationWith: Chain has %d certificates, want the new chain, the cross-signed root and the old chain (%d)", len(pemBlocks(rot.Chain)), len(pemBlocks(want)))
			}

			mid := nodeChain(t, rot, tt.next.signCert, tt.next.signKey, id)
			oldStatus := verifyStatus(t, mid, tt.old.m.Bundle, id)
			newStatus := verifyStatus(t, mid, tt.next.m.Bundle, id)
			if !oldStatus.Equal(newStatus) {
				t.Errorf("mid-rotation leaf: status %v under the old bundle, %v under the new, want the same", oldStatus, newStatus)
			}
			if want := ca.StatusOf(tt.next.signCert); !newStatus.Equal(want) {
				t.Errorf("mid-rotation leaf: status %v, want the new CA's %v", newStatus, want)
			}
			// Once the rotation completes, the new CA's own leaves have the
			// same status; the old bundle does not trust them alone.
			after := nodeChain(t, tt.next.m, tt.next.signCert, tt.next.signKey, id)
			if s := verifyStatus(t, after, tt.next.m.Bundle, id); !s.Equal(newStatus) {
				t.Errorf("new CA's leaf status %v, want the mid-rotation status %v", s, newStatus)
			}
			if _, _, err := ca.VerifyPEM(after, tt.old.m.Bundle, now); !errors.Is(err, ca.ErrUntrusted) {
				t.Errorf("VerifyPEM(new CA's leaf, old bundle) = %v, want %v", err, ca.ErrUntrusted)
			}
		})
	}
}

func TestCheckCrossSignedRefuses(t *testing.T) {
	cluster := newID(t, 1)
	old := newExtRoot(t, "Old CFSSL Root")
	oldInter, corp := newExtInter(t)
	other := newExtRoot(t, "Other Root")
	sameName := newExtRoot(t, "Old CFSSL Root")
	corpRoot := extCA{cert: corp.root.Cert, key: corp.root.Key}
	next := generatedNext(t, 2, cluster)
	newRoot := mustParseOne(t, next.m.Cert)
	// An external CA named as the cluster's generated roots are.
	swarmNamed := newExtRoot(t, ca.RootCN, func(c *x509.Certificate) {
		c.Subject = pkix.Name{CommonName: ca.RootCN, Organization: []string{cluster}}
	})
	csr, err := ca.CrossSignRequest(crand.Reader, newRoot, next.rootKey)
	if err != nil {
		t.Fatalf("CrossSignRequest = %v", err)
	}
	otherKey := ecKey(t, elliptic.P256())
	tests := []struct {
		name   string
		old    extCA // default old
		signer *extCA
		mod    func(*x509.Certificate)
		pem    []byte
		msg    string
	}{
		{name: "another subject", mod: func(c *x509.Certificate) {
			c.RawSubject, c.Subject = nil, pkix.Name{CommonName: "Someone Else"}
		}, msg: "exact subject"},
		{name: "the same name in other bytes", mod: func(c *x509.Certificate) {
			c.RawSubject = utf8Subject(t, newRoot.Subject)
		}, msg: "exact subject"},
		{name: "another key", mod: func(c *x509.Certificate) { c.PublicKey = otherKey.Public() }, msg: "not for the new root's key"},
		{name: "not a CA", mod: func(c *x509.Certificate) {
			c.IsCA, c.KeyUsage = false, x509.KeyUsageDigitalSignature
		}, msg: "not a CA"},
		{name: "no basic constraints", mod: func(c *x509.Certificate) {
			c.BasicConstraintsValid, c.IsCA = false, false
		}, msg: "not a CA"},
		{name: "another key ID", mod: func(c *x509.Certificate) { c.SubjectKeyId = []byte{1, 2, 3, 4} }, msg: "key ID"},
		{name: "issued by another CA", signer: &other, msg: "issued by"},
		{name: "issued by another CA of the same name", signer: &sameName, msg: "issued by"},
		{name: "issued by the root above the current intermediate", old: oldInter, signer: &corpRoot, msg: "issued by"},
		{name: "new root named as the current CA", old: swarmNamed, msg: "same subject"},
		{name: "the new root itself", pem: next.m.Cert, msg: "same subject"},
		{name: "expired", mod: func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = now.Add(-48*time.Hour), now.Add(-time.Hour)
		}, msg: "does not verify"},
		{name: "not yet valid", mod: func(c *x509.Certificate) { c.NotBefore = now.Add(time.Hour) }, msg: "does not verify"},
		{name: "garbage", pem: []byte("<html>502 Bad Gateway</html>")},
		{name: "empty", pem: []byte{}},
		{name: "a CSR", pem: csr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.old
			if o.cert == nil {
				o = old
			}
			sign := o
			if tt.signer != nil {
				sign = *tt.signer
			}
			certPEM := tt.pem
			if certPEM == nil {
				var mods []func(*x509.Certificate)
				if tt.mod != nil {
					mods = append(mods, tt.mod)
				}
				certPEM = sign.crossSign(t, csr, mods...)
			}
			cross, err := ca.CheckCrossSigned(now, o.m, certPEM, newRoot)
			if !errors.Is(err, ca.ErrExternalCA) {
				t.Fatalf("CheckCrossSigned = %v, want %v", err, ca.ErrExternalCA)
			}
			if tt.msg != "" && !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("CheckCrossSigned = %q, want a message naming %q", err, tt.msg)
			}
			if cross != nil {
				t.Errorf("CheckCrossSigned returned a certificate with its error")
			}
		})
	}

	// The current CA's material is checked too.
	good := old.crossSign(t, csr)
	if _, err := ca.CheckCrossSigned(now, old.m, good, newRoot); err != nil {
		t.Fatalf("CheckCrossSigned(proper answer) = %v, want nil", err)
	}
	broken := old.m
	broken.Bundle = []byte("garbage")
	if _, err := ca.CheckCrossSigned(now, broken, good, newRoot); !errors.Is(err, ca.ErrMalformedPEM) {
		t.Errorf("CheckCrossSigned(current CA without a bundle) = %v, want %v", err, ca.ErrMalformedPEM)
	}
}

func TestRotationWithRefuses(t *testing.T) {
	cluster := newID(t, 1)
	old := newExtRoot(t, "Old CFSSL Root")
	// A root that allows no CA below it: it can cross-sign, but no leaf
	// would verify through the certificate it makes.
	noCA := newExtRoot(t, "No CA Below Root", func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
	nextA := generatedNext(t, 2, cluster)
	nextB := generatedNext(t, 3, cluster)
	extA := externalNext(t, "New CFSSL Root A")
	extB := externalNext(t, "New CFSSL Root B")
	crossOf := func(e extCA, n nextCA) *x509.Certificate {
		t.Helper()
		newRoot, err := ca.CheckNewCA(e.m, n.m)
		if err != nil {
			t.Fatalf("CheckNewCA = %v", err)
		}
		csr, err := ca.CrossSignRequest(crand.Reader, newRoot, n.rootKey)
		if err != nil {
			t.Fatalf("CrossSignRequest = %v", err)
		}
		cross, err := ca.CheckCrossSigned(now, e.m, e.crossSign(t, csr), newRoot)
		if err != nil {
			t.Fatalf("CheckCrossSigned = %v", err)
		}
		return cross
	}
	wrongKey := nextA.m
	wrongKey.Key = nextB.m.Key
	tests := []struct {
		name  string
		old   extCA
		next  ca.Material
		cross *x509.Certificate
		want  error
	}{
		{"cross-signed certificate of another root", old, nextA.m, crossOf(old, nextB), ca.ErrChainIncomplete},
		{"old CA allows no CA below it", noCA, nextA.m, crossOf(noCA, nextA), ca.ErrChainIncomplete},
		{"new key does not match", old, wrongKey, crossOf(old, nextA), ca.ErrKeyMismatch},
		{"keyless: cross-signed certificate of another external root", old, extA.m, crossOf(old, extB), ca.ErrChainIncomplete},
		{"keyless: cross-signed by a CA outside the old bundle", old, extA.m, crossOf(noCA, extA), ca.ErrChainIncomplete},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.RotationWith(tt.old.m, tt.next, tt.cross)
			if !errors.Is(err, tt.want) {
				t.Fatalf("RotationWith = %v, want %v", err, tt.want)
			}
			if m.Cert != nil || m.Chain != nil {
				t.Errorf("RotationWith returned material with its error")
			}
		})
	}
}

// TestRotationToExternal: a cluster that signs with its own key rotates to
// an external CA: the rotation material holds no key, and the external
// CA's leaves verify under the old bundle and the new one.
func TestRotationToExternal(t *testing.T) {
	cluster := newID(t, 1)
	corp := newCorpChain(t)
	extRoot := newExtRoot(t, "CFSSL Root CA")
	extInter, _ := newExtInter(t)
	tests := []struct {
		name string
		old  ca.Material
		next extCA
		// root is the root of next.
		root *x509.Certificate
	}{
		{"generated root to external root", root(t, 2, cluster), extRoot, extRoot.cert},
		{"generated root to external intermediate", root(t, 3, cluster), extInter, mustParseOne(t, extInter.m.Bundle)},
		{"corporate intermediate to external root", corp.material(t), extRoot, extRoot.cert},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := ca.Identity{NodeID: newID(t, uint64(10+i)), Role: ca.RoleManager, ClusterID: cluster}
			newRoot, err := ca.CheckNewCA(tt.old, tt.next.m)
			if err != nil {
				t.Fatalf("CheckNewCA = %v, want nil", err)
			}
			if !newRoot.Equal(tt.root) {
				t.Errorf("CheckNewCA = %s, want the new CA's root %s", newRoot.Subject, tt.root.Subject)
			}
			rot, err := ca.Rotation(detRand(20), now, tt.old, tt.next.m)
			if err != nil {
				t.Fatalf("Rotation = %v, want nil", err)
			}
			// Rotation is CheckNewCA, CrossSign and RotationWith.
			oldKey, err := ca.ParseKey(tt.old.Key)
			if err != nil {
				t.Fatal(err)
			}
			cross, err := ca.CrossSign(detRand(21), now, mustParse(t, tt.old.Cert)[0], oldKey, newRoot)
			if err != nil {
				t.Fatalf("CrossSign = %v", err)
			}
			rot2, err := ca.RotationWith(tt.old, tt.next.m, cross)
			if err != nil {
				t.Fatalf("RotationWith = %v, want nil", err)
			}
			for name, m := range map[string]ca.Material{"Rotation": rot, "RotationWith": rot2} {
				if len(m.Key) != 0 {
					t.Errorf("%s: material holds a key, want none", name)
				}
				if !bytes.Equal(m.Cert, tt.next.m.Cert) || !bytes.Equal(m.Bundle, tt.old.Bundle) {
					t.Errorf("%s: Cert and Bundle are not the new CA's certificate and the old bundle", name)
				}
				if _, err := ca.NewExternal(m); err != nil {
					t.Errorf("NewExternal(%s material) = %v, want nil", name, err)
				}
				if _, err := ca.NewSigner(m); err == nil {
					t.Errorf("NewSigner(%s material) = nil error, want a refusal: it holds no key", name)
				}
				mid := nodeChain(t, m, tt.next.cert, tt.next.key, id)
				oldStatus := verifyStatus(t, mid, tt.old.Bundle, id)
				newStatus := verifyStatus(t, mid, tt.next.m.Bundle, id)
				if want := ca.StatusOf(tt.next.cert); !oldStatus.Equal(want) || !newStatus.Equal(want) {
					t.Errorf("%s: mid-rotation leaf status %v (old bundle), %v (new), want the external CA's %v", name, oldStatus, newStatus, want)
				}
			}
		})
	}
}

func TestRotationToExternalRefuses(t *testing.T) {
	cluster := newID(t, 1)
	old := root(t, 2, cluster)
	oldKey, err := ca.ParseKey(old.Key)
	if err != nil {
		t.Fatal(err)
	}
	// External CAs that reuse the old key: as their root, as the
	// intermediate they sign with, or the old CA itself without its key.
	reusedRoot := testkit.NewX509CA(t, "CFSSL Root", oldKey, nil, now)
	reusedRootM, err := ca.ImportExternal(reusedRoot.CertPEM(), now)
	if err != nil {
		t.Fatalf("ImportExternal(root with the old key) = %v", err)
	}
	reusedInter := testkit.NewX509CA(t, "CFSSL Issuing", ecKey(t, elliptic.P256()), reusedRoot, now)
	reusedInterM, err := ca.ImportExternal(concat(reusedInter.CertPEM(), reusedRoot.CertPEM()), now)
	if err != nil {
		t.Fatalf("ImportExternal(intermediate under a root with the old key) = %v", err)
	}
	newR := testkit.NewX509CA(t, "New Root", ecKey(t, elliptic.P256()), nil, now)
	signsWithOld := testkit.NewX509CA(t, "CFSSL Issuing", oldKey, newR, now)
	signsWithOldM, err := ca.ImportExternal(concat(signsWithOld.CertPEM(), newR.CertPEM()), now)
	if err != nil {
		t.Fatalf("ImportExternal(intermediate with the old key) = %v", err)
	}
	keyless := old
	keyless.Key = nil
	ext := newExtRoot(t, "CFSSL Root CA")
	tests := []struct {
		name      string
		old, next ca.Material
		want      error
	}{
		{"external root reuses the old key", old, reusedRootM, ca.ErrKeyReused},
		{"external CA's root reuses the old key", old, reusedInterM, ca.ErrKeyReused},
		{"external CA signs with the old key", old, signsWithOldM, ca.ErrKeyReused},
		{"the old CA without its key", old, keyless, ca.ErrKeyReused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r, err := ca.CheckNewCA(tt.old, tt.next); !errors.Is(err, tt.want) || r != nil {
				t.Errorf("CheckNewCA = %v, %v, want nil, %v", r, err, tt.want)
			}
			if m, err := ca.Rotation(detRand(3), now, tt.old, tt.next); !errors.Is(err, tt.want) || m.Cert != nil {
				t.Errorf("Rotation = %v, want %v and no material", err, tt.want)
			}
		})
	}
	// Rotation cross-signs with the old key: from an external CA, which
	// the cluster has no key of, it is RotationWith's turn.
	if m, err := ca.Rotation(detRand(4), now, ext.m, root(t, 5, cluster)); !errors.Is(err, ca.ErrMalformedPEM) || m.Cert != nil {
		t.Errorf("Rotation(from an external CA) = %v, want %v and no material", err, ca.ErrMalformedPEM)
	}
}

func TestImportExternal(t *testing.T) {
	p256 := testkit.NewX509CA(t, "P-256 Root", ecKey(t, elliptic.P256()), nil, now)
	rsaRoot := testkit.NewX509CA(t, "RSA Root", rsaKey(t, 2048), nil, now)
	corp := newCorpChain(t)
	policy := testkit.NewX509CA(t, "Example Policy CA", ecKey(t, elliptic.P256()), corp.root, now)
	issuing := testkit.NewX509CA(t, "Example Issuing CA 2", ecKey(t, elliptic.P256()), policy, now)
	yearRoot := testkit.NewX509CA(t, "Year Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotAfter = now.Add(ca.MinCAValidity)
	})
	tests := []struct {
		name    string
		certPEM []byte
		key     crypto.Signer // of the first certificate, for Import
		signing *x509.Certificate
		root    *x509.Certificate
		chain   []*x509.Certificate
	}{
		{"root alone", p256.CertPEM(), p256.Key, p256.Cert, p256.Cert, nil},
		{"RSA root", rsaRoot.CertPEM(), rsaRoot.Key, rsaRoot.Cert, rsaRoot.Cert, nil},
		{"root with exactly a year left", yearRoot.CertPEM(), yearRoot.Key, yearRoot.Cert, yearRoot.Cert, nil},
		{"intermediate and root", concat(corp.inter.CertPEM(), corp.root.CertPEM()), corp.inter.Key,
			corp.inter.Cert, corp.root.Cert, []*x509.Certificate{corp.inter.Cert}},
		{"three-level chain", concat(issuing.CertPEM(), policy.CertPEM(), corp.root.CertPEM()), issuing.Key,
			issuing.Cert, corp.root.Cert, []*x509.Certificate{issuing.Cert, policy.Cert}},
		{"surrounding whitespace", concat([]byte("\n"), p256.CertPEM(), []byte(" \n")), p256.Key, p256.Cert, p256.Cert, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.ImportExternal(tt.certPEM, now)
			if err != nil {
				t.Fatalf("ImportExternal = %v, want nil", err)
			}
			if m.Key != nil {
				t.Errorf("ImportExternal: Key = %.40q, want none", m.Key)
			}
			if got := mustParseOne(t, m.Cert); !got.Equal(tt.signing) {
				t.Errorf("ImportExternal: Cert = %s, want %s", got.Subject, tt.signing.Subject)
			}
			if got := mustParseOne(t, m.Bundle); !got.Equal(tt.root) {
				t.Errorf("ImportExternal: Bundle = %s, want %s", got.Subject, tt.root.Subject)
			}
			if want := ca.EncodeCertificates(tt.chain...); !bytes.Equal(m.Chain, want) {
				t.Errorf("ImportExternal: Chain has %d certificates, want %d", len(pemBlocks(m.Chain)), len(tt.chain))
			}
			// Import lays out the same certificates, with the key.
			withKey, err := ca.Import(tt.certPEM, testkit.KeyPEM(t, tt.key), now)
			if err != nil {
				t.Fatalf("Import(same certificates) = %v", err)
			}
			withKey.Key = nil
			if !bytes.Equal(withKey.Cert, m.Cert) || !bytes.Equal(withKey.Chain, m.Chain) || !bytes.Equal(withKey.Bundle, m.Bundle) {
				t.Errorf("ImportExternal and Import lay out the same certificates differently")
			}
			if _, err := ca.NewExternal(m); err != nil {
				t.Errorf("NewExternal(ImportExternal's material) = %v, want nil", err)
			}
		})
	}
}

// TestImportExternalRefuses: ImportExternal refuses what Import refuses
// of the certificates, with the same errors.
func TestImportExternalRefuses(t *testing.T) {
	good := testkit.NewX509CA(t, "Good Root", ecKey(t, elliptic.P256()), nil, now)
	corp := newCorpChain(t)
	other := testkit.NewX509CA(t, "Other Root", ecKey(t, elliptic.P256()), nil, now)
	leafLike := testkit.NewX509CA(t, "Not A CA", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.IsCA = false
		c.KeyUsage = x509.KeyUsageDigitalSignature
	})
	noConstraints := testkit.NewX509CA(t, "No Basic Constraints", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.BasicConstraintsValid, c.IsCA = false, false
	})
	leafUnderRoot := testkit.NewX509CA(t, "Leaf Under Corp Root", ecKey(t, elliptic.P256()), corp.root, now, func(c *x509.Certificate) {
		c.IsCA = false
		c.KeyUsage = x509.KeyUsageDigitalSignature
	})
	expired := testkit.NewX509CA(t, "Expired Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = now.AddDate(-10, 0, 0), now.Add(-time.Second)
	})
	notYet := testkit.NewX509CA(t, "Future Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) { c.NotBefore = now.Add(time.Hour) })
	shortLived := testkit.NewX509CA(t, "Short Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotAfter = now.Add(ca.MinCAValidity - time.Second)
	})
	expiredRoot := testkit.NewX509CA(t, "Expired Corp Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = now.AddDate(-10, 0, 0), now.Add(-time.Hour)
	})
	interOfExpired := testkit.NewX509CA(t, "Inter Of Expired", ecKey(t, elliptic.P256()), expiredRoot, now)
	noInterRoot := testkit.NewX509CA(t, "No Intermediates Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.MaxPathLen, c.MaxPathLenZero = 0, true
	})
	interOfNoInter := testkit.NewX509CA(t, "Inter Of No Intermediates Root", ecKey(t, elliptic.P256()), noInterRoot, now)
	p224 := testkit.NewX509CA(t, "P-224 Root", ecKey(t, elliptic.P224()), nil, now)
	ed := testkit.NewX509CA(t, "Ed25519 Root", edKey(t), nil, now)
	weak := testkit.NewX509CA(t, "RSA 1024 Root", rsaKey(t, 1024), nil, now)
	badDER := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})

	tests := []struct {
		name    string
		certPEM []byte
		key     crypto.Signer // of the first certificate, for Import
		want    error
	}{
		{"not a CA", leafLike.CertPEM(), leafLike.Key, ca.ErrNotCA},
		{"no basic constraints", noConstraints.CertPEM(), noConstraints.Key, ca.ErrNotCA},
		{"leaf in the chain", concat(leafUnderRoot.CertPEM(), corp.root.CertPEM()), leafUnderRoot.Key, ca.ErrNotCA},
		{"intermediate alone", corp.inter.CertPEM(), corp.inter.Key, ca.ErrChainIncomplete},
		{"link not signed by the next", concat(corp.inter.CertPEM(), other.CertPEM()), corp.inter.Key, ca.ErrChainIncomplete},
		{"root followed by its intermediate", concat(corp.root.CertPEM(), corp.inter.CertPEM()), corp.root.Key, ca.ErrChainIncomplete},
		{"path length forbids the intermediate", concat(interOfNoInter.CertPEM(), noInterRoot.CertPEM()), interOfNoInter.Key, ca.ErrChainIncomplete},
		{"expired", expired.CertPEM(), expired.Key, ca.ErrExpiring},
		{"not yet valid", notYet.CertPEM(), notYet.Key, ca.ErrExpiring},
		{"a second under a year left", shortLived.CertPEM(), shortLived.Key, ca.ErrExpiring},
		{"expired root above a good intermediate", concat(interOfExpired.CertPEM(), expiredRoot.CertPEM()), interOfExpired.Key, ca.ErrExpiring},
		{"P-224 CA", p224.CertPEM(), p224.Key, ca.ErrUnsupportedKey},
		{"Ed25519 CA", ed.CertPEM(), ed.Key, ca.ErrUnsupportedKey},
		{"RSA 1024 CA", weak.CertPEM(), weak.Key, ca.ErrWeakKey},
		{"empty", nil, good.Key, ca.ErrMalformedPEM},
		{"not PEM", []byte("-----BEGIN garbage"), good.Key, ca.ErrMalformedPEM},
		{"block not DER", badDER, good.Key, ca.ErrMalformedPEM},
		{"key block", good.KeyPEM(t), good.Key, ca.ErrMalformedPEM},
		{"trailing text", concat(good.CertPEM(), []byte("trailing")), good.Key, ca.ErrMalformedPEM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.ImportExternal(tt.certPEM, now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ImportExternal = %v, want %v", err, tt.want)
			}
			if m.Cert != nil || m.Chain != nil || m.Bundle != nil || m.Key != nil {
				t.Errorf("ImportExternal returned material with its error")
			}
			if _, err := ca.Import(tt.certPEM, testkit.KeyPEM(t, tt.key), now); !errors.Is(err, tt.want) {
				t.Errorf("Import(same certificates, their key) = %v, want %v as ImportExternal", err, tt.want)
			}
		})
	}
}

// ImportExternal measures the validity left at the now given.
func TestImportExternalUsesGivenTime(t *testing.T) {
	r := testkit.NewX509CA(t, "Root", ecKey(t, elliptic.P256()), nil, now) // valid to now+10y
	tests := []struct {
		at   time.Time
		want error
	}{
		{now, nil},
		{r.Cert.NotAfter.Add(-ca.MinCAValidity), nil},
		{r.Cert.NotAfter.Add(-ca.MinCAValidity + time.Second), ca.ErrExpiring},
		{r.Cert.NotBefore.Add(-time.Second), ca.ErrExpiring},
		{r.Cert.NotBefore, nil},
	}
	for _, tt := range tests {
		if _, err := ca.ImportExternal(r.CertPEM(), tt.at); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
			t.Errorf("ImportExternal(root, %v) = %v, want %v", tt.at, err, tt.want)
		}
	}
}

// TestOpenSSLExternal checks with OpenSSL the chains of the external CA
// paths: what Check returns, and the rotations into and out of an
// external CA.
func TestOpenSSLExternal(t *testing.T) {
	if out, err := openssl(t, t.TempDir(), "version"); err != nil {
		t.Fatalf("openssl version = %q, %v; the openssl command is needed for this test (e.g. apt-get install openssl)", out, err)
	}
	cluster := newID(t, 1)

	t.Run("external intermediate", func(t *testing.T) {
		dir := t.TempDir()
		e, _ := newExtInter(t)
		id := ca.Identity{NodeID: newID(t, 2), Role: ca.RoleWorker, ClusterID: cluster}
		blocks := pemBlocks(nodeChain(t, e.m, e.cert, e.key, id))
		if len(blocks) != 2 {
			t.Fatalf("Check: %d certificates, want leaf and intermediate", len(blocks))
		}
		writeFiles(t, dir, map[string][]byte{"root.pem": e.m.Bundle, "chain.pem": blocks[1], "leaf.pem": blocks[0]})
		opensslVerify(t, dir, "-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem")
		opensslSubject(t, dir, "leaf.pem", id)
	})

	t.Run("generated root to external root", func(t *testing.T) {
		dir := t.TempDir()
		old := root(t, 3, cluster)
		e := newExtRoot(t, "CFSSL Root CA")
		rot, err := ca.Rotation(detRand(4), now, old, e.m)
		if err != nil {
			t.Fatalf("Rotation = %v", err)
		}
		id := ca.Identity{NodeID: newID(t, 5), Role: ca.RoleManager, ClusterID: cluster}
		blocks := pemBlocks(nodeChain(t, rot, e.cert, e.key, id))
		if len(blocks) != 2 {
			t.Fatalf("mid-rotation Check: %d certificates, want leaf and cross-signed root", len(blocks))
		}
		writeFiles(t, dir, map[string][]byte{
			"old-root.pem": old.Bundle, "new-root.pem": e.m.Bundle, "chain.pem": blocks[1], "leaf.pem": blocks[0],
		})
		opensslVerify(t, dir, "-CAfile", "old-root.pem", "-untrusted", "chain.pem", "leaf.pem")
		opensslVerify(t, dir, "-CAfile", "new-root.pem", "leaf.pem")
		opensslRefuse(t, dir, "-CAfile", "old-root.pem", "leaf.pem")
	})

	t.Run("external intermediate to generated root", func(t *testing.T) {
		dir := t.TempDir()
		old, _ := newExtInter(t)
		next := generatedNext(t, 6, cluster)
		newRoot := mustParseOne(t, next.m.Cert)
		csr, err := ca.CrossSignRequest(crand.Reader, newRoot, next.rootKey)
		if err != nil {
			t.Fatalf("CrossSignRequest = %v", err)
		}
		cross, err := ca.CheckCrossSigned(now, old.m, old.crossSign(t, csr), newRoot)
		if err != nil {
			t.Fatalf("CheckCrossSigned = %v", err)
		}
		rot, err := ca.RotationWith(old.m, next.m, cross)
		if err != nil {
			t.Fatalf("RotationWith = %v", err)
		}
		id := ca.Identity{NodeID: newID(t, 7), Role: ca.RoleWorker, ClusterID: cluster}
		blocks := pemBlocks(nodeChain(t, rot, nil, nil, id))
		if len(blocks) != 3 {
			t.Fatalf("mid-rotation Sign: %d certificates, want leaf, cross-signed root and the old intermediate", len(blocks))
		}
		writeFiles(t, dir, map[string][]byte{
			"old-root.pem": old.m.Bundle, "new-root.pem": next.m.Bundle, "chain.pem": bytes.Join(blocks[1:], nil), "leaf.pem": blocks[0],
		})
		opensslVerify(t, dir, "-CAfile", "old-root.pem", "-untrusted", "chain.pem", "leaf.pem")
		opensslVerify(t, dir, "-CAfile", "new-root.pem", "leaf.pem")
		opensslRefuse(t, dir, "-CAfile", "old-root.pem", "leaf.pem")
	})
}
