package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
)

// noFormat are the commands under the root that need no --format: the
// daemon's, which log rather than answer, and cobra's own.
var noFormat = []string{"init", "join", "run", "help", "completion"}

// TestEveryCommandTakesFormatJSON walks the command tree: every command
// but those of noFormat and the groups that only hold others has
// --format, table by default, and refuses a format it does not know
// before it does anything else (no daemon is asked, the data directory
// stays empty). A new command that forgets --format fails here.
func TestEveryCommandTakesFormatJSON(t *testing.T) {
	t.Setenv("QUORUMCA_CERT_PATH", "")
	t.Setenv("QUORUMCA_HOST", "")
	root := newRootCmd()
	// Execute adds these; add them here so that the walk sees them.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var cmds []*cobra.Command
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if c == root && slices.Contains(noFormat, sub.Name()) {
				continue
			}
			walk(sub)
		}
		if c != root && c.Annotations[groupAnnotation] == "" {
			cmds = append(cmds, c)
		}
	}
	walk(root)
	var paths []string
	for _, c := range cmds {
		paths = append(paths, strings.TrimPrefix(c.CommandPath(), "quorumca "))
	}
	for _, want := range []string{"status", "join-token", "join-token create", "node rm", "ca", "restore", "leave"} {
		if !slices.Contains(paths, want) {
			t.Fatalf("the walk found %q, want %q among them", paths, want)
		}
	}
	for _, c := range cmds {
		path := strings.TrimPrefix(c.CommandPath(), "quorumca ")
		t.Run(path, func(t *testing.T) {
			f := c.Flags().Lookup("format")
			if f == nil {
				t.Fatalf("quorumca %s has no --format flag: give it addFormatFlag and print a JSON struct with writeJSON", path)
			}
			if f.DefValue != "table" {
				t.Errorf("quorumca %s --format defaults to %q, want table", path, f.DefValue)
			}
			// As few placeholder arguments as the command takes.
			var args []string
			for c.ValidateArgs(args) != nil && len(args) < 3 {
				args = append(args, "x")
			}
			dir := t.TempDir()
			argv := append(strings.Fields(path), args...)
			out, err := run(t, append(argv, "--format", "yaml", "--data-dir", dir)...)
			if err == nil || !strings.Contains(err.Error(), `--format "yaml": use table or json`) {
				t.Errorf("quorumca %s --format yaml = %v\n%s\nwant the format refused first", strings.Join(argv, " "), err, out)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("quorumca %s --format yaml wrote into the data dir", strings.Join(argv, " "))
			}
		})
	}
}

// runJSON runs the CLI with args and --format json, and decodes what it
// printed into v.
func runJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := run(t, append(args, "--format", "json")...)
	if err != nil {
		t.Fatalf("quorumca %s --format json = %v\n%s", strings.Join(args, " "), err, out)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("quorumca %s --format json printed\n%s\nnot one %T: %v", strings.Join(args, " "), out, v, err)
	}
	if dec.More() {
		t.Fatalf("quorumca %s --format json printed\n%s\nmore than one object", strings.Join(args, " "), out)
	}
}

