package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

// TestPublishTokens: a manager started with PublishTokens keeps both join
// tokens in files (0600) that follow a rotated secret, and a node joins
// with the token it reads there.
func TestPublishTokens(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tokens")
	rc := clustertest.New(t, clustertest.Options{
		Managers:  1,
		Configure: func(_ string, cfg *node.Config) { cfg.Manager.PublishTokens = dir },
	})
	read := func(name string) (string, error) {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, fi.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		return strings.TrimSpace(string(b)), err
	}
	want := map[string]string{manager.WorkerTokenFile: rc.WorkerToken, manager.ManagerTokenFile: rc.ManagerToken}
	testkit.Eventually(t, "both tokens published", func() error {
		for name, tok := range want {
			got, err := read(name)
			if err != nil {
				return err
			}
			if got != tok {
				return fmt.Errorf("%s holds %.20s…, want %.20s…", name, got, tok)
			}
		}
		return nil
	})

	resp, err := rc.Ctl().JoinToken(testkit.Ctx(t), &api.JoinTokenRequest{Role: "worker", Rotate: true})
	if err != nil {
		t.Fatalf("JoinToken(worker, rotate) = %v", err)
	}
	testkit.Eventually(t, "the rotated worker token published", func() error {
		got, err := read(manager.WorkerTokenFile)
		if err != nil {
			return err
		}
		if got != resp.GetToken() || got == rc.WorkerToken {
			return fmt.Errorf("worker.token holds %.20s…, want the rotated token", got)
		}
		return nil
	})
	tok, _ := read(manager.WorkerTokenFile)
	rc.WorkerToken = tok
	rw := rc.AddWorker("w-published")
	if rw.Worker().Credentials().Identity().Role != "swarm-worker" {
		t.Fatalf("joined with the published token as %s, want a worker", rw.Worker().Credentials().Identity().Role)
	}
}
