package agent

import (
	"bytes"
	"crypto/rand"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// testCA is a real cluster CA, valid now: the agent verifies certificates
// against the wall clock, as crypto/tls does.
type testCA struct {
	clusterID string
	signer    *ca.Signer
	bundle    []byte
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	clusterID, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatalf("ca.NewID() = %v", err)
	}
	m, err := ca.GenerateRoot(rand.Reader, time.Now(), clusterID)
	if err != nil {
		t.Fatalf("ca.GenerateRoot() = %v", err)
	}
	s, err := ca.NewSigner(m)
	if err != nil {
		t.Fatalf("ca.NewSigner() = %v", err)
	}
	return &testCA{clusterID: clusterID, signer: s, bundle: m.Bundle}
}

// pair is a node key and the certificate chain issued for it.
type pair struct {
	keyPEM, certPEM []byte
	id              ca.Identity
	serial          *big.Int
}

// issue signs a certificate for a new node of role.
func (c *testCA) issue(t testing.TB, role ca.Role) pair {
	t.Helper()
	nodeID, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatalf("ca.NewID() = %v", err)
	}
	return c.issueFor(t, ca.Identity{NodeID: nodeID, Role: role, ClusterID: c.clusterID})
}

// issueFor signs a certificate naming id, for a fresh key: a renewal.
func (c *testCA) issueFor(t testing.TB, id ca.Identity) pair {
	t.Helper()
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("ca.GenerateKey() = %v", err)
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		t.Fatalf("ca.MarshalKey() = %v", err)
	}
	issued, err := c.signer.SignKey(rand.Reader, time.Now(), key.Public(), id, 24*time.Hour)
	if err != nil {
		t.Fatalf("SignKey(%v) = %v", id, err)
	}
	return pair{keyPEM: keyPEM, certPEM: issued.PEM, id: id, serial: issued.Serial}
}

// newCreds stores p under a new data directory.
func (c *testCA) newCreds(t testing.TB, p pair) (*Credentials, string) {
	t.Helper()
	dataDir := t.TempDir()
	creds, err := NewCredentials(dataDir, p.keyPEM, p.certPEM, c.bundle)
	if err != nil {
		t.Fatalf("NewCredentials(%s) = %v", p.id.NodeID, err)
	}
	return creds, dataDir
}

// readDir returns the contents of the files in dir by name, directories
// left out.
func readDir(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir(%s) = %v", dir, err)
	}
	files := map[string][]byte{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatalf("ReadFile(%s) = %v", e.Name(), err)
		}
		files[e.Name()] = b
	}
	return files
}

func names(files map[string][]byte) []string {
	var n []string
	for k := range files {
		n = append(n, k)
	}
	slices.Sort(n)
	return n
}

// sameFiles reports whether two readDir results hold the same names and
// bytes.
func sameFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

func mode(t testing.TB, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("Stat(%s) = %v", path, err)
	}
	return fi.Mode().Perm()
}
