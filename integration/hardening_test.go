package integration

// Hardening found by probing a cluster from outside, each reproduced: an
// unauthenticated flood of large joins, never-speaking connections, a
// removed manager used as a fake one to capture a join token, weak TLS
// suites, and a full disk.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/node"
)

func TestMain(m *testing.M) {
	if targets := os.Getenv(floodEnv); targets != "" {
		os.Exit(flood(strings.Split(targets, ",")))
	}
	if spec := os.Getenv(nodeTLSEnv); spec != "" {
		os.Exit(nodeTLSHelper(spec))
	}
	os.Exit(m.Run())
}

// floodEnv names the managers a flooder process (this test binary, run
// again) sends its joins to.
const floodEnv = "QUORUMCA_TEST_FLOOD"

// Size of the flood: 64 joins of 4 MiB at once, without a certificate and
// with a bad token, as the probe sent them.
const (
	floodCalls = 64
	floodSize  = 4_000_000 // "4 MB", under gRPC's default limit of 4 MiB
)

// flood sends floodCalls join requests of floodSize bytes at once, spread
// over targets, and prints how each ended. It runs in a process of its
// own, so that its buffers do not count in the managers' memory.
func flood(targets []string) int {
	payload := make([]byte, floodSize)
	var wg sync.WaitGroup
	codesSeen := make([]codes.Code, floodCalls)
	for i := range floodCalls {
		wg.Go(func() {
			conn, err := grpc.NewClient(targets[i%len(targets)],
				grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})),
				grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(2*floodSize)))
			if err != nil {
				codesSeen[i] = codes.Unknown
				return
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err = api.NewCAClient(conn).IssueNodeCertificate(ctx, &api.IssueNodeCertificateRequest{
				Csr: payload, TokenDigest: strings.Repeat("0", ca.DigestLength), TokenProof: make([]byte, 32),
			})
			codesSeen[i] = status.Code(err)
		})
	}
	wg.Wait()
	for _, c := range codesSeen {
		fmt.Println(c)
	}
	return 0
}

// TestAnonymousJoinFloodBoundedMemory: 64 concurrent joins of 4 MiB each,
// without a certificate and with a bad token, once grew a follower by 644
// MB and the leader by 475 MB (the whole message was read and relayed
// before the token was checked). Now no message over the API's limit is
// read, the anonymous calls in progress are bounded, and the token's proof
// is checked before anything is relayed: the managers' heap barely moves,
// and every call is refused.
func TestAnonymousJoinFloodBoundedMemory(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	leader := c.Leader()
	targets := []string{leader.Addr(), c.Follower().Addr()}
	before := clustertest.StateJSON(t, leader.Manager().State())

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), floodEnv+"="+strings.Join(targets, ","))
	out, err := cmd.Output()
	close(stop)
	<-sampled
	if err != nil {
		t.Fatalf("flooder: %v", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != floodCalls {
		t.Fatalf("flooder printed %d results, want %d: %q", len(lines), floodCalls, out)
	}
	for _, l := range lines {
		if l == codes.OK.String() {
			t.Errorf("a flooding join was admitted")
		}
	}
	grew := int64(peak.Load()) - int64(base)
	t.Logf("managers' heap: %d MiB before, peak %d MiB during the flood (%+d MiB); answers %v", base>>20, peak.Load()>>20, grew>>20, summarize(lines))
	if limit := int64(64 << 20); grew > limit {
		t.Errorf("the managers' heap grew by %d MiB during the flood, want at most %d MiB", grew>>20, limit>>20)
	}
	if got := clustertest.StateJSON(t, leader.Manager().State()); got != before {
		t.Errorf("the flood changed the state")
	}
}

func summarize(lines []string) map[string]int {
	out := map[string]int{}
	for _, l := range lines {
		out[l]++
	}
	return out
}

// TestSilentConnectionsCapped: 2,000 connections that never speak once
// held 2,000 file descriptors for 120 s. Now the manager keeps at most a
// few hundred silent ones (closing the oldest), closes each after the
// handshake deadline, and still serves a real client meanwhile.
func TestSilentConnectionsCapped(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1})
	addr := c.Managers[0].Addr()
	const silent = 2000
	conns := make([]net.Conn, 0, silent)
	start := time.Now()
	t.Cleanup(func() {
		for _, conn := range conns {
			conn.Close()
		}
	})
	for range silent {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, conn)
	}
	// A real client gets through while they wait.
	conn := c.Dial(addr, clientTLS(c.Managers[0].Credentials().Certificate(), c.Roots()))
	ctx := testkit.Ctx(t)
	if _, err := api.NewControlClient(conn).Ping(ctx, &api.PingRequest{}); err != nil {
		t.Fatalf("Ping() during the flood of silent connections = %v", err)
	}
	// The manager closes all but a few hundred once they have been silent
	// for a second (at its next accept: another one comes), well before
	// the handshake deadline, and the rest at the deadline.
	open := func() int {
		n := 0
		for _, conn := range conns[:silent] {
			conn.SetReadDeadline(time.Now().Add(time.Millisecond))
			var b [1]byte
			_, err := conn.Read(b[:])
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				n++
			}
		}
		return n
	}
	testkit.Eventually(t, "at most 300 silent connections left open once silent for a second", func() error {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		conns = append(conns, conn)
		if n := open(); n > 300 {
			return fmt.Errorf("%d of %d silent connections still open", n, silent)
		}
		return nil
	})
	if took := time.Since(start); took >= 5*time.Second {
		t.Errorf("the silent connections were down to 300 only %v after the flood began: the handshake deadline (5s) closed them, not the bound", took)
	}
	testkit.Eventually(t, "the manager closes silent connections at the handshake deadline", func() error {
		if n := open(); n > 0 {
			return fmt.Errorf("%d silent connections still open", n)
		}
		return nil
	})
}

