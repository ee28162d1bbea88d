package integration

// The Go package for programs on a node (nodetls), used as such programs
// use it: a server on w0's files and a client on w1's, each a process of
// its own (this test binary, run again), talking while the cluster renews,
// revokes and rotates under them.

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/nodetls"
)

// nodeTLSEnv makes this test binary a nodetls server ("server DIR") or
// client ("client DIR ADDR") until its standard input closes.
const nodeTLSEnv = "QUORUMCA_TEST_NODETLS"

const nodeTLSPoll = 20 * time.Millisecond

// nodeTLSHelper runs what nodeTLSEnv says.
func nodeTLSHelper(spec string) int {
	args := strings.Fields(spec)
	files, err := nodetls.Open(args[1], nodetls.WithInterval(nodeTLSPoll))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer files.Close()
	stdinClosed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	switch args[0] {
	case "server":
		return nodeTLSServe(files, stdinClosed)
	case "client":
		return nodeTLSAsk(files, args[2], stdinClosed)
	}
	return 2
}

// nodeTLSServe answers each line with "hello <client's node ID>".
func nodeTLSServe(files *nodetls.Files, stop <-chan struct{}) int {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", files.ServerConfig())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println(ln.Addr())
	go func() {
		<-stop
		ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return 0
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			tc := conn.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				return
			}
			if _, err := bufio.NewReader(tc).ReadString('\n'); err != nil {
				return
			}
			fmt.Fprintf(tc, "hello %s\n", tc.ConnectionState().PeerCertificates[0].Subject.CommonName)
		}()
	}
}

// nodeTLSAsk asks addr, a swarm-worker, every few milliseconds on a new
// connection, and prints "ok SERIAL" (the server's certificate) or
// "fail ERROR" for each.
func nodeTLSAsk(files *nodetls.Files, addr string, stop <-chan struct{}) int {
	for {
		select {
		case <-stop:
			return 0
		case <-time.After(nodeTLSPoll):
		}
		var served string
		cfg := files.ClientConfig("swarm-worker")
		check := cfg.VerifyConnection
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			served = cs.PeerCertificates[0].SerialNumber.Text(16)
			return check(cs)
		}
		if err := nodeTLSRequest(addr, cfg); err != nil {
			fmt.Printf("fail %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Printf("ok %s\n", served)
		}
	}
}

// nodeTLSRequest sends one line to addr and reads the greeting.
func nodeTLSRequest(addr string, cfg *tls.Config) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "hello ") {
		return fmt.Errorf("the server said %q", line)
	}
	return nil
}

// helperProc is a running nodetls helper process.
type helperProc struct {
	stdin io.WriteCloser
	lines chan string
	done  chan struct{} // closed when the process has exited, with err
	err   error
}

func startNodeTLSHelper(t *testing.T, spec string) *helperProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeTLSEnv+"="+spec)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &helperProc{stdin: stdin, lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			stdin.Close()
			select {
			case <-p.done:
			case <-time.After(testkit.Wait):
				cmd.Process.Kill()
			}
		})
	}
	t.Cleanup(stop)
	return p
}

// TestNodeTLSProcessesFollowTheCluster: a server on w0's files and a
// client on w1's, in processes of their own, keep talking, every request
// on a new connection, across renewals of both, a revocation and a whole
// root rotation; the client sees the server's renewed certificates. The
// server refuses w1's earlier certificate once it is revoked.
func TestNodeTLSProcessesFollowTheCluster(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 2})
	w0, w1 := c.Workers[0], c.Workers[1]
	waitCRL(t, w0)
	waitCRL(t, w1)

	server := startNodeTLSHelper(t, "server "+agent.CertDir(w0.Dir))
	var addr string
	select {
	case addr = <-server.lines:
	case <-time.After(testkit.Wait):
		t.Fatal("the server process did not say where it listens")
	}
	client := startNodeTLSHelper(t, "client "+agent.CertDir(w1.Dir)+" "+addr)
	var served atomic.Value
	var oks, fails atomic.Int64
	var firstFail atomic.Value
	go func() {
		for line := range client.lines {
			if s, ok := strings.CutPrefix(line, "ok "); ok {
				served.Store(s)
				oks.Add(1)
			} else {
				fails.Add(1)
				firstFail.CompareAndSwap(nil, line)
			}
		}
	}()
	serves := func(what string, want func() string) {
		t.Helper()
		testkit.Eventually(t, "the client is answered by "+what, func() error {
			if s, _ := served.Load().(string); s != want() {
				return fmt.Errorf("the server presented %q, w0 holds %s", s, want())
			}
			return nil
		})
	}
	w0Serial := func() string { return serialOf(t, readNodeFiles(t, w0).cert) }
	serves("w0's certificate", w0Serial)

	// Renewals of both.
	old := readNodeFiles(t, w1)
	before := w0Serial()
	w0.Renewer().RenewSoon()
	w1.Renewer().RenewSoon()
	testkit.Eventually(t, "w0 and w1 renewed", testkit.True(func() bool {
		return w0Serial() != before && serialOf(t, readNodeFiles(t, w1).cert) != serialOf(t, old.cert)
	}))
	serves("w0's renewed certificate", w0Serial)

	// A CRL change: w1's earlier certificate, revoked, is refused.
	if _, err := c.Ctl().RevokeCertificate(testkit.Ctx(t), &api.RevokeCertificateRequest{Serial: serialOf(t, old.cert), Reason: ca.ReasonKeyCompromise}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the server refuses w1's revoked certificate", func() error {
		if err := nodeTLSRequest(addr, frozen(t, old)); err == nil {
			return errors.New("it was answered")
		}
		return nil
	})

	// A whole rotation.
	root := c.Rotate()
	c.WaitRotation(root, true)
	testkit.Eventually(t, "w0 holds the new root", testkit.True(func() bool { return ca.BundleFingerprint(readNodeFiles(t, w0).bundle) == root }))
	serves("w0's certificate of the new root", w0Serial)
	n := oks.Load()
	testkit.Eventually(t, "more requests after the rotation", testkit.True(func() bool { return oks.Load() > n+5 }))

	if err := client.stdin.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-client.done:
		if client.err != nil {
			t.Errorf("the client process: %v", client.err)
		}
	case <-time.After(testkit.Wait):
		t.Fatal("the client process did not stop")
	}
	t.Logf("%d requests answered, %d failed", oks.Load(), fails.Load())
	if fails.Load() > 0 {
		t.Errorf("%d requests of the following client failed; the first: %v", fails.Load(), firstFail.Load())
	}
}
