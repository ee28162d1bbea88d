package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// nobody is the uid (and gid) of the other local user in these tests.
const nobody = 65534

// otherUsersDir makes a directory under the system temp dir that belongs
// to another user (nobody) and that everyone may write to, without the
// sticky bit: anyone may replace what is in it.
func otherUsersDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	dir, err := os.MkdirTemp("", "qevil")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// capturingControl is the other user's fake daemon: it records every call
// and what keys it was sent.
type capturingControl struct {
	api.UnimplementedControlServer
	mu    sync.Mutex // guards calls and keys
	calls []string
	keys  [][]byte
}

func (c *capturingControl) RotateCA(_ context.Context, req *api.RotateCARequest) (*api.RotateCAResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "RotateCA")
	if len(req.GetCaKey()) > 0 {
		c.keys = append(c.keys, req.GetCaKey())
	}
	return &api.RotateCAResponse{Rotation: &api.Rotation{StartedAt: 1}}, nil
}

func (c *capturingControl) GetCA(context.Context, *api.GetCARequest) (*api.GetCAResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "GetCA")
	return &api.GetCAResponse{Bundle: []byte("the other user's bundle\n")}, nil
}

func (c *capturingControl) Status(context.Context, *api.StatusRequest) (*api.StatusResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "Status")
	return &api.StatusResponse{NodeId: "the other user's node"}, nil
}

func (c *capturingControl) seen() (calls []string, keys int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls), len(c.keys)
}

// plantSocket serves a capturingControl on dir/quorumca.sock, owned by
// nobody, until the test ends.
func plantSocket(t *testing.T, dir string) *capturingControl {
	t.Helper()
	path := filepath.Join(dir, agent.SocketFile)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &capturingControl{}
	api.RegisterControlServer(srv, fake)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return fake
}

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// runBounded runs the CLI with args; should the command go on running (a
// daemon that started), it is stopped once changed reports true or after
// 30s, whichever is first.
func runBounded(t *testing.T, changed func() bool, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append(args, "--log-level", "error"))
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return out.String(), err
		case <-deadline:
			cancel()
		case <-tick.C:
			if changed() {
				cancel()
			}
		}
	}
}

