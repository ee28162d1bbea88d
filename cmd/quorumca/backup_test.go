package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/internal/testkit"
)

// isEmptyOrAbsent reports whether dir holds nothing (or is not there).
func isEmptyOrAbsent(t *testing.T, dir string) bool {
	t.Helper()
	entries, err := os.ReadDir(dir)
	return os.IsNotExist(err) || (err == nil && len(entries) == 0)
}

// TestBackupAndRestoreCommands: `backup` refuses to write a backup it
// cannot encrypt; with a passphrase it writes one (0600) that `restore`
// turns into a manager of the same cluster, which `run` starts. Restore
// refuses, writing nothing, a wrong passphrase, a changed file, a file
// that is not a backup and a data directory that holds something.
func TestBackupAndRestoreCommands(t *testing.T) {
	root := shortTemp(t)
	mgr := filepath.Join(root, "m")
	startRun(t, "--data-dir", mgr, "--init", "--listen-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0")
	waitFile(t, filepath.Join(mgr, agent.SocketFile))
	nc := func() agent.NodeConfig {
		var nc agent.NodeConfig
		testkit.Eventually(t, "node.json", func() (err error) { nc, err = agent.LoadNodeConfig(mgr); return err })
		return nc
	}()
	pass := filepath.Join(root, "pass")
	if err := os.WriteFile(pass, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(root, "short")
	os.WriteFile(short, []byte("hunter2\n"), 0o600)
	file := filepath.Join(root, "backup.qcb")

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no passphrase, autolock off", nil, "--passphrase-file"},
		{"short passphrase", []string{"--passphrase-file", short}, "at least 12"},
	} {
		out, err := run(t, append([]string{"backup", "--data-dir", mgr, "--out", file}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("backup (%s) = %v\n%s\nwant an error naming %q", tc.name, err, out, tc.want)
		}
		if _, err := os.Stat(file); !os.IsNotExist(err) {
			t.Fatalf("backup (%s) wrote %s", tc.name, file)
		}
	}
	out, err := run(t, "backup", "--data-dir", mgr, "--out", file, "--passphrase-file", pass)
	if err != nil || !strings.Contains(out, nc.ClusterID) || !strings.Contains(out, "1 nodes (1 managers)") {
		t.Fatalf("backup = %v\n%s", err, out)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}

	raw, _ := os.ReadFile(file)
	changed := filepath.Join(root, "changed.qcb")
	flipped := []byte(string(raw))
	flipped[len(flipped)-20] ^= 1
	os.WriteFile(changed, flipped, 0o600)
	wrong := filepath.Join(root, "wrong")
	os.WriteFile(wrong, []byte("Tr0ub4dor&3 and more\n"), 0o600)
	notBackup := filepath.Join(mgr, "certificates", agent.CertFile)
	full := filepath.Join(root, "full")
	os.MkdirAll(full, 0o700)
	os.WriteFile(filepath.Join(full, "something"), nil, 0o600)
	restoreAddrs := []string{"--listen-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0"}
	for _, tc := range []struct {
		name, file, pass, dir, want string
	}{
		{"wrong passphrase", file, wrong, filepath.Join(root, "r1"), "passphrase"},
		{"changed file", changed, pass, filepath.Join(root, "r2"), "changed or damaged"},
		{"not a backup", notBackup, pass, filepath.Join(root, "r3"), "not a quorumca backup"},
		{"no passphrase", file, "", filepath.Join(root, "r4"), "--passphrase-file"},
		{"target holds something", file, pass, full, "not empty"},
	} {
		args := append([]string{"restore", tc.file, "--data-dir", tc.dir}, restoreAddrs...)
		if tc.pass != "" {
			args = append(args, "--passphrase-file", tc.pass)
		}
		out, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("restore (%s) = %v\n%s\nwant an error naming %q", tc.name, err, out, tc.want)
		}
		if tc.dir != full && !isEmptyOrAbsent(t, tc.dir) {
			t.Errorf("restore (%s) wrote into %s", tc.name, tc.dir)
		}
	}
	if entries, _ := os.ReadDir(full); len(entries) != 1 {
		t.Errorf("restore into a data directory that holds something changed it: %d entries", len(entries))
	}

	restored := filepath.Join(root, "r")
	out, err = run(t, append([]string{"restore", file, "--data-dir", restored, "--passphrase-file", pass}, restoreAddrs...)...)
	if err != nil || !strings.Contains(out, "Restored cluster "+nc.ClusterID) || !strings.Contains(out, nc.NodeID) {
		t.Fatalf("restore = %v\n%s\nwant the cluster restored, the backup's manager %s removed", err, out, nc.NodeID)
	}
	startRun(t, append([]string{"--data-dir", restored}, restoreAddrs...)...)
	waitFile(t, filepath.Join(restored, agent.SocketFile))
	testkit.Eventually(t, "the restored manager's status", func() error {
		out, err := run(t, "status", "--data-dir", restored)
		if err != nil {
			return err
		}
		if !strings.Contains(out, "Cluster ID:   "+nc.ClusterID) || !strings.Contains(out, "Recovered:    restore") {
			return &statusError{out}
		}
		return nil
	})
}

type statusError struct{ out string }

func (e *statusError) Error() string { return "status says:\n" + e.out }

// TestForceNewClusterRefusedWithoutState: --force-new-cluster on a data
// directory that holds no node is refused, and writes nothing.
func TestForceNewClusterRefusedWithoutState(t *testing.T) {
	dir := filepath.Join(shortTemp(t), "empty")
	out, err := run(t, "run", "--force-new-cluster", "--data-dir", dir)
	if err == nil || !strings.Contains(err.Error(), "holds no node") {
		t.Fatalf("run --force-new-cluster on an empty data directory = %v\n%s", err, out)
	}
	if !isEmptyOrAbsent(t, dir) {
		t.Errorf("the refused run wrote into %s", dir)
	}
}
