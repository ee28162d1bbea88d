package manager

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// Validity of admin certificates: their own TTL, not the cluster's cert
// expiry. A leaked one dies at its TTL, or when it is revoked.
const (
	// DefaultAdminCertTTL is the validity of an admin certificate unless
	// asked otherwise.
	DefaultAdminCertTTL = 24 * time.Hour
	// MaxAdminCertTTL is the longest validity an admin certificate may
	// have.
	MaxAdminCertTTL = 30 * 24 * time.Hour
)

// IssueAdminCertificate signs an admin client certificate and records it:
// nothing is handed out that the cluster does not record. Only a manager's
// control socket may ask (authz: an admin certificate never mints its
// successor).
func (s controlService) IssueAdminCertificate(ctx context.Context, req *api.IssueAdminCertificateRequest) (*api.IssueAdminCertificateResponse, error) {
	m := s.m
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	switch {
	case req.GetTtlSeconds() < 0:
		return nil, fmt.Errorf("%w: admin certificate TTL %s is negative", fsm.ErrBadCommand, ttl)
	case ttl == 0:
		ttl = DefaultAdminCertTTL
	case ttl > MaxAdminCertTTL:
		return nil, fmt.Errorf("%w: admin certificate TTL %s is over the maximum of %s", fsm.ErrBadCommand, ttl, MaxAdminCertTTL)
	case ttl < time.Minute:
		return nil, fmt.Errorf("%w: admin certificate TTL %s is under the minimum of 1m", fsm.ErrBadCommand, ttl)
	}
	st := m.machine.State()
	pub, err := ca.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	id, err := ca.NewID(m.cfg.Rand)
	if err != nil {
		return nil, err
	}
	issued, _, err := m.signNode(ctx, st, req.GetCsr(), pub, ca.Identity{NodeID: id, Role: ca.RoleAdmin, ClusterID: st.ClusterID}, ttl)
	if err != nil {
		return nil, err
	}
	if issued.NotAfter.After(m.cfg.Now().Add(ttl + time.Minute)) {
		m.log.Warn("the external CA's signing profile made the admin certificate outlive the TTL asked", "id", id, "ttl", ttl, "not_after", issued.NotAfter)
	}
	c := callOf(ctx)
	rec := fsm.AdminCert{Serial: serialHex(issued.Serial), ID: id, IssuedBy: c.actor() + " on " + m.node.NodeID, NotAfter: issued.NotAfter}
	if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), IssueAdmin: &fsm.IssueAdmin{Cert: rec}}); err != nil {
		return nil, err
	}
	m.log.Info("admin certificate issued", "id", id, "serial", rec.Serial, "not_after", issued.NotAfter, "by", rec.IssuedBy)
	return &api.IssueAdminCertificateResponse{Certificate: issued.PEM, Bundle: st.CA.Bundle, Serial: rec.Serial, NotAfter: issued.NotAfter.Unix()}, nil
}

// ListAdminCertificates lists the admin certificates the cluster records,
// revoked ones included until they expire.
func (s controlService) ListAdminCertificates(context.Context, *api.ListAdminCertificatesRequest) (*api.ListAdminCertificatesResponse, error) {
	resp := &api.ListAdminCertificatesResponse{}
	for _, a := range s.m.machine.State().SortedAdmins() {
		out := &api.AdminCertificate{Serial: a.Serial, Id: a.ID, IssuedBy: a.IssuedBy, IssuedAt: a.IssuedAt.Unix(), NotAfter: a.NotAfter.Unix()}
		if a.Revoked() {
			out.RevokedAt = a.RevokedAt.Unix()
		}
		resp.Certificates = append(resp.Certificates, out)
	}
	return resp, nil
}

// RevokeAdminCertificates revokes admin certificates by serial, or all of
// them: every manager refuses them from the moment it applies the
// revocation, on new and open connections.
func (s controlService) RevokeAdminCertificates(ctx context.Context, req *api.RevokeAdminCertificatesRequest) (*api.RevokeAdminCertificatesResponse, error) {
	m := s.m
	cmd := &fsm.RevokeAdmin{All: req.GetAll()}
	for _, serial := range req.GetSerials() {
		cmd.Serials = append(cmd.Serials, NormalizeSerial(serial))
	}
	before := m.machine.State()
	if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), RevokeAdmin: cmd}); err != nil {
		return nil, err
	}
	resp := &api.RevokeAdminCertificatesResponse{}
	for _, a := range before.SortedAdmins() {
		if !a.Revoked() && (cmd.All || slices.Contains(cmd.Serials, a.Serial)) {
			resp.Serials = append(resp.Serials, a.Serial)
		}
	}
	m.log.Info("admin certificates revoked", "serials", resp.Serials, "by", callOf(ctx).actor())
	return resp, nil
}

// NormalizeSerial writes a serial number as the state records it: lower
// case hex, without colons or leading zeros.
func NormalizeSerial(s string) string {
	s = strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	s = strings.TrimPrefix(s, "0x")
	if t := strings.TrimLeft(s, "0"); t != "" {
		return t
	}
	return s
}