// TestFormatJSONOnACluster runs the commands that change the cluster with
// --format json against a real cluster, and checks what their objects
// say.
func TestFormatJSONOnACluster(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 2})
	m, w0, w1 := c.Managers[0], c.Workers[0], c.Workers[1]

	var tok joinTokenJSON
	runJSON(t, &tok, on(m, "join-token", "worker")...)
	if tok.Token != c.WorkerToken || tok.JoinAddr != m.Addr() || tok.Role != "worker" || tok.Rotated {
		t.Errorf("join-token worker --format json = %+v, want the worker token and %s", tok, m.Addr())
	}
	// -q wins over --format: the token alone.
	if out, err := run(t, on(m, "join-token", "worker", "-q", "--format", "json")...); err != nil || out != c.WorkerToken+"\n" {
		t.Errorf("join-token worker -q --format json = %v, %q, want the token alone", err, out)
	}

	var created joinTokenJSON
	runJSON(t, &created, on(m, "join-token", "create", "manager", "--uses", "1")...)
	if created.ID == "" || created.Token == "" || created.Token == c.ManagerToken || created.JoinAddr != m.Addr() || created.Role != "manager" {
		t.Errorf("join-token create manager --format json = %+v, want a new token's ID and secret, through %s", created, m.Addr())
	}
	var revoked tokenRevokedJSON
	runJSON(t, &revoked, on(m, "join-token", "revoke", created.ID)...)
	if revoked.ID != created.ID {
		t.Errorf("join-token revoke %s --format json = %+v", created.ID, revoked)
	}

	var upd updateJSON
	runJSON(t, &upd, on(m, "update", "--rotation-grace", "5m")...)
	if upd.RotationGraceSeconds != 300 || upd.CertExpirySeconds <= 0 || upd.ExternalCAs == nil || upd.Autolock || upd.UnlockKey != "" {
		t.Errorf("update --rotation-grace 5m --format json = %+v, want the settings, grace 300s", upd)
	}

	var cj caJSON
	runJSON(t, &cj, on(m, "ca")...)
	if cj.Bundle != string(c.Bundle) || cj.Rotation != nil {
		t.Errorf("ca --format json = %+v, want the bundle and no rotation", cj)
	}

	dir := filepath.Join(t.TempDir(), "admin")
	var ac adminCertCreatedJSON
	runJSON(t, &ac, on(m, "admin-cert", "create", "--out", dir)...)
	if ac.Serial == "" || ac.Dir != dir || ac.Key != filepath.Join(dir, "key.pem") || ac.NotAfter.Before(time.Now()) {
		t.Errorf("admin-cert create --format json = %+v", ac)
	}
	for _, f := range []string{ac.CA, ac.Cert, ac.Key} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("admin-cert create --format json names %s: %v", f, err)
		}
	}
	var acRm adminCertRmJSON
	runJSON(t, &acRm, on(m, "admin-cert", "rm", ac.Serial)...)
	if len(acRm.Revoked) != 1 || acRm.Revoked[0] != ac.Serial {
		t.Errorf("admin-cert rm %s --format json = %+v", ac.Serial, acRm)
	}
	runJSON(t, &acRm, on(m, "admin-cert", "rm", "all")...)
	if acRm.Revoked == nil || len(acRm.Revoked) != 0 {
		t.Errorf("admin-cert rm all, none left, --format json = %+v, want an empty list", acRm)
	}

	var target nodeJSON
	runJSON(t, &target, on(m, "node", "inspect", w0.ID())...)
	var cr certRevokedJSON
	runJSON(t, &cr, on(m, "cert", "revoke", target.CertSerial, "--reason", "keyCompromise")...)
	if cr.Serial != target.CertSerial || cr.Kind != "node" || cr.ID != w0.ID() || !cr.Current || cr.Reason != "keyCompromise" {
		t.Errorf("cert revoke %s --format json = %+v, want node %s's current certificate", target.CertSerial, cr, w0.ID())
	}

	var rm nodeRmJSON
	runJSON(t, &rm, on(m, "node", "rm", "--force", w0.ID())...)
	if len(rm.Removed) != 1 || rm.Removed[0] != w0.ID() {
		t.Errorf("node rm --force %s --format json = %+v", w0.ID(), rm)
	}
	// A node that fails: the command fails, and the JSON names none.
	out, err := run(t, on(m, "node", "demote", m.ID(), "--format", "json")...)
	if err == nil {
		t.Errorf("node demote of the only manager = nil error\n%s", out)
	} else if out != "" {
		t.Errorf("node demote of the only manager, failed, printed %q, want nothing", out)
	}

	var left leaveJSON
	runJSON(t, &left, on(w1, "leave")...)
	if left.NodeID != w1.ID() || left.ClusterID != c.ClusterID {
		t.Errorf("leave --format json = %+v, want node %s of %s", left, w1.ID(), c.ClusterID)
	}

	tmp := shortTemp(t)
	pass := filepath.Join(tmp, "pass")
	if err := os.WriteFile(pass, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(tmp, "b.qcb")
	var b backupJSON
	runJSON(t, &b, on(m, "backup", "--out", file, "--passphrase-file", pass)...)
	if b.File != file || b.ClusterID != c.ClusterID || b.EncryptedWith != "passphrase" || b.Index == 0 || b.Managers != 1 {
		t.Errorf("backup --format json = %+v", b)
	}
	restored := filepath.Join(tmp, "r")
	var r restoreJSON
	runJSON(t, &r, "restore", file, "--data-dir", restored, "--passphrase-file", pass,
		"--listen-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0")
	if r.ClusterID != c.ClusterID || r.DataDir != restored || r.NodeID == "" || r.BackupIndex != b.Index ||
		!slices.Contains(r.RemovedManagers, m.ID()) || r.StartCommand != "quorumca run --data-dir "+restored {
		t.Errorf("restore --format json = %+v", r)
	}
}

// TestCARotateFormatJSON: ca --rotate --format json follows the rotation
// without drawing progress and prints one object at the end.
func TestCARotateFormatJSON(t *testing.T) {
	complete := &api.Rotation{StartedAt: 1000, CompletedAt: 1030, NewRootFingerprint: "abcd", Total: 3, Trusting: 3,
		Nodes: []*api.RotationNode{{Id: "node-a", Role: "swarm-manager", State: "converged", TrustsNewRoot: true}}}
	f := &fakeControl{answers: []caAnswer{
		{resp: &api.GetCAResponse{Rotation: &api.Rotation{InProgress: true, StartedAt: 1000, Total: 3, Converged: 1}}},
		{resp: &api.GetCAResponse{Rotation: complete, Bundle: []byte(newBundle)}},
	}}
	for _, detach := range []bool{false, true} {
		cmd := &cobra.Command{}
		var out, errOut bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		cmd.SetContext(ctx)
		started := &api.Rotation{InProgress: true, StartedAt: 1000, NewRootFingerprint: "abcd", Total: 3}
		err := printRotateJSON(cmd, f, started, detach)
		cancel()
		var got caJSON
		dec := json.NewDecoder(&out)
		if err != nil || dec.Decode(&got) != nil || dec.More() || errOut.Len() != 0 {
			t.Fatalf("printRotateJSON(detach %v) = %v; printed\n%s\nstderr %q; want one object", detach, err, out.String(), errOut.String())
		}
		if detach {
			if got.Bundle != "" || got.Rotation == nil || !got.Rotation.InProgress || got.Rotation.NewRoot != "abcd" {
				t.Errorf("printRotateJSON(detach) = %+v, want the rotation started", got)
			}
			continue
		}
		if got.Bundle != newBundle || got.Rotation == nil || got.Rotation.InProgress || got.Rotation.CompletedAt == nil ||
			got.Rotation.Trusting != 3 || len(got.Rotation.Nodes) != 1 || got.NodesWaiting != 0 || got.StoppedWatching {
			t.Errorf("printRotateJSON() = %+v, want the completed rotation and the new bundle", got)
		}
	}
}
