package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// Revocation and CRLs. The state records every revoked certificate
// (fsm.Revocation: those of removed nodes, and `quorumca cert revoke`);
// managers refuse them at every handshake (authz). For the programs that
// use the nodes' certificates (nginx, envoy, Go services), the leader
// signs a CRL for every CA key the cluster holds and uses: the signing
// certificate's, and during a rotation the previous root's too, which
// issued the cross-signed certificate the new leaves carry. It replicates
// them as one set (fsm.CRLSet) and signs a new set as soon as the
// revocations or the CA change, and at half of crlValidity; every node
// fetches the set with its heartbeat and keeps it in certificates/crl.pem.
// A cluster that signs through an external CA holds no key and publishes
// no CRL: the external CA's own revocation covers its certificates.

const (
	// crlValidity is how long a CRL set is valid (NextUpdate).
	crlValidity = 7 * 24 * time.Hour
	// crlBackdate allows for consumers' clocks behind the leader's.
	crlBackdate = 5 * time.Minute
)

// crlIssuers returns the CA certificates (with their keys) the cluster
// publishes CRLs for.
func crlIssuers(st *fsm.State) ([]ca.CRLIssuer, error) {
	var out []ca.CRLIssuer
	add := func(m ca.Material) error {
		if len(m.Key) == 0 {
			return nil
		}
		certs, err := ca.ParseCertificates(m.Cert)
		if err != nil {
			return err
		}
		out = append(out, ca.CRLIssuer{Cert: certs[0], Key: m.Key})
		return nil
	}
	if err := add(st.CA); err != nil {
		return nil, err
	}
	if r := st.Rotation; r != nil {
		if err := add(r.FromCA); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// crlCovers names what a CRL set is signed over: the revocations and the
// issuers.
func crlCovers(entries []ca.Revoked, issuers []ca.CRLIssuer) string {
	h := sha256.New()
	for _, e := range entries {
		fmt.Fprintf(h, "%s %d %d\n", e.Serial, e.At.UnixNano(), e.Reason)
	}
	for _, is := range issuers {
		h.Write(is.Cert.Raw)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// publishCRLs signs and commits a new CRL set when the one the state
// holds no longer covers the revocations or the CA, or is past half its
// validity. An issuer that may not sign CRLs (an imported CA without the
// cRLSign key usage) is skipped and said once per term.
func (m *Manager) publishCRLs(ctx context.Context, st *fsm.State, t *term) {
	now := m.cfg.Now()
	issuers, err := crlIssuers(st)
	if err != nil || len(issuers) == 0 {
		return
	}
	entries := st.RevokedAt(now)
	covers := crlCovers(entries, issuers)
	if c := st.CRLs; c != nil && c.Covers == covers && now.Before(c.ThisUpdate.Add(crlValidity/2)) {
		return
	}
	set := fsm.CRLSet{Number: 1, ThisUpdate: now.Add(-crlBackdate), NextUpdate: now.Add(crlValidity), Covers: covers}
	if st.CRLs != nil {
		set.Number = st.CRLs.Number + 1
	}
	for _, is := range issuers {
		pem, err := ca.SignCRL(m.cfg.Rand, is, set.Number, set.ThisUpdate, set.NextUpdate, entries)
		if err != nil {
			if t != nil && t.warnOnce("crl "+is.Cert.Subject.String()) {
				m.log.Warn("no CRL for this CA certificate", "subject", is.Cert.Subject.String(), "err", err)
			}
			continue
		}
		set.PEM = append(set.PEM, pem...)
	}
	if len(set.PEM) == 0 {
		return
	}
	if _, err := m.propose(ctx, fsm.Command{At: now, SetCRLs: &fsm.SetCRLs{CRLs: set}}); err != nil {
		m.log.Warn("publish CRLs", "err", err)
		return
	}
	m.log.Info("CRLs published", "number", set.Number, "revoked", len(entries), "issuers", len(issuers))
}

// parseSerial reads a certificate serial as people write it: hex, any
// case, with or without colons, a 0x prefix, or openssl x509 -serial's
// serial= prefix.
func parseSerial(s string) (string, error) {
	clean := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	clean = strings.TrimPrefix(strings.TrimPrefix(clean, "serial="), "0x")
	n, ok := new(big.Int).SetString(clean, 16)
	if !ok || n.Sign() <= 0 {
		return "", fmt.Errorf("%w: serial %q is not a hex number", fsm.ErrBadCommand, s)
	}
	return n.Text(16), nil
}

// RevokeCertificate revokes a node or admin certificate by serial.
func (s controlService) RevokeCertificate(ctx context.Context, req *api.RevokeCertificateRequest) (*api.RevokeCertificateResponse, error) {
	m := s.m
	serial, err := parseSerial(req.GetSerial())
	if err != nil {
		return nil, err
	}
	st, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), RevokeCert: &fsm.RevokeCert{Serial: serial, Reason: int(req.GetReason())}})
	if err != nil {
		return nil, err
	}
	resp := &api.RevokeCertificateResponse{}
	if a, ok := st.Admin(serial); ok {
		resp.Kind, resp.Id = "admin", a.ID
	} else if r, ok := st.Revoked[serial]; ok {
		resp.Kind, resp.Id = "node", r.NodeID
		if n, ok := st.Node(r.NodeID); ok && n.Cert.Serial == serial {
			resp.Current = true
		}
	}
	m.log.Info("certificate revoked", "serial", serial, "kind", resp.Kind, "id", resp.Id, "reason", ca.ReasonName(int(req.GetReason())), "by", callOf(ctx).actor())
	m.kickRotation() // the leader's loop publishes the CRLs
	return resp, nil
}
