package integration

// A harness that runs the real CFSSL CA server (`cfssl serve`) over HTTPS on
// 127.0.0.1, for tests of quorumca against an external CA, and a fake HTTPS
// CA (startFakeCA) for the cases a real cfssl cannot produce.
//
// cfssl is an external binary: requireCFSSL finds it, skips the test when it
// is missing, and fails instead when $CI is set.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

const (
	// cfsslInstall is how to get the cfssl binary the tests expect.
	cfsslInstall = "GOTOOLCHAIN=go1.27.3 go install github.com/cloudflare/cfssl/cmd/cfssl@v1.7.1"
	// cfsslReadyTimeout bounds how long a cfssl start may take to answer.
	cfsslReadyTimeout = 20 * time.Second
	// cfsslStopTimeout bounds how long a killed cfssl may take to exit.
	cfsslStopTimeout = 10 * time.Second
	// cfsslInfoPath and cfsslSignPath are cfssl's API endpoints.
	cfsslInfoPath = "/api/v1/cfssl/info"
	cfsslSignPath = "/api/v1/cfssl/sign"
)

// requireCFSSL returns the path of the cfssl binary: the one on $PATH, or
// else $GOPATH/bin/cfssl (~/go/bin/cfssl when GOPATH is unset). When there
// is none it fails the test under CI (which must never skip these tests)
// and skips it elsewhere, saying how to install it.
func requireCFSSL(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("cfssl"); err == nil {
		return p
	}
	var candidates []string
	if gp := os.Getenv("GOPATH"); gp != "" {
		for _, dir := range filepath.SplitList(gp) {
			candidates = append(candidates, filepath.Join(dir, "bin", "cfssl"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(home, "go", "bin", "cfssl"))
	}
	for _, p := range candidates {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	msg := fmt.Sprintf("cfssl not found on $PATH nor at %s; install it with: %s", strings.Join(candidates, ", "), cfsslInstall)
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set: these tests must not be skipped)")
	}
	t.Skip(msg)
	return ""
}

// cfsslOptions configures startCFSSL.
type cfsslOptions struct {
	// CA is the CA cfssl signs with. Zero: a root generated with
	// ca.GenerateRoot(rand.Reader, time.Now(), "external-ca"). When
	// CA.Chain is non-empty, CA.Cert is an intermediate; only CA.Cert is
	// given to cfssl (its -ca file must hold exactly one certificate).
	CA ca.Material
	// NoCAProfile leaves out the "CA" signing profile. cfssl then falls
	// back to the default profile for "profile":"CA" (see
	// TestCFSSLSignWithoutCAProfileRefuses).
	NoCAProfile bool
	// Expiry of the default profile, as cfssl writes durations (default
	// "2160h").
	Expiry string
	// AuthKey, when set, is the hex key of an auth_keys entry ("type":
	// "standard") that the default and CA profiles require: they sign
	// only through authsign, and cfssl disables its sign endpoint.
	AuthKey string
	// MutualTLS makes cfssl require client certificates issued by CA
	// (-mutual-tls-ca with CA's root); the harness's own client then
	// presents one.
	MutualTLS bool
}

// cfsslCA is a running (or stopped) `cfssl serve`.
type cfsslCA struct {
	URL       string // "https://127.0.0.1:PORT"
	TLSCAFile string // PEM file of the test CA that issued the server's TLS certificate
	TLSCA     []byte // the same PEM
	CA        ca.Material
	// CertFile and KeyFile are cfssl's -ca and -ca-key files.
	CertFile, KeyFile string

	bin             string
	port            int
	dir             string
	configFile      string
	tlsCert, tlsKey string
	mtlsCAFile      string
	opts            cfsslOptions
	log             *cfsslLog
	client          *http.Client
	mu              sync.Mutex // guards cmd and done
	cmd             *exec.Cmd
	done            chan struct{} // closed when cmd has exited
	starts          int
}

// cfsslLog is a goroutine-safe log buffer.
type cfsslLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *cfsslLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *cfsslLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// cfsslSigningConfig returns cfssl's -config JSON for opts.
func cfsslSigningConfig(opts cfsslOptions) ([]byte, error) {
	expiry := opts.Expiry
	if expiry == "" {
		expiry = "2160h"
	}
	type caConstraint struct {
		IsCA       bool `json:"is_ca"`
		MaxPathLen int  `json:"max_path_len"`
	}
	type profile struct {
		Expiry       string        `json:"expiry"`
		Usages       []string      `json:"usages"`
		CAConstraint *caConstraint `json:"ca_constraint,omitempty"`
		AuthKey      string        `json:"auth_key,omitempty"`
	}
	authKey := ""
	if opts.AuthKey != "" {
		authKey = "quorumca"
	}
	profiles := map[string]profile{}
	if !opts.NoCAProfile {
		profiles["CA"] = profile{
			Expiry:       "43800h",
			Usages:       []string{"cert sign", "crl sign"},
			CAConstraint: &caConstraint{IsCA: true, MaxPathLen: 1},
			AuthKey:      authKey,
		}
	}
	cfg := map[string]any{
		"signing": map[string]any{
			"default": profile{
				Expiry:  expiry,
				Usages:  []string{"signing", "key encipherment", "server auth", "client auth"},
				AuthKey: authKey,
			},
			"profiles": profiles,
		},
	}
	if authKey != "" {
		cfg["auth_keys"] = map[string]any{authKey: map[string]string{"type": "standard", "key": opts.AuthKey}}
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// startCFSSL starts `cfssl serve` with opts on a port of 127.0.0.1 that the
// kernel picks, and waits until it answers /api/v1/cfssl/info. The process
// is killed when the test ends.
func startCFSSL(t *testing.T, opts cfsslOptions) *cfsslCA {
	t.Helper()
	bin := requireCFSSL(t)
	m := opts.CA
	if len(m.Cert) == 0 {
		var err error
		if m, err = ca.GenerateRoot(rand.Reader, time.Now(), "external-ca"); err != nil {
			t.Fatalf("generate cfssl's CA: %v", err)
		}
	}
	if len(m.Key) == 0 {
		t.Fatal("startCFSSL: cfsslOptions.CA has a certificate but no key")
	}
	dir := t.TempDir()
	c := &cfsslCA{
		CA:         m,
		CertFile:   filepath.Join(dir, "ca.pem"),
		KeyFile:    filepath.Join(dir, "ca-key.pem"),
		TLSCAFile:  filepath.Join(dir, "tls-ca.pem"),
		bin:        bin,
		dir:        dir,
		configFile: filepath.Join(dir, "config.json"),
		tlsCert:    filepath.Join(dir, "tls-cert.pem"),
		tlsKey:     filepath.Join(dir, "tls-key.pem"),
		mtlsCAFile: filepath.Join(dir, "mutual-tls-ca.pem"),
		log:        &cfsslLog{},
	}
	certs, err := ca.ParseCertificates(m.Cert)
	if err != nil {
		t.Fatalf("startCFSSL: CA certificate: %v", err)
	}
	// cfssl's -ca file must hold one PEM object: "the PEM file should
	// contain only one object" otherwise, and the signer is not set up.
	writeTestFile(t, c.CertFile, ca.EncodeCertificates(certs[0]), 0o644)
	writeTestFile(t, c.KeyFile, m.Key, 0o600)
	writeTestFile(t, c.mtlsCAFile, m.Bundle, 0o644)
	tlsCA, certPEM, keyPEM := newTestTLSServerPEM(t)
	c.TLSCA = tlsCA
	writeTestFile(t, c.TLSCAFile, tlsCA, 0o644)
	writeTestFile(t, c.tlsCert, certPEM, 0o644)
	writeTestFile(t, c.tlsKey, keyPEM, 0o600)
	c.Reconfigure(t, func(o *cfsslOptions) { *o = opts })

	t.Cleanup(func() { c.Stop(t) })
	// cfssl binds port 0: the kernel picks a free port and nobody can
	// take it between the pick and the bind; start reads which it got.
	if err := c.start(); err != nil {
		c.Stop(t)
		t.Fatalf("cfssl serve did not start: %v\ncfssl log:\n%s", err, c.Log())
	}
	return c
}

// Start (re)starts cfssl on the same port with the same files, and waits
// until it answers. It stops a running cfssl first.
//
// The port is the one the kernel gave the first start, not one probed
// free: the tests that call Start are about the same CA coming back at the
// URL the cluster has recorded, so it must be that port. Another process
// could bind it while cfssl is down; the restart then fails, saying
// "address already in use" in the log, rather than moving elsewhere.
func (c *cfsslCA) Start(t *testing.T) {
	t.Helper()
	c.Stop(t)
	if err := c.start(); err != nil {
		c.Stop(t)
		t.Fatalf("cfssl serve did not restart on port %d: %v\ncfssl log:\n%s", c.port, err, c.Log())
	}
}

// Reconfigure changes cfssl's options from its next Start (the CA stays
// the one it was started with): its signing configuration, and whether it
// requires client certificates, which the harness's client then presents.
func (c *cfsslCA) Reconfigure(t *testing.T, change func(*cfsslOptions)) {
	t.Helper()
	change(&c.opts)
	cfg, err := cfsslSigningConfig(c.opts)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, c.configFile, cfg, 0o644)
	c.client = testTLSClient(t, c.TLSCA)
	if c.opts.MutualTLS {
		cert := testClientCert(t, c.CA)
		c.client.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{cert}
	}
}

// Stop kills cfssl (SIGKILL) and waits for it to exit. Stopping a stopped
// cfssl does nothing.
func (c *cfsslCA) Stop(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.cmd, c.done = nil, nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return // already exited
	default:
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("kill cfssl (pid %d): %v", cmd.Process.Pid, err)
	}
	select {
	case <-done:
	case <-time.After(cfsslStopTimeout):
		t.Errorf("cfssl (pid %d) did not exit within %s of SIGKILL", cmd.Process.Pid, cfsslStopTimeout)
	}
}

// Log returns what cfssl wrote to stderr (and stdout) so far, over all its
// starts.
func (c *cfsslCA) Log() string { return c.log.String() }

// WaitLog waits (a bounded time) until cfssl's log contains substr: cfssl
// writes through a pipe, so a line may arrive after the response it
// explains.
func (c *cfsslCA) WaitLog(t *testing.T, substr string) {
	t.Helper()
	err := testkit.Poll(5*time.Second, func() error {
		if !strings.Contains(c.Log(), substr) {
			return fmt.Errorf("no %q yet", substr)
		}
		return nil
	})
	if err != nil {
		t.Errorf("cfssl's log does not say %q:\n%s", substr, c.Log())
	}
}

// HTTPClient returns a client that trusts the test CA of cfssl's TLS
// certificate, and presents a client certificate of CA when cfssl
// requires one.
func (c *cfsslCA) HTTPClient() *http.Client { return c.client }

// Port returns the TCP port cfssl listens on.
func (c *cfsslCA) Port() int { return c.port }

// start runs cfssl and waits until it answers info, it exits, or
// cfsslReadyTimeout passes.
func (c *cfsslCA) start() error {
	c.starts++
	if c.port == 0 {
		fmt.Fprintf(c.log, "=== harness: start %d of cfssl serve on 127.0.0.1, port 0 (the kernel picks)\n", c.starts)
	} else {
		fmt.Fprintf(c.log, "=== harness: start %d of cfssl serve on %s\n", c.starts, c.URL)
	}
	args := []string{"serve",
		"-address", "127.0.0.1",
		"-port", strconv.Itoa(c.port),
		"-ca", c.CertFile,
		"-ca-key", c.KeyFile,
		"-config", c.configFile,
		"-tls-cert", c.tlsCert,
		"-tls-key", c.tlsKey,
	}
	if c.opts.MutualTLS {
		args = append(args, "-mutual-tls-ca", c.mtlsCAFile)
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Dir = c.dir
	cmd.Stdout = c.log
	cmd.Stderr = c.log
	cmd.WaitDelay = cfsslStopTimeout
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		fmt.Fprintf(c.log, "=== harness: cfssl (pid %d) exited: %v\n", cmd.Process.Pid, waitErr)
		close(done)
	}()
	c.mu.Lock()
	c.cmd, c.done = cmd, done
	c.mu.Unlock()

	deadline := time.Now().Add(cfsslReadyTimeout)
	var last error
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		select {
		case <-done:
			return fmt.Errorf("cfssl exited before it was ready: %v", waitErr)
		default:
		}
		// cfssl logs the address it was given ("Now listening on
		// https://127.0.0.1:0"), not the port it got: ask the system.
		if c.port == 0 {
			switch port, err := listeningPort(cmd.Process.Pid); {
			case err != nil:
				last = err
			case port == 0:
				last = errors.New("not listening yet")
			default:
				c.port = port
				c.URL = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
				fmt.Fprintf(c.log, "=== harness: cfssl (pid %d) listens on %s\n", cmd.Process.Pid, c.URL)
			}
		}
		if c.port != 0 {
			if last = c.ready(); last == nil {
				return nil
			}
		}
		// The info endpoint is only registered when cfssl's signer loads:
		// waiting longer would not help.
		if log := c.Log(); strings.Contains(log, "endpoint 'info' is disabled") || strings.Contains(log, "couldn't initialize signer") {
			return fmt.Errorf("cfssl's signer did not load: %v", last)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %v", cfsslReadyTimeout, last)
		}
		select {
		case <-done:
		case <-time.After(wait):
		}
	}
}

