package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/quorumca/quorumca/ca"
)

// ManagerName is the DNS name every manager certificate carries (its role);
// clients verify managers against it, whatever address they dialled.
const ManagerName = string(ca.RoleManager)

// PeerCheck decides whether a verified peer may connect, from the identity
// its certificate leaf names; the daemon refuses removed nodes and revoked
// admin certificates with it. It is called during the handshake.
type PeerCheck func(id ca.Identity, leaf *x509.Certificate) error

// ServerTLS returns a server configuration that always presents the current
// certificate and verifies client certificates against the current trust
// bundle, then runs checks on the verified identity. clientAuth is
// tls.RequireAndVerifyClientCert for node-to-node links,
// tls.VerifyClientCertIfGiven for the API (joining nodes have no
// certificate yet).
func (c *Credentials) ServerTLS(clientAuth tls.ClientAuthType, checks ...PeerCheck) *tls.Config {
	base := ca.HardenTLS(&tls.Config{})
	verify := func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) == 0 {
			return nil
		}
		leaf := cs.VerifiedChains[0][0]
		id, err := ca.IdentityOf(leaf)
		if err != nil {
			return err
		}
		for _, check := range checks {
			if err := check(id, leaf); err != nil {
				return err
			}
		}
		return nil
	}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return ca.HardenTLS(&tls.Config{
			Certificates:     []tls.Certificate{*c.Certificate()},
			ClientAuth:       clientAuth,
			ClientCAs:        c.Roots(),
			VerifyConnection: verify,
		}), nil
	}
	return base
}

// ClientTLS returns a client configuration that presents the current
// certificate and accepts only a server whose certificate chains to the
// current trust bundle and names serverName (ManagerName to reach a
// manager).
func (c *Credentials) ClientTLS(serverName string) *tls.Config {
	return ca.HardenTLS(&tls.Config{
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.Certificate(), nil
		},
		// Verification is done by VerifyConnection against the bundle as it
		// is at handshake time, which a root rotation changes; the static
		// RootCAs field could not follow it.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			roots, own := c.verifyMaterial()
			return VerifyServer(cs, roots, serverName, own...)
		},
	})
}

// verifyMaterial returns the trust bundle and this node's own
// intermediates. A node that renewed during a root rotation holds the new
// root cross-signed by the old one: with it, the node still verifies
// managers whose certificates the new root alone signs, should it miss
// the heartbeat that brings the new bundle.
func (c *Credentials) verifyMaterial() (*x509.CertPool, []*x509.Certificate) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var own []*x509.Certificate
	if len(c.chain) > 1 {
		own = c.chain[1:]
	}
	return c.roots, own
}

// ErrNoPeerCertificate is returned by VerifyServer when the server showed
// no certificate.
var ErrNoPeerCertificate = errors.New("agent: server presented no certificate")

// VerifyServer checks the server's certificate chain of a TLS connection
// against roots for serverAuth and serverName, as crypto/tls would. extra
// intermediates, beside those the server sent, may complete the chain.
func VerifyServer(cs tls.ConnectionState, roots *x509.CertPool, serverName string, extra ...*x509.Certificate) error {
	if len(cs.PeerCertificates) == 0 {
		return ErrNoPeerCertificate
	}
	inter := x509.NewCertPool()
	for _, cert := range cs.PeerCertificates[1:] {
		inter.AddCert(cert)
	}
	for _, cert := range extra {
		inter.AddCert(cert)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       serverName,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("agent: server certificate not trusted: %w", err)
	}
	return nil
}

// BundleClientTLS returns a client configuration with no certificate that
// trusts bundle: what a joining node uses once it has checked the bundle
// against its token.
func BundleClientTLS(roots *x509.CertPool, serverName string) *tls.Config {
	return ca.HardenTLS(&tls.Config{
		RootCAs:    roots,
		ServerName: serverName,
	})
}
