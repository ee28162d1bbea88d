package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

func chain(t *testing.T, certPEM []byte) []*x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificates(certPEM)
	if err != nil {
		t.Fatalf("ParseCertificates() = %v", err)
	}
	return certs
}

func TestVerifyServer(t *testing.T) {
	c := testkit.NewCA(t)
	other := testkit.NewCA(t)
	roots, _, err := ca.ParseBundle(c.Bundle())
	if err != nil {
		t.Fatalf("ParseBundle() = %v", err)
	}
	manager := c.Issue(t, ca.RoleManager)
	worker := c.Issue(t, ca.RoleWorker)
	foreign := other.Issue(t, ca.RoleManager)
	tests := []struct {
		name       string
		certs      []*x509.Certificate
		serverName string
		ok         bool
	}{
		{"manager as a manager", chain(t, manager.CertPEM), ManagerName, true},
		{"manager by its node ID", chain(t, manager.CertPEM), manager.ID.NodeID, true},
		{"worker as a manager", chain(t, worker.CertPEM), ManagerName, false},
		{"manager of another cluster", chain(t, foreign.CertPEM), ManagerName, false},
		{"manager under another name", chain(t, manager.CertPEM), "example.com", false},
		{"the root itself", chain(t, c.Bundle()), ManagerName, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyServer(tls.ConnectionState{PeerCertificates: tt.certs}, roots, tt.serverName)
			if (err == nil) != tt.ok {
				t.Errorf("VerifyServer(%s, %q) = %v, want ok %v", tt.name, tt.serverName, err, tt.ok)
			}
		})
	}
	if err := VerifyServer(tls.ConnectionState{}, roots, ManagerName); !errors.Is(err, ErrNoPeerCertificate) {
		t.Errorf("VerifyServer(no certificate) = %v, want %v", err, ErrNoPeerCertificate)
	}
}

// handshake runs one TLS connection on 127.0.0.1 between a server with
// serverCfg and a client with clientCfg: the server completes the
// handshake and sends a byte, the client reads it. It returns the errors
// each side saw, after both sides are done.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	if err != nil {
		t.Fatalf("tls.Listen() = %v", err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := ln.Accept()
		if err != nil {
			serverErr = err
			return
		}
		defer conn.Close()
		conn.SetDeadline(deadline)
		if serverErr = conn.(*tls.Conn).Handshake(); serverErr == nil {
			_, serverErr = conn.Write([]byte{1})
		}
	}()

	dialer := &net.Dialer{Deadline: deadline}
	conn, err := tls.DialWithDialer(dialer, "tcp", ln.Addr().String(), clientCfg)
	if err == nil {
		conn.SetDeadline(deadline)
		// With TLS 1.3 the client finishes its handshake before the server
		// has checked the client's certificate: a refusal shows on read.
		_, err = io.ReadFull(conn, make([]byte, 1))
		conn.Close()
	}
	wg.Wait()
	return serverErr, err
}

var errRefusedPeer = errors.New("test: peer refused")

// TestServerTLSPeerCheck: the checks given to ServerTLS see the verified
// client identity during a real handshake, and refusing it fails the
// handshake.
func TestServerTLSPeerCheck(t *testing.T) {
	c := testkit.NewCA(t)
	server, _ := newCreds(t, c, c.Issue(t, ca.RoleManager))
	client, _ := newCreds(t, c, c.Issue(t, ca.RoleWorker))
	clientID := client.Identity()

	for _, refuse := range []bool{false, true} {
		name := "accepted"
		if refuse {
			name = "refused"
		}
		t.Run(name, func(t *testing.T) {
			var seen []ca.Identity // written during the server's handshake, read after it
			check := func(id ca.Identity, _ *x509.Certificate) error {
				seen = append(seen, id)
				if refuse && id.NodeID == clientID.NodeID {
					return errRefusedPeer
				}
				return nil
			}
			serverErr, clientErr := handshake(t, server.ServerTLS(tls.RequireAndVerifyClientCert, check), client.ClientTLS(ManagerName))
			if len(seen) != 1 || seen[0] != clientID {
				t.Errorf("check saw %v, want once %v", seen, clientID)
			}
			if refuse {
				if !errors.Is(serverErr, errRefusedPeer) {
					t.Errorf("server handshake = %v, want %v", serverErr, errRefusedPeer)
				}
				if clientErr == nil {
					t.Errorf("client handshake and read = nil, want an error")
				}
				return
			}
			if serverErr != nil || clientErr != nil {
				t.Errorf("handshake = server %v, client %v, want nil, nil", serverErr, clientErr)
			}
		})
	}
}

