package ca_test

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

func TestCrossSign(t *testing.T) {
	cluster := newID(t, 1)
	oldM := root(t, 2, cluster)
	oldCert := mustParseOne(t, oldM.Cert)
	oldKey, err := ca.ParseKey(oldM.Key)
	if err != nil {
		t.Fatal(err)
	}
	short := root(t, 3, cluster, ca.WithRootValidity(ca.MinCAValidity)) // ends before old
	long := root(t, 4, cluster, ca.WithRootValidity(ca.DefaultRootValidity+time.Hour))
	at := now.Add(time.Hour)
	tests := []struct {
		name         string
		next         *x509.Certificate
		wantNotAfter time.Time
	}{
		{"new root ends first", mustParseOne(t, short.Cert), now.Add(ca.MinCAValidity)},
		{"old root ends first", mustParseOne(t, long.Cert), oldCert.NotAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cross, err := ca.CrossSign(detRand(5), at, oldCert, oldKey, tt.next)
			if err != nil {
				t.Fatalf("CrossSign = %v, want nil", err)
			}
			if !bytes.Equal(cross.RawSubject, tt.next.RawSubject) {
				t.Errorf("CrossSign: subject %s, want the new root's %s byte for byte", cross.Subject, tt.next.Subject)
			}
			if !bytes.Equal(cross.RawIssuer, oldCert.RawSubject) {
				t.Errorf("CrossSign: issuer %s, want the old root's subject %s", cross.Issuer, oldCert.Subject)
			}
			if !publicKeyEqual(cross.PublicKey, tt.next.PublicKey) {
				t.Errorf("CrossSign: public key is not the new root's")
			}
			if !bytes.Equal(cross.SubjectKeyId, tt.next.SubjectKeyId) {
				t.Errorf("CrossSign: SubjectKeyId %x, want the new root's %x", cross.SubjectKeyId, tt.next.SubjectKeyId)
			}
			if !bytes.Equal(cross.AuthorityKeyId, oldCert.SubjectKeyId) {
				t.Errorf("CrossSign: AuthorityKeyId %x, want the old root's key ID %x", cross.AuthorityKeyId, oldCert.SubjectKeyId)
			}
			if !cross.BasicConstraintsValid || !cross.IsCA {
				t.Errorf("CrossSign: IsCA = %v, want true", cross.IsCA)
			}
			if got, want := cross.KeyUsage, x509.KeyUsageCertSign|x509.KeyUsageCRLSign; got != want {
				t.Errorf("CrossSign: KeyUsage = %v, want %v", got, want)
			}
			if err := cross.CheckSignatureFrom(oldCert); err != nil {
				t.Errorf("CrossSign: signature does not check against the old root: %v", err)
			}
			if !cross.NotAfter.Equal(tt.wantNotAfter) {
				t.Errorf("CrossSign: NotAfter = %v, want %v", cross.NotAfter, tt.wantNotAfter)
			}
			if back := at.Sub(cross.NotBefore); back <= 0 || back > 15*time.Minute {
				t.Errorf("CrossSign(at %v): NotBefore = %v, want a few minutes before", at, cross.NotBefore)
			}
			// Under the old root, the cross-signed certificate is a valid CA.
			pool, _, err := ca.ParseBundle(oldM.Bundle)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cross.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Errorf("cross-signed certificate does not verify under the old root: %v", err)
			}
		})
	}
}