// TestPhishingRemovedManagerGetsNoToken: a removed manager keeps a
// certificate the bundle still vouches for; run as a fake manager, it once
// captured the worker token of any node told to join through it. Now the
// token never travels: the fake gets a proof bound to its own connection,
// which the cluster refuses when the fake replays it, and the secret is
// nowhere in what it received.
func TestPhishingRemovedManagerGetsNoToken(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	leader := c.Leader()
	victim := c.Follower()
	creds := victim.Credentials()
	stolen := *creds.Certificate()
	victim.Stop()
	ctx := testkit.Ctx(t)
	if _, err := leader.Control().RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: victim.ID(), Force: true}); err != nil {
		t.Fatalf("RemoveNode(manager %s) = %v", victim.ID(), err)
	}
	before := clustertest.StateJSON(t, leader.Manager().State())
	token := c.Token(leader, "worker")
	tok, _ := ca.ParseToken(token)

	fake := startFakeManager(t, stolen, c.Bundle, leader.Addr())
	_, err := agent.Join(ctx, agent.JoinConfig{DataDir: t.TempDir(), Token: token, Remote: fake.addr, Logger: testkit.Logger()})
	if err == nil {
		t.Fatalf("the join through the fake manager succeeded")
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.request == nil {
		t.Fatalf("the fake manager received no join request")
	}
	raw, _ := proto.Marshal(fake.request)
	if strings.Contains(string(raw), tok.Secret) {
		t.Errorf("the fake manager received the token's secret")
	}
	if code := status.Code(fake.replayErr); code != codes.PermissionDenied {
		t.Errorf("the cluster answered the fake's replay of the join with %v, want PermissionDenied", fake.replayErr)
	}
	if got := clustertest.StateJSON(t, leader.Manager().State()); got != before {
		t.Errorf("the phishing changed the state")
	}
}

// fakeManager serves, with a stolen manager certificate, what a joining
// node calls; it replays each join it gets to a real manager.
type fakeManager struct {
	api.UnimplementedCAServer
	addr   string
	bundle []byte
	real   string

	mu        sync.Mutex // guards the fields below
	request   *api.IssueNodeCertificateRequest
	replayErr error
}

func startFakeManager(t *testing.T, cert tls.Certificate, bundle []byte, real string) *fakeManager {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeManager{addr: ln.Addr().String(), bundle: bundle, real: real}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	api.RegisterCAServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeManager) GetRootBundle(context.Context, *api.GetRootBundleRequest) (*api.GetRootBundleResponse, error) {
	return &api.GetRootBundleResponse{Bundle: f.bundle}, nil
}

