package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
)

// on returns args with --host naming n's control socket.
func on(n *clustertest.Node, args ...string) []string {
	return append(args, "--host", "unix://"+n.Socket)
}

// TestAdminOnWorkerSaysRunOnManager: administration commands sent to a
// worker's control socket say that the node is a worker and what to do,
// instead of gRPC's "method ListNodes not implemented"; what a worker
// answers (status, ca) still works there.
func TestAdminOnWorkerSaysRunOnManager(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 1})
	w := c.Workers[0]
	for _, args := range [][]string{
		{"node", "ls"},
		{"node", "rm", "x"},
		{"join-token", "worker"},
		{"update", "--rotation-grace", "5m"},
		{"admin-cert", "ls"},
		{"backup", "--out", t.TempDir() + "/b"},
	} {
		out, err := run(t, on(w, args...)...)
		if err == nil || !strings.Contains(err.Error(), "this node is a worker") || !strings.Contains(err.Error(), "on a manager") {
			t.Errorf("quorumca %s on a worker = %v\n%s\nwant \"this node is a worker ... on a manager\"", strings.Join(args, " "), err, out)
		}
		if err != nil && strings.Contains(err.Error(), "not implemented") {
			t.Errorf("quorumca %s on a worker = %v, want no gRPC jargon", strings.Join(args, " "), err)
		}
	}
	for _, args := range [][]string{{"status"}, {"ca"}} {
		if out, err := run(t, on(w, args...)...); err != nil {
			t.Errorf("quorumca %s on a worker = %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestJoinTokenNamesTheManagerAsked: join-token and join-token create
// print a join command through the manager the command asked (its
// advertise address, or --host tcp://'s), with the token in a file, not
// on the command line.
func TestJoinTokenNamesTheManagerAsked(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 2})
	for _, m := range c.Managers {
		out, err := run(t, on(m, "join-token", "worker")...)
		if err != nil {
			t.Fatalf("join-token worker on %s = %v", m.Name, err)
		}
		for _, want := range []string{
			"(umask 077; echo " + c.WorkerToken + " > worker.token)",
			"quorumca join --token-file worker.token " + m.Addr() + "\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("join-token worker on %s printed\n%s\nwant %q", m.Name, out, want)
			}
		}
		if strings.Contains(out, "--token "+c.WorkerToken) {
			t.Errorf("join-token worker on %s printed\n%s\nwant no token on join's command line", m.Name, out)
		}
	}
	f := c.Managers[1]
	out, err := run(t, on(f, "join-token", "create", "manager", "--uses", "1")...)
	if err != nil || !strings.Contains(out, "quorumca join --token-file manager.token "+f.Addr()+"\n") {
		t.Fatalf("join-token create manager on %s = %v\n%s\nwant a join through %s", f.Name, err, out, f.Addr())
	}

	certs := t.TempDir() + "/admin"
	if out, err := run(t, on(c.Managers[0], "admin-cert", "create", "--out", certs)...); err != nil {
		t.Fatalf("admin-cert create = %v\n%s", err, out)
	}
	t.Setenv("QUORUMCA_CERT_PATH", certs)
	out, err = run(t, "join-token", "manager", "--host", "tcp://"+f.Addr())
	if err != nil || !strings.Contains(out, "quorumca join --token-file manager.token "+f.Addr()+"\n") {
		t.Fatalf("join-token manager --host tcp://%s = %v\n%s\nwant a join through it", f.Addr(), err, out)
	}
}

// TestCAShowsRotationInProgress: `ca` prints the trust bundle on stdout
// and, while a rotation runs (here held by a stopped worker within a long
// grace), its progress on stderr; with no rotation, stderr stays empty.
func TestCAShowsRotationInProgress(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 1, Grace: time.Hour})
	m := c.Managers[0]
	getCA := func() (stdout, stderr string, err error) {
		t.Helper()
		cmd := newRootCmd()
		var o, e strings.Builder
		cmd.SetOut(&o)
		cmd.SetErr(&e)
		cmd.SetArgs(on(m, "ca"))
		err = cmd.Execute()
		return o.String(), e.String(), err
	}
	stdout, stderr, err := getCA()
	if err != nil || stdout != string(c.Bundle) || stderr != "" {
		t.Fatalf("ca with no rotation = %v, stdout\n%s\nstderr %q; want the bundle alone", err, stdout, stderr)
	}
	c.Workers[0].Stop()
	newRoot := c.Rotate()
	stdout, stderr, err = getCA()
	if err != nil || !strings.HasPrefix(stdout, "-----BEGIN CERTIFICATE-----") || strings.Contains(stdout, "rotation") {
		t.Fatalf("ca during a rotation = %v, stdout\n%s\nwant the bundle alone on stdout", err, stdout)
	}
	for _, want := range []string{"Root rotation in progress since ", "to new root " + short(newRoot), "rotated TLS certificates:", "/2 nodes"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("ca during a rotation printed on stderr\n%s\nwant %q", stderr, want)
		}
	}
}

