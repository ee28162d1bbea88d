package ca_test

import (
	"bytes"
	"crypto/elliptic"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/ca"
)

// openssl runs the openssl command in dir and returns its combined output.
func openssl(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "openssl", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// opensslVerify runs openssl verify at the tests' fixed time, for both TLS
// purposes, and wants "<leaf>: OK".
func opensslVerify(t *testing.T, dir string, args ...string) {
	t.Helper()
	for _, purpose := range []string{"sslserver", "sslclient"} {
		full := append([]string{"verify", "-attime", strconv.FormatInt(now.Unix(), 10), "-purpose", purpose}, args...)
		out, err := openssl(t, dir, full...)
		leaf := args[len(args)-1]
		if err != nil || out != leaf+": OK" {
			t.Errorf("openssl %s = %q, %v, want %q", strings.Join(full, " "), out, err, leaf+": OK")
		}
	}
}

// opensslRefuse runs openssl verify and wants it to fail.
func opensslRefuse(t *testing.T, dir string, args ...string) {
	t.Helper()
	full := append([]string{"verify", "-attime", strconv.FormatInt(now.Unix(), 10)}, args...)
	if out, err := openssl(t, dir, full...); err == nil {
		t.Errorf("openssl %s = %q, nil, want a failure", strings.Join(full, " "), out)
	}
}

func opensslSubject(t *testing.T, dir, file string, id ca.Identity) {
	t.Helper()
	out, err := openssl(t, dir, "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", file)
	want := "subject=CN=" + id.NodeID + ",OU=" + string(id.Role) + ",O=" + id.ClusterID
	if err != nil || out != want {
		t.Errorf("openssl x509 -noout -subject -nameopt RFC2253 -in %s = %q, %v, want %q", file, out, err, want)
	}
}

// TestOpenSSLInterop checks the certificates with another implementation:
// OpenSSL must build the same chains Go does.
func TestOpenSSLInterop(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("the openssl command is needed for this test and is not on PATH (%v); install openssl (e.g. apt-get install openssl)", err)
	}
	if out, err := openssl(t, t.TempDir(), "version"); err != nil {
		t.Fatalf("openssl version = %q, %v", out, err)
	}
	cluster := newID(t, 1)

	t.Run("rotation", func(t *testing.T) {
		dir := t.TempDir()
		old := root(t, 2, cluster)
		next := root(t, 3, cluster)
		rot, err := ca.Rotation(detRand(4), now, old, next)
		if err != nil {
			t.Fatalf("Rotation = %v", err)
		}
		id := ca.Identity{NodeID: newID(t, 5), Role: ca.RoleWorker, ClusterID: cluster}
		iss := issue(t, rot, 6, id)
		blocks := pemBlocks(iss.PEM)
		if len(blocks) != 2 {
			t.Fatalf("mid-rotation Sign: %d certificates, want leaf and cross-signed intermediate", len(blocks))
		}
		writeFiles(t, dir, map[string][]byte{
			"old-root.pem":     old.Bundle,
			"new-root.pem":     next.Bundle,
			"intermediate.pem": blocks[1],
			"leaf.pem":         blocks[0],
		})
		opensslVerify(t, dir, "-CAfile", "old-root.pem", "-untrusted", "intermediate.pem", "leaf.pem")
		opensslVerify(t, dir, "-CAfile", "new-root.pem", "leaf.pem")
		// The intermediate is what makes the old root trust the leaf.
		opensslRefuse(t, dir, "-CAfile", "old-root.pem", "leaf.pem")
		opensslSubject(t, dir, "leaf.pem", id)
	})

	t.Run("corporate chain", func(t *testing.T) {
		dir := t.TempDir()
		corp := newCorpChain(t)
		m := corp.material(t)
		id := ca.Identity{NodeID: newID(t, 7), Role: ca.RoleManager, ClusterID: cluster}
		iss := issue(t, m, 8, id)
		blocks := pemBlocks(iss.PEM)
		if len(blocks) != 2 {
			t.Fatalf("corporate Sign: %d certificates, want leaf and intermediate", len(blocks))
		}
		writeFiles(t, dir, map[string][]byte{
			"corp-root.pem":    m.Bundle,
			"intermediate.pem": blocks[1],
			"leaf.pem":         blocks[0],
		})
		opensslVerify(t, dir, "-CAfile", "corp-root.pem", "-untrusted", "intermediate.pem", "leaf.pem")
		opensslRefuse(t, dir, "-CAfile", "corp-root.pem", "leaf.pem")
		opensslSubject(t, dir, "leaf.pem", id)
	})

	t.Run("rotation from a corporate chain", func(t *testing.T) {
		dir := t.TempDir()
		corp := newCorpChain(t)
		old := corp.material(t)
		next := root(t, 9, cluster)
		rot, err := ca.Rotation(detRand(10), now, old, next)
		if err != nil {
			t.Fatalf("Rotation = %v", err)
		}
		id := ca.Identity{NodeID: newID(t, 11), Role: ca.RoleManager, ClusterID: cluster}
		iss := issue(t, rot, 12, id)
		blocks := pemBlocks(iss.PEM)
		if len(blocks) != 3 {
			t.Fatalf("mid-rotation Sign: %d certificates, want leaf, cross-signed and corporate intermediates", len(blocks))
		}
		writeFiles(t, dir, map[string][]byte{
			"corp-root.pem": old.Bundle,
			"new-root.pem":  next.Bundle,
			"chain.pem":     bytes.Join(blocks[1:], nil),
			"leaf.pem":      blocks[0],
		})
		opensslVerify(t, dir, "-CAfile", "corp-root.pem", "-untrusted", "chain.pem", "leaf.pem")
		opensslVerify(t, dir, "-CAfile", "new-root.pem", "leaf.pem")
		opensslSubject(t, dir, "leaf.pem", id)
	})

	t.Run("leaf key types", func(t *testing.T) {
		dir := t.TempDir()
		m := root(t, 13, cluster)
		writeFiles(t, dir, map[string][]byte{"root.pem": m.Bundle})
		s := signer(t, m)
		keys := map[string][]byte{
			"p256": csrPEM(t, ecKey(t, elliptic.P256()), nil),
			"ed":   csrPEM(t, edKey(t), nil),
			"rsa":  csrPEM(t, rsaKey(t, 2048), nil),
		}
		for name, csr := range keys {
			id := ca.Identity{NodeID: newID(t, 14), Role: ca.RoleWorker, ClusterID: cluster}
			iss, err := s.Sign(detRand(15), now, csr, id, ca.DefaultCertExpiry)
			if err != nil {
				t.Fatalf("Sign(%s) = %v", name, err)
			}
			file := name + "-leaf.pem"
			writeFiles(t, dir, map[string][]byte{file: iss.PEM})
			opensslVerify(t, dir, "-CAfile", "root.pem", file)
		}
	})
}