func TestCrossSignRefuses(t *testing.T) {
	cluster := newID(t, 1)
	oldM := root(t, 2, cluster)
	oldCert := mustParseOne(t, oldM.Cert)
	oldKey, err := ca.ParseKey(oldM.Key)
	if err != nil {
		t.Fatal(err)
	}
	nextM := root(t, 3, cluster)
	next := mustParseOne(t, nextM.Cert)
	nextKey, err := ca.ParseKey(nextM.Key)
	if err != nil {
		t.Fatal(err)
	}
	// A "new" root that reuses the old key.
	sameKey := testkit.NewX509CA(t, "swarm-ca", oldKey, nil, now, func(c *x509.Certificate) {
		c.Subject = pkix.Name{CommonName: "swarm-ca", Organization: []string{cluster}}
	})
	notCA := testkit.NewX509CA(t, "not a CA", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.IsCA = false
		c.KeyUsage = x509.KeyUsageDigitalSignature
	})
	tests := []struct {
		name string
		next *x509.Certificate
		key  crypto.Signer
		want error
	}{
		{"new root reuses the old key", sameKey.Cert, oldKey, ca.ErrKeyReused},
		{"new root is the old root", oldCert, oldKey, ca.ErrKeyReused},
		{"old key does not match", next, nextKey, ca.ErrKeyMismatch},
		{"new root not a CA", notCA.Cert, oldKey, ca.ErrNotCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ca.CrossSign(detRand(4), now, oldCert, tt.key, tt.next)
			if !errors.Is(err, tt.want) {
				t.Fatalf("CrossSign = %v, want %v", err, tt.want)
			}
			if c != nil {
				t.Errorf("CrossSign returned a certificate with its error")
			}
		})
	}
}

// issue signs a fresh leaf for id with m.
func issue(t *testing.T, m ca.Material, seed uint64, id ca.Identity) ca.Issued {
	t.Helper()
	iss, err := signer(t, m).Sign(detRand(seed), now, csrPEM(t, ecKey(t, elliptic.P256()), nil), id, ca.DefaultCertExpiry)
	if err != nil {
		t.Fatalf("Sign(%+v) = %v", id, err)
	}
	return iss
}

func verifyStatus(t *testing.T, chainPEM, bundle []byte, want ca.Identity) ca.TLSStatus {
	t.Helper()
	id, status, err := ca.VerifyPEM(chainPEM, bundle, now)
	if err != nil {
		t.Fatalf("VerifyPEM = %v, want nil", err)
	}
	if id != want {
		t.Errorf("VerifyPEM identity = %+v, want %+v", id, want)
	}
	return status
}

func TestRotation(t *testing.T) {
	cluster := newID(t, 1)
	corp := newCorpChain(t)
	p384 := testkit.NewX509CA(t, "P-384 Root", ecKey(t, elliptic.P384()), nil, now)
	p384M, err := ca.Import(p384.CertPEM(), p384.KeyPEM(t), now)
	if err != nil {
		t.Fatalf("Import(P-384 root) = %v", err)
	}
	nextCorp := newCorpChain(t)
	tests := []struct {
		name      string
		old, next ca.Material
	}{
		{"generated root to generated root", root(t, 2, cluster), root(t, 3, cluster)},
		{"corporate intermediate to generated root", corp.material(t), root(t, 4, cluster)},
		{"imported P-384 root to generated root", p384M, root(t, 5, cluster)},
		{"generated root to corporate intermediate", root(t, 6, cluster), nextCorp.material(t)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := ca.Identity{NodeID: newID(t, uint64(10+i)), Role: ca.RoleManager, ClusterID: cluster}
			rot, err := ca.Rotation(detRand(20), now, tt.old, tt.next)
			if err != nil {
				t.Fatalf("Rotation = %v, want nil", err)
			}
			if !bytes.Equal(rot.Cert, tt.next.Cert) || !bytes.Equal(rot.Key, tt.next.Key) {
				t.Errorf("Rotation: Cert and Key are not the new CA's")
			}
			if !bytes.Equal(rot.Bundle, tt.old.Bundle) {
				t.Errorf("Rotation: Bundle is not the old bundle")
			}
			mid := issue(t, rot, 21, id)
			oldStatus := verifyStatus(t, mid.PEM, tt.old.Bundle, id)
			newStatus := verifyStatus(t, mid.PEM, tt.next.Bundle, id)
			if !oldStatus.Equal(newStatus) {
				t.Errorf("mid-rotation leaf: status %v under the old bundle, %v under the new, want the same", oldStatus, newStatus)
			}
			// A leaf of the old CA reports another status.
			before := issue(t, tt.old, 22, id)
			if s := verifyStatus(t, before.PEM, tt.old.Bundle, id); s.Equal(newStatus) {
				t.Errorf("old CA's leaf status %v, want it to differ from the new CA's", s)
			}
			// Once rotated, the new CA's own leaves report the same status
			// as the mid-rotation leaves.
			after := issue(t, tt.next, 23, id)
			if s := verifyStatus(t, after.PEM, tt.next.Bundle, id); !s.Equal(newStatus) {
				t.Errorf("new CA's leaf status %v, want the mid-rotation status %v", s, newStatus)
			}
			// The old bundle does not trust the new CA without the
			// cross-signed certificate, nor the new bundle the old CA.
			if _, _, err := ca.VerifyPEM(after.PEM, tt.old.Bundle, now); !errors.Is(err, ca.ErrUntrusted) {
				t.Errorf("VerifyPEM(new CA's leaf, old bundle) = %v, want %v", err, ca.ErrUntrusted)
			}
			if _, _, err := ca.VerifyPEM(before.PEM, tt.next.Bundle, now); !errors.Is(err, ca.ErrUntrusted) {
				t.Errorf("VerifyPEM(old CA's leaf, new bundle) = %v, want %v", err, ca.ErrUntrusted)
			}
		})
	}
}