// TestLeave: leave on a manager refuses and says to demote it first; on a
// worker, a manager removes the worker, which deletes its credentials
// and stops.
func TestLeave(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 1})
	m, w := c.Managers[0], c.Workers[0]
	if _, err := run(t, on(m, "leave")...); err == nil || !strings.Contains(err.Error(), "demote this manager first") {
		t.Fatalf("leave on a manager = %v, want \"demote this manager first\"", err)
	}
	if _, err := run(t, "leave", "--host", "tcp://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "own control socket") {
		t.Fatalf("leave --host tcp:// = %v, want it refused", err)
	}
	out, err := run(t, on(w, "leave")...)
	if err != nil || !strings.Contains(out, "Node "+w.ID()+" left cluster "+c.ClusterID) {
		t.Fatalf("leave on a worker = %v\n%s", err, out)
	}
	if out, _ := run(t, on(m, "node", "ls", "-q")...); strings.Contains(out, w.ID()) {
		t.Errorf("node ls -q after leave = %q, still lists %s", out, w.ID())
	}
	select {
	case <-w.Node().Done():
	case <-time.After(testkit.Wait):
		t.Fatalf("the worker still runs %s after leave", testkit.Wait)
	}
	if err := w.Node().Err(); err != nil {
		t.Errorf("the worker stopped with %v, want nil", err)
	}
	for _, p := range []string{filepath.Join(w.Dir, "certificates"), filepath.Join(w.Dir, agent.NodeFile)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("after leave, %s: stat = %v, want it deleted", p, err)
		}
	}
}

// TestWorkerRemovesOnlyItself: a worker's certificate may have a manager
// remove that worker (leave), and no other node.
func TestWorkerRemovesOnlyItself(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 2})
	m, w0, w1 := c.Managers[0], c.Workers[0], c.Workers[1]
	conn := c.Dial(m.Addr(), w0.Credentials().ClientTLS(agent.ManagerName))
	for _, target := range []string{w1.ID(), m.ID()} {
		_, err := api.NewControlClient(conn).RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: target, Force: true})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "may remove only itself") {
			t.Errorf("RemoveNode(%s) with worker %s's certificate = %v, want PermissionDenied", target, w0.ID(), err)
		}
	}
	if out, _ := run(t, on(m, "node", "ls", "-q")...); !strings.Contains(out, w1.ID()) || !strings.Contains(out, m.ID()) {
		t.Fatalf("a refused RemoveNode removed a node: node ls -q = %q", out)
	}
}

// TestLeaveAfterRemoval: a worker that an operator already removed may
// still leave: the managers' REMOVED refusal counts as its removal, and it
// deletes its credentials and stops.
func TestLeaveAfterRemoval(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 1})
	m, w := c.Managers[0], c.Workers[0]
	if out, err := run(t, on(m, "node", "rm", "--force", w.ID())...); err != nil {
		t.Fatalf("node rm --force %s = %v\n%s", w.ID(), err, out)
	}
	// The worker learns it from the managers' refusals.
	testkit.EventuallyWithin(t, testkit.Wait, "the worker to see its certificate refused", func() error {
		if p := w.Renewer().Problem(); !errors.Is(p, agent.ErrRefused) {
			return fmt.Errorf("renewer problem = %v, want agent.ErrRefused", p)
		}
		return nil
	})
	out, err := run(t, on(w, "leave")...)
	if err != nil || !strings.Contains(out, "Node "+w.ID()+" left cluster") {
		t.Fatalf("leave on a removed worker = %v\n%s", err, out)
	}
	select {
	case <-w.Node().Done():
	case <-time.After(testkit.Wait):
		t.Fatalf("the removed worker still runs %s after leave", testkit.Wait)
	}
	if _, err := os.Stat(filepath.Join(w.Dir, "certificates")); !os.IsNotExist(err) {
		t.Errorf("after leave, certificates: stat = %v, want it deleted", err)
	}
}
