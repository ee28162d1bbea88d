package manager

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/cfssl"
	"github.com/quorumca/quorumca/fsm"
)

// signNode issues a node certificate for the key of csr (pub, already
// taken from it), naming id: with the cluster's own key, or through its
// external CAs when it holds none. Nothing is recorded here; the caller
// commits the certificate only once it has it whole.
func (m *Manager) signNode(ctx context.Context, st *fsm.State, csr []byte, pub crypto.PublicKey, id ca.Identity, validity time.Duration) (ca.Issued, ca.TLSStatus, error) {
	if st.Signs() {
		signer, status, err := m.signers.get(st.CA)
		if err != nil {
			return ca.Issued{}, ca.TLSStatus{}, err
		}
		issued, err := signer.SignKey(m.cfg.Rand, m.cfg.Now(), pub, id, validity)
		return issued, status, err
	}
	return m.signExternal(ctx, st.CA, st.External, csr, pub, id)
}

// signExternal has the cluster's external CAs sign csr.
func (m *Manager) signExternal(ctx context.Context, material ca.Material, cas []fsm.ExternalCA, csr []byte, pub crypto.PublicKey, id ca.Identity) (ca.Issued, ca.TLSStatus, error) {
	client, err := m.externalClient(cas)
	if err != nil {
		return ca.Issued{}, ca.TLSStatus{}, err
	}
	return m.signWith(ctx, client, material, csr, pub, id)
}

// signWith has client's external CAs sign csr. The request imposes the
// subject and names the cluster decides; the answer is checked (ca.External)
// before anyone sees it.
func (m *Manager) signWith(ctx context.Context, client *externalCA, material ca.Material, csr []byte, pub crypto.PublicKey, id ca.Identity) (ca.Issued, ca.TLSStatus, error) {
	check, status, err := m.signers.external(material)
	if err != nil {
		return ca.Issued{}, ca.TLSStatus{}, err
	}
	// Send exactly the request that was checked, as PEM.
	csrPEM, err := ca.CheckExternalCSR(csr)
	if err != nil {
		return ca.Issued{}, ca.TLSStatus{}, err
	}
	req := cfssl.SignRequest{
		CSR:     string(csrPEM),
		Subject: &cfssl.Subject{CN: id.NodeID, Names: []cfssl.Name{{O: id.ClusterID, OU: string(id.Role)}}},
	}
	if id.Role != ca.RoleAdmin {
		req.Hosts = []string{string(id.Role), id.NodeID}
	}
	var issued ca.Issued
	if _, err := client.Sign(ctx, req, func(cert []byte) error {
		var err error
		issued, err = check.Check(m.cfg.Now(), cert, pub, id)
		return err
	}); err != nil {
		return ca.Issued{}, ca.TLSStatus{}, fmt.Errorf("sign the certificate of %s %s: %w", id.Role.Short(), id.NodeID, err)
	}
	return issued, status, nil
}

// trialSign has the external CAs cas, before the cluster relies on them,
// sign a certificate for this manager's identity with a throwaway key: a
// CA whose profile cannot make node certificates (usages, expiry) is
// refused before anything is committed.
func (m *Manager) trialSign(ctx context.Context, client *externalCA, material ca.Material, clusterID string) error {
	key, err := ca.GenerateKey(m.cfg.Rand)
	if err != nil {
		return err
	}
	csr, err := ca.NewCSR(m.cfg.Rand, key, "")
	if err != nil {
		return err
	}
	id := ca.Identity{NodeID: m.node.NodeID, Role: ca.RoleManager, ClusterID: clusterID}
	if _, _, err := m.signWith(ctx, client, material, csr, key.Public(), id); err != nil {
		return fmt.Errorf("the external CA cannot issue node certificates: %w", err)
	}
	return nil
}

// clientCertificate returns this manager's certificate, which it presents to
// external CAs that ask for one (mutual TLS), or nil before it has one: the
// first manager calls the CA during init, before it is issued one.
func (m *Manager) clientCertificate() *tls.Certificate {
	if m.creds == nil {
		return nil
	}
	return m.creds.Certificate()
}

