package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// syncBuffer is a log sink safe for the hooks' goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startHooks runs hooks of cfg (no splay unless it sets one) on fresh
// credentials until the test ends; it returns them, their log and the
// credentials.
func startHooks(t *testing.T, cfg HookConfig) (*Hooks, *syncBuffer, *Credentials) {
	t.Helper()
	c := testkit.NewCA(t)
	creds, _ := newCreds(t, c, c.Issue(t, ca.RoleWorker))
	if cfg.Splay == 0 {
		cfg.Splay = -1
	}
	var log syncBuffer
	h := NewHooks(cfg, func() *Credentials { return creds }, slog.New(slog.NewTextHandler(&log, nil)))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return h, &log, creds
}

// ran waits for the next run of h.
func ran(t *testing.T, h *Hooks) {
	t.Helper()
	select {
	case <-h.Ran():
	case <-time.After(testkit.Wait):
		t.Fatalf("the hooks did not run within %s", testkit.Wait)
	}
}

// TestHooksRunWithThePaths: a change runs the command, with the files'
// paths and the node's IDs in its environment, and its output logged;
// changes made meanwhile are taken together.
func TestHooksRunWithThePaths(t *testing.T) {
	out := filepath.Join(t.TempDir(), "env")
	h, log, creds := startHooks(t, HookConfig{Command: `echo "$QUORUMCA_CERT_FILE $QUORUMCA_KEY_FILE $QUORUMCA_CA_FILE $QUORUMCA_CRL_FILE $QUORUMCA_NODE_ID" >> ` + out + `; echo said-so`})
	h.Changed()
	h.Changed()
	h.Changed()
	ran(t, h)
	dir := creds.Dir()
	want := strings.Join([]string{filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile), filepath.Join(dir, BundleFile), filepath.Join(dir, CRLFile), creds.Identity().NodeID}, " ") + "\n"
	b, err := os.ReadFile(out)
	if err != nil || !strings.HasPrefix(string(b), want) {
		t.Fatalf("the command saw %q, %v; want %q", b, err, want)
	}
	if !strings.Contains(log.String(), "said-so") {
		t.Errorf("the command's output is not in the log:\n%s", log)
	}
	// Three changes make one run, or two: never three.
	select {
	case <-h.Ran():
	case <-time.After(100 * time.Millisecond):
	}
	if b, _ := os.ReadFile(out); strings.Count(string(b), "\n") > 2 {
		t.Errorf("three changes ran the command %d times, want at most 2", strings.Count(string(b), "\n"))
	}
}

// TestHooksFailureAndTimeout: a failing command is logged and runs again
// at the next change; one that outlives its timeout is killed, with its
// children.
func TestHooksFailureAndTimeout(t *testing.T) {
	h, log, _ := startHooks(t, HookConfig{Command: "exit 3"})
	h.Changed()
	ran(t, h)
	h.Changed()
	ran(t, h)
	if n := strings.Count(log.String(), "on-renew command failed"); n != 2 {
		t.Errorf("a failing command logged %d failures over two changes, want 2:\n%s", n, log)
	}

	pidFile := filepath.Join(t.TempDir(), "child.pid")
	h, log, _ = startHooks(t, HookConfig{Command: "sleep 60 & echo $! > " + pidFile + "; wait", Timeout: 200 * time.Millisecond})
	h.Changed()
	ran(t, h)
	if !strings.Contains(log.String(), "timed out after 200ms") {
		t.Errorf("a command past its timeout: log says\n%s", log)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// The child was killed with the command (its process group): gone,
	// or a zombie no one reaps, but not sleeping on.
	testkit.Eventually(t, "the command's child killed", func() error {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || bytes.Contains(stat, []byte(") Z ")) {
			return nil
		}
		return fmt.Errorf("child %d still runs: %s", pid, stat)
	})
}

// TestHooksSplay: a change waits out the splay before the hooks run; a
// node that stops meanwhile runs nothing.
func TestHooksSplay(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ran")
	c := testkit.NewCA(t)
	creds, _ := newCreds(t, c, c.Issue(t, ca.RoleWorker))
	h := NewHooks(HookConfig{Command: "touch " + out, Splay: time.Hour}, func() *Credentials { return creds }, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	h.Changed()
	cancel()
	testkit.WaitClosed(t, "Run to return during the splay", done)
	if _, err := os.Stat(out); err == nil {
		t.Errorf("the command ran although the node stopped during the splay")
	}
}

// TestHooksSignal: --reload-signal goes to the process the pid file names.
func TestHooksSignal(t *testing.T) {
	dir := t.TempDir()
	got, pidFile := filepath.Join(dir, "got"), filepath.Join(dir, "pid")
	child := exec.Command("/bin/sh", "-c", `trap 'echo hup > `+got+`; exit 0' HUP; while :; do sleep 0.05; done`)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	os.WriteFile(pidFile, []byte(strconv.Itoa(child.Process.Pid)+"\n"), 0o600)
	h, _, _ := startHooks(t, HookConfig{Signal: syscall.SIGHUP, PIDFile: pidFile})
	h.Changed()
	ran(t, h)
	testkit.Eventually(t, "the process got the signal", func() error {
		_, err := os.Stat(got)
		return err
	})
	for _, bad := range []HookConfig{{Signal: syscall.SIGHUP}, {PIDFile: pidFile}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want the signal and pid file together", bad)
		}
	}
	if sig, err := ParseSignal("sighup"); err != nil || sig != syscall.SIGHUP {
		t.Errorf("ParseSignal(sighup) = %v, %v", sig, err)
	}
	if _, err := ParseSignal("NOPE"); err == nil {
		t.Errorf("ParseSignal(NOPE) = nil error")
	}
}

// TestSetGroup: --cert-group makes the files readable by a group, through
// the directories, now and after every write; a manager's node.key stays
// 0600.
func TestSetGroup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("giving files to another group needs root (the CI runs as root)")
	}
	const gid = 4242
	c := testkit.NewCA(t)
	for _, keyToo := range []bool{true, false} {
		creds, dataDir := newCreds(t, c, c.Issue(t, ca.RoleWorker))
		if err := creds.SetGroup(gid, keyToo); err != nil {
			t.Fatalf("SetGroup() = %v", err)
		}
		check := func(when string) {
			t.Helper()
			for path, want := range map[string]os.FileMode{
				dataDir: 0o710 | os.ModeDir, creds.Dir(): 0o750 | os.ModeDir,
				filepath.Join(creds.Dir(), CertFile): 0o640, filepath.Join(creds.Dir(), BundleFile): 0o640,
				filepath.Join(creds.Dir(), KeyFile): map[bool]os.FileMode{true: 0o640, false: 0o600}[keyToo],
			} {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode() != want || int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
					t.Errorf("%s (key too: %v): %s mode %v group %d, want %v group %d", when, keyToo, filepath.Base(path), fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, want, gid)
				}
			}
		}
		check("after SetGroup")
		renewed := c.IssueFor(t, creds.Identity())
		if err := creds.Update(renewed.KeyPEM, renewed.CertPEM, nil); err != nil {
			t.Fatal(err)
		}
		check("after a renewal")
	}
}
