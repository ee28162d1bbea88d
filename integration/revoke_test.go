package integration

// Revocation: what the managers refuse, and the CRLs every node keeps for
// the programs that use its certificates (checked with the real openssl).

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
)

// nodeFiles is a copy of what a node keeps in certificates/.
type nodeFiles struct {
	key, cert, bundle, crl []byte
}

func readNodeFiles(t *testing.T, n *clustertest.Node) nodeFiles {
	t.Helper()
	dir := agent.CertDir(n.Dir)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil && name != agent.CRLFile {
			t.Fatal(err)
		}
		return b
	}
	return nodeFiles{read(agent.KeyFile), read(agent.CertFile), read(agent.BundleFile), read(agent.CRLFile)}
}

// serialOf returns the serial (hex) of a PEM chain's leaf.
func serialOf(t *testing.T, chainPEM []byte) string {
	t.Helper()
	certs, err := ca.ParseCertificates(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].SerialNumber.Text(16)
}

// crlLists reports whether every CRL in crlPEM that names issuer lists
// serial, and that there is one.
func crlLists(t *testing.T, crlPEM []byte, serial string) bool {
	t.Helper()
	crls, err := ca.ParseCRLs(crlPEM)
	if err != nil || len(crls) == 0 {
		return false
	}
	want, _ := new(big.Int).SetString(serial, 16)
	for _, crl := range crls {
		if !slices.ContainsFunc(crl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(want) == 0 }) {
			return false
		}
	}
	return true
}

// opensslCRLVerify runs openssl verify with -crl_check_all on a chain
// (leaf first) under bundle and the CRLs; it returns whether openssl
// accepted it, and its output.
func opensslCRLVerify(t *testing.T, bundle, chain, crls []byte) (bool, string) {
	t.Helper()
	bin := requireOpenSSL(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-crl_check_all", "-CAfile", write("ca.pem", bundle), "-CRLfile", write("crl.pem", crls)}
	if certs, _ := ca.ParseCertificates(chain); len(certs) > 1 {
		args = append(args, "-untrusted", write("chain.pem", ca.EncodeCertificates(certs[1:]...)))
	}
	out, err := exec.CommandContext(t.Context(), bin, append(args, write("leaf.pem", chain))...).CombinedOutput()
	return err == nil && strings.Contains(string(out), "leaf.pem: OK"), string(out)
}

// heartbeatWith makes one heartbeat to the leader with the given key and
// certificate, as a node that kept them would.
func heartbeatWith(t *testing.T, c *clustertest.Cluster, f nodeFiles) error {
	t.Helper()
	pair, err := tls.X509KeyPair(f.cert, f.key)
	if err != nil {
		t.Fatal(err)
	}
	conn := c.Dial(c.Leader().Manager().Addr(), &tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: c.Roots(), ServerName: agent.ManagerName,
	})
	_, err = api.NewCAClient(conn).Heartbeat(testkit.Ctx(t), &api.HeartbeatRequest{})
	return err
}

