package agent

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

func TestNewCredentialsWritesFiles(t *testing.T) {
	c := testkit.NewCA(t)
	p := c.Issue(t, ca.RoleWorker)
	creds, dataDir := newCreds(t, c, p)
	dir := CertDir(dataDir)

	if creds.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", creds.Dir(), dir)
	}
	files := readDir(t, dir)
	if got, want := names(files), []string{CertFile, KeyFile, BundleFile}; !slices.Equal(got, want) {
		t.Errorf("files in %s = %v, want %v (no temporary or .new files)", dir, got, want)
	}
	for name, want := range map[string][]byte{KeyFile: p.KeyPEM, CertFile: p.CertPEM, BundleFile: c.Bundle()} {
		if !bytes.Equal(files[name], want) {
			t.Errorf("%s holds %d bytes, want the %d given", name, len(files[name]), len(want))
		}
	}
	for name, want := range map[string]os.FileMode{KeyFile: 0o600, CertFile: 0o644, BundleFile: 0o644} {
		if got := mode(t, filepath.Join(dir, name)); got != want {
			t.Errorf("mode of %s = %v, want %v", name, got, want)
		}
	}
	if got := mode(t, dir); got&0o077 != 0 {
		t.Errorf("mode of %s = %v, want no access for group and others", dir, got)
	}

	if got := creds.Identity(); got != p.ID {
		t.Errorf("Identity() = %v, want %v", got, p.ID)
	}
	if got := creds.Leaf().SerialNumber; got.Cmp(p.Serial) != 0 {
		t.Errorf("Leaf().SerialNumber = %x, want %x", got, p.Serial)
	}
	if !bytes.Equal(creds.Bundle(), c.Bundle()) {
		t.Errorf("Bundle() differs from the bundle given")
	}
	if _, err := creds.Leaf().Verify(x509.VerifyOptions{Roots: creds.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("Leaf().Verify(Roots()) = %v, want nil", err)
	}
	if !creds.NotAfter().Equal(creds.Leaf().NotAfter) {
		t.Errorf("NotAfter() = %v, want %v", creds.NotAfter(), creds.Leaf().NotAfter)
	}
}

func TestLoadCredentials(t *testing.T) {
	c := testkit.NewCA(t)
	p := c.Issue(t, ca.RoleManager)
	_, dataDir := newCreds(t, c, p)

	got, err := LoadCredentials(dataDir)
	if err != nil {
		t.Fatalf("LoadCredentials() = %v", err)
	}
	if got.Identity() != p.ID || got.Leaf().SerialNumber.Cmp(p.Serial) != 0 {
		t.Errorf("LoadCredentials() = %v serial %x, want %v serial %x", got.Identity(), got.Leaf().SerialNumber, p.ID, p.Serial)
	}
	if !bytes.Equal(got.Bundle(), c.Bundle()) {
		t.Errorf("LoadCredentials().Bundle() differs from the stored bundle")
	}
	checkKeyMatches(t, got)
}

func TestLoadCredentialsNone(t *testing.T) {
	if _, err := LoadCredentials(t.TempDir()); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("LoadCredentials(empty dir) = %v, want %v", err, ErrNoCredentials)
	}
}

