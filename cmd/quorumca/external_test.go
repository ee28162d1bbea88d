package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// extGoodSpec is a valid --external-ca value without cacert.
const extGoodSpec = "protocol=cfssl,url=https://ca.example.com:8888"

// extRoot generates a real root CA for the tests.
func extRoot(t *testing.T) ca.Material {
	t.Helper()
	clusterID, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ca.GenerateRoot(rand.Reader, time.Now(), clusterID)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// extWrite writes data into a new file of dir and returns its path.
func extWrite(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// extCert makes a certificate valid from notBefore for two years:
// self-signed when parent is nil, else signed by parent with parentKey.
func extCert(t *testing.T, isCA bool, notBefore time.Time, parent *x509.Certificate, parentKey any) ([]byte, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "ext-test", Organization: []string{"quorumca-test"}},
		NotBefore:             notBefore,
		NotAfter:              time.Now().Add(2 * 365 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  isCA,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	signer := any(key)
	if parent == nil {
		parent = tmpl
	} else {
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca.EncodeCertificates(c), c
}

func TestParseExternalCAs(t *testing.T) {
	dir := t.TempDir()
	root := extRoot(t)
	cacert := extWrite(t, dir, "cacert.pem", root.Cert)
	notPEM := extWrite(t, dir, "not.pem", []byte("not pem"))
	missing := filepath.Join(dir, "missing.pem")

	t.Run("valid single", func(t *testing.T) {
		got, err := parseExternalCAs([]string{extGoodSpec})
		if err != nil {
			t.Fatalf("parseExternalCAs(%q) = %v", extGoodSpec, err)
		}
		if len(got) != 1 || got[0].Protocol != "cfssl" || got[0].URL != "https://ca.example.com:8888" || len(got[0].CACert) != 0 {
			t.Errorf("parseExternalCAs(%q) = %+v, want one cfssl CA at https://ca.example.com:8888 and no cacert", extGoodSpec, got)
		}
	})
	t.Run("two, order kept", func(t *testing.T) {
		got, err := parseExternalCAs([]string{
			"protocol=cfssl,url=https://second.example:1",
			"protocol=cfssl,url=https://first.example:2",
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].URL != "https://second.example:1" || got[1].URL != "https://first.example:2" {
			t.Errorf("parseExternalCAs(two) = %+v, want them in the order given", got)
		}
	})
	t.Run("cacert read from file", func(t *testing.T) {
		spec := extGoodSpec + ",cacert=" + cacert
		got, err := parseExternalCAs([]string{spec})
		if err != nil {
			t.Fatalf("parseExternalCAs(%q) = %v", spec, err)
		}
		if len(got) != 1 || !bytes.Equal(got[0].CACert, root.Cert) {
			t.Errorf("parseExternalCAs(%q) stored cacert %q, want the file's contents %q", spec, got[0].CACert, root.Cert)
		}
	})
	t.Run("keys and protocol case-insensitive, spaces around pairs", func(t *testing.T) {
		spec := "PROTOCOL=CFSSL, Url=https://ca.example.com:8888 ,CACert=" + cacert
		got, err := parseExternalCAs([]string{spec})
		if err != nil {
			t.Fatalf("parseExternalCAs(%q) = %v", spec, err)
		}
		if len(got) != 1 || got[0].Protocol != "cfssl" || got[0].URL != "https://ca.example.com:8888" || !bytes.Equal(got[0].CACert, root.Cert) {
			t.Errorf("parseExternalCAs(%q) = %+v, want protocol cfssl, the URL and the cacert", spec, got)
		}
	})
	t.Run("none", func(t *testing.T) {
		got, err := parseExternalCAs(nil)
		if err != nil || len(got) != 0 {
			t.Errorf("parseExternalCAs(nil) = %+v, %v; want nothing and no error", got, err)
		}
	})

	errs := []struct {
		name  string
		specs []string
		want  string
	}{
		{"missing protocol", []string{"url=https://ca.example.com:8888"}, "give protocol=cfssl"},
		{"missing url", []string{"protocol=cfssl"}, "give url=https://HOST:PORT"},
		{"unknown key", []string{extGoodSpec + ",profile=node"}, `unknown key "profile"; the keys are protocol, url, cacert and authkey`},
		{"not key=value", []string{"cfssl"}, `"cfssl" is not key=value`},
		{"not key=value among good pairs", []string{"protocol=cfssl,https://ca.example.com:8888"}, "is not key=value"},
		{"empty value", []string{"protocol=,url=https://ca.example.com:8888"}, `"protocol=" is not key=value`},
		{"empty spec", []string{""}, "is not key=value"},
		{"protocol other than cfssl", []string{"protocol=acme,url=https://ca.example.com:8888"}, `protocol "acme"; the only one known is "cfssl"`},
		{"http URL", []string{"protocol=cfssl,url=http://ca.example.com:8888"}, "give an https:// URL"},
		{"URL without host", []string{"protocol=cfssl,url=https://"}, "give an https:// URL"},
		{"URL not absolute", []string{"protocol=cfssl,url=ca.example.com:8888"}, "give an https:// URL"},
		{"second of two bad, numbered", []string{extGoodSpec, "protocol=cfssl,url=http://b.example:1"}, "external CA 2"},
		{"cacert file missing", []string{extGoodSpec + ",cacert=" + missing}, "--external-ca cacert: open " + missing},
		{"cacert file not PEM", []string{extGoodSpec + ",cacert=" + notPEM}, "malformed PEM"},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseExternalCAs(tt.specs)
			if err == nil {
				t.Fatalf("parseExternalCAs(%q) = %+v, want an error containing %q", tt.specs, got, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parseExternalCAs(%q) = %q, want it to contain %q", tt.specs, err, tt.want)
			}
			if !strings.Contains(err.Error(), "--external-ca") {
				t.Errorf("parseExternalCAs(%q) = %q, want the flag named", tt.specs, err)
			}
		})
	}
}

// TestParseExternalCAsAuthKey: authkey=FILE reads the hex key CFSSL's
// auth_keys hold, as raw bytes; a file that is not one is refused with a
// message that never shows what it holds.
func TestParseExternalCAsAuthKey(t *testing.T) {
	dir := t.TempDir()
	const hexKey = "00112233445566778899aabbccddeeff"
	good := extWrite(t, dir, "auth.key", []byte("  "+hexKey+"\n"))
	upper := extWrite(t, dir, "upper.key", []byte(strings.ToUpper(hexKey)))
	notHex := extWrite(t, dir, "nothex.key", []byte("secret-passphrase-not-hex-0123456"))
	short := extWrite(t, dir, "short.key", []byte(hexKey[:30]))
	long := extWrite(t, dir, "long.key", []byte(strings.Repeat(hexKey, 5)))
	empty := extWrite(t, dir, "empty.key", nil)
	missing := filepath.Join(dir, "missing.key")

	for _, file := range []string{good, upper} {
		spec := extGoodSpec + ",authkey=" + file
		got, err := parseExternalCAs([]string{spec})
		if err != nil {
			t.Fatalf("parseExternalCAs(%q) = %v", spec, err)
		}
		if want, _ := hex.DecodeString(hexKey); len(got) != 1 || !bytes.Equal(got[0].AuthKey, want) {
			t.Errorf("parseExternalCAs(%q) = %+v, want the decoded key", spec, got)
		}
		if out := externalToAPI(got); !bytes.Equal(out[0].GetAuthKey(), got[0].AuthKey) {
			t.Errorf("externalToAPI() dropped the key the daemon needs")
		}
	}
	for _, tt := range []struct{ name, file, want string }{
		{"not hex", notHex, "must hold the key in hex"},
		{"too short", short, "the key is 15 bytes; give 16 to 64 bytes"},
		{"too long", long, "the key is 80 bytes; give 16 to 64 bytes"},
		{"empty", empty, "the key is 0 bytes"},
		{"missing", missing, "--external-ca authkey: open " + missing},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseExternalCAs([]string{extGoodSpec + ",authkey=" + tt.file})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parseExternalCAs(authkey %s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
			if data, _ := os.ReadFile(tt.file); len(data) > 0 && (strings.Contains(err.Error(), strings.TrimSpace(string(data))) || strings.Contains(err.Error(), "passphrase") || strings.Contains(err.Error(), hexKey[:30])) {
				t.Errorf("parseExternalCAs(authkey %s) = %q shows the file's contents", tt.name, err)
			}
		})
	}
}

// TestDescribeExternal: answers show that an auth key is set, no more.
func TestDescribeExternal(t *testing.T) {
	for _, tt := range []struct {
		in   *api.ExternalCA
		want string
	}{
		{&api.ExternalCA{Protocol: "cfssl", Url: "https://a:1"}, "cfssl https://a:1"},
		{&api.ExternalCA{Protocol: "cfssl", Url: "https://a:1", AuthKey: []byte("set")}, "cfssl https://a:1 (authkey: set)"},
	} {
		if got := describeExternal(tt.in); got != tt.want {
			t.Errorf("describeExternal(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestParseExternalCAsURLWithPortOnly: https://:8888 names no host, as
// HOST:PORT asks, and should be refused like https://.
func TestParseExternalCAsURLWithPortOnly(t *testing.T) {
	spec := "protocol=cfssl,url=https://:8888"
	got, err := parseExternalCAs([]string{spec})
	if err == nil {
		t.Fatalf("parseExternalCAs(%q) = %s, want a refusal: the URL has no host", spec, got[0].URL)
	}
	if !strings.Contains(err.Error(), "https://") {
		t.Errorf("parseExternalCAs(%q) = %q, want it to ask for an https://HOST URL", spec, err)
	}
}

// TestReadExternalCertIntermediateOlderThanRoot: an intermediate whose
// NotBefore precedes its root's (a root re-issued with the same key, say) is
// valid now, chain and all, and should be accepted.
func TestReadExternalCertIntermediateOlderThanRoot(t *testing.T) {
	root := extRoot(t)
	rootCert, err := ca.ParseCertificates(root.Cert)
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := ca.ParseKey(root.Key)
	if err != nil {
		t.Fatal(err)
	}
	// GenerateRoot backdates the root by 5 minutes; the intermediate by an hour.
	interPEM, _ := extCert(t, true, time.Now().Add(-time.Hour), rootCert[0], rootKey)
	chain := append(append([]byte{}, interPEM...), root.Cert...)
	file := extWrite(t, t.TempDir(), "chain.pem", chain)
	if _, err := readExternalCert(file); err != nil {
		t.Fatalf("readExternalCert(intermediate older than its root) = %v, want it accepted: every certificate is valid now", err)
	}
}

func TestReadExternalCert(t *testing.T) {
	dir := t.TempDir()
	root := extRoot(t)
	rootFile := extWrite(t, dir, "root.pem", root.Cert)
	got, err := readExternalCert(rootFile)
	if err != nil {
		t.Fatalf("readExternalCert(root) = %v", err)
	}
	if !bytes.Equal(got, root.Cert) {
		t.Errorf("readExternalCert(root) = %q, want the file's contents", got)
	}

	// An intermediate with its chain up to the root is taken as is.
	rootCert, err := ca.ParseCertificates(root.Cert)
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := ca.ParseKey(root.Key)
	if err != nil {
		t.Fatal(err)
	}
	interPEM, _ := extCert(t, true, time.Now().Add(-time.Minute), rootCert[0], rootKey)
	chain := append(append([]byte{}, interPEM...), root.Cert...)
	chainFile := extWrite(t, dir, "chain.pem", chain)
	if got, err := readExternalCert(chainFile); err != nil || !bytes.Equal(got, chain) {
		t.Errorf("readExternalCert(intermediate+root) = %q, %v; want the file's contents", got, err)
	}

	leafPEM, _ := extCert(t, false, time.Now().Add(-time.Hour), nil, nil)
	tests := []struct {
		name, file, want string
	}{
		{"missing", filepath.Join(dir, "missing.pem"), "--ca-cert: open "},
		{"not PEM", extWrite(t, dir, "not.pem", []byte("not pem")), "malformed PEM"},
		{"not a CA", extWrite(t, dir, "leaf.pem", leafPEM), "not a CA"},
		{"intermediate without its root", extWrite(t, dir, "inter.pem", interPEM), "not self-signed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readExternalCert(tt.file)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "--ca-cert") {
				t.Errorf("readExternalCert(%s) = %v, want an error naming --ca-cert and containing %q", tt.name, err, tt.want)
			}
		})
	}
}

// TestInitExternalCARefused: init refuses bad --external-ca combinations
// before creating anything in the data dir.
func TestInitExternalCARefused(t *testing.T) {
	dir := t.TempDir()
	root := extRoot(t)
	rootFile := extWrite(t, dir, "root.pem", root.Cert)
	keyFile := extWrite(t, dir, "root.key", root.Key)
	notPEM := extWrite(t, dir, "not.pem", []byte("not pem"))
	leafPEM, _ := extCert(t, false, time.Now().Add(-time.Hour), nil, nil)
	leafFile := extWrite(t, dir, "leaf.pem", leafPEM)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"ca-key with external CA", []string{"--external-ca", extGoodSpec, "--ca-cert", rootFile, "--ca-key", keyFile},
			"--ca-key does not go with --external-ca: the external CA holds its key"},
		{"ca-key alone with external CA", []string{"--external-ca", extGoodSpec, "--ca-key", keyFile},
			"--ca-key does not go with --external-ca"},
		{"bad spec", []string{"--external-ca", "protocol=cfssl"}, "give url=https://HOST:PORT"},
		{"bad spec among good", []string{"--external-ca", extGoodSpec, "--external-ca", "protocol=acme,url=https://x:1"}, `protocol "acme"`},
		{"http URL", []string{"--external-ca", "protocol=cfssl,url=http://ca.example.com:8888"}, "give an https:// URL"},
		{"ca-cert not a CA", []string{"--external-ca", extGoodSpec, "--ca-cert", leafFile}, "not a CA"},
		{"ca-cert not PEM", []string{"--external-ca", extGoodSpec, "--ca-cert", notPEM}, "malformed PEM"},
		{"ca-cert missing", []string{"--external-ca", extGoodSpec, "--ca-cert", filepath.Join(dir, "missing.pem")}, "--ca-cert: open "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("QUORUMCA_CERT_PATH", "")
			t.Setenv("QUORUMCA_HOST", "")
			data := t.TempDir()
			args := append([]string{"init"}, tt.args...)
			_, err := run(t, append(args, "--data-dir", data)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("quorumca %s = %v, want an error containing %q", strings.Join(args, " "), err, tt.want)
			}
			entries, _ := os.ReadDir(data)
			if len(entries) != 0 {
				var names []string
				for _, e := range entries {
					names = append(names, e.Name())
				}
				t.Errorf("quorumca %s wrote %v into the data dir, want nothing", strings.Join(args, " "), names)
			}
		})
	}
}

// TestCAAndUpdateExternalCAFlags: `ca` and `update` check --external-ca
// before contacting a daemon (none runs: reaching for one fails with "no
// daemon control socket").
func TestCAAndUpdateExternalCAFlags(t *testing.T) {
	dir := t.TempDir()
	root := extRoot(t)
	rootFile := extWrite(t, dir, "root.pem", root.Cert)
	notPEM := extWrite(t, dir, "not.pem", []byte("not pem"))
	leafPEM, _ := extCert(t, false, time.Now().Add(-time.Hour), nil, nil)
	leafFile := extWrite(t, dir, "leaf.pem", leafPEM)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"ca external-ca without rotate", []string{"ca", "--external-ca", extGoodSpec}, "--external-ca goes with --rotate"},
		{"ca rotate, bad spec", []string{"ca", "--rotate", "--external-ca", "url=https://ca.example.com:8888"}, "give protocol=cfssl"},
		{"ca rotate, http URL", []string{"ca", "--rotate", "--external-ca", "protocol=cfssl,url=http://ca.example.com:8888"}, "give an https:// URL"},
		{"ca rotate, ca-key not a key", []string{"ca", "--rotate", "--external-ca", extGoodSpec, "--ca-key", notPEM}, "--ca-key"},
		{"ca rotate, ca-key missing", []string{"ca", "--rotate", "--external-ca", extGoodSpec, "--ca-key", filepath.Join(dir, "missing.key")}, "--ca-key: open "},
		{"ca rotate, ca-cert not a CA", []string{"ca", "--rotate", "--external-ca", extGoodSpec, "--ca-cert", leafFile}, "not a CA"},
		{"ca rotate, ca-cert not PEM", []string{"ca", "--rotate", "--external-ca", extGoodSpec, "--ca-cert", notPEM}, "--ca-cert"},
		{"update nothing", []string{"update"}, "--external-ca"},
		{"update bad spec", []string{"update", "--external-ca", "protocol=cfssl,url=https://ca.example.com:8888,x=y"}, `unknown key "x"`},
		{"update empty spec", []string{"update", "--external-ca", ""}, "is not key=value"},
		// Good input passes the local checks and then needs the daemon.
		{"ca rotate, good external CA", []string{"ca", "--rotate", "--external-ca", extGoodSpec}, "no daemon control socket"},
		{"ca rotate, good external CA and cert", []string{"ca", "--rotate", "--external-ca", extGoodSpec, "--ca-cert", rootFile}, "no daemon control socket"},
		{"update good external CA", []string{"update", "--external-ca", extGoodSpec}, "no daemon control socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("QUORUMCA_CERT_PATH", "")
			t.Setenv("QUORUMCA_HOST", "")
			data := t.TempDir()
			_, err := run(t, append(tt.args, "--data-dir", data)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("quorumca %s = %v, want an error containing %q", strings.Join(tt.args, " "), err, tt.want)
			}
			if tt.want != "no daemon control socket" && err != nil && strings.Contains(err.Error(), "no daemon control socket") {
				t.Errorf("quorumca %s reached for the daemon before refusing its flags", strings.Join(tt.args, " "))
			}
			if entries, _ := os.ReadDir(data); len(entries) != 0 {
				t.Errorf("quorumca %s wrote %d entries into the data dir, want none", strings.Join(tt.args, " "), len(entries))
			}
		})
	}
}

// TestCARotateExternalGoodKeyReachesTheDaemon: with --external-ca, a valid
// --ca-key (the new root's key, for the cross-sign) passes the local checks.
func TestCARotateExternalGoodKeyReachesTheDaemon(t *testing.T) {
	t.Setenv("QUORUMCA_CERT_PATH", "")
	t.Setenv("QUORUMCA_HOST", "")
	dir := t.TempDir()
	root := extRoot(t)
	certFile := extWrite(t, dir, "root.pem", root.Cert)
	keyFile := extWrite(t, dir, "root.key", root.Key)
	_, err := run(t, "ca", "--rotate", "--external-ca", extGoodSpec, "--ca-cert", certFile, "--ca-key", keyFile, "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no daemon control socket") {
		t.Errorf("ca --rotate --external-ca with a valid cert and key and no daemon = %v, want the missing socket named", err)
	}
}
