package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run executes the CLI with args and returns its error and output.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// TestBadInputIsRefusedAndWritesNothing checks that every malformed flag or
// argument gets an error that names what is wrong, and that the data
// directory stays empty.
func TestBadInputIsRefusedAndWritesNothing(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"init cert expiry under 1h", []string{"init", "--cert-expiry", "30m"}, "--cert-expiry 30m0s is under the minimum of 1h0m0s"},
		{"init bad duration", []string{"init", "--cert-expiry", "soon"}, "invalid argument \"soon\""},
		{"init ca-cert without key", []string{"init", "--ca-cert", "x.pem"}, "--ca-cert and --ca-key go together"},
		{"init ca-cert missing file", []string{"init", "--ca-cert", "/nonexistent/ca.pem", "--ca-key", "/nonexistent/ca.key"}, "--ca-cert: open /nonexistent/ca.pem"},
		{"init bad listen addr", []string{"init", "--listen-addr", "nohostport"}, "ListenAddr (--listen-addr) \"nohostport\" is not host:port"},
		{"init unspecified advertise addr", []string{"init", "--advertise-addr", "0.0.0.0:2377"}, "must name an address others can dial"},
		{"join without token", []string{"join", "127.0.0.1:1"}, "no join token: give --token-file FILE or set QUORUMCA_JOIN_TOKEN"},
		{"join malformed token", []string{"join", "--token", "SWMTKN-1-abc-def", "127.0.0.1:1"}, "the root digest is not 50 base-36 characters"},
		{"join without manager", []string{"join", "--token", "x"}, "accepts 1 arg(s)"},
		{"run on empty data dir", []string{"run"}, "has no node.json; run `quorumca init` or `quorumca join` first"},
		{"status without daemon", []string{"status"}, "no daemon control socket"},
		{"status bad format", []string{"status", "--format", "yaml"}, "--format \"yaml\": use table or json"},
		{"join-token bad role", []string{"join-token", "admin"}, "role \"admin\": use worker or manager"},
		{"join-token create nothing", []string{"join-token", "create", "worker"}, "give --ttl or --uses"},
		{"join-token create negative uses", []string{"join-token", "create", "worker", "--uses", "-1"}, "--uses -1"},
		{"update without flag", []string{"update"}, "nothing to update"},
		{"update cert expiry under 1h", []string{"update", "--cert-expiry", "59m"}, "--cert-expiry 59m0s is under the minimum"},
		{"admin-cert without out", []string{"admin-cert", "create"}, "--out DIR is required"},
		{"bad host scheme", []string{"status", "--host", "http://x"}, "use unix://PATH or tcp://HOST:PORT"},
		{"tcp host without certs", []string{"status", "--host", "tcp://127.0.0.1:2377"}, "needs --tlscacert, --tlscert and --tlskey"},
		{"bad log level", []string{"init", "--log-level", "loud"}, "--log-level \"loud\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("QUORUMCA_CERT_PATH", "")
			t.Setenv("QUORUMCA_HOST", "")
			t.Setenv("QUORUMCA_JOIN_TOKEN", "")
			dir := t.TempDir()
			args := append(tt.args, "--data-dir", dir)
			_, err := run(t, args...)
			if err == nil {
				t.Fatalf("quorumca %s = nil error, want one containing %q", strings.Join(tt.args, " "), tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("quorumca %s = %q, want it to contain %q", strings.Join(tt.args, " "), err, tt.want)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 0 {
				var names []string
				for _, e := range entries {
					names = append(names, e.Name())
				}
				t.Errorf("quorumca %s wrote %v into the data dir, want nothing", strings.Join(tt.args, " "), names)
			}
		})
	}
}

// TestInitRefusesImportedCAThatIsNotACA checks that init validates
// --ca-cert/--ca-key with ca.Import's rules before creating anything.
func TestInitRefusesImportedCAThatIsNotACA(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	certFile := filepath.Join(dir, "ca.pem")
	keyFile := filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := run(t, "init", "--data-dir", data, "--ca-cert", certFile, "--ca-key", keyFile)
	if err == nil || !strings.Contains(err.Error(), "malformed PEM") {
		t.Fatalf("init with a non-PEM CA = %v, want a malformed PEM error", err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("init with a bad CA created %s (stat err %v), want nothing", data, err)
	}
}
