package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// cliEnvVars returns every QUORUMCA_* variable the CLI's own (non-test)
// source names as a string literal, and every flag's variable, so that a variable added later is
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
	// And the variable of every flag: flagsFromEnv makes their names.
	for _, path := range commandPaths(newRootCmd(), nil) {
		c, _, err := newRootCmd().Find(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, fs := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags(), c.InheritedFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if v := EnvName(f.Name); !slices.Contains(vars, v) {
					vars = append(vars, v)
				}
			})
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

// TestJoinTokenFile: join --token-file reads the token from the file's
// first line, trimmed; a file that cannot give a token is refused with
// its own message, which never repeats the file's content.
func TestJoinTokenFile(t *testing.T) {
	for _, v := range cliEnvVars(t) {
		t.Setenv(v, "")
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	// Well-formed up to its digest, which ParseToken checks first: the
	// error proves the token reached it.
	const malformed = "SWMTKN-1-abc-zzsecretzz"
	good := write("good", "  "+malformed+" \r\nsecond line ignored\n")
	empty := write("empty", "")
	blank := write("blank", " \n"+malformed+"\n")
	missing := filepath.Join(dir, "missing")
	unreadable := filepath.Join(dir, "a-directory")
	if err := os.Mkdir(unreadable, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"first line trimmed", "", []string{"--token-file", good}, "--token-file " + good + ": ca: malformed join token: the root digest is not 50"},
		{"file wins over env", "garbage", []string{"--token-file", good}, "--token-file " + good + ": ca: malformed join token: the root digest"},
		{"env", malformed, nil, "QUORUMCA_JOIN_TOKEN: ca: malformed join token: the root digest"},
		{"missing", "", []string{"--token-file", missing}, "--token-file " + missing + ": open " + missing + ": no such file or directory"},
		{"empty", "", []string{"--token-file", empty}, "--token-file " + empty + " is empty: its first line must hold the token"},
		{"blank first line", "", []string{"--token-file", blank}, "--token-file " + blank + " is empty: its first line must hold the token"},
		{"unreadable", "", []string{"--token-file", unreadable}, "--token-file " + unreadable + ": read " + unreadable + ": is a directory"},
		{"both", "", []string{"--token", malformed, "--token-file", good}, "--token and --token-file exclude each other"},
		{"empty token flag", "", []string{"--token", ""}, "no join token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("QUORUMCA_JOIN_TOKEN", tt.env)
			data := t.TempDir()
			args := append([]string{"join", "127.0.0.1:1", "--data-dir", data}, tt.args...)
			out, err := run(t, args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("quorumca %s = %v, want an error containing %q", strings.Join(args, " "), err, tt.want)
			}
			if strings.Contains(err.Error()+out, "zzsecretzz") {
				t.Errorf("quorumca %s printed the token's secret: %v\n%s", strings.Join(args, " "), err, out)
			}
			if entries, _ := os.ReadDir(data); len(entries) > 0 {
				t.Errorf("quorumca %s wrote %d entries into the data dir, want none", strings.Join(args, " "), len(entries))
			}
		})
	}
}

// TestJoinTokenFlagNotesPS: --token still works, with a note on stderr
// that every local user sees it in ps; --token-file and the environment
// get no note.
func TestJoinTokenFlagNotesPS(t *testing.T) {
	for _, v := range cliEnvVars(t) {
		t.Setenv(v, "")
	}
	const malformed = "SWMTKN-1-abc-zzsecretzz"
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(malformed+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const note = "quorumca: note: --token is visible to every local user in `ps`; prefer --token-file FILE or QUORUMCA_JOIN_TOKEN\n"
	for _, tc := range []struct {
		name     string
		env      string
		args     []string
		wantNote bool
	}{
		{"flag", "", []string{"--token", malformed}, true},
		{"file", "", []string{"--token-file", file}, false},
		{"env", malformed, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("QUORUMCA_JOIN_TOKEN", tc.env)
			cmd := newRootCmd()
			var stdout, stderr strings.Builder
			cmd.SetOut(&stdout)
			cmd.SetErr(&stderr)
			cmd.SetArgs(append([]string{"join", "127.0.0.1:1", "--data-dir", t.TempDir()}, tc.args...))
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), "the root digest is not 50") {
				t.Fatalf("join %v = %v, want the token parsed (and refused for its digest)", tc.args, err)
			}
			if got := stderr.String() == note; got != tc.wantNote {
				t.Errorf("join %v wrote %q to stderr, want the ps note: %v", tc.args, stderr.String(), tc.wantNote)
			}
			if stdout.Len() > 0 {
				t.Errorf("join %v wrote %q to stdout, want nothing", tc.args, stdout.String())
			}
		})
	}
}

