package manager

import (
	"context"
	"crypto/x509"
	"reflect"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/audit"
)

// The audit log (--audit-log, Config.Audit) gets one line per call that
// changes the state or hands out a secret, whatever its result; one per
// call refused, whatever the call; one per call that committed a change
// although it seldom does (a heartbeat that confirms a node); and one per
// change the leader commits by itself (a rotation's completion, a prune).
// The interceptor writes the line after the handler returns and before the
// answer is sent; the audit package fsyncs it. A call whose line cannot be
// written is answered with an error, and after one failed write the log
// takes nothing more: state-changing calls are then refused before they
// run, so that no change is made that the log misses.

// auditAction says how a method is recorded: what it is called, what it
// acted on, and whether it is recorded when it succeeds. A method missing
// from auditActions is recorded always (the test checks none is missing).
type auditAction struct {
	// name returns the action's name and target from the request and,
	// when the call succeeded, the answer (else nil).
	name func(c call, req, resp any) (string, audit.Target)
	// record returns whether a successful call is recorded: it changes
	// the state or hands out a secret.
	record func(req any) bool
}

func always(any) bool { return true }
func never(any) bool  { return false }

// named is an action with a fixed name and no target.
func named(n string) func(call, any, any) (string, audit.Target) {
	return func(call, any, any) (string, audit.Target) { return n, audit.Target{} }
}

// self is an action on the caller's own node.
func self(n string) func(call, any, any) (string, audit.Target) {
	return func(c call, _, _ any) (string, audit.Target) { return n, audit.Target{NodeID: c.ID.NodeID} }
}

const (
	caMethod       = "/quorumca.v1.CA/"
	controlMethod  = "/quorumca.v1.Control/"
	internalMethod = "/quorumca.v1.Internal/"
)

var auditActions = map[string]auditAction{
	caMethod + "GetRootBundle": {named("ca.bundle"), never},
	caMethod + "IssueNodeCertificate": {func(_ call, _, resp any) (string, audit.Target) {
		return "join", issuedTarget(resp)
	}, always},
	caMethod + "RenewNodeCertificate": {func(c call, _, resp any) (string, audit.Target) {
		t := audit.Target{NodeID: c.ID.NodeID}
		if r, ok := resp.(*api.RenewNodeCertificateResponse); ok {
			t.Role, t.Serials = r.GetRole(), leafSerial(r.GetCertificate())
		}
		return "renew", t
	}, always},
	caMethod + "Heartbeat": {self("heartbeat"), never},
	caMethod + "Gossip":    {self("gossip.key"), always}, // hands out the gossip key

	controlMethod + "Status":   {named("status"), never},
	controlMethod + "Ping":     {named("ping"), never},
	controlMethod + "AddVoter": {self("node.add-voter"), always},
	controlMethod + "JoinToken": {func(_ call, req, _ any) (string, audit.Target) {
		r, _ := req.(*api.JoinTokenRequest)
		if r.GetRotate() {
			return "join-token.rotate", audit.Target{Role: r.GetRole()}
		}
		return "join-token.show", audit.Target{Role: r.GetRole()}
	}, always}, // showing a token hands out its secret
	controlMethod + "ListNodes": {func(_ call, req, _ any) (string, audit.Target) {
		r, _ := req.(*api.ListNodesRequest)
		return "node.ls", audit.Target{NodeID: r.GetNodeId()}
	}, never},
	controlMethod + "ListTokens":            {named("join-token.ls"), never},
	controlMethod + "GetCA":                 {named("ca.show"), never},
	controlMethod + "ListAdminCertificates": {named("admin-cert.ls"), never},
	controlMethod + "SetRole": {func(_ call, req, _ any) (string, audit.Target) {
		r, _ := req.(*api.SetRoleRequest)
		t := audit.Target{NodeID: r.GetNodeId(), Role: r.GetRole()}
		switch r.GetRole() {
		case "manager", string(ca.RoleManager):
			return "node.promote", t
		case "worker", string(ca.RoleWorker):
			return "node.demote", t
		}
		return "node.set-role", t
	}, always},
	controlMethod + "RemoveNode": {func(_ call, req, _ any) (string, audit.Target) {
		r, _ := req.(*api.RemoveNodeRequest)
		return "node.rm", audit.Target{NodeID: r.GetNodeId()}
	}, always},
	controlMethod + "Update": {named("update"), always},
	controlMethod + "CreateToken": {func(_ call, req, resp any) (string, audit.Target) {
		r, _ := req.(*api.CreateTokenRequest)
		a, _ := resp.(*api.CreateTokenResponse)
		return "join-token.create", audit.Target{Role: r.GetRole(), TokenID: a.GetId()}
	}, always},
	controlMethod + "RevokeToken": {func(_ call, req, _ any) (string, audit.Target) {
		r, _ := req.(*api.RevokeTokenRequest)
		return "join-token.revoke", audit.Target{TokenID: r.GetId()}
	}, always},
	controlMethod + "RotateCA": {named("ca.rotate"), always},
	controlMethod + "RevokeAdminCertificates": {func(_ call, req, resp any) (string, audit.Target) {
		r, _ := req.(*api.RevokeAdminCertificatesRequest)
		t := audit.Target{Serials: r.GetSerials(), All: r.GetAll()}
		if a, ok := resp.(*api.RevokeAdminCertificatesResponse); ok {
			t.Serials = a.GetSerials()
		}
		return "admin-cert.rm", t
	}, always},
	controlMethod + "IssueAdminCertificate": {func(_ call, _, resp any) (string, audit.Target) {
		var t audit.Target
		if a, ok := resp.(*api.IssueAdminCertificateResponse); ok {
			t.Serials = []string{a.GetSerial()}
		}
		return "admin-cert.create", t
	}, always},
	controlMethod + "UnlockKey": {func(_ call, req, _ any) (string, audit.Target) {
		if r, _ := req.(*api.UnlockKeyRequest); r.GetRotate() {
			return "unlock-key.rotate", audit.Target{}
		}
		return "unlock-key.show", audit.Target{}
	}, always}, // showing the unlock key hands it out
	controlMethod + "Unlock": {named("unlock"), always},
	controlMethod + "Backup": {named("backup"), always}, // the whole state, keys included
	controlMethod + "RevokeCertificate": {func(_ call, req, resp any) (string, audit.Target) {
		r, _ := req.(*api.RevokeCertificateRequest)
		t := audit.Target{Serials: []string{r.GetSerial()}}
		if a, ok := resp.(*api.RevokeCertificateResponse); ok {
			t.NodeID = a.GetId()
			if s, err := parseSerial(r.GetSerial()); err == nil {
				t.Serials = []string{s}
			}
		}
		return "cert.revoke", t
	}, always},

	internalMethod + "Admit": {func(_ call, _, resp any) (string, audit.Target) {
		return "admit", issuedTarget(resp)
	}, always},
	internalMethod + "ReadIndex": {named("read-index"), never},
}

