package main

import (
	"strings"
	"testing"

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