// TestFlagsFromEnv: every global flag, and every flag of init, join and
// run, takes QUORUMCA_<FLAG> when the command line leaves it out; a flag
// given wins; a value the flag refuses names the variable; the flags of
// administration commands, --force-new-cluster and --token are never read
// from the environment.
func TestFlagsFromEnv(t *testing.T) {
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
		{"global flag", map[string]string{"QUORUMCA_LOG_LEVEL": "loud"},
			[]string{"run", "--data-dir", empty}, "--log-level \"loud\""},
		{"daemon flag", map[string]string{"QUORUMCA_LISTEN_ADDR": "nohostport"},
			[]string{"init", "--data-dir", empty}, "ListenAddr (--listen-addr) \"nohostport\" is not host:port"},
		{"daemon flag, command line wins", map[string]string{"QUORUMCA_LISTEN_ADDR": "nohostport"},
			[]string{"run", "--data-dir", empty, "--listen-addr", "127.0.0.1:0"}, empty + " has no node.json"},
		{"bad value names the variable", map[string]string{"QUORUMCA_CERT_EXPIRY": "soon"},
			[]string{"init", "--data-dir", empty}, "$QUORUMCA_CERT_EXPIRY (for --cert-expiry): invalid argument \"soon\""},
		{"bad bool", map[string]string{"QUORUMCA_INIT": "maybe"},
			[]string{"run", "--data-dir", empty}, "$QUORUMCA_INIT (for --init)"},
		{"force-new-cluster not read", map[string]string{"QUORUMCA_FORCE_NEW_CLUSTER": "true"},
			[]string{"run", "--data-dir", empty}, empty + " has no node.json"},
		{"admin command flags not read", map[string]string{"QUORUMCA_TTL": "garbage", "QUORUMCA_USES": "x"},
			[]string{"join-token", "create", "worker", "--data-dir", empty}, "give --ttl or --uses"},
		{"tls flag over cert path", map[string]string{"QUORUMCA_CERT_PATH": certs, "QUORUMCA_TLSCACERT": "/nonexistent/env.pem"},
			[]string{"status", "--host", "tcp://127.0.0.1:1"}, "--tlscacert: open /nonexistent/env.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			out, err := run(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("quorumca %s with %v = %v\n%s\nwant an error containing %q", strings.Join(tt.args, " "), tt.env, err, out, tt.want)
			}
			if entries, _ := os.ReadDir(empty); len(entries) > 0 {
				t.Fatalf("quorumca %s with %v wrote into the data dir", strings.Join(tt.args, " "), tt.env)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		for _, args := range [][]string{{"--help"}, {"init", "--help"}, {"join", "--help"}, {"run", "--help"}} {
			out, err := run(t, args...)
			if err != nil || !strings.Contains(out, "QUORUMCA_<FLAG>") {
				t.Errorf("quorumca %s = %v\n%s\nwant QUORUMCA_<FLAG> explained", strings.Join(args, " "), err, out)
			}
		}
	})
}

// TestEnvName: a flag's variable is its name upper-cased, dashes as
// underscores.
func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{"data-dir": "QUORUMCA_DATA_DIR", "host": "QUORUMCA_HOST", "raft-advertise-addr": "QUORUMCA_RAFT_ADVERTISE_ADDR"} {
		if got := EnvName(flag); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", flag, got, want)
		}
	}
}
