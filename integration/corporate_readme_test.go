package integration

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// readmeCorporateRecipe returns the README's openssl commands that make a
// corporate root and an issuing CA for the cluster.
func readmeCorporateRecipe(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const first, last = "openssl ecparam -name prime256v1 -genkey -noout -out corp-root.key\n", "cat cluster-ca.crt corp-root.crt > cluster-ca-chain.crt\n"
	_, after, ok := strings.Cut(string(b), first)
	recipe, _, ok2 := strings.Cut(after, last)
	if !ok || !ok2 {
		t.Fatal("README.md has no corporate root recipe")
	}
	return first + recipe + last
}

// TestReadmeCorporateRecipeIsStrict: the README's corporate recipe,
// run with the real openssl, makes a CA that quorumca imports without a
// warning, and whose node certificates openssl verify -x509_strict
// accepts. The recipe without the root's key usage (openssl req -x509's
// default) still imports, with Lint's warning, and -x509_strict refuses
// it.
func TestReadmeCorporateRecipeIsStrict(t *testing.T) {
	bin := requireOpenSSL(t)
	recipe := readmeCorporateRecipe(t)
	lax := strings.Replace(recipe, ` -addext "keyUsage=critical,keyCertSign,cRLSign"`, "", 1)
	if lax == recipe {
		t.Fatal("the README's recipe gives the root no keyUsage")
	}
	for _, tc := range []struct {
		name   string
		recipe string
		strict bool
	}{{"the README's recipe", recipe, true}, {"without the root's key usage", lax, false}} {
		dir := t.TempDir()
		cmd := exec.CommandContext(t.Context(), "sh", "-e", "-c", strings.ReplaceAll(tc.recipe, "openssl ", bin+" "))
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, out)
		}
		read := func(name string) []byte {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		m, err := ca.Import(read("cluster-ca-chain.crt"), read("cluster-ca.key"), time.Now())
		if err != nil {
			t.Fatalf("%s: ca.Import = %v", tc.name, err)
		}
		if warnings := ca.Lint(m); tc.strict != (len(warnings) == 0) {
			t.Errorf("%s: Lint = %q", tc.name, warnings)
		}
		s, err := ca.NewSigner(m)
		if err != nil {
			t.Fatal(err)
		}
		key, err := ca.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		clusterID, _ := ca.NewID(rand.Reader)
		nodeID, _ := ca.NewID(rand.Reader)
		leaf, err := s.SignKey(rand.Reader, time.Now(), key.Public(), ca.Identity{NodeID: nodeID, Role: ca.RoleWorker, ClusterID: clusterID}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "node.crt"), leaf.PEM, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(t.Context(), bin, "verify", "-x509_strict", "-CAfile", filepath.Join(dir, "corp-root.crt"),
			"-untrusted", filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.crt")).CombinedOutput()
		if ok := err == nil && strings.Contains(string(out), ": OK"); ok != tc.strict {
			t.Errorf("%s: openssl verify -x509_strict on a node certificate: accepted %v, want %v\n%s", tc.name, ok, tc.strict, out)
		}
	}
}
