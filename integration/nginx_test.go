package integration

// The real nginx (Debian's package; scripts/test.sh installs it) in front
// of a node's certificate files, configured as the README says, reloaded
// by the node's hooks: it refuses removed and revoked certificates soon
// after the cluster does, and a client that follows its node's files is
// never refused through a whole root rotation.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/node"
	"github.com/quorumca/quorumca/nodetls"
)

func requireNginx(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	t.Fatalf("nginx is needed (scripts/test.sh installs Debian's package)")
	return ""
}

// readmeNginx returns the nginx configuration the README gives, for the
// certificates in certDir and cluster clusterID, listening on sock.
func readmeNginx(t *testing.T, certDir, clusterID, sock string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "```nginx\n")
	conf, _, ok2 := strings.Cut(after, "```")
	if !ok || !ok2 {
		t.Fatal("README.md has no nginx configuration")
	}
	for _, want := range []string{"/var/lib/quorumca/certificates/", "CLUSTER_ID", "listen                  443 ssl;"} {
		if !strings.Contains(conf, want) {
			t.Fatalf("README.md's nginx configuration has no %q", want)
		}
	}
	return strings.NewReplacer(
		"/var/lib/quorumca/certificates/", certDir+"/",
		"CLUSTER_ID", clusterID,
		"listen                  443 ssl;", "listen unix:"+sock+" ssl;",
	).Replace(conf)
}

