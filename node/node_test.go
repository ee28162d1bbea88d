package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/audit"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/manager"
)

// TestJoinWhenReadyLogsNoToken: the only log lines that could carry a
// token are those of a join that retries (run --join-token-file); a token
// that the manager refuses, or that is malformed, is not in them.
func TestJoinWhenReadyLogsNoToken(t *testing.T) {
	const secret = "1secretsecretsecretsecret" // 25 base-36 characters, under 2^128
	digest := strings.Repeat("1", 50)          // 50 base-36 characters, under 2^256
	for _, token := range []string{
		"SWMTKN-1-" + digest + "-" + secret,       // well-formed: the join fails on the dial
		"SWMTKN-1-" + digest + "-" + secret + "x", // malformed secret
	} {
		if _, err := ca.ParseToken(token); (err == nil) == strings.HasSuffix(token, "x") {
			t.Fatalf("ParseToken(%q) = %v: the test's tokens are not what it thinks", token, err)
		}
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		cfg := Config{
			DataDir:    t.TempDir(),
			ListenAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0",
			Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Join:   &Join{TokenFile: file, Addr: "127.0.0.1:1", Retry: true},
		}
		// Two attempts: one at once, one after a second.
		ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
		_, err := Start(ctx, cfg)
		cancel()
		if err == nil {
			t.Fatalf("Start(join through an unreachable manager) = nil error")
		}
		if !strings.Contains(logs.String(), "join failed") {
			t.Fatalf("the join logged\n%s\nwant the failed join", logs.String())
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the join logged the token's secret:\n%s", logs.String())
		}
	}
}

// TestLockedNode: with autolock on, a node that restarts is locked: its
// socket says so and takes the unlock key (a wrong one refused), or it
// reads the key from --unlock-key-file, and then runs its manager. The
// audit log, kept across the restarts, records both unlocks and neither
// key.
func TestLockedNode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	sock := filepath.Join(t.TempDir(), "q.sock")
	auditLog := filepath.Join(t.TempDir(), "audit.log")
	var out bytes.Buffer
	cfg := Config{
		DataDir: dir, SocketPath: sock, Out: &out,
		ListenAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0",
		Init:     &manager.InitOptions{Autolock: true},
		AuditLog: auditLog,
	}
	n, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Start(init --autolock) = %v", err)
	}
	key := regexp.MustCompile(`QCKEY-1-[A-Za-z0-9_-]+`).FindString(out.String())
	if key == "" {
		t.Fatalf("init --autolock printed no unlock key:\n%s", out.String())
	}
	n.Stop()

	cfg.Init = nil
	n, err = Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Start(locked) = %v", err)
	}
	t.Cleanup(func() { n.Stop() })
	if !n.Locked() || n.Manager() != nil {
		t.Fatalf("a restarted autolocked node: locked %v, manager %v; want locked", n.Locked(), n.Manager())
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctl := api.NewControlClient(conn)
	st, err := ctl.Status(t.Context(), &api.StatusRequest{})
	if err != nil || !strings.Contains(st.GetProblem(), "locked") {
		t.Fatalf("Status() of a locked node = %v, %v; want the problem to say locked", st.GetProblem(), err)
	}
	wrong, _ := ca.NewUnlockKey(rand.Reader)
	if _, err := ctl.Unlock(t.Context(), &api.UnlockRequest{UnlockKey: wrong}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Unlock(another key) = %v, want InvalidArgument", err)
	}
	if !n.Locked() {
		t.Fatalf("a wrong key unlocked the node")
	}
	if _, err := ctl.Unlock(t.Context(), &api.UnlockRequest{UnlockKey: key}); err != nil {
		t.Fatalf("Unlock(the key) = %v", err)
	}
	testkit.Eventually(t, "the unlocked node runs its manager", testkit.True(func() bool { return n.Manager() != nil }))
	n.Stop()
	b, err := os.ReadFile(auditLog)
	if err != nil {
		t.Fatalf("read the audit log: %v", err)
	}
	recs, _ := audit.Read(bytes.NewReader(b))
	var results []string
	for _, r := range recs {
		if r.Action == "unlock" {
			results = append(results, r.Result)
		}
	}
	if want := []string{audit.ResultRefused, audit.ResultOK}; !slices.Equal(results, want) {
		t.Errorf("audit log's unlock lines = %v, want %v:\n%s", results, want, b)
	}
	if len(recs) == 0 || recs[0].Action != "commit.init" {
		t.Errorf("audit log does not begin with the cluster's creation:\n%s", b)
	}
	for _, k := range []string{key, wrong, strings.TrimPrefix(key, "QCKEY-1-"), strings.TrimPrefix(wrong, "QCKEY-1-")} {
		if strings.Contains(string(b), k) {
			t.Errorf("the audit log holds an unlock key")
		}
	}

	// Unattended: the key in a file, written after the node started, after
	// another key (the file may hold the keys before and after a rotation).
	keyFile := filepath.Join(t.TempDir(), "unlock.key")
	cfg.UnlockKeyFile = keyFile
	n, err = Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Start(locked, --unlock-key-file) = %v", err)
	}
	t.Cleanup(func() { n.Stop() })
	if !n.Locked() {
		t.Fatalf("the node is not locked while the key file is missing")
	}
	if err := os.WriteFile(keyFile, []byte(wrong+"\n"+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the node unlocks from the key file", testkit.True(func() bool { return n.Manager() != nil }))
}

// TestManagerConfigAdvertise: an address the configuration gives overrides
// the recorded one; a recorded advertise address goes with the recorded
// port, and is not taken for a listener on any free port, whose port is
// another.
func TestManagerConfigAdvertise(t *testing.T) {
	rec := agent.NodeConfig{
		ListenAddr: "127.0.0.1:41000", AdvertiseAddr: "10.0.0.1:41000",
		RaftAddr: "127.0.0.1:41001", RaftAdvertiseAddr: "10.0.0.1:41001",
	}
	for _, tc := range []struct {
		name                  string
		cfg                   Config
		wantListen, wantAdv   string
		wantRaft, wantRaftAdv string
	}{
		{"recorded", Config{}, rec.ListenAddr, rec.AdvertiseAddr, rec.RaftAddr, rec.RaftAdvertiseAddr},
		{"same ports given", Config{ListenAddr: rec.ListenAddr, RaftAddr: rec.RaftAddr}, rec.ListenAddr, rec.AdvertiseAddr, rec.RaftAddr, rec.RaftAdvertiseAddr},
		{"any free port", Config{ListenAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0"}, "127.0.0.1:0", "", "127.0.0.1:0", ""},
		{"any free port, advertise given", Config{ListenAddr: "127.0.0.1:0", AdvertiseAddr: "10.0.0.2:2377"}, "127.0.0.1:0", "10.0.0.2:2377", rec.RaftAddr, rec.RaftAdvertiseAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mc := (&Node{cfg: tc.cfg}).managerConfig(rec)
			if mc.ListenAddr != tc.wantListen || mc.AdvertiseAddr != tc.wantAdv || mc.RaftListenAddr != tc.wantRaft || mc.RaftAdvertiseAddr != tc.wantRaftAdv {
				t.Errorf("managerConfig() = listen %q advertise %q, raft %q advertise %q; want %q %q, %q %q",
					mc.ListenAddr, mc.AdvertiseAddr, mc.RaftListenAddr, mc.RaftAdvertiseAddr, tc.wantListen, tc.wantAdv, tc.wantRaft, tc.wantRaftAdv)
			}
		})
	}
}