// externalClient returns the client of the external CAs cas, made once
// per configuration.
func (m *Manager) externalClient(cas []fsm.ExternalCA) (*externalCA, error) {
	m.extMu.Lock()
	defer m.extMu.Unlock()
	if m.ext != nil && m.ext.same(cas) {
		return m.ext, nil
	}
	c, err := newExternalCA(cas, m.clientCertificate, m.cfg.ExternalTimeout, m.cfg.ExternalSkip, m.cfg.Now, m.metrics.external)
	if err != nil {
		return nil, err
	}
	if m.ext != nil {
		m.ext.close()
	}
	m.ext = c
	return c, nil
}

// signerCache keeps the parsed Signer (or, for an external CA, the parsed
// checker) of the current CA material, so that the PEM is parsed once per
// CA, not once per certificate.
type signerCache struct {
	mu      sync.Mutex // guards the fields below
	cert    string
	chain   string
	signer  *ca.Signer
	checker *ca.External
	status  ca.TLSStatus
}

func (c *signerCache) get(m ca.Material) (*ca.Signer, ca.TLSStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.signer != nil && c.cert == string(m.Cert) && c.chain == string(m.Chain) {
		return c.signer, c.status, nil
	}
	s, err := ca.NewSigner(m)
	if err != nil {
		return nil, ca.TLSStatus{}, err
	}
	c.cert, c.chain, c.signer, c.checker, c.status = string(m.Cert), string(m.Chain), s, nil, ca.StatusOf(s.Certificate())
	return s, c.status, nil
}

func (c *signerCache) external(m ca.Material) (*ca.External, ca.TLSStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checker != nil && c.cert == string(m.Cert) && c.chain == string(m.Chain) {
		return c.checker, c.status, nil
	}
	e, err := ca.NewExternal(m)
	if err != nil {
		return nil, ca.TLSStatus{}, err
	}
	c.cert, c.chain, c.signer, c.checker, c.status = string(m.Cert), string(m.Chain), nil, e, ca.StatusOf(e.Certificate())
	return e, c.status, nil
}

// externalMaterial returns the material of the external CAs cas, after
// asking them which certificate they sign with, checking that they all do,
// and having them sign a trial certificate for clusterID. certPEM is what the
// operator gave with --ca-cert (the signing certificate and its chain up to
// the root), or nil: the CA's own certificate must then be a root.
func (m *Manager) externalMaterial(ctx context.Context, cas []fsm.ExternalCA, certPEM []byte, clusterID string) (ca.Material, error) {
	now := m.cfg.Now()
	var given *ca.Material
	if len(certPEM) > 0 {
		g, err := ca.ImportExternal(certPEM, now)
		if err != nil {
			return ca.Material{}, fmt.Errorf("--ca-cert: %w", err)
		}
		given = &g
	}
	// A list the cluster does not use yet gets a client of its own.
	client, err := newExternalCA(cas, m.clientCertificate, m.cfg.ExternalTimeout, m.cfg.ExternalSkip, m.cfg.Now, m.metrics.external)
	if err != nil {
		return ca.Material{}, err
	}
	defer client.close()
	var material ca.Material
	_, err = client.Info(ctx, func(cert []byte) error {
		signing, err := ca.ParseCertificates(cert)
		if err != nil {
			return fmt.Errorf("its certificate: %w", err)
		}
		if given != nil {
			want, _ := ca.ParseCertificates(given.Cert)
			if !signing[0].Equal(want[0]) {
				return fmt.Errorf("%w: it signs with %s, but --ca-cert begins with %s: give the external CA's own certificate, then its chain up to the root", fsm.ErrBadCommand, signing[0].Subject, want[0].Subject)
			}
			material = *given
			return nil
		}
		mat, err := ca.ImportExternal(cert, now)
		if err != nil {
			return fmt.Errorf("%w: it signs with %s, which is not a root the cluster can trust alone (%w): give its chain up to the root with --ca-cert", fsm.ErrBadCommand, signing[0].Subject, err)
		}
		material = mat
		return nil
	})
	if err != nil {
		return ca.Material{}, fmt.Errorf("ask the external CA for its certificate: %w", err)
	}
	// Every CA of the list must sign with that certificate, and be able to
	// make node certificates: a typo must not become the CA of record.
	if err := m.verifyExternal(ctx, cas, material, clusterID); err != nil {
		return ca.Material{}, err
	}
	return material, nil
}

