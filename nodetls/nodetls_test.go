package nodetls_test

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/nodetls"
)

// writeNode writes a node's certificate files into dir, as quorumca does.
func writeNode(t *testing.T, dir string, c *testkit.CA, leaf testkit.Leaf, crl []byte) {
	t.Helper()
	files := map[string][]byte{nodetls.CertFile: leaf.CertPEM, nodetls.KeyFile: leaf.KeyPEM, nodetls.BundleFile: c.Bundle()}
	if crl != nil {
		files[nodetls.CRLFile] = crl
	}
	for name, b := range files {
		writeFile(t, dir, name, b)
	}
}

// writeFile replaces dir/name with b atomically.
func writeFile(t *testing.T, dir, name string, b []byte) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name)
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func open(t *testing.T, dir string) *nodetls.Files {
	t.Helper()
	f, err := nodetls.Open(dir, nodetls.WithInterval(10*time.Millisecond))
	if err != nil {
		t.Fatalf("Open(%s) = %v", dir, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// handshake runs a TLS handshake between server and client configs over
// a pipe and returns the client's error and the server's.
func handshake(server, client *tls.Config) (error, error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	deadline := time.Now().Add(10 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	srvErr := make(chan error, 1)
	go func() { srvErr <- tls.Server(a, server).Handshake() }()
	cl := tls.Client(b, client)
	cliErr := cl.Handshake()
	if cliErr != nil {
		a.Close()
	} else {
		// Under TLS 1.3 the server judges the client's certificate after
		// the client is done: read what it sends (an alert) so that it can.
		go cl.Read(make([]byte, 1))
	}
	return cliErr, <-srvErr
}

// crlOf signs, with c's root, a CRL numbered n listing serials.
func crlOf(t *testing.T, c *testkit.CA, n uint64, serials ...string) []byte {
	t.Helper()
	var entries []ca.Revoked
	for _, s := range serials {
		entries = append(entries, ca.Revoked{Serial: s, At: time.Now(), Reason: ca.ReasonKeyCompromise})
	}
	pem, err := ca.SignCRL(rand.Reader, ca.CRLIssuer{Cert: c.Cert, Key: c.KeyPEM(t)}, n, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), entries)
	if err != nil {
		t.Fatal(err)
	}
	return pem
}

// TestFilesFollowTheNode: a server and a client made from two nodes'
// directories admit each other; they follow a renewal and a new CRL
// without being made anew; a revoked client and a node of another cluster
// are refused.
func TestFilesFollowTheNode(t *testing.T) {
	c := testkit.NewCA(t)
	srvDir, cliDir := t.TempDir(), t.TempDir()
	srvLeaf, cliLeaf := c.Issue(t, ca.RoleWorker), c.Issue(t, ca.RoleWorker)
	writeNode(t, srvDir, c, srvLeaf, crlOf(t, c, 1))
	writeNode(t, cliDir, c, cliLeaf, crlOf(t, c, 1))
	srv, cli := open(t, srvDir), open(t, cliDir)
	if id := cli.Identity(); id.NodeID != cliLeaf.ID.NodeID || id.ClusterID != c.ClusterID || id.Role != string(ca.RoleWorker) {
		t.Errorf("Identity() = %+v, want the client's", id)
	}
	if cerr, serr := handshake(srv.ServerConfig(), cli.ClientConfig("swarm-worker")); cerr != nil || serr != nil {
		t.Fatalf("handshake = %v, %v; want both sides to admit the other", cerr, serr)
	}
	if cerr, _ := handshake(srv.ServerConfig(), cli.ClientConfig("swarm-manager")); cerr == nil {
		t.Errorf("a client that wants a manager accepted a worker's certificate")
	}

	// A renewal of the server: the client sees the new certificate.
	renewed := c.IssueFor(t, srvLeaf.ID)
	writeNode(t, srvDir, c, renewed, crlOf(t, c, 1))
	// The files change one by one: a reading may come between them, so
	// wait for the renewed certificate itself, not for any new reading.
	testkit.Eventually(t, "the server takes its renewed certificate", testkit.True(func() bool {
		return srv.Certificate().Leaf.SerialNumber.Cmp(renewed.Serial) == 0
	}))
	cfg := cli.ClientConfig("")
	var seen string
	cfg.VerifyConnection = wrapSeen(cfg.VerifyConnection, &seen)
	if cerr, serr := handshake(srv.ServerConfig(), cfg); cerr != nil || serr != nil || seen != renewed.Serial.Text(16) {
		t.Fatalf("after the renewal: handshake = %v, %v, server presented %s; want the renewed %s", cerr, serr, seen, renewed.Serial.Text(16))
	}

	// A CRL that lists the client's certificate: the server refuses it,
	// once it has read the new CRL.
	writeFile(t, srvDir, nodetls.CRLFile, crlOf(t, c, 2, cliLeaf.Serial.Text(16)))
	testkit.Eventually(t, "the server refuses the revoked client", func() error {
		if _, serr := handshake(srv.ServerConfig(), cli.ClientConfig("")); !errors.Is(serr, nodetls.ErrRevoked) {
			return fmt.Errorf("server says %v, want ErrRevoked", serr)
		}
		return nil
	})

	// A node of another cluster is no node of this one.
	other := testkit.NewCA(t)
	otherDir := t.TempDir()
	writeNode(t, otherDir, other, other.Issue(t, ca.RoleWorker), nil)
	foreign := open(t, otherDir)
	if _, serr := handshake(srv.ServerConfig(), foreign.ClientConfig("")); serr == nil {
		t.Errorf("the server admitted a node of another cluster")
	}
}

func wrapSeen(next func(tls.ConnectionState) error, seen *string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		*seen = cs.PeerCertificates[0].SerialNumber.Text(16)
		return next(cs)
	}
}

// TestFilesMidRenewal: a key and certificate read between the two renames
// of a renewal do not match: the reading is passed over, and the files in
// use stay the last good ones until the pair matches again.
func TestFilesMidRenewal(t *testing.T) {
	c := testkit.NewCA(t)
	dir := t.TempDir()
	leaf := c.Issue(t, ca.RoleWorker)
	writeNode(t, dir, c, leaf, nil)
	f := open(t, dir)
	next := c.IssueFor(t, leaf.ID)
	if err := os.WriteFile(filepath.Join(dir, nodetls.KeyFile), next.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.HoldsFor(t, 100*time.Millisecond, "the last good pair in use", func() error {
		if got := f.Certificate().Leaf.SerialNumber; got.Cmp(leaf.Serial) != 0 {
			return fmt.Errorf("serial %s in use", got.Text(16))
		}
		return nil
	})
	writeNode(t, dir, c, next, nil)
	testkit.Eventually(t, "the renewed pair in use", testkit.True(func() bool { return f.Certificate().Leaf.SerialNumber.Cmp(next.Serial) == 0 }))
	if _, err := nodetls.Open(t.TempDir()); err == nil {
		t.Errorf("Open(an empty directory) = nil error")
	}
}
