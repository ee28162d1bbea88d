package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/quorumca/quorumca/internal/testkit"
)

// newCreds stores p, issued by c, under a new data directory.
func newCreds(t testing.TB, c *testkit.CA, p testkit.Leaf) (*Credentials, string) {
	t.Helper()
	dataDir := t.TempDir()
	creds, err := NewCredentials(dataDir, p.KeyPEM, p.CertPEM, c.Bundle())
	if err != nil {
		t.Fatalf("NewCredentials(%s) = %v", p.ID.NodeID, err)
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