// checkKeyMatches asserts that the credentials' private key is the key of
// their certificate.
func checkKeyMatches(t *testing.T, creds *Credentials) {
	t.Helper()
	key, ok := creds.Certificate().PrivateKey.(crypto.Signer)
	if !ok {
		t.Fatalf("Certificate().PrivateKey is a %T, want a crypto.Signer", creds.Certificate().PrivateKey)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(creds.Leaf().PublicKey) {
		t.Errorf("the private key does not belong to certificate %x", creds.Leaf().SerialNumber)
	}
}

// TestUpdateReachesLiveTLSConfigs: configurations made before Update
// present the new certificate after it, without being made again.
func TestUpdateReachesLiveTLSConfigs(t *testing.T) {
	c := testkit.NewCA(t)
	old := c.Issue(t, ca.RoleManager)
	creds, dataDir := newCreds(t, c, old)
	server := creds.ServerTLS(tls.RequireAndVerifyClientCert)
	client := creds.ClientTLS(ManagerName)

	serverLeaf := func() *x509.Certificate {
		t.Helper()
		cfg, err := server.GetConfigForClient(&tls.ClientHelloInfo{})
		if err != nil || len(cfg.Certificates) != 1 {
			t.Fatalf("GetConfigForClient() = %v certificates, %v, want 1, nil", len(cfg.Certificates), err)
		}
		if cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.MinVersion < tls.VersionTLS12 {
			t.Errorf("GetConfigForClient() = ClientAuth %v, MinVersion %x, want RequireAndVerifyClientCert, TLS 1.2 or later", cfg.ClientAuth, cfg.MinVersion)
		}
		return cfg.Certificates[0].Leaf
	}
	clientLeaf := func() *x509.Certificate {
		t.Helper()
		cert, err := client.GetClientCertificate(&tls.CertificateRequestInfo{})
		if err != nil {
			t.Fatalf("GetClientCertificate() = %v", err)
		}
		return cert.Leaf
	}
	if s, cl := serverLeaf().SerialNumber, clientLeaf().SerialNumber; s.Cmp(old.Serial) != 0 || cl.Cmp(old.Serial) != 0 {
		t.Fatalf("before Update: server presents %x, client %x, want %x", s, cl, old.Serial)
	}

	renewed := c.IssueFor(t, old.ID)
	if err := creds.Update(renewed.KeyPEM, renewed.CertPEM, nil); err != nil {
		t.Fatalf("Update() = %v", err)
	}
	if s, cl := serverLeaf().SerialNumber, clientLeaf().SerialNumber; s.Cmp(renewed.Serial) != 0 || cl.Cmp(renewed.Serial) != 0 {
		t.Errorf("after Update: server presents %x, client %x, want %x", s, cl, renewed.Serial)
	}
	if !bytes.Equal(creds.Bundle(), c.Bundle()) {
		t.Errorf("Update(nil bundle) changed the bundle")
	}
	checkKeyMatches(t, creds)

	// And on disk.
	loaded, err := LoadCredentials(dataDir)
	if err != nil {
		t.Fatalf("LoadCredentials() = %v", err)
	}
	if got := loaded.Leaf().SerialNumber; got.Cmp(renewed.Serial) != 0 {
		t.Errorf("LoadCredentials() after Update: serial %x, want %x", got, renewed.Serial)
	}
	if got := readDir(t, CertDir(dataDir)); !bytes.Equal(got[BundleFile], c.Bundle()) || len(got) != 3 {
		t.Errorf("files after Update = %v, want the three, the bundle kept", names(got))
	}
}

// TestUpdateRefuses: a key that does not match the certificate, or a bad
// certificate or bundle, is refused and nothing is written.
func TestUpdateRefuses(t *testing.T) {
	c := testkit.NewCA(t)
	old := c.Issue(t, ca.RoleWorker)
	renewed := c.IssueFor(t, old.ID)
	other := c.IssueFor(t, old.ID)
	tests := []struct {
		name                  string
		keyPEM, certPEM, bndl []byte
	}{
		{"key of another certificate", other.KeyPEM, renewed.CertPEM, nil},
		{"no key", nil, renewed.CertPEM, nil},
		{"certificate garbage", renewed.KeyPEM, []byte("not a certificate"), nil},
		{"bundle garbage", renewed.KeyPEM, renewed.CertPEM, []byte("not a bundle")},
		{"root as node certificate", renewed.KeyPEM, c.Bundle(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds, dataDir := newCreds(t, c, old)
			dir := CertDir(dataDir)
			before := readDir(t, dir)
			if err := creds.Update(tt.keyPEM, tt.certPEM, tt.bndl); err == nil {
				t.Fatalf("Update(%s) = nil, want an error", tt.name)
			}
			if after := readDir(t, dir); !sameFiles(before, after) {
				t.Errorf("Update(%s) refused but changed the files: %v, want %v byte-identical", tt.name, names(after), names(before))
			}
			if got := creds.Leaf().SerialNumber; got.Cmp(old.Serial) != 0 {
				t.Errorf("Update(%s) refused but Leaf() is now %x, want %x", tt.name, got, old.Serial)
			}
			checkKeyMatches(t, creds)
		})
	}
}

// TestLoadCredentialsRecovers simulates a crash at each point of
// writeCredentials by writing the .new files by hand.
func TestLoadCredentialsRecovers(t *testing.T) {
	c := testkit.NewCA(t)
	old := c.Issue(t, ca.RoleWorker)
	renewed := c.IssueFor(t, old.ID)
	tests := []struct {
		name string
		// files to write over the old testkit.Leaf, by name
		write map[string][]byte
		want  testkit.Leaf
	}{
		{
			name:  "nothing pending",
			write: map[string][]byte{},
			want:  old,
		},
		{
			name:  "lone node.key.new: certificate never written, discarded",
			write: map[string][]byte{KeyFile + ".new": renewed.KeyPEM},
			want:  old,
		},
		{
			name:  "node.key.new and node.crt.new: both renamed in",
			write: map[string][]byte{KeyFile + ".new": renewed.KeyPEM, CertFile + ".new": renewed.CertPEM},
			want:  renewed,
		},
		{
			name:  "lone node.crt.new, key already renamed: renamed in",
			write: map[string][]byte{KeyFile: renewed.KeyPEM, CertFile + ".new": renewed.CertPEM},
			want:  renewed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, dataDir := newCreds(t, c, old)
			dir := CertDir(dataDir)
			for name, b := range tt.write {
				if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			creds, err := LoadCredentials(dataDir)
			if err != nil {
				t.Fatalf("LoadCredentials() = %v", err)
			}
			if got := creds.Leaf().SerialNumber; got.Cmp(tt.want.Serial) != 0 {
				t.Errorf("LoadCredentials() serial = %x, want %x", got, tt.want.Serial)
			}
			checkKeyMatches(t, creds)

			// The recovery is on disk: the .new files are gone and the
			// stable paths hold the testkit.Leaf that was loaded.
			files := readDir(t, dir)
			if got, want := names(files), []string{CertFile, KeyFile, BundleFile}; !slices.Equal(got, want) {
				t.Errorf("files after recovery = %v, want %v", got, want)
			}
			if !bytes.Equal(files[KeyFile], tt.want.KeyPEM) || !bytes.Equal(files[CertFile], tt.want.CertPEM) {
				t.Errorf("%s and %s after recovery are not the loaded pair", KeyFile, CertFile)
			}
			if again, err := LoadCredentials(dataDir); err != nil || again.Leaf().SerialNumber.Cmp(tt.want.Serial) != 0 {
				t.Errorf("LoadCredentials() again = %v, want serial %x", err, tt.want.Serial)
			}
		})
	}
}