// TestRevokedCertificatesRefusedAndListed: a worker's earlier
// certificate, revoked by serial (a leaked old key), is refused by the
// managers and listed in every node's crl.pem, where openssl
// -crl_check_all refuses it and still accepts the current one. Revoking a
// node's current certificate makes it renew with a fresh key. Removing a
// node lists every certificate it had.
func TestRevokedCertificatesRefusedAndListed(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3, Workers: 2})
	w0, w1 := c.Workers[0], c.Workers[1]
	testkit.Eventually(t, "every node holds a CRL set", func() error {
		for _, n := range c.Nodes() {
			if len(readNodeFiles(t, n).crl) == 0 {
				return fmt.Errorf("%s has no crl.pem", n.Name)
			}
		}
		return nil
	})
	old := readNodeFiles(t, w0)
	oldSerial := serialOf(t, old.cert)
	if err := heartbeatWith(t, c, old); err != nil {
		t.Fatalf("heartbeat with w0's certificate before it was revoked = %v", err)
	}
	w0.Renewer().RenewSoon()
	testkit.Eventually(t, "w0 renewed", testkit.True(func() bool { return serialOf(t, readNodeFiles(t, w0).cert) != oldSerial }))

	// A leaked old key: revoke the earlier certificate, with openssl's
	// spelling of its serial.
	resp, err := c.Ctl().RevokeCertificate(testkit.Ctx(t), &api.RevokeCertificateRequest{Serial: strings.ToUpper(oldSerial), Reason: ca.ReasonKeyCompromise})
	if err != nil || resp.GetKind() != "node" || resp.GetId() != w0.ID() || resp.GetCurrent() {
		t.Fatalf("RevokeCertificate(w0's earlier certificate) = %+v, %v", resp, err)
	}
	if err := heartbeatWith(t, c, old); status.Code(err) != codes.Unavailable && status.Code(err) != codes.PermissionDenied {
		t.Errorf("heartbeat with the revoked certificate = %v, want it refused", err)
	}
	testkit.Eventually(t, "every node's crl.pem lists the revoked serial", func() error {
		for _, n := range c.Nodes() {
			if !crlLists(t, readNodeFiles(t, n).crl, oldSerial) {
				return fmt.Errorf("%s's crl.pem does not list %s", n.Name, oldSerial)
			}
		}
		return nil
	})
	now := readNodeFiles(t, w1)
	if ok, out := opensslCRLVerify(t, now.bundle, old.cert, now.crl); ok {
		t.Errorf("openssl -crl_check_all accepted the revoked certificate:\n%s", out)
	} else if !strings.Contains(out, "revoked") {
		t.Errorf("openssl refused the revoked certificate for another reason:\n%s", out)
	}
	if ok, out := opensslCRLVerify(t, now.bundle, readNodeFiles(t, w0).cert, now.crl); !ok {
		t.Errorf("openssl -crl_check_all refused w0's current certificate:\n%s", out)
	}
	if ok, out := opensslCRLVerify(t, now.bundle, now.cert, now.crl); !ok {
		t.Errorf("openssl -crl_check_all refused w1's certificate:\n%s", out)
	}

	// Revoking w1's current certificate makes it renew, with a fresh key.
	before := readNodeFiles(t, w1)
	resp, err = c.Ctl().RevokeCertificate(testkit.Ctx(t), &api.RevokeCertificateRequest{Serial: serialOf(t, before.cert)})
	if err != nil || !resp.GetCurrent() {
		t.Fatalf("RevokeCertificate(w1's current certificate) = %+v, %v", resp, err)
	}
	testkit.Eventually(t, "w1 renewed with a fresh key", func() error {
		now := readNodeFiles(t, w1)
		if serialOf(t, now.cert) == serialOf(t, before.cert) || bytes.Equal(now.key, before.key) {
			return fmt.Errorf("w1 holds the revoked certificate or key")
		}
		return nil
	})

	// Removing w0 revokes every certificate it had.
	if _, err := c.Ctl().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: w0.ID(), Force: true}); err != nil {
		t.Fatal(err)
	}
	current := serialOf(t, readNodeFiles(t, w0).cert)
	testkit.Eventually(t, "w1's crl.pem lists the removed node's certificate", func() error {
		if !crlLists(t, readNodeFiles(t, w1).crl, current) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}

// TestCRLsThroughARotation: while a rotation runs, the CRL set holds a CRL
// of the new CA and one of the old root (which issued the cross-signed
// certificate the new leaves carry), so that openssl -crl_check_all
// accepts the renewed nodes' chains under the old bundle, and refuses a
// certificate revoked meanwhile; once it completes, one CRL of the new CA
// remains, and the chains verify under the new root.
func TestCRLsThroughARotation(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 2, Grace: testkit.Wait})
	w0, w1 := c.Workers[0], c.Workers[1]
	held := c.HoldRotation()
	root := c.Rotate()
	var files nodeFiles
	testkit.Eventually(t, "the workers renewed under the new CA, and hold two CRLs", func() error {
		for _, w := range []*clustertest.Node{w0, w1} {
			if !w.Credentials().Issuer().Equal(c.Leader().Manager().State().CAStatus) {
				return fmt.Errorf("%s has not renewed", w.Name)
			}
		}
		files = readNodeFiles(t, w1)
		if crls, err := ca.ParseCRLs(files.crl); err != nil || len(crls) != 2 {
			return fmt.Errorf("w1's crl.pem holds %d CRLs (%v)", len(crls), err)
		}
		return nil
	})
	if ok, out := opensslCRLVerify(t, files.bundle, files.cert, files.crl); !ok {
		t.Errorf("openssl -crl_check_all refused a renewed chain under the old bundle during the rotation:\n%s", out)
	}
	revoked := readNodeFiles(t, w0)
	if _, err := c.Ctl().RevokeCertificate(testkit.Ctx(t), &api.RevokeCertificateRequest{Serial: serialOf(t, revoked.cert)}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "w1's CRLs list w0's revoked certificate", func() error {
		files = readNodeFiles(t, w1)
		if !crlLists(t, files.crl, serialOf(t, revoked.cert)) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if ok, out := opensslCRLVerify(t, files.bundle, revoked.cert, files.crl); ok || !strings.Contains(out, "revoked") {
		t.Errorf("openssl -crl_check_all on the certificate revoked during the rotation: accepted %v\n%s", ok, out)
	}

	if _, err := c.Ctl().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: held.Credentials.Identity().NodeID, Force: true}); err != nil {
		t.Fatal(err)
	}
	c.WaitRotation(root, true)
	testkit.Eventually(t, "w1 holds the new root and one CRL", func() error {
		files = readNodeFiles(t, w1)
		if crls, err := ca.ParseCRLs(files.crl); err != nil || len(crls) != 1 {
			return fmt.Errorf("w1's crl.pem holds %d CRLs (%v)", len(crls), err)
		}
		if ca.BundleFingerprint(files.bundle) != root {
			return fmt.Errorf("w1 holds another bundle")
		}
		return nil
	})
	if ok, out := opensslCRLVerify(t, files.bundle, files.cert, files.crl); !ok {
		t.Errorf("openssl -crl_check_all refused w1's chain under the new root after the rotation:\n%s", out)
	}
}
