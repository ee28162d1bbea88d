package agent

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

func newKEK(t *testing.T) ca.KEK {
	t.Helper()
	key, err := ca.NewUnlockKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := ca.ParseUnlockKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return kek
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	return b
}

// TestNodeKeyRoundTrip writes node.key plain and sealed, and reads it back.
func TestNodeKeyRoundTrip(t *testing.T) {
	c := testkit.NewCA(t)
	p := c.Issue(t, ca.RoleManager)
	kek := newKEK(t)
	for _, tt := range []struct {
		name string
		nk   NodeKey
	}{
		{"worker: the key alone", NodeKey{Key: p.KeyPEM}},
		{"manager: key and data key", NodeKey{Key: p.KeyPEM, DataKey: randomKey(t)}},
		{"manager rotating its data key", NodeKey{Key: p.KeyPEM, DataKey: randomKey(t), PrevDataKey: randomKey(t)}},
		{"autolock", NodeKey{Key: p.KeyPEM, DataKey: randomKey(t), PrevDataKey: randomKey(t), KEK: &kek}},
	} {
		b, err := tt.nk.Marshal(rand.Reader)
		if err != nil {
			t.Fatalf("%s: Marshal() = %v", tt.name, err)
		}
		got, err := ParseNodeKey(b, kek)
		if err != nil {
			t.Fatalf("%s: ParseNodeKey() = %v", tt.name, err)
		}
		if !bytes.Equal(got.Key, p.KeyPEM) || !bytes.Equal(got.DataKey, tt.nk.DataKey) || !bytes.Equal(got.PrevDataKey, tt.nk.PrevDataKey) || (got.KEK == nil) != (tt.nk.KEK == nil) {
			t.Errorf("%s: ParseNodeKey(Marshal()) = %+v, want %+v", tt.name, got, tt.nk)
		}
		if tt.nk.KEK != nil {
			for _, secret := range [][]byte{tt.nk.DataKey, tt.nk.PrevDataKey} {
				if bytes.Contains(b, secret) {
					t.Errorf("%s: a sealed node.key holds a data key in clear", tt.name)
				}
			}
			block, _ := pem.Decode(p.KeyPEM)
			if bytes.Contains(b, block.Bytes) {
				t.Errorf("%s: a sealed node.key holds the private key in clear", tt.name)
			}
			_, err := ParseNodeKey(b)
			var le *LockedError
			if !errors.As(err, &le) || le.KEK != kek.ID || !errors.Is(err, ErrLocked) {
				t.Errorf("%s: ParseNodeKey(no KEK) = %v, want ErrLocked naming %s", tt.name, err, kek.ID)
			}
			if _, err := ParseNodeKey(b, newKEK(t)); !errors.Is(err, ErrLocked) {
				t.Errorf("%s: ParseNodeKey(another KEK) = %v, want ErrLocked", tt.name, err)
			}
		}
	}
}

// TestNodeKeyReadByOthers: a manager's plain node.key, with its data key
// block, is still read by openssl and Go's crypto/tls as a private key.
func TestNodeKeyReadByOthers(t *testing.T) {
	c := testkit.NewCA(t)
	p := c.Issue(t, ca.RoleManager)
	b, err := NodeKey{Key: p.KeyPEM, DataKey: randomKey(t)}.Marshal(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "node.key")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("openssl", "pkey", "-in", path, "-noout").CombinedOutput(); err != nil {
		t.Errorf("openssl pkey -in node.key = %v: %s", err, out)
	}
	if _, err := tls.X509KeyPair(p.CertPEM, b); err != nil {
		t.Errorf("tls.X509KeyPair(node.key with a data key) = %v", err)
	}
}

// TestCredentialsSealed: credentials whose node.key is sealed load only
// with the KEK, and a renewal keeps the data key and the seal.
func TestCredentialsSealed(t *testing.T) {
	c := testkit.NewCA(t)
	p := c.Issue(t, ca.RoleManager)
	creds, dir := newCreds(t, c, p)
	kek, dataKey := newKEK(t), randomKey(t)
	if err := creds.SetNodeKey(func(nk *NodeKey) { nk.DataKey, nk.KEK = dataKey, &kek }); err != nil {
		t.Fatalf("SetNodeKey() = %v", err)
	}
	if _, err := LoadCredentials(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("LoadCredentials(sealed, no KEK) = %v, want ErrLocked", err)
	}
	loaded, err := LoadCredentials(dir, kek)
	if err != nil || !bytes.Equal(loaded.NodeKey().DataKey, dataKey) {
		t.Fatalf("LoadCredentials(sealed, KEK) = %v; data key kept: %v", err, err == nil && bytes.Equal(loaded.NodeKey().DataKey, dataKey))
	}
	renewed := c.IssueFor(t, p.ID)
	if err := loaded.Update(renewed.KeyPEM, renewed.CertPEM, nil); err != nil {
		t.Fatalf("Update() = %v", err)
	}
	raw, _ := os.ReadFile(filepath.Join(CertDir(dir), KeyFile))
	if !strings.Contains(string(raw), pemSealedKey) {
		t.Errorf("node.key after a renewal is not sealed:\n%s", raw)
	}
	again, err := LoadCredentials(dir, kek)
	if err != nil || !bytes.Equal(again.NodeKey().DataKey, dataKey) || again.Leaf().SerialNumber.Cmp(renewed.Serial) != 0 {
		t.Fatalf("LoadCredentials() after a renewal = %v; want the renewed certificate and the data key", err)
	}
	// Autolock off: plain again.
	if err := again.SetNodeKey(func(nk *NodeKey) { nk.KEK = nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(dir); err != nil {
		t.Fatalf("LoadCredentials() after the seal was lifted = %v", err)
	}
}