// TestServerTLSRefuses: handshakes a node-to-node listener must refuse.
func TestServerTLSRefuses(t *testing.T) {
	c := testkit.NewCA(t)
	other := testkit.NewCA(t)
	server, _ := newCreds(t, c, c.Issue(t, ca.RoleManager))
	member, _ := newCreds(t, c, c.Issue(t, ca.RoleWorker))
	stranger, _ := newCreds(t, other, other.Issue(t, ca.RoleManager))

	tls11 := member.ClientTLS(ManagerName)
	tls11.MinVersion, tls11.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	noCert := BundleClientTLS(member.Roots(), ManagerName)
	// TLS 1.2 with CBC and SHA-1 suites only: what probing found the Raft
	// port accepted.
	cbc := member.ClientTLS(ManagerName)
	cbc.MaxVersion = tls.VersionTLS12
	cbc.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}

	tests := []struct {
		name   string
		client *tls.Config
	}{
		{"TLS 1.1 client", tls11},
		{"TLS 1.2 client with CBC suites only", cbc},
		{"client without a certificate", noCert},
		{"client of another cluster", stranger.ClientTLS(ManagerName)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			check := func(ca.Identity, *x509.Certificate) error { called = true; return nil }
			serverErr, clientErr := handshake(t, server.ServerTLS(tls.RequireAndVerifyClientCert, check), tt.client)
			if serverErr == nil || clientErr == nil {
				t.Errorf("handshake = server %v, client %v, want both to fail", serverErr, clientErr)
			}
			if called {
				t.Errorf("peer check ran for an unverified client")
			}
		})
	}

	// The API listener lets a joining node in without a certificate.
	t.Run("no certificate on the API listener", func(t *testing.T) {
		serverErr, clientErr := handshake(t, server.ServerTLS(tls.VerifyClientCertIfGiven), noCert)
		if serverErr != nil || clientErr != nil {
			t.Errorf("handshake = server %v, client %v, want nil, nil", serverErr, clientErr)
		}
	})
}

// TestClientTLSRefusesWorkerAsManager: a client reaching for a manager
// refuses a server whose certificate is a worker's, or another cluster's.
func TestClientTLSRefusesWorkerAsManager(t *testing.T) {
	c := testkit.NewCA(t)
	other := testkit.NewCA(t)
	client, _ := newCreds(t, c, c.Issue(t, ca.RoleWorker))
	tests := []struct {
		name   string
		server testkit.Leaf
		ca     *testkit.CA
		ok     bool
	}{
		{"manager", c.Issue(t, ca.RoleManager), c, true},
		{"worker", c.Issue(t, ca.RoleWorker), c, false},
		{"manager of another cluster", other.Issue(t, ca.RoleManager), other, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, _ := newCreds(t, tt.ca, tt.server)
			serverErr, clientErr := handshake(t, server.ServerTLS(tls.VerifyClientCertIfGiven), client.ClientTLS(ManagerName))
			if tt.ok && (serverErr != nil || clientErr != nil) {
				t.Errorf("handshake = server %v, client %v, want nil, nil", serverErr, clientErr)
			}
			if !tt.ok && clientErr == nil {
				t.Errorf("client handshake with a %s = nil, want an error", tt.name)
			}
		})
	}
}

// TestLiveConfigsFollowBundle: configurations made before an Update that
// changes the trust bundle (a root rotation's end) verify peers against
// the new bundle afterwards.
func TestLiveConfigsFollowBundle(t *testing.T) {
	oldCA, newCA := testkit.NewCA(t), testkit.NewCA(t)
	creds, _ := newCreds(t, oldCA, oldCA.Issue(t, ca.RoleManager))
	server := creds.ServerTLS(tls.RequireAndVerifyClientCert)
	client := creds.ClientTLS(ManagerName)

	next := newCA.IssueFor(t, ca.Identity{NodeID: creds.Identity().NodeID, Role: ca.RoleManager, ClusterID: newCA.ClusterID})
	if err := creds.Update(next.KeyPEM, next.CertPEM, newCA.Bundle()); err != nil {
		t.Fatalf("Update(new bundle) = %v", err)
	}

	// A client that does not check the server, presenting a certificate of
	// the old or the new root: the server judges it by the new bundle.
	presenting := func(p testkit.Leaf) *tls.Config {
		cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatalf("X509KeyPair() = %v", err)
		}
		return &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}
	}
	if serverErr, clientErr := handshake(t, server, presenting(newCA.Issue(t, ca.RoleWorker))); serverErr != nil || clientErr != nil {
		t.Errorf("client of the new root: handshake = server %v, client %v, want nil, nil", serverErr, clientErr)
	}
	if serverErr, _ := handshake(t, server, presenting(oldCA.Issue(t, ca.RoleWorker))); serverErr == nil {
		t.Errorf("client of the old root: server handshake = nil, want an error")
	}

	// The client made before the Update trusts managers of the new root
	// and no longer those of the old one.
	newManager, _ := newCreds(t, newCA, newCA.Issue(t, ca.RoleManager))
	oldManager, _ := newCreds(t, oldCA, oldCA.Issue(t, ca.RoleManager))
	if serverErr, clientErr := handshake(t, newManager.ServerTLS(tls.VerifyClientCertIfGiven), client); serverErr != nil || clientErr != nil {
		t.Errorf("manager of the new root: handshake = server %v, client %v, want nil, nil", serverErr, clientErr)
	}
	if _, clientErr := handshake(t, oldManager.ServerTLS(tls.VerifyClientCertIfGiven), client); clientErr == nil {
		t.Errorf("manager of the old root: client handshake = nil, want an error")
	}
}