func (f *fakeManager) IssueNodeCertificate(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	// Replay it, as is, over the fake's own connection to a real manager.
	conn, err := grpc.NewClient(f.real, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err == nil {
		defer conn.Close()
		_, err = api.NewCAClient(conn).IssueNodeCertificate(ctx, req)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.request, f.replayErr = req, err
	return nil, status.Error(codes.Unavailable, "fake manager")
}

// TestAPIRefusesWeakTLS: the API port refuses TLS 1.1 and TLS 1.2 with CBC
// suites, from the real openssl client; TLS 1.2 with an AEAD suite gets
// through.
func TestAPIRefusesWeakTLS(t *testing.T) {
	openssl := requireOpenSSL(t)
	c := clustertest.New(t, clustertest.Options{Managers: 1})
	addr := c.Managers[0].Addr()
	for _, tt := range []struct {
		name string
		args []string
		ok   bool
	}{
		{"TLS 1.2 AES-GCM", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, true},
		{"TLS 1.3", []string{"-tls1_3"}, true},
		{"TLS 1.2 ECDHE-ECDSA-AES128-SHA", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"}, false},
		{"TLS 1.2 ECDHE-ECDSA-AES256-SHA", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA"}, false},
		{"TLS 1.1", []string{"-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"}, false},
	} {
		args := append([]string{"s_client", "-connect", addr, "-servername", "swarm-manager"}, tt.args...)
		cmd := exec.CommandContext(t.Context(), openssl, args...)
		cmd.Stdin = strings.NewReader("")
		out, _ := cmd.CombinedOutput()
		done := strings.Contains(string(out), "Cipher is ") && !strings.Contains(string(out), "Cipher is (NONE)")
		if done != tt.ok {
			t.Errorf("openssl s_client %s: handshake done = %v, want %v\n%s", tt.name, done, tt.ok, lastLines(string(out), 6))
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// requireOpenSSL returns the openssl command, or fails the test.
func requireOpenSSL(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is needed (scripts/test.sh installs it): %v", err)
	}
	return path
}

// TestDiskFullSaysDiskFull: a manager whose disk is full once answered
// every change and status with "no quorum". Now the error and status say
// which manager's disk is full, and the manager serves again once space
// is freed. (The data dir is on a small tmpfs; the tests run as root.)
func TestDiskFullSaysDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir).Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount tmpfs: %v (CI runs as root and must run this test)", err)
		}
		t.Skipf("mount tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	c := clustertest.New(t, clustertest.Options{
		Managers:  1,
		Configure: func(_ string, cfg *node.Config) { cfg.DataDir = filepath.Join(dir, "data") },
	})
	m := c.Managers[0].Manager()
	filler := filepath.Join(dir, "filler")
	fill(t, filler)
	ctx := testkit.Ctx(t)
	var err error
	// The store may still have free pages: write until it needs more.
	for i := 0; i < 2000 && err == nil; i++ {
		_, err = c.Managers[0].Control().JoinToken(ctx, &api.JoinTokenRequest{Role: "worker", Rotate: true})
	}
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), m.NodeID()) {
		t.Errorf("JoinToken(rotate) on a full disk = %v, want an error that says the disk of manager %s is full", err, m.NodeID())
	}
	if r, _ := api.ErrorReason(err); r != api.ReasonDiskFull {
		t.Errorf("JoinToken(rotate) on a full disk: reason %q, want %s", r, api.ReasonDiskFull)
	}
	st, err := c.Managers[0].Control().Status(ctx, &api.StatusRequest{})
	if err != nil || !strings.Contains(st.GetProblem(), "disk full") || st.GetHealth() != api.HealthProblem {
		t.Errorf("Status() on a full disk = problem %q, health %q, %v; want it to say the disk is full (health %q: status exits 7)", st.GetProblem(), st.GetHealth(), err, api.HealthProblem)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the manager serves again once space is freed", func() error {
		_, err := c.Managers[0].Control().JoinToken(ctx, &api.JoinTokenRequest{Role: "worker", Rotate: true})
		return err
	})
}

// fill writes path until the disk is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for range 1 << 14 { // bounded: 1 GiB at most
		if _, err := f.Write(buf); err != nil {
			return
		}
	}
	t.Fatalf("%s: the disk never filled", path)
}