// listeningPort returns the TCP port on which process pid listens, or 0
// while it listens on none. It reads /proc on Linux (the sockets of the
// process's file descriptors, in its network namespace's TCP table), and
// asks lsof elsewhere.
func listeningPort(pid int) (int, error) {
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(fdDir)
	if runtime.GOOS != "linux" && errors.Is(err, fs.ErrNotExist) {
		return lsofListeningPort(pid)
	}
	if err != nil {
		return 0, err
	}
	sockets := map[string]bool{} // inode numbers
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue // closed since ReadDir
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok {
			sockets[strings.TrimSuffix(inode, "]")] = true
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "net", table))
		if table == "tcp6" && errors.Is(err, fs.ErrNotExist) {
			break // no IPv6
		}
		if err != nil {
			return 0, err
		}
		// "sl local_address rem_address st ... uid timeout inode ...",
		// addresses as HEXADDR:HEXPORT, state 0A for LISTEN.
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !sockets[f[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			port, err := strconv.ParseUint(hexPort, 16, 16)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/net/%s: local address %q: %w", pid, table, f[1], err)
			}
			return int(port), nil
		}
	}
	return 0, nil
}

// lsofListeningPort is listeningPort through lsof, for systems without
// /proc.
func lsofListeningPort(pid int) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "lsof", "-nP", "-a", "-p", strconv.Itoa(pid), "-iTCP", "-sTCP:LISTEN", "-Fn").Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && len(out) == 0 {
		return 0, nil // lsof exits 1 when it finds nothing
	}
	if err != nil {
		return 0, fmt.Errorf("lsof (to find the port cfssl got): %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if addr, ok := strings.CutPrefix(line, "n"); ok {
			_, p, err := net.SplitHostPort(addr)
			if err != nil {
				return 0, fmt.Errorf("lsof: %q: %w", line, err)
			}
			return strconv.Atoi(p)
		}
	}
	return 0, nil
}

