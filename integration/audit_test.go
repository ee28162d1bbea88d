package integration

import (
	"crypto"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/audit"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

// auditLogs reads the audit logs of a test's nodes, each named after its
// node.
type auditLogs struct {
	t   *testing.T
	dir string
}

func (a auditLogs) path(name string) string { return filepath.Join(a.dir, name+".audit") }

func (a auditLogs) read(n *clustertest.Node) []audit.Record {
	a.t.Helper()
	f, err := os.Open(a.path(n.Name))
	if err != nil {
		a.t.Fatalf("open the audit log of %s: %v", n.Name, err)
	}
	defer f.Close()
	recs, err := audit.Read(f)
	if err != nil {
		a.t.Fatalf("audit.Read(%s) = %v", n.Name, err)
	}
	return recs
}

// find returns the last line of n's log that match accepts; it fails the
// test, showing the log, when there is none.
func (a auditLogs) find(n *clustertest.Node, what string, match func(audit.Record) bool) audit.Record {
	a.t.Helper()
	recs := a.read(n)
	for _, r := range slices.Backward(recs) {
		if match(r) {
			return r
		}
	}
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "\n  %s %s %s %s %+v %+v %v", r.RequestID, r.Action, r.Result, r.Reason, r.Actor, r.Target, r.Commits)
	}
	a.t.Fatalf("audit log of %s has no line for %s; it holds:%s", n.Name, what, b.String())
	return audit.Record{}
}

func action(name, result string) func(audit.Record) bool {
	return func(r audit.Record) bool { return r.Action == name && r.Result == result }
}

func and(fs ...func(audit.Record) bool) func(audit.Record) bool {
	return func(r audit.Record) bool {
		for _, f := range fs {
			if !f(r) {
				return false
			}
		}
		return true
	}
}

func targetNode(id string) func(audit.Record) bool {
	return func(r audit.Record) bool { return r.Target.NodeID == id }
}

func requestID(id string) func(audit.Record) bool {
	return func(r audit.Record) bool { return r.RequestID == id }
}