// nginxServer is a running nginx.
type nginxServer struct {
	sock, pidFile string
	log           *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startNginx runs nginx in the foreground in a directory of its own with
// the README's server for certDir, until the test ends. pidFile is where
// it writes its PID (known before it starts, for the node's hooks).
func startNginx(t *testing.T, prefix, certDir, clusterID string) *nginxServer {
	t.Helper()
	bin := requireNginx(t)
	n := &nginxServer{sock: filepath.Join(prefix, "nginx.sock"), pidFile: filepath.Join(prefix, "nginx.pid"), log: &lockedBuffer{}}
	for _, d := range []string{"tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
%[2]s
}
`, prefix, readmeNginx(t, certDir, clusterID, n.sock))
	confFile := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-e", "stderr", "-p", prefix, "-c", confFile, "-t").CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s\n%s", err, out, conf)
	}
	cmd := exec.Command(bin, "-e", "stderr", "-p", prefix, "-c", confFile)
	cmd.Stdout, cmd.Stderr = n.log, n.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("nginx's log:\n%s", n.log.String())
		}
	})
	testkit.Eventually(t, "nginx listens and wrote its pid file", func() error {
		if _, err := os.Stat(n.pidFile); err != nil {
			return err
		}
		c, err := net.Dial("unix", n.sock)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return n
}

// get makes one request over a new connection with cfg; it returns the
// status and body, or the error of the connection.
func (n *nginxServer) get(t *testing.T, cfg *tls.Config) (int, string, error) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", n.sock)
		},
		TLSClientConfig:   cfg,
		DisableKeepAlives: true,
	}}
	resp, err := client.Get("https://nginx/")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// frozen is a client configuration that presents a node's files as they
// were (and does not check nginx: what is tested is nginx's check).
func frozen(t *testing.T, f nodeFiles) *tls.Config {
	t.Helper()
	pair, err := tls.X509KeyPair(f.cert, f.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true}
}

// refusedWithin polls, as one client would, until nginx refuses cfg, and
// fails the test if that takes longer than bound. It returns how long it
// took from since.
func (n *nginxServer) refusedWithin(t *testing.T, what string, cfg *tls.Config, since time.Time, bound time.Duration) time.Duration {
	t.Helper()
	for {
		code, body, err := n.get(t, cfg)
		if err == nil && code == http.StatusBadRequest && strings.Contains(body, "certificate") {
			took := time.Since(since)
			t.Logf("nginx refused %s %s after the change", what, took.Round(time.Millisecond))
			return took
		}
		if err == nil && code != http.StatusOK {
			t.Fatalf("nginx answered %s with %d %q, want 200 then 400", what, code, body)
		}
		if time.Since(since) > bound {
			t.Fatalf("nginx still admits %s %s after the change (bound %s): %d %v\n%s", what, time.Since(since).Round(time.Millisecond), bound, code, err, n.log.String())
		}
		time.Sleep(20 * time.Millisecond) // one client's pace: a request per 20 ms
	}
}

const nginxSplay = 200 * time.Millisecond

// TestNginxRefusesRemovedAndRevoked: nginx serving w0's files, reloaded by
// w0's --reload-signal HUP, refuses a removed node's certificate and a
// revoked serial within a heartbeat period plus the hook (with slack for
// a loaded machine), and still admits the live nodes.
func TestNginxRefusesRemovedAndRevoked(t *testing.T) {
	prefix := t.TempDir()
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 3, Configure: func(name string, cfg *node.Config) {
		if name == "w0" {
			cfg.Hooks = agent.HookConfig{Signal: syscall.SIGHUP, PIDFile: filepath.Join(prefix, "nginx.pid"), Splay: nginxSplay}
		}
	}})
	w0, w1, w2 := c.Workers[0], c.Workers[1], c.Workers[2]
	waitCRL(t, w0)
	ngx := startNginx(t, prefix, agent.CertDir(w0.Dir), w0.Credentials().Identity().ClusterID)
	live := followNode(t, w1)
	if code, body, err := ngx.get(t, live.ClientConfig("")); err != nil || code != http.StatusOK || !strings.Contains(body, w1.ID()) {
		t.Fatalf("nginx answered w1 with %d %q %v, want 200 naming it", code, body, err)
	}
	// What the hook needs at most: a heartbeat brings the CRL, the splay,
	// then nginx's reload. The slack is for a loaded machine under -race.
	bound := testkit.HeartbeatPeriod + nginxSplay + 10*time.Second

	removed := readNodeFiles(t, w2)
	if code, _, err := ngx.get(t, frozen(t, removed)); err != nil || code != http.StatusOK {
		t.Fatalf("nginx answered w2 before its removal with %d %v", code, err)
	}
	since := time.Now()
	if _, err := c.Ctl().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: w2.ID(), Force: true}); err != nil {
		t.Fatal(err)
	}
	ngx.refusedWithin(t, "the removed node's certificate", frozen(t, removed), since, bound)

	// A leaked earlier key of w1: revoked by serial.
	old := readNodeFiles(t, w1)
	w1.Renewer().RenewSoon()
	testkit.Eventually(t, "w1 renewed", testkit.True(func() bool { return serialOf(t, readNodeFiles(t, w1).cert) != serialOf(t, old.cert) }))
	since = time.Now()
	if _, err := c.Ctl().RevokeCertificate(testkit.Ctx(t), &api.RevokeCertificateRequest{Serial: serialOf(t, old.cert), Reason: ca.ReasonKeyCompromise}); err != nil {
		t.Fatal(err)
	}
	ngx.refusedWithin(t, "w1's revoked earlier certificate", frozen(t, old), since, bound)
	if code, body, err := ngx.get(t, live.ClientConfig("")); err != nil || code != http.StatusOK {
		t.Errorf("nginx answered w1's current certificate with %d %q %v, want 200", code, body, err)
	}
}

// TestNginxThroughARotation: through a whole root rotation, a client that
// follows w1's files (the Go package) talks to nginx serving w0's files,
// a request every few milliseconds on a new connection each, and nginx
// never refuses it; at the end nginx serves w0's certificate of the new
// root.
func TestNginxThroughARotation(t *testing.T) {
	prefix := t.TempDir()
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 2, Configure: func(name string, cfg *node.Config) {
		if name == "w0" {
			cfg.Hooks = agent.HookConfig{Signal: syscall.SIGHUP, PIDFile: filepath.Join(prefix, "nginx.pid"), Splay: nginxSplay}
		}
	}})
	w0, w1 := c.Workers[0], c.Workers[1]
	waitCRL(t, w0)
	ngx := startNginx(t, prefix, agent.CertDir(w0.Dir), w0.Credentials().Identity().ClusterID)
	live := followNode(t, w1)

	var served atomic.Value // the serial nginx last presented
	cfg := live.ClientConfig("")
	check := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		served.Store(cs.PeerCertificates[0].SerialNumber.Text(16))
		return check(cs)
	}
	var requests, refused atomic.Int64
	var firstRefusal atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			code, body, err := ngx.get(t, cfg)
			requests.Add(1)
			if err != nil || code != http.StatusOK {
				refused.Add(1)
				firstRefusal.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	root := c.Rotate()
	c.WaitRotation(root, true)
	testkit.Eventually(t, "nginx serves w0's certificate of the new root", func() error {
		files := readNodeFiles(t, w0)
		if ca.BundleFingerprint(files.bundle) != root {
			return errors.New("w0 does not hold the new root yet")
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(files.bundle)
		certs, err := ca.ParseCertificates(files.cert)
		if err != nil {
			return err
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots}); err != nil {
			return fmt.Errorf("w0's certificate, alone, does not verify under the new root: %v", err)
		}
		if s, _ := served.Load().(string); s != certs[0].SerialNumber.Text(16) {
			return fmt.Errorf("nginx presents %s, w0 holds %s", s, certs[0].SerialNumber.Text(16))
		}
		if requests.Load() < 10 {
			return errors.New("too few requests yet")
		}
		return nil
	})
	close(stop)
	<-done
	t.Logf("%d requests through the rotation, %d refused", requests.Load(), refused.Load())
	if n := refused.Load(); n > 0 {
		t.Errorf("%d of %d requests failed through the rotation; the first: %v", n, requests.Load(), firstRefusal.Load())
	}
}

// waitCRL waits until n holds a crl.pem.
func waitCRL(t *testing.T, n *clustertest.Node) {
	t.Helper()
	testkit.Eventually(t, n.Name+" holds a crl.pem", func() error {
		if len(readNodeFiles(t, n).crl) == 0 {
			return errors.New("not yet")
		}
		return nil
	})
}

// followNode opens n's certificate files with the Go package, following
// them closely.
func followNode(t *testing.T, n *clustertest.Node) *nodetls.Files {
	t.Helper()
	f, err := nodetls.Open(agent.CertDir(n.Dir), nodetls.WithInterval(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestNginxCorporateRootNeedsClusterCheck: under one root that signs for
// more than the cluster (a corporate root), nginx's certificate check
// alone admits a certificate of another cluster: the README's O = cluster
// ID check is what refuses it (403, where a failed certificate check is
// 400).
func TestNginxCorporateRootNeedsClusterCheck(t *testing.T) {
	corp := testkit.NewCA(t)
	certDir := t.TempDir()
	own := corp.Issue(t, ca.RoleWorker)
	crl, err := ca.SignCRL(rand.Reader, ca.CRLIssuer{Cert: corp.Cert, Key: corp.KeyPEM(t)}, 1, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{agent.CertFile: own.CertPEM, agent.KeyFile: own.KeyPEM, agent.BundleFile: corp.Bundle(), agent.CRLFile: crl} {
		if err := os.WriteFile(filepath.Join(certDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ngx := startNginx(t, t.TempDir(), certDir, corp.ClusterID)
	client := func(l testkit.Leaf) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{l.TLS(t)}, InsecureSkipVerify: true}
	}
	if code, body, err := ngx.get(t, client(corp.Issue(t, ca.RoleManager))); err != nil || code != http.StatusOK {
		t.Errorf("nginx answered a node of the cluster with %d %q %v, want 200", code, body, err)
	}
	otherCluster, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other := corp.IssueFor(t, ca.Identity{NodeID: own.ID.NodeID, Role: ca.RoleManager, ClusterID: otherCluster})
	if code, body, err := ngx.get(t, client(other)); err != nil || code != http.StatusForbidden {
		t.Errorf("nginx answered a certificate of the same root for another cluster with %d %q %v, want 403", code, body, err)
	}
}