// crossSignExternal has the cluster's current external CA cross-sign
// newRoot through its CA profile. The request is signed with newKey, the
// new root's key, which is used for nothing else.
func (m *Manager) crossSignExternal(ctx context.Context, st *fsm.State, newRoot *x509.Certificate, newKey crypto.Signer) (*x509.Certificate, error) {
	old, err := ca.ParseCertificates(st.CA.Cert)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(old[0].RawSubject, newRoot.RawSubject) {
		// CFSSL would leave the authority key ID out of the cross-signed
		// certificate, and OpenSSL would take it for self-signed.
		return nil, fmt.Errorf("%w: the new root has the same subject as the current external CA (%s); give the new root another subject", errNotRotatable, newRoot.Subject)
	}
	csr, err := ca.CrossSignRequest(m.cfg.Rand, newRoot, newKey)
	if err != nil {
		return nil, err
	}
	client, err := m.externalClient(st.External)
	if err != nil {
		return nil, err
	}
	var cross *x509.Certificate
	if _, err := client.Sign(ctx, cfssl.SignRequest{CSR: string(csr), Profile: CrossSignProfile}, func(cert []byte) error {
		var err error
		cross, err = ca.CheckCrossSigned(m.cfg.Now(), st.CA, cert, newRoot)
		return err
	}); err != nil {
		return nil, fmt.Errorf("have the current external CA cross-sign the new root (it needs a signing profile named %q with ca_constraint is_ca true): %w", CrossSignProfile, err)
	}
	return cross, nil
}

// CrossSignProfile is the CFSSL signing profile an external CA cross-signs
// a new root with, as SwarmKit names it.
const CrossSignProfile = "CA"

// verifyExternal checks, before the cluster relies on them, that every
// external CA of cas answers, signs with material's certificate, and makes
// a proper node certificate (a trial one, for this manager of clusterID).
func (m *Manager) verifyExternal(ctx context.Context, cas []fsm.ExternalCA, material ca.Material, clusterID string) error {
	want, err := ca.ParseCertificates(material.Cert)
	if err != nil {
		return err
	}
	for _, c := range cas {
		client, err := newExternalCA([]fsm.ExternalCA{c}, m.clientCertificate, m.cfg.ExternalTimeout, m.cfg.ExternalSkip, m.cfg.Now, m.metrics.external)
		if err != nil {
			return err
		}
		_, err = client.Info(ctx, func(cert []byte) error {
			got, err := ca.ParseCertificates(cert)
			if err != nil {
				return err
			}
			if !got[0].Equal(want[0]) {
				return fmt.Errorf("%w: it signs with %s, not with the cluster's CA %s", fsm.ErrBadCommand, got[0].Subject, want[0].Subject)
			}
			return nil
		})
		if err == nil {
			err = m.trialSign(ctx, client, material, clusterID)
		}
		client.close()
		if err != nil {
			return fmt.Errorf("external CA %s: %w", c.URL, err)
		}
	}
	return nil
}

func externalFromAPI(in []*api.ExternalCA) []fsm.ExternalCA {
	var out []fsm.ExternalCA
	for _, e := range in {
		out = append(out, fsm.ExternalCA{Protocol: e.GetProtocol(), URL: e.GetUrl(), CACert: e.GetCaCert(), AuthKey: e.GetAuthKey()})
	}
	return out
}

// authKeySet stands for an auth key in answers, which never carry the key:
// it only says that one is set. Sent back, it is refused as too short.
const authKeySet = "set"

// externalToAPI lists the external CAs in in for an answer: with the auth
// keys replaced by authKeySet.
func externalToAPI(in []fsm.ExternalCA) []*api.ExternalCA {
	var out []*api.ExternalCA
	for _, e := range in {
		a := &api.ExternalCA{Protocol: e.Protocol, Url: e.URL, CaCert: e.CACert}
		if len(e.AuthKey) > 0 {
			a.AuthKey = []byte(authKeySet)
		}
		out = append(out, a)
	}
	return out
}