// TestAuditLog makes every kind of call the audit log records, through
// the leader and through a follower, and checks each line: action, actor
// (from the verified certificate or the control socket), target, result,
// the Raft commands it committed, and a request ID that a relayed call
// keeps on both managers. A heartbeat is not recorded; a refusal is.
func TestAuditLog(t *testing.T) {
	logs := auditLogs{t: t, dir: t.TempDir()}
	c := clustertest.New(t, clustertest.Options{Managers: 2, Workers: 1, Configure: func(name string, cfg *node.Config) {
		cfg.AuditLog = logs.path(name)
	}})
	leader, follower, w := c.Leader(), c.Follower(), c.Workers[0]
	ctx := testkit.Ctx(t)
	uid := os.Getuid()
	isLeaderCommit := func(name string) func(audit.Record) bool {
		return func(r audit.Record) bool { return r.Actor.Kind == "leader" && slices.Contains(r.Commits, name) }
	}
	// Creating the cluster is the first line of the first manager's log.
	if first := logs.read(c.Managers[0]); len(first) == 0 || first[0].Action != "commit.init" || first[0].Actor.Kind != "leader" {
		t.Errorf("first line of m0's audit log = %+v, want the leader's commit.init", first)
	}
	for _, n := range c.Nodes() {
		fi, err := os.Stat(logs.path(n.Name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("audit log of %s: %v, mode %v; want mode 0600", n.Name, err, fi.Mode())
		}
	}

	// A join through the follower: the follower records the join, the
	// leader the admission that committed it, under one request ID.
	res, _ := c.JoinNoDaemon(follower.Addr())
	joined := res.Node.NodeID
	j := logs.find(follower, "the join", and(action("join", audit.ResultOK), targetNode(joined)))
	if j.Actor.Kind != "anonymous" || j.Arrival != "direct" || j.Target.Role != string(ca.RoleWorker) || len(j.Target.Serials) != 1 || j.RequestID == "" {
		t.Errorf("join line = %+v, want an anonymous direct call, a worker and its serial, a request ID", j)
	}
	adm := logs.find(leader, "the admission", and(action("admit", audit.ResultOK), requestID(j.RequestID)))
	if adm.Actor.Kind != "node" || adm.Actor.NodeID != follower.ID() || !slices.Equal(adm.Commits, []string{"issue"}) || adm.Target.NodeID != joined {
		t.Errorf("admit line = %+v, want the follower as actor, the joined node as target, commits [issue]", adm)
	}

	// A join with a wrong token's secret: refused, and recorded.
	bad := wrongSecret(t, c.WorkerToken)
	if _, _, err := c.TryJoin(bad, follower.Addr()); err == nil {
		t.Fatalf("join with a wrong secret = nil error")
	}
	r := logs.find(follower, "the wrong-token join", action("join", audit.ResultRefused))
	if r.Reason != api.ReasonBadToken || r.Code != "PermissionDenied" || len(r.Commits) != 0 {
		t.Errorf("wrong-token join line = %+v, want reason %s, PermissionDenied, no commit", r, api.ReasonBadToken)
	}

	// A worker calls a manager's API: refused, with who it is, from its
	// verified certificate.
	wconn := c.Dial(leader.Addr(), w.Credentials().ClientTLS(agent.ManagerName))
	wantCode(t, "ListNodes() with a worker certificate", listNodesCall(ctx, wconn), codes.PermissionDenied)
	wleaf := w.Credentials().Leaf()
	r = logs.find(leader, "the worker's ListNodes", action("node.ls", audit.ResultRefused))
	if r.Actor.Kind != "node" || r.Actor.NodeID != w.ID() || r.Actor.Role != string(ca.RoleWorker) || r.Actor.Serial != wleaf.SerialNumber.Text(16) || r.Reason != authz.ReasonNotManager {
		t.Errorf("refused ListNodes line = %+v, want the worker %s (role, serial) and reason %s", r, w.ID(), authz.ReasonNotManager)
	}

	// The worker renews.
	if err := renewCall(ctx, wconn); err != nil {
		t.Fatalf("RenewNodeCertificate() = %v", err)
	}
	r = logs.find(leader, "the renewal", and(action("renew", audit.ResultOK), targetNode(w.ID())))
	if r.Actor.NodeID != w.ID() || !slices.Equal(r.Commits, []string{"issue"}) || len(r.Target.Serials) != 1 || r.Target.Serials[0] == r.Actor.Serial {
		t.Errorf("renew line = %+v, want the worker as actor, a new serial, commits [issue]", r)
	}

	// Promote, demote and remove a node, on the leader's control socket.
	lctl := leader.Control()
	res2, _ := c.JoinNoDaemon(leader.Addr())
	other := res2.Node.NodeID
	for _, step := range []struct {
		call   func() error
		action string
		commit string
	}{
		{func() error {
			_, err := lctl.SetRole(ctx, &api.SetRoleRequest{NodeId: other, Role: "manager"})
			return err
		}, "node.promote", "set_role"},
		{func() error {
			_, err := lctl.SetRole(ctx, &api.SetRoleRequest{NodeId: other, Role: "worker"})
			return err
		}, "node.demote", "set_role"},
		{func() error {
			_, err := lctl.RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: other, Force: true})
			return err
		}, "node.rm", "remove_node"},
	} {
		if err := step.call(); err != nil {
			t.Fatalf("%s %s = %v", step.action, other, err)
		}
		r := logs.find(leader, step.action, and(action(step.action, audit.ResultOK), targetNode(other)))
		if r.Actor.Kind != "host" || r.Actor.UID == nil || *r.Actor.UID != uid || r.Arrival != "local" || !slices.Equal(r.Commits, []string{step.commit}) {
			t.Errorf("%s line = %+v, want the leader's host (uid %d), commits [%s]", step.action, r, uid, step.commit)
		}
	}
	if _, err := lctl.RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: joined, Force: true}); err != nil {
		t.Fatalf("RemoveNode(%s) = %v", joined, err)
	}

	// A join-token rotation on the follower's control socket, with the
	// caller's request ID: the follower relays it, and both managers
	// record it under that ID, the leader with what it committed.
	var header metadata.MD
	rotated, err := follower.Control().JoinToken(metadata.AppendToOutgoingContext(ctx, "x-request-id", "audit-rotate-1"),
		&api.JoinTokenRequest{Role: "worker", Rotate: true}, grpc.Header(&header))
	if err != nil {
		t.Fatalf("JoinToken(worker, rotate) on the follower = %v", err)
	}
	c.WorkerToken = rotated.GetToken()
	if got := header.Get("x-request-id"); !slices.Equal(got, []string{"audit-rotate-1"}) {
		t.Errorf("x-request-id header of the answer = %q, want the caller's", got)
	}
	fl := logs.find(follower, "the relayed rotation", and(action("join-token.rotate", audit.ResultOK), requestID("audit-rotate-1")))
	ll := logs.find(leader, "the rotation relayed to it", and(action("join-token.rotate", audit.ResultOK), requestID("audit-rotate-1")))
	if fl.Arrival != "local" || len(fl.Commits) != 0 || fl.Target.Role != "worker" {
		t.Errorf("follower's line = %+v, want a local call that committed nothing there", fl)
	}
	if ll.Arrival != "forwarded" || ll.Actor.Kind != "host" || ll.Actor.Via != follower.ID() || ll.Actor.UID == nil || *ll.Actor.UID != uid || !slices.Equal(ll.Commits, []string{"rotate_secret"}) {
		t.Errorf("leader's line = %+v, want the follower's host relayed by %s, commits [rotate_secret]", ll, follower.ID())
	}
	// A call without a request ID gets one, in the answer's header too.
	header = nil
	if _, err := lctl.JoinToken(ctx, &api.JoinTokenRequest{Role: "manager"}, grpc.Header(&header)); err != nil {
		t.Fatalf("JoinToken(manager) = %v", err)
	}
	if ids := header.Get("x-request-id"); len(ids) != 1 || !audit.ValidRequestID(ids[0]) {
		t.Errorf("x-request-id header = %q, want one made by the manager", ids)
	} else {
		logs.find(leader, "the token shown", and(action("join-token.show", audit.ResultOK), requestID(ids[0])))
	}

	// An admin certificate: created on the control socket, used over the
	// network to rotate the CA through the follower, then removed.
	pair, leaf := adminCertificate(t, c, leader, time.Hour)
	serial := leaf.SerialNumber.Text(16)
	r = logs.find(leader, "admin-cert create", action("admin-cert.create", audit.ResultOK))
	if !slices.Equal(r.Target.Serials, []string{serial}) || !slices.Equal(r.Commits, []string{"issue_admin"}) || r.Actor.Kind != "host" {
		t.Errorf("admin-cert.create line = %+v, want serial %s, commits [issue_admin]", r, serial)
	}
	oldCAKey := leader.Manager().State().CA.Key
	admin := api.NewControlClient(c.Dial(follower.Addr(), clientTLS(&pair, c.Roots())))
	rot, err := admin.RotateCA(ctx, &api.RotateCARequest{})
	if err != nil {
		t.Fatalf("RotateCA() with the admin certificate = %v", err)
	}
	r = logs.find(leader, "the CA rotation", action("ca.rotate", audit.ResultOK))
	if r.Actor.Kind != "admin" || r.Actor.Serial != serial || r.Actor.Via != follower.ID() || !slices.Equal(r.Commits, []string{"start_rotation"}) {
		t.Errorf("ca.rotate line = %+v, want admin %s via %s, commits [start_rotation]", r, serial, follower.ID())
	}
	logs.find(follower, "the CA rotation relayed", and(action("ca.rotate", audit.ResultOK), requestID(r.RequestID)))
	c.WaitRotation(rot.GetRotation().GetNewRootFingerprint(), true)
	testkit.Eventually(t, "the leader's completion of the rotation in an audit log", func() error {
		for _, m := range c.RunningManagers() {
			if slices.ContainsFunc(logs.read(m), isLeaderCommit("complete_rotation")) {
				return nil
			}
		}
		return fmt.Errorf("no manager's audit log records complete_rotation")
	})
	if _, err := lctl.RevokeAdminCertificates(ctx, &api.RevokeAdminCertificatesRequest{Serials: []string{serial}}); err != nil {
		t.Fatalf("RevokeAdminCertificates(%s) = %v", serial, err)
	}
	r = logs.find(leader, "admin-cert rm", action("admin-cert.rm", audit.ResultOK))
	if !slices.Equal(r.Target.Serials, []string{serial}) || !slices.Equal(r.Commits, []string{"revoke_admin"}) {
		t.Errorf("admin-cert.rm line = %+v, want serial %s, commits [revoke_admin]", r, serial)
	}

	// Autolock on, and the unlock key shown: both recorded, the key not.
	on := true
	up, err := lctl.Update(ctx, &api.UpdateRequest{Autolock: &on})
	if err != nil || up.GetUnlockKey() == "" {
		t.Fatalf("Update(autolock) = %v, %v; want an unlock key", up, err)
	}
	logs.find(leader, "autolock", and(action("update", audit.ResultOK), func(r audit.Record) bool { return slices.Contains(r.Commits, "set_autolock") }))
	uk, err := lctl.UnlockKey(ctx, &api.UnlockKeyRequest{})
	if err != nil {
		t.Fatalf("UnlockKey() = %v", err)
	}
	logs.find(leader, "the unlock key shown", action("unlock-key.show", audit.ResultOK))

	// Heartbeats went on all along: none is recorded.
	for _, m := range c.RunningManagers() {
		for _, r := range logs.read(m) {
			if r.Action == "heartbeat" && r.Result == audit.ResultOK && len(r.Commits) == 0 {
				t.Errorf("audit log of %s records a heartbeat that changed nothing: %+v", m.Name, r)
			}
			if r.Time.IsZero() || r.Manager != m.ID() || (r.RequestID == "" && r.Actor.Kind != "leader") {
				t.Errorf("audit log of %s: line %+v lacks its time, manager or request ID", m.Name, r)
			}
		}
	}

	// No secret known to this test is in any audit log.
	st := leader.Manager().State()
	var secrets []string
	for _, tok := range []string{c.WorkerToken, c.ManagerToken, bad, rotated.GetToken(), c.Token(leader, "manager")} {
		secrets = append(secrets, tok, mustSecret(t, tok))
	}
	secrets = append(secrets, st.WorkerSecret, st.ManagerSecret, st.UnlockKey, up.GetUnlockKey(), uk.GetUnlockKey())
	keys := [][]byte{oldCAKey, st.CA.Key, res.Credentials.NodeKey().Key, res2.Credentials.NodeKey().Key}
	for _, n := range c.Nodes() {
		nk := n.Credentials().NodeKey()
		keys = append(keys, nk.Key)
		secrets = append(secrets, binarySpellings(nk.DataKey)...)
	}
	adminKey, err := ca.MarshalKey(pair.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatalf("ca.MarshalKey(admin key) = %v", err)
	}
	keys = append(keys, adminKey)
	for _, k := range keys {
		secrets = append(secrets, pemLines(k)...)
	}
	secrets = append(secrets, binarySpellings(st.GossipKey)...)
	checkNoSecret(t, logs, c.Nodes(), secrets)
}