// caFiles writes a fresh root CA's certificate and key into a new temp dir.
func caFiles(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	clusterID, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ca.GenerateRoot(rand.Reader, time.Now(), clusterID)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, m.Cert, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, m.Key, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestDataDirSymlinkToWorldWritableRefused is the reported attack: the
// data dir is a symlink into a directory that another user owns and
// everyone may write to. That user replaced the control socket with their
// own and captured the CA key that `ca --rotate --ca-key` sends over it.
// Every command refuses the data dir, names it, its owner and the fix,
// sends nothing and creates nothing in it.
func TestDataDirSymlinkToWorldWritableRefused(t *testing.T) {
	for _, v := range cliEnvVars(t) {
		t.Setenv(v, "")
	}
	evil := otherUsersDir(t)
	fake := plantSocket(t, evil)
	link := filepath.Join(shortTemp(t), "data")
	if err := os.Symlink(evil, link); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := caFiles(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("SWMTKN-1-"+strings.Repeat("1", 50)+"-"+strings.Repeat("1", 25)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := entries(t, evil)
	daemon := []string{"--listen-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ca rotate with key", []string{"ca", "--rotate", "--ca-cert", certFile, "--ca-key", keyFile, "--data-dir", link}},
		{"ca", []string{"ca", "--data-dir", link}},
		{"ca through --host", []string{"ca", "--rotate", "--ca-cert", certFile, "--ca-key", keyFile, "--host", "unix://" + filepath.Join(link, agent.SocketFile)}},
		{"status", []string{"status", "--data-dir", link}},
		{"init", append([]string{"init", "--data-dir", link}, daemon...)},
		{"run", append([]string{"run", "--data-dir", link}, daemon...)},
		{"run --init", append([]string{"run", "--init", "--data-dir", link}, daemon...)},
		{"join", append([]string{"join", "--token-file", tokenFile, "127.0.0.1:1", "--data-dir", link}, daemon...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed := func() bool { return !slices.Equal(entries(t, evil), before) }
			callsBefore, keysBefore := fake.seen()
			out, err := runBounded(t, changed, tc.args...)
			t.Logf("quorumca %s = %v", tc.name, err)
			if err == nil || !strings.Contains(err.Error(), evil) || !strings.Contains(err.Error(), "65534") {
				t.Errorf("quorumca %s = %v\n%s\nwant a refusal that names %s and its owner 65534", strings.Join(tc.args, " "), err, out, evil)
			}
			if calls, keys := fake.seen(); len(calls) > len(callsBefore) {
				t.Errorf("quorumca %s called %v on the other user's socket (%d CA keys captured), want no call",
					strings.Join(tc.args, " "), calls[len(callsBefore):], keys-keysBefore)
			}
			if got := entries(t, evil); !slices.Equal(got, before) {
				t.Errorf("quorumca %s changed the other user's directory to %v, want %v", strings.Join(tc.args, " "), got, before)
			}
		})
	}
}

// TestDataDirChecks: the daemon commands and the admin commands judge the
// data dir alike: one that group or others could change is refused with
// the fix and left as it was; a private one, or a symlink to one, is used.
func TestDataDirChecks(t *testing.T) {
	for _, v := range cliEnvVars(t) {
		t.Setenv(v, "")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the data dirs are root's")
	}
	mkdir := func(t *testing.T, dir string, mode os.FileMode) string {
		t.Helper()
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	tests := []struct {
		name string
		// setup returns the data dir, and the dir that must stay as it was.
		setup func(t *testing.T, base string) (data, untouched string)
		want  string // empty: accepted
	}{
		{"group-writable data dir", func(t *testing.T, base string) (string, string) {
			d := mkdir(t, filepath.Join(base, "data"), 0o770)
			return d, d
		}, "writable by group; chmod 700 "},
		{"parent world-writable without sticky", func(t *testing.T, base string) (string, string) {
			p := mkdir(t, filepath.Join(base, "p"), 0o777)
			return mkdir(t, filepath.Join(p, "data"), 0o700), p
		}, "is writable by group and others and has no sticky bit"},
		{"0700 dir under /tmp", func(t *testing.T, _ string) (string, string) {
			d, err := os.MkdirTemp("", "qdata")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(d) })
			return d, ""
		}, ""},
		{"symlink to a safe dir", func(t *testing.T, base string) (string, string) {
			safe := mkdir(t, filepath.Join(base, "safe"), 0o700)
			link := filepath.Join(base, "data")
			if err := os.Symlink("safe", link); err != nil {
				t.Fatal(err)
			}
			return link, safe
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, untouched := tt.setup(t, shortTemp(t))
			fake := plantSocket(t, data)
			if err := os.Lchown(filepath.Join(data, agent.SocketFile), 0, 0); err != nil {
				t.Fatal(err) // root's own daemon, this time
			}
			var before []string
			if untouched != "" {
				before = entries(t, untouched)
			}
			// run needs node.json; status reaches the fake daemon: either
			// result shows the check passed.
			for _, args := range [][]string{
				{"run", "--data-dir", data},
				{"status", "--data-dir", data},
			} {
				_, err := run(t, args...)
				switch {
				case tt.want == "" && args[0] == "run" && (err == nil || !strings.Contains(err.Error(), "has no node.json")):
					t.Errorf("quorumca %s = %v, want the data dir accepted", strings.Join(args, " "), err)
				case tt.want == "" && args[0] == "status" && err != nil:
					t.Errorf("quorumca %s = %v, want the data dir accepted", strings.Join(args, " "), err)
				case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
					t.Errorf("quorumca %s = %v, want a refusal containing %q", strings.Join(args, " "), err, tt.want)
				}
			}
			if calls, _ := fake.seen(); tt.want != "" && len(calls) > 0 {
				t.Errorf("the refused data dir's socket got calls %v", calls)
			}
			if untouched != "" && !slices.Equal(entries(t, untouched), before) {
				t.Errorf("%s changed to %v, want %v", untouched, entries(t, untouched), before)
			}
		})
	}
}