// issuedTarget is the node a join made, from its answer.
func issuedTarget(resp any) audit.Target {
	r, ok := resp.(*api.IssueNodeCertificateResponse)
	if !ok {
		return audit.Target{}
	}
	return audit.Target{NodeID: r.GetNodeId(), Role: r.GetRole(), Serials: leafSerial(r.GetCertificate())}
}

// leafSerial is the serial of the first certificate of a PEM chain.
func leafSerial(chain []byte) []string {
	certs, err := ca.ParseCertificates(chain)
	if err != nil || len(certs) == 0 {
		return nil
	}
	return []string{serialHex(certs[0].SerialNumber)}
}

// commitLog collects the commands a call committed (propose adds them).
type commitLog struct {
	mu    sync.Mutex // guards names
	names []string
}

func (l *commitLog) add(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.names = append(l.names, name)
}

func (l *commitLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.names...)
}

// commandName is the name of the operation cmd carries: its JSON field.
func commandName(cmd fsm.Command) string {
	v, t := reflect.ValueOf(cmd), reflect.TypeOf(cmd)
	for i := range t.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Pointer && !f.IsNil() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			return name
		}
	}
	return "unknown"
}

// requestID returns the call's request ID, the caller's x-request-id if
// it is fit to record, else a new one; answer sets it in the answer's
// headers.
func (m *Manager) requestID(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	return m.requestIDOf(md)
}

// requestIDOf is requestID for a call's metadata md.
func (m *Manager) requestIDOf(md metadata.MD) string {
	if ids := md.Get(audit.RequestIDHeader); len(ids) > 0 && audit.ValidRequestID(ids[0]) {
		return ids[0]
	}
	id, err := audit.NewRequestID(m.cfg.Rand)
	if err != nil {
		return "unknown"
	}
	return id
}

// sendRequestID puts the request ID in the answer's headers.
func sendRequestID(ctx context.Context, id string) {
	// Fails only when headers were sent already: the call still goes on.
	_ = grpc.SetHeader(ctx, metadata.Pairs(audit.RequestIDHeader, id))
}

// auditBroken refuses a call that the audit log must record while the
// log no longer writes.
func (m *Manager) auditBroken(method string, req any) error {
	if err := m.cfg.Audit.Err(); err != nil {
		if a, ok := auditActions[method]; !ok || a.record(req) {
			return status.Errorf(codes.Unavailable, "manager %s refuses calls that change the cluster: its audit log failed: %v", m.node.NodeID, err)
		}
	}
	return nil
}