// binarySpellings returns the spellings of a binary secret a log could hold.
func binarySpellings(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	return []string{hex.EncodeToString(b), base64.StdEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b), string(b)}
}

// pemLines returns a PEM key's lines of base64, each a secret on its own.
func pemLines(p []byte) []string {
	var out []string
	for line := range strings.Lines(string(p)) {
		if line = strings.TrimSpace(line); len(line) >= 16 && !strings.HasPrefix(line, "-----") {
			out = append(out, line)
		}
	}
	return out
}

// checkNoSecret fails if any node's audit log holds one of secrets.
func checkNoSecret(t *testing.T, logs auditLogs, nodes []*clustertest.Node, secrets []string) {
	t.Helper()
	var checked int
	for _, n := range nodes {
		b, err := os.ReadFile(logs.path(n.Name))
		if err != nil {
			t.Fatalf("read the audit log of %s: %v", n.Name, err)
		}
		for _, s := range secrets {
			if len(s) < 8 {
				t.Fatalf("secret %q is too short to search for: the test lost it", s)
			}
			checked++
			if strings.Contains(string(b), s) {
				t.Errorf("audit log of %s holds a secret: %.12s...", n.Name, s)
			}
		}
	}
	if checked == 0 {
		t.Fatalf("no secret searched for")
	}
}

// TestAuditLogUnopenable starts a node whose audit log cannot be opened,
// or may be read by others: it refuses to start, and says why.
func TestAuditLogUnopenable(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.audit")
	if err := os.WriteFile(open, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"missing directory", filepath.Join(dir, "no", "such", "audit.log"), "no such file"},
		{"a directory", dir, "audit-log"},
		{"readable by others", open, "chmod 600"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := clustertest.Config(t, "m")
			cfg.Init = &manager.InitOptions{}
			cfg.AuditLog = tc.path
			n, err := node.Start(t.Context(), cfg)
			if err == nil {
				n.Stop()
				t.Fatalf("node.Start(--audit-log %s) = nil error", tc.path)
			}
			if !strings.Contains(err.Error(), "--audit-log") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("node.Start(--audit-log %s) = %v, want it to name --audit-log and say %q", tc.path, err, tc.want)
			}
			if names := dirEntries(t, cfg.DataDir); len(names) != 0 {
				t.Errorf("data dir holds %v after a refused start, want nothing", names)
			}
		})
	}
}
