package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// cliEnvVars returns every QUORUMCA_* variable the CLI's own (non-test)
// source names as a string literal, so that a variable added later is
// covered by the tests below without anyone remembering to list it.
func cliEnvVars(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`"(QUORUMCA_[A-Z0-9_]+)"`)
	var vars []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			if !slices.Contains(vars, m[1]) {
				vars = append(vars, m[1])
			}
		}
	}
	for _, want := range []string{"QUORUMCA_DATA_DIR", "QUORUMCA_HOST", "QUORUMCA_CERT_PATH", "QUORUMCA_JOIN_TOKEN"} {
		if !slices.Contains(vars, want) {
			t.Fatalf("cliEnvVars() = %v, want it to find %s: the scan is broken", vars, want)
		}
	}
	return vars
}

// commandPaths returns the argument paths of every command in the tree
// under c (c itself as the empty path).
func commandPaths(c *cobra.Command, prefix []string) [][]string {
	paths := [][]string{prefix}
	for _, sub := range c.Commands() {
		paths = append(paths, commandPaths(sub, append(slices.Clone(prefix), sub.Name()))...)
	}
	return paths
}

// TestHelpShowsNoSecrets: with every QUORUMCA_* variable the CLI reads set
// to a known secret, no command's --help prints one. A flag default taken
// from the environment is printed by --help, and so reaches terminals,
// screenshots and bug reports.
func TestHelpShowsNoSecrets(t *testing.T) {
	secrets := map[string]string{}
	for _, v := range cliEnvVars(t) {
		secret := "s3cret-" + strings.ToLower(strings.TrimPrefix(v, "QUORUMCA_")) + "-7f3a9c"
		if v == "QUORUMCA_JOIN_TOKEN" {
			secret = "SWMTKN-1-" + strings.Repeat("a", 50) + "-" + strings.Repeat("s", 25)
		}
		secrets[v] = secret
		t.Setenv(v, secret)
	}
	paths := commandPaths(newRootCmd(), nil)
	if len(paths) < 10 {
		t.Fatalf("commandPaths() found %d commands, want the whole tree", len(paths))
	}
	for _, path := range paths {
		for _, help := range []string{"--help", "-h"} {
			args := append(slices.Clone(path), help)
			out, err := run(t, args...)
			if err != nil {
				t.Errorf("quorumca %s = %v", strings.Join(args, " "), err)
				continue
			}
			if !strings.Contains(out, "Usage:") {
				t.Errorf("quorumca %s printed\n%s\nwant a usage", strings.Join(args, " "), out)
			}
			for v, secret := range secrets {
				for line := range strings.Lines(out) {
					if strings.Contains(line, secret) {
						t.Errorf("quorumca %s prints the value of %s: %q", strings.Join(args, " "), v, strings.TrimSpace(line))
					}
				}
			}
		}
	}
}

// TestEnvReadAtRunTime: the QUORUMCA_* variables are read when a command
// runs, not when the flags are made: a variable set after the command tree
// is built still counts, and a flag on the command line wins over it.
func TestEnvReadAtRunTime(t *testing.T) {
	for _, v := range cliEnvVars(t) {
		t.Setenv(v, "")
	}
	empty := t.TempDir()
	certs := t.TempDir()
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"join token", map[string]string{"QUORUMCA_JOIN_TOKEN": "SWMTKN-1-abc-def"},
			[]string{"join", "127.0.0.1:1", "--data-dir", empty}, "the root digest is not 50 base-36 characters"},
		{"data dir", map[string]string{"QUORUMCA_DATA_DIR": empty},
			[]string{"run"}, empty + " has no node.json"},
		{"data dir flag wins", map[string]string{"QUORUMCA_DATA_DIR": "/nonexistent/env-dir"},
			[]string{"run", "--data-dir", empty}, empty + " has no node.json"},
		{"host", map[string]string{"QUORUMCA_HOST": "unix:///nonexistent/env.sock"},
			[]string{"status", "--data-dir", empty}, "no daemon control socket at /nonexistent/env.sock"},
		{"cert path", map[string]string{"QUORUMCA_CERT_PATH": certs},
			[]string{"status", "--host", "tcp://127.0.0.1:1"}, "--tlscacert: open " + filepath.Join(certs, "ca.pem")},
		{"cert path flag wins", map[string]string{"QUORUMCA_CERT_PATH": certs},
			[]string{"status", "--host", "tcp://127.0.0.1:1", "--tlscacert", "/nonexistent/flag.pem"}, "--tlscacert: open /nonexistent/flag.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newRootCmd()
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out strings.Builder
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(tt.args)
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("quorumca %s with %v set after the command was made = %v, want an error containing %q",
					strings.Join(tt.args, " "), tt.env, err, tt.want)
			}
		})
	}
}
