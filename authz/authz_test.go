package authz_test

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// world is a cluster state with one principal of every kind, and their
// certificates.
type world struct {
	now    time.Time
	view   authz.View
	chains map[string][]*x509.Certificate // principal name -> chain, leaf first, root last
}

// Principals of the world, by name.
const (
	pVoter      = "manager (voter)"
	pNonVoter   = "manager (not a voter yet)"
	pWorker     = "worker"
	pDemoted    = "demoted manager (manager certificate)"
	pPromoted   = "promoted worker (worker certificate)"
	pRemoved    = "removed node"
	pUnknown    = "unknown node"
	pForeign    = "node of another cluster"
	pExpired    = "node with an expired certificate"
	pAdmin      = "admin (recorded)"
	pAdminRevok = "admin (revoked)"
	pAdminUnrec = "admin (never recorded)"
	pAdminExp   = "admin (expired)"
	pRevokedOld = "node showing a revoked earlier certificate"
	pRevokedCur = "node whose current certificate is revoked"
	pRevokedMgr = "manager whose current certificate is revoked"
)

func newWorld(t *testing.T) *world {
	t.Helper()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	clusterID, other := mustID(t), mustID(t)
	root, err := ca.GenerateRoot(rand.Reader, now.Add(-48*time.Hour), clusterID)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ca.NewSigner(root)
	if err != nil {
		t.Fatal(err)
	}
	foreignRoot, _ := ca.GenerateRoot(rand.Reader, now.Add(-48*time.Hour), other)
	foreign, _ := ca.NewSigner(foreignRoot)
	_, roots, err := ca.ParseBundle(root.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{now: now, chains: map[string][]*x509.Certificate{}}
	issue := func(name string, s *ca.Signer, role ca.Role, cluster string, at time.Time, validity time.Duration) (string, string) {
		id := mustID(t)
		key, _ := ca.GenerateKey(rand.Reader)
		iss, err := s.SignKey(rand.Reader, at, key.Public(), ca.Identity{NodeID: id, Role: role, ClusterID: cluster}, validity)
		if err != nil {
			t.Fatalf("sign %s: %v", name, err)
		}
		chain, _ := ca.ParseCertificates(iss.PEM)
		w.chains[name] = append(chain, roots...)
		return id, iss.Serial.Text(16)
	}
	day := 24 * time.Hour
	var nodes []fsm.Node
	node := func(name string, certRole, stateRole ca.Role) string {
		id, serial := issue(name, signer, certRole, clusterID, now.Add(-time.Hour), day)
		nodes = append(nodes, fsm.Node{ID: id, Role: stateRole, Cert: fsm.CertInfo{Serial: serial}})
		return id
	}
	voter := node(pVoter, ca.RoleManager, ca.RoleManager)
	node(pNonVoter, ca.RoleManager, ca.RoleManager)
	node(pWorker, ca.RoleWorker, ca.RoleWorker)
	node(pDemoted, ca.RoleManager, ca.RoleWorker)
	node(pPromoted, ca.RoleWorker, ca.RoleManager)
	revoked := map[string]fsm.Revocation{}
	revoke := func(name string, role ca.Role, current bool) string {
		id, serial := issue(name, signer, role, clusterID, now.Add(-time.Hour), day)
		n := fsm.Node{ID: id, Role: role, Cert: fsm.CertInfo{Serial: serial}}
		if !current {
			n.Cert, n.Prev = fsm.CertInfo{Serial: "feed"}, []fsm.CertInfo{{Serial: serial}}
		}
		nodes = append(nodes, n)
		revoked[serial] = fsm.Revocation{NodeID: id, NotAfter: now.Add(day), At: now.Add(-time.Minute), Reason: ca.ReasonKeyCompromise}
		return id
	}
	revoke(pRevokedOld, ca.RoleWorker, false)
	revoke(pRevokedCur, ca.RoleWorker, true)
	// A voter: its relays are refused for the revocation alone.
	revokedVoter := revoke(pRevokedMgr, ca.RoleManager, true)
	removedID, _ := issue(pRemoved, signer, ca.RoleWorker, clusterID, now.Add(-time.Hour), day)
	issue(pUnknown, signer, ca.RoleWorker, clusterID, now.Add(-time.Hour), day)
	issue(pForeign, foreign, ca.RoleManager, other, now.Add(-time.Hour), day)
	id, serial := issue(pExpired, signer, ca.RoleManager, clusterID, now.Add(-2*day), day)
	nodes = append(nodes, fsm.Node{ID: id, Role: ca.RoleManager, Cert: fsm.CertInfo{Serial: serial}})
	admins := map[string]fsm.AdminCert{}
	admin := func(name string, at time.Time, revoked bool, record bool) {
		id, serial := issue(name, signer, ca.RoleAdmin, clusterID, at, day)
		if !record {
			return
		}
		a := fsm.AdminCert{Serial: serial, ID: id, NotAfter: at.Add(day)}
		if revoked {
			a.RevokedAt = now.Add(-time.Minute)
		}
		admins[serial] = a
	}
	admin(pAdmin, now.Add(-time.Hour), false, true)
	admin(pAdminRevok, now.Add(-time.Hour), true, true)
	admin(pAdminUnrec, now.Add(-time.Hour), false, false)
	admin(pAdminExp, now.Add(-2*day), false, true)
	st := &fsm.State{
		ClusterID: clusterID,
		Nodes:     fsm.NewNodeMap(nodes...),
		Removed:   map[string]time.Time{removedID: now.Add(day)},
		Admins:    admins,
		Revoked:   revoked,
	}
	w.view = authz.View{State: st, Roots: roots, Voter: func(id string) bool { return id == voter || id == revokedVoter }}
	return w
}

func mustID(t *testing.T) string {
	t.Helper()
	id, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// direct returns a Direct request from principal p ("" for none).
func (w *world) direct(method, p string) authz.Request {
	r := authz.Request{Method: method, Arrival: authz.Direct, Now: w.now}
	if c := w.chains[p]; c != nil {
		r.Verified, r.Presented = c, c[:len(c)-1]
	}
	return r
}

// classes says which classes of caller each principal belongs to when it
// calls directly; a principal not listed belongs to none (but may still
// call what Anyone may).
var classes = map[string][]authz.Who{
	"":          {authz.Anyone},
	"local":     {authz.Anyone, authz.Operator, authz.HostOnly, authz.OperatorOrSelf},
	pVoter:      {authz.Anyone, authz.Member, authz.CurrentMember, authz.Manager, authz.Operator, authz.Voter, authz.OperatorOrSelf},
	pNonVoter:   {authz.Anyone, authz.Member, authz.CurrentMember, authz.Manager, authz.Operator, authz.OperatorOrSelf},
	pWorker:     {authz.Anyone, authz.Member, authz.CurrentMember, authz.OperatorOrSelf},
	pDemoted:    {authz.Anyone, authz.Member, authz.OperatorOrSelf},
	pPromoted:   {authz.Anyone, authz.Member, authz.OperatorOrSelf},
	pAdmin:      {authz.Anyone, authz.Operator, authz.OperatorOrSelf},
	pRemoved:    {authz.Anyone},
	pUnknown:    {authz.Anyone},
	pForeign:    {authz.Anyone},
	pExpired:    {authz.Anyone},
	pAdminRevok: {authz.Anyone},
	pAdminUnrec: {authz.Anyone},
	pAdminExp:   {authz.Anyone},
	// A revoked earlier certificate is refused; a revoked current one may
	// only heartbeat and renew (into a fresh key), even a manager's.
	pRevokedOld: {authz.Anyone},
	pRevokedCur: {authz.Anyone, authz.Member},
	pRevokedMgr: {authz.Anyone, authz.Member},
}

func sortedMethods() []string {
	m := authz.Methods()
	sort.Strings(m)
	return m
}

// TestDecideDirect runs every principal against every method, on the
// control socket or directly.
func TestDecideDirect(t *testing.T) {
	w := newWorld(t)
	for _, method := range sortedMethods() {
		rule, _ := authz.RuleFor(method)
		for p, in := range classes {
			r := w.direct(method, p)
			if p == "local" {
				r = authz.Request{Method: method, Arrival: authz.Local, Now: w.now}
			}
			_, err := authz.Decide(r, w.view)
			want := slices.Contains(in, rule.Who)
			if (err == nil) != want {
				t.Errorf("Decide(%s from %q) = %v, want allowed=%v", method, p, err, want)
			}
			var ae *authz.Error
			if err != nil && !errors.As(err, &ae) {
				t.Errorf("Decide(%s from %q) = %T, want *authz.Error", method, p, err)
			}
		}
	}
}

// forwarders are the managers (or not) a relayed call may come through.
var forwarders = []string{pVoter, pNonVoter, pWorker, pDemoted, pPromoted, pRemoved, pAdmin, pRevokedMgr, ""}

// claims are the original callers a forwarder may name.
var claims = []string{"local", pVoter, pNonVoter, pWorker, pDemoted, pAdmin, pAdminRevok, pAdminUnrec, pRemoved, pForeign, pRevokedOld, pRevokedMgr, ""}

// TestDecideForwarded runs every relayed claim through every forwarder
// for every method: the leader believes a relay only from a manager that
// is a Raft voter, only for the calls that are relayed at all, and then
// checks the named caller as if it had called itself.
func TestDecideForwarded(t *testing.T) {
	w := newWorld(t)
	for _, method := range sortedMethods() {
		rule, _ := authz.RuleFor(method)
		for _, f := range forwarders {
			for _, claim := range claims {
				r := w.direct(method, f)
				r.Arrival = authz.Forwarded
				switch claim {
				case "local":
					r.ForwardedLocal = true
				case "":
				default:
					c := w.chains[claim]
					r.ForwardedChain = c[:len(c)-1]
				}
				c, err := authz.Decide(r, w.view)
				want := rule.Route == authz.Forward && f == pVoter && slices.Contains(classes[claim], rule.Who) &&
					claim != "" // an anonymous relay admits nothing relayed
				if (err == nil) != want {
					t.Errorf("Decide(%s relayed by %q for %q) = %v, want allowed=%v", method, f, claim, err, want)
				}
				if err == nil && c.Forwarder == "" {
					t.Errorf("Decide(%s relayed by %q for %q).Forwarder is empty", method, f, claim)
				}
			}
		}
	}
}

// TestDemotedManagerEscalation is the reported attack: a demoted manager,
// with its old manager certificate, relays a call as the local control
// socket (to get the manager join token), or relays another node's
// public chain (to renew into a manager certificate naming that node).
func TestDemotedManagerEscalation(t *testing.T) {
	w := newWorld(t)
	for _, tt := range []struct {
		method string
		claim  string
		reason string
	}{
		{"/quorumca.v1.Control/JoinToken", "local", authz.ReasonForwarderUntrusty},
		{"/quorumca.v1.Control/IssueAdminCertificate", "local", authz.ReasonForwarderUntrusty},
		{"/quorumca.v1.Control/RemoveNode", pVoter, authz.ReasonForwarderUntrusty},
		{"/quorumca.v1.CA/RenewNodeCertificate", pVoter, authz.ReasonNotForwardable},
		{"/quorumca.v1.CA/Heartbeat", pVoter, authz.ReasonNotForwardable},
		{"/quorumca.v1.Control/AddVoter", pVoter, authz.ReasonNotForwardable},
	} {
		for _, f := range []string{pDemoted, pWorker} {
			r := w.direct(tt.method, f)
			r.Arrival = authz.Forwarded
			if tt.claim == "local" {
				r.ForwardedLocal = true
			} else {
				c := w.chains[tt.claim]
				r.ForwardedChain = c[:len(c)-1]
			}
			_, err := authz.Decide(r, w.view)
			var ae *authz.Error
			if !errors.As(err, &ae) || ae.Reason != tt.reason || !errors.Is(err, authz.ErrDenied) {
				t.Errorf("Decide(%s relayed by %s for %s) = %v, want a refusal with reason %s", tt.method, f, tt.claim, err, tt.reason)
			}
		}
	}
	// Directly, the demoted manager's old certificate may still renew and
	// heartbeat as itself (into its worker certificate), and remove itself
	// (OperatorOrSelf: the manager's handler refuses any other target, see
	// cmd/quorumca TestWorkerRemovesOnlyItself), and nothing else.
	for _, method := range sortedMethods() {
		rule, _ := authz.RuleFor(method)
		_, err := authz.Decide(w.direct(method, pDemoted), w.view)
		if want := rule.Who == authz.Anyone || rule.Who == authz.Member || rule.Who == authz.OperatorOrSelf; (err == nil) != want {
			t.Errorf("Decide(%s from the demoted manager) = %v, want allowed=%v", method, err, want)
		}
	}
}

// TestReasons checks the reason of each kind of refusal.
func TestReasons(t *testing.T) {
	w := newWorld(t)
	status := "/quorumca.v1.Control/Status"
	for _, tt := range []struct {
		p, reason string
		err       error
	}{
		{"", authz.ReasonNoCertificate, authz.ErrUnauthenticated},
		{pWorker, authz.ReasonNotManager, authz.ErrDenied},
		{pDemoted, authz.ReasonRoleChanged, authz.ErrDenied},
		{pRemoved, authz.ReasonRemoved, authz.ErrDenied},
		{pUnknown, authz.ReasonUnknownNode, authz.ErrDenied},
		{pForeign, authz.ReasonWrongCluster, authz.ErrDenied},
		{pExpired, authz.ReasonUntrusted, authz.ErrDenied},
		{pAdminRevok, authz.ReasonAdminRevoked, authz.ErrDenied},
		{pAdminUnrec, authz.ReasonAdminUnknown, authz.ErrDenied},
		{pAdminExp, authz.ReasonUntrusted, authz.ErrDenied},
		{pRevokedOld, authz.ReasonRevoked, authz.ErrDenied},
		{pRevokedMgr, authz.ReasonRevoked, authz.ErrDenied},
	} {
		_, err := authz.Decide(w.direct(status, tt.p), w.view)
		var ae *authz.Error
		if !errors.As(err, &ae) || ae.Reason != tt.reason || !errors.Is(err, tt.err) {
			t.Errorf("Decide(Status from %q) = %v, want reason %s wrapping %v", tt.p, err, tt.reason, tt.err)
		}
	}
	if _, err := authz.Decide(w.direct("/quorumca.v1.CA/Nope", pVoter), w.view); err == nil {
		t.Errorf("Decide(unknown method) = nil, want a refusal")
	}
	_, err := authz.Decide(w.direct("/quorumca.v1.Control/IssueAdminCertificate", pAdmin), w.view)
	var ae *authz.Error
	if !errors.As(err, &ae) || ae.Reason != authz.ReasonNotHost {
		t.Errorf("Decide(IssueAdminCertificate from an admin) = %v, want reason %s: an admin certificate must not mint its successor", err, authz.ReasonNotHost)
	}
}

// TestBundleMovedOn checks that a connection verified under a root the
// manager no longer trusts is refused per call.
func TestBundleMovedOn(t *testing.T) {
	w := newWorld(t)
	v := w.view
	v.Roots = nil // the rotation completed: the old root is gone
	_, err := authz.Decide(w.direct("/quorumca.v1.CA/Heartbeat", pWorker), v)
	var ae *authz.Error
	if !errors.As(err, &ae) || ae.Reason != authz.ReasonUntrusted {
		t.Errorf("Decide(Heartbeat under a bundle that moved on) = %v, want reason %s", err, authz.ReasonUntrusted)
	}
}

// TestCaller checks what Decide says about an allowed caller.
func TestCaller(t *testing.T) {
	w := newWorld(t)
	c, err := authz.Decide(w.direct("/quorumca.v1.CA/Heartbeat", pDemoted), w.view)
	if err != nil {
		t.Fatal(err)
	}
	leaf := w.chains[pDemoted][0]
	if c.Kind != authz.Node || c.ID.Role != ca.RoleManager || c.Role != ca.RoleWorker || c.Serial != leaf.SerialNumber.Text(16) || len(c.Chain) == 0 || !c.Chain[0].Equal(leaf) {
		t.Errorf("Decide(Heartbeat from the demoted manager) = %+v, want a node with a manager certificate held as a worker", c)
	}
	if !c.Status.Equal(ca.StatusOf(w.chains[pDemoted][1])) {
		t.Errorf("Caller.Status = %v, want the root's", c.Status)
	}
}

// TestHandshakeChecks covers the checks made at the TLS handshake.
func TestHandshakeChecks(t *testing.T) {
	w := newWorld(t)
	for p, want := range map[string]bool{
		pVoter: true, pWorker: true, pDemoted: true, pUnknown: true, pAdmin: true, pAdminUnrec: true,
		pRemoved: false, pAdminRevok: false, pRevokedOld: false, pRevokedCur: true,
	} {
		leaf := w.chains[p][0]
		id, err := ca.IdentityOf(leaf)
		if err != nil {
			t.Fatal(err)
		}
		err = authz.CheckHandshake(id, leaf.SerialNumber.Text(16), w.view.State)
		if (err == nil) != want {
			t.Errorf("CheckHandshake(%s) = %v, want allowed=%v", p, err, want)
		}
	}
	for p, want := range map[string]bool{pVoter: true, pNonVoter: true, pUnknown: true, pDemoted: false, pRemoved: false, pRevokedMgr: true} {
		leaf := w.chains[p][0]
		id, _ := ca.IdentityOf(leaf)
		if err := authz.CheckRaftPeer(id, leaf.SerialNumber.Text(16), w.view.State); (err == nil) != want {
			t.Errorf("CheckRaftPeer(%s) = %v, want allowed=%v", p, err, want)
		}
	}
}

// TestTableCoversTheAPI checks that every method the API declares has a
// rule, and every rule a method; streams are answered where they arrive
// (the stream interceptor relays nothing).
func TestTableCoversTheAPI(t *testing.T) {
	var declared []string
	for _, sd := range []grpc.ServiceDesc{api.CA_ServiceDesc, api.Control_ServiceDesc, api.Internal_ServiceDesc} {
		for _, m := range sd.Methods {
			declared = append(declared, fmt.Sprintf("/%s/%s", sd.ServiceName, m.MethodName))
		}
		for _, st := range sd.Streams {
			name := fmt.Sprintf("/%s/%s", sd.ServiceName, st.StreamName)
			declared = append(declared, name)
			if r, _ := authz.RuleFor(name); r.Route != authz.Here {
				t.Errorf("stream %s has route %v; streams are answered here", name, r.Route)
			}
		}
	}
	sort.Strings(declared)
	if got := sortedMethods(); !slices.Equal(got, declared) {
		t.Errorf("authz.Methods() = %v\nwant the API's methods %v", got, declared)
	}
}
