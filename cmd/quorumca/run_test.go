package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/manager"
)

// TestRunBootstrapFlagsRefused: run's unattended-bootstrap flags are
// checked before anything is created.
func TestRunBootstrapFlagsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"init and join", []string{"run", "--init", "--join-token-file", "t", "--join-addr", "127.0.0.1:1"}, "exclude each other"},
		{"token file without addr", []string{"run", "--join-token-file", "t"}, "needs --join-addr"},
		{"addr without token file, no node", []string{"run", "--join-addr", "127.0.0.1:1"}, "give --join-token-file too"},
		{"force-new-cluster and init", []string{"run", "--init", "--force-new-cluster"}, "neither --init"},
		{"audit log that cannot be opened", []string{"run", "--init", "--audit-log", filepath.Join(os.DevNull, "audit.log")}, "--audit-log"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			_, err := run(t, append(tc.args, "--data-dir", data)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("quorumca %v = %v, want an error containing %q", tc.args, err, tc.want)
			}
			if entries, _ := os.ReadDir(data); len(entries) > 0 {
				t.Fatalf("a refused run left %d entries in the data dir", len(entries))
			}
		})
	}
}

// shortTemp returns a temp dir with a short path: a control socket's
// path must fit in 108 bytes.
func shortTemp(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qrun")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startRun runs `quorumca run ARGS` until the test ends.
func startRun(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"run", "--log-level", "error"}, args...))
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("quorumca run %v did not stop", args)
		}
	})
}

// waitFile waits (bounded) until path exists.
func waitFile(t *testing.T, path string) {
	t.Helper()
	testkit.EventuallyWithin(t, 30*time.Second, path+" to appear", func() error {
		_, err := os.Stat(path)
		return err
	})
}

// TestRunBootstrapsUnattended: `run --init --publish-tokens` creates a
// cluster and publishes its tokens; `run --join-token-file`, started
// first, waits for the token and joins.
func TestRunBootstrapsUnattended(t *testing.T) {
	root := shortTemp(t)
	tokens := filepath.Join(root, "tokens")
	mgr, wrk := filepath.Join(root, "m"), filepath.Join(root, "w")
	// The worker must be told where to join before the manager has an
	// address: it joins through a relay whose port the test holds from the
	// start, pointed at the manager once the manager has one. (Every
	// listener is on port 0: a port found free and closed again may be
	// taken by then.)
	via := testkit.NewProxy(t, "")
	workerArgs := []string{"--data-dir", wrk, "--join-token-file", filepath.Join(tokens, manager.WorkerTokenFile),
		"--join-addr", via.Addr(), "--gossip-addr", "127.0.0.1:0"}
	// The worker starts first: it waits for the token.
	startRun(t, workerArgs...)
	startRun(t, "--data-dir", mgr, "--init", "--publish-tokens", tokens,
		"--listen-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0")
	waitFile(t, filepath.Join(mgr, agent.NodeFile))
	mnc, err := agent.LoadNodeConfig(mgr)
	if err != nil {
		t.Fatalf("manager node.json: %v", err)
	}
	via.SetTarget(mnc.AdvertiseAddr)
	waitFile(t, filepath.Join(wrk, agent.NodeFile))
	nc, err := agent.LoadNodeConfig(wrk)
	if err != nil || nc.Role != "swarm-worker" {
		t.Fatalf("worker node.json = %+v, %v; want a worker", nc, err)
	}
	out, err := run(t, "node", "ls", "--data-dir", mgr)
	if err != nil || !strings.Contains(out, nc.NodeID) {
		t.Fatalf("node ls = %v\n%s\nwant the worker %s", err, out, nc.NodeID)
	}
}