// audit records a call that ended with err (a status, or nil) and
// answered resp, when it is to be recorded. It returns the error to answer
// with: err, or an error that says the line could not be written.
func (m *Manager) audit(r authz.Request, c call, req, resp any, err error) error {
	if m.cfg.Audit == nil {
		return err
	}
	a, known := auditActions[r.Method]
	var commits []string
	if c.commits != nil {
		commits = c.commits.list()
	}
	code, reason := status.Code(err), ""
	if err != nil {
		reason, _ = api.ErrorReason(err)
	}
	result := audit.ResultOK
	switch {
	case err == nil:
	case code == codes.PermissionDenied || code == codes.Unauthenticated:
		result = audit.ResultRefused
	default:
		result = audit.ResultError
	}
	switch {
	case result == audit.ResultRefused, len(commits) > 0:
	case reason == api.ReasonNotLeader:
		return err // the caller asks the leader, which records it
	case known && !a.record(req):
		return err
	}
	rec := audit.Record{
		Time: m.cfg.Now().UTC(), Manager: m.node.NodeID, RequestID: c.RequestID,
		Actor: actorOf(r, c), Method: r.Method, Arrival: r.Arrival.String(),
		Result: result, Commits: commits,
	}
	if known {
		if err != nil {
			resp = nil
		}
		rec.Action, rec.Target = a.name(c, req, resp)
	} else {
		rec.Action = r.Method
	}
	if err != nil {
		rec.Code, rec.Reason, rec.Error = code.String(), reason, status.Convert(err).Message()
	}
	if werr := m.cfg.Audit.Write(rec); werr != nil {
		m.log.Error("audit log", "err", werr, "method", r.Method, "request_id", c.RequestID, "result", result)
		return status.Errorf(codes.Internal, "manager %s could not record this call in its audit log (%v); the call's result was %q: check with `quorumca node ls` or `ca` before retrying", m.node.NodeID, werr, result)
	}
	return err
}

// auditCommit records a change this manager committed by itself, outside
// any call (the leader's work: a rotation's completion, a prune, the
// cluster's creation), or, with the error of its proposal, one that may
// have committed (name ends in "?").
func (m *Manager) auditCommit(name string, target audit.Target, err error) {
	rec := audit.Record{
		Time: m.cfg.Now().UTC(), Manager: m.node.NodeID,
		Actor:  audit.Actor{Kind: "leader", NodeID: m.node.NodeID, Role: string(ca.RoleManager)},
		Action: "commit." + strings.TrimSuffix(name, "?"), Target: target, Result: audit.ResultOK, Commits: []string{name},
	}
	if err != nil {
		rec.Result, rec.Error = audit.ResultError, err.Error()
	}
	if werr := m.cfg.Audit.Write(rec); werr != nil {
		m.log.Error("audit log", "err", werr, "commit", name)
	}
}

// actorOf describes the caller for the audit log: the caller the policy
// established or, for a refused call, who the certificates say it is.
func actorOf(r authz.Request, c call) audit.Actor {
	var a audit.Actor
	if c.Addr != "local" {
		a.Addr = c.Addr
	}
	uid := func() {
		if c.UID >= 0 {
			a.UID = &c.UID
		}
	}
	switch c.Kind {
	case authz.Host:
		a.Kind = "host"
		uid()
		a.Via = c.Forwarder
		return a
	case authz.Node, authz.Admin:
		a.Kind = c.Kind.String()
		a.NodeID, a.Role, a.Serial, a.Via = c.ID.NodeID, string(c.ID.Role), c.Serial, c.Forwarder
		return a
	}
	// Anonymous, or refused: read the certificates themselves.
	switch {
	case r.Arrival == authz.Local:
		a.Kind = "host"
		uid()
		return a
	case len(r.Verified) == 0:
		a.Kind = "anonymous"
		return a
	}
	leaf := r.Verified[0]
	if r.Arrival == authz.Forwarded {
		if id, err := ca.IdentityOf(leaf); err == nil {
			a.Via = id.NodeID
		}
		switch {
		case r.ForwardedLocal:
			a.Kind = "host"
			uid()
			return a
		case len(r.ForwardedChain) == 0:
			a.Kind = "anonymous"
			return a
		}
		leaf = r.ForwardedChain[0]
	}
	certActor(&a, leaf)
	return a
}

// certActor fills a with what leaf names.
func certActor(a *audit.Actor, leaf *x509.Certificate) {
	a.Kind, a.Serial = "node", serialHex(leaf.SerialNumber)
	id, err := ca.IdentityOf(leaf)
	if err != nil {
		a.Kind = "unknown"
		return
	}
	if id.Role == ca.RoleAdmin {
		a.Kind = "admin"
	}
	a.NodeID, a.Role = id.NodeID, string(id.Role)
}