func TestRotationRefuses(t *testing.T) {
	cluster := newID(t, 1)
	old := root(t, 2, cluster)
	oldKey, err := ca.ParseKey(old.Key)
	if err != nil {
		t.Fatal(err)
	}
	next := root(t, 3, cluster)
	// A new root made with the old key.
	reused := testkit.NewX509CA(t, "swarm-ca", oldKey, nil, now, func(c *x509.Certificate) {
		c.Subject = pkix.Name{CommonName: "swarm-ca", Organization: []string{cluster}}
	})
	reusedM := ca.Material{Cert: reused.CertPEM(), Key: old.Key, Bundle: reused.CertPEM()}
	// An intermediate (new key) under a root that has the old key.
	reusedInter := testkit.NewX509CA(t, "Inter", ecKey(t, elliptic.P256()), reused, now)
	reusedInterM := ca.Material{
		Cert:   reusedInter.CertPEM(),
		Key:    reusedInter.KeyPEM(t),
		Chain:  reusedInter.CertPEM(),
		Bundle: reused.CertPEM(),
	}
	// A corporate root that allows one CA below it: the intermediate. The
	// cross-signed certificate would be a second.
	pathRoot := testkit.NewX509CA(t, "Path Root", ecKey(t, elliptic.P256()), nil, now, func(c *x509.Certificate) { c.MaxPathLen = 1 })
	pathInter := testkit.NewX509CA(t, "Path Inter", ecKey(t, elliptic.P256()), pathRoot, now)
	pathM, err := ca.Import(concat(pathInter.CertPEM(), pathRoot.CertPEM()), pathInter.KeyPEM(t), now)
	if err != nil {
		t.Fatalf("Import(root with pathlen 1 + intermediate) = %v", err)
	}
	twoRoots := next
	twoRoots.Bundle = concat(next.Bundle, root(t, 4, cluster).Bundle)
	badOld := old
	badOld.Key = []byte("garbage")
	tests := []struct {
		name      string
		old, next ca.Material
		want      error
	}{
		{"next reuses the old key", old, reusedM, ca.ErrKeyReused},
		{"next is the old CA", old, old, ca.ErrKeyReused},
		{"next's root reuses the old key", old, reusedInterM, ca.ErrKeyReused},
		{"next bundle holds two roots", old, twoRoots, ca.ErrChainIncomplete},
		{"old root's path length leaves no room", pathM, next, ca.ErrChainIncomplete},
		{"old key malformed", badOld, next, ca.ErrMalformedPEM},
		{"next certificate malformed", old, ca.Material{Cert: []byte("x"), Key: next.Key, Bundle: next.Bundle}, ca.ErrMalformedPEM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.Rotation(detRand(5), now, tt.old, tt.next)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Rotation = %v, want %v", err, tt.want)
			}
			if m.Cert != nil {
				t.Errorf("Rotation returned material with its error")
			}
		})
	}
}