// ready checks that cfssl answers info with success.
func (c *cfsslCA) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+cfsslInfoPath, strings.NewReader(`{"label":"","profile":""}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var r struct {
		Success bool `json:"success"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &r) != nil || !r.Success {
		return fmt.Errorf("info: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}

func writeTestFile(t testing.TB, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
}

// newTestTLSServerPEM makes a throwaway TLS CA (ECDSA P-256) and a server
// certificate it issues for 127.0.0.1 and localhost (serverAuth), valid from
// an hour ago for a day. It returns the CA certificate, the server
// certificate and the server's PKCS#8 key, all PEM.
func newTestTLSServerPEM(t testing.TB) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          testSerial(t),
		Subject:               pkix.Name{CommonName: "quorumca test TLS CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          testSerial(t),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err = ca.MarshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return caPEM, certPEM, keyPEM
}

// newTestTLSServerCert is newTestTLSServerPEM as a tls.Certificate, for
// in-process HTTPS servers.
func newTestTLSServerCert(t testing.TB) (caPEM []byte, cert tls.Certificate) {
	t.Helper()
	caPEM, certPEM, keyPEM := newTestTLSServerPEM(t)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return caPEM, cert
}

// testTLSClient returns an HTTPS client that trusts only caPEM.
func testTLSClient(t testing.TB, caPEM []byte) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("testTLSClient: no certificate in the CA PEM")
	}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true, // no idle connections outlive a test
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// testClientCert returns a worker certificate of a cluster of its own,
// signed by m: a TLS client certificate (clientAuth) of the CA m.
func testClientCert(t testing.TB, m ca.Material) tls.Certificate {
	t.Helper()
	signer, err := ca.NewSigner(m)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	nodeID, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	clusterID, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := signer.SignKey(rand.Reader, time.Now(), key.Public(), ca.Identity{NodeID: nodeID, Role: ca.RoleWorker, ClusterID: clusterID}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(issued.PEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func testSerial(t testing.TB) *big.Int {
	t.Helper()
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	return s.Add(s, big.NewInt(1))
}

// startFakeCA serves h over HTTPS (TLS 1.2 or later) on 127.0.0.1 with a
// certificate of a fresh test TLS CA, until the test ends. It returns the
// server's URL ("https://127.0.0.1:PORT") and a PEM file of the TLS CA.
func startFakeCA(t *testing.T, h http.Handler) (url, tlsCAFile string) {
	t.Helper()
	caPEM, cert := newTestTLSServerCert(t)
	tlsCAFile = filepath.Join(t.TempDir(), "fake-ca-tls.pem")
	writeTestFile(t, tlsCAFile, caPEM, 0o644)
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL, tlsCAFile
}
