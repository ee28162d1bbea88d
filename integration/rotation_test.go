package integration

// Root CA rotation (DESIGN.md flow 5), end to end: real managers and worker
// daemons that heartbeat, renew and gossip, a rotation driven to its end by
// the leader, and what the cluster trusts afterwards. Each test runs its own
// cluster on the fast timings below.

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/membership"
)

// Timings of the rotation tests: nodes heartbeat every 300ms, wait at most
// 200ms before renewing for a rotation, and the leader reconciles every
// 200ms. Raft keeps managerConfig's timings.
const (
	rotHeartbeat = 300 * time.Millisecond
	rotReconcile = 200 * time.Millisecond
	rotJitter    = 200 * time.Millisecond
)

// fastRotation sets the rotation tests' timings.
func fastRotation(cfg *manager.Config) {
	cfg.HeartbeatPeriod = rotHeartbeat
	cfg.ReconcilePeriod = rotReconcile
	cfg.RotationJitter = rotJitter
}

// rotationCluster is a test cluster of managers and worker daemons.
// Everything it starts is stopped when the test ends.
type rotationCluster struct {
	*cluster
	timing  func(*manager.Config)
	workers []*rotWorker
	// ctls are the control clients of the managers, by index.
	ctls map[int]api.ControlClient
}

// rotWorker is a worker daemon of a rotationCluster, running or stopped.
type rotWorker struct {
	cfg manager.Config
	id  string
	w   *agent.Worker // nil while stopped
}

// newRotationCluster starts managers managers and workers worker daemons on
// the fast rotation timings, with the given rotation grace (0 keeps the
// default), and waits until the managers agree on every node and every
// node is in gossip.
func newRotationCluster(tb testing.TB, managers, workers int, grace time.Duration) *rotationCluster {
	tb.Helper()
	return buildRotationCluster(tb, managers, workers, grace, fastRotation, waitFor)
}

// buildRotationCluster is newRotationCluster with the timings timing sets
// on each node's configuration, waiting at most settle for gossip to reach
// every node.
func buildRotationCluster(tb testing.TB, managers, workers int, grace time.Duration, timing func(*manager.Config), settle time.Duration) *rotationCluster {
	tb.Helper()
	return buildClusterWith(tb, managers, workers, grace, timing, settle, manager.InitOptions{})
}

// buildClusterWith is buildRotationCluster for a cluster initialised with
// opts (an imported or external CA).
func buildClusterWith(tb testing.TB, managers, workers int, grace time.Duration, timing func(*manager.Config), settle time.Duration, opts manager.InitOptions) *rotationCluster {
	tb.Helper()
	// Registered before the stops, so that the data dirs go after them
	// (see newCluster).
	tb.TempDir()
	rc := &rotationCluster{cluster: &cluster{tb: tb, sockDir: shortDir(tb)}, timing: timing, ctls: map[int]api.ControlClient{}}
	tb.Cleanup(rc.stopAll)
	for i := range managers {
		cfg := rc.config(fmt.Sprintf("m%d", i))
		if i == 0 {
			m, err := manager.Init(tb.Context(), cfg, opts)
			if err != nil {
				tb.Fatalf("manager.Init() = %v", err)
			}
			rc.add(cfg, m)
			rc.clusterID, rc.bundle = m.ClusterID(), m.Credentials().Bundle()
			rc.workerToken, rc.managerToken = rc.token(0, "worker"), rc.token(0, "manager")
			continue
		}
		rc.joinManager(cfg, rc.managerToken)
	}
	rc.waitVoters(managers)
	if grace > 0 {
		rc.setGrace(grace)
	}
	for i := range workers {
		rc.startWorker(fmt.Sprintf("w%d", i))
	}
	rc.waitConverged()
	rc.waitGossip(settle)
	return rc
}

// config returns a node configuration of this cluster.
func (rc *rotationCluster) config(name string) manager.Config {
	cfg := managerConfig(rc.tb, rc.sockDir, name)
	rc.timing(&cfg)
	return cfg
}

// via returns the API address of the first running manager, to join
// through.
func (rc *rotationCluster) via() string {
	rc.tb.Helper()
	run := rc.running()
	if len(run) == 0 {
		rc.tb.Fatalf("no running manager")
	}
	return rc.managers[run[0]].addr
}

// joinManager joins a manager daemon with token through a running manager,
// and adds it to the cluster.
func (rc *rotationCluster) joinManager(cfg manager.Config, token string) *manager.Manager {
	rc.tb.Helper()
	m, w, err := manager.Join(rc.tb.Context(), cfg, token, rc.via())
	if err != nil {
		rc.tb.Fatalf("manager.Join(manager token, %s) = %v", rc.via(), err)
	}
	if m == nil {
		w.Stop()
		rc.tb.Fatalf("manager.Join(manager token) returned a worker, want a manager")
	}
	rc.add(cfg, m)
	return m
}

// startWorker joins a worker daemon with the cluster's worker token through
// a running manager, the way `quorumca join` does.
func (rc *rotationCluster) startWorker(name string) *rotWorker {
	rc.tb.Helper()
	cfg := rc.config(name)
	m, w, err := manager.Join(rc.tb.Context(), cfg, rc.workerToken, rc.via())
	if err != nil {
		rc.tb.Fatalf("manager.Join(worker token) = %v", err)
	}
	if m != nil {
		m.Stop()
		rc.tb.Fatalf("manager.Join(worker token) started a manager, want a worker")
	}
	rw := &rotWorker{cfg: cfg, id: w.Credentials().Identity().NodeID, w: w}
	rc.workers = append(rc.workers, rw)
	return rw
}

// stop stops the worker daemon if it runs.
func (rw *rotWorker) stop() {
	if rw.w != nil {
		rw.w.Stop()
		rw.w = nil
	}
}

// restart starts the stopped worker again from its data directory.
func (rw *rotWorker) restart(tb testing.TB) *agent.Worker {
	tb.Helper()
	w, err := agent.StartWorker(agent.WorkerConfig{
		DataDir: rw.cfg.DataDir, SocketPath: rw.cfg.SocketPath, Logger: rw.cfg.Logger,
		HeartbeatPeriod: rw.cfg.HeartbeatPeriod, GossipTiming: rw.cfg.GossipTiming,
	})
	if err != nil {
		tb.Fatalf("agent.StartWorker(%s) = %v", rw.cfg.DataDir, err)
	}
	rw.w = w
	return w
}

// stopAll stops the workers, all at once, then the managers.
func (rc *rotationCluster) stopAll() {
	var wg sync.WaitGroup
	for _, rw := range rc.workers {
		wg.Go(rw.stop)
	}
	wg.Wait()
	rc.cluster.stopAll()
}

// runningWorkers returns the running worker daemons.
func (rc *rotationCluster) runningWorkers() []*rotWorker {
	var out []*rotWorker
	for _, rw := range rc.workers {
		if rw.w != nil {
			out = append(out, rw)
		}
	}
	return out
}

// nodeCreds returns the credentials of every running daemon, managers and
// workers, by node ID.
func (rc *rotationCluster) nodeCreds() map[string]*agent.Credentials {
	out := map[string]*agent.Credentials{}
	for _, i := range rc.running() {
		m := rc.managers[i].m
		out[m.NodeID()] = m.Credentials()
	}
	for _, rw := range rc.runningWorkers() {
		out[rw.id] = rw.w.Credentials()
	}
	return out
}

// waitGossip waits until every worker daemon sees every other daemon in
// gossip, so that a rotation starts with every node in it. (A join that
// memberlist's broadcasts miss arrives with its next push/pull: 5s with
// fast timing, 30s on LAN timing.)
func (rc *rotationCluster) waitGossip(bound time.Duration) {
	rc.tb.Helper()
	want := len(rc.running()) + len(rc.runningWorkers()) - 1
	eventually(rc.tb, bound, "every worker sees every node in gossip", func() error {
		for _, rw := range rc.runningWorkers() {
			mem := rw.w.Gossip().Member()
			if mem == nil {
				return fmt.Errorf("worker %s: gossip not started", rw.id)
			}
			if n := mem.NumPeers(); n != want {
				return fmt.Errorf("worker %s sees %d peers, want %d", rw.id, n, want)
			}
		}
		return nil
	})
}

// ctl returns a control client of manager i, kept for the whole test.
func (rc *rotationCluster) ctl(i int) api.ControlClient {
	rc.tb.Helper()
	if c, ok := rc.ctls[i]; ok {
		return c
	}
	c := controlAt(rc.tb, rc.managers[i].cfg.SocketPath)
	rc.ctls[i] = c
	return c
}

// anyCtl returns a control client of the first running manager.
func (rc *rotationCluster) anyCtl() api.ControlClient {
	rc.tb.Helper()
	run := rc.running()
	if len(run) == 0 {
		rc.tb.Fatalf("no running manager")
	}
	return rc.ctl(run[0])
}

// rotCtx returns a context for one call.
func rotCtx(tb testing.TB) (context.Context, context.CancelFunc) {
	return context.WithTimeout(tb.Context(), 10*time.Second)
}

// setGrace sets the rotation grace with Control.Update.
func (rc *rotationCluster) setGrace(grace time.Duration) {
	rc.tb.Helper()
	ctx, cancel := rotCtx(rc.tb)
	defer cancel()
	secs := int64(grace / time.Second)
	resp, err := rc.anyCtl().Update(ctx, &api.UpdateRequest{RotationGraceSeconds: secs})
	if err != nil {
		rc.tb.Fatalf("Control.Update(rotation_grace_seconds: %d) = %v", secs, err)
	}
	if resp.GetRotationGraceSeconds() != secs {
		rc.tb.Fatalf("Control.Update(rotation_grace_seconds: %d) answered %d", secs, resp.GetRotationGraceSeconds())
	}
}

// tryRotate calls Control.RotateCA on a running manager.
func (rc *rotationCluster) tryRotate(req *api.RotateCARequest) (*api.RotateCAResponse, error) {
	ctx, cancel := rotCtx(rc.tb)
	defer cancel()
	return rc.anyCtl().RotateCA(ctx, req)
}

// rotate starts a rotation to a new generated root and returns the new
// root's fingerprint.
func (rc *rotationCluster) rotate() string {
	rc.tb.Helper()
	resp, err := rc.tryRotate(&api.RotateCARequest{})
	if err != nil {
		rc.tb.Fatalf("Control.RotateCA() = %v", err)
	}
	r := resp.GetRotation()
	if !r.GetInProgress() || r.GetNewRootFingerprint() == "" {
		rc.tb.Fatalf("Control.RotateCA() = %v, want a rotation in progress", r)
	}
	return r.GetNewRootFingerprint()
}

// getCA calls Control.GetCA on a running manager.
func (rc *rotationCluster) getCA() (*api.GetCAResponse, error) {
	ctx, cancel := rotCtx(rc.tb)
	defer cancel()
	return rc.anyCtl().GetCA(ctx, &api.GetCARequest{})
}

// waitRotation waits until the rotation to the root with fingerprint root
// has completed and, if trusting, every node trusts the new root; it
// returns the last GetCA answer.
func (rc *rotationCluster) waitRotation(root string, trusting bool) *api.GetCAResponse {
	rc.tb.Helper()
	var last *api.GetCAResponse
	eventually(rc.tb, waitFor, "rotation completed", func() (err error) {
		last, err = rc.rotationDone(root, trusting)
		return err
	})
	return last
}

// rotationDone returns GetCA's answer if the rotation to the root with
// fingerprint root has completed and, if trusting, every node trusts the
// new root; otherwise an error that says how far it is.
func (rc *rotationCluster) rotationDone(root string, trusting bool) (*api.GetCAResponse, error) {
	resp, err := rc.getCA()
	if err != nil {
		return nil, err
	}
	r := resp.GetRotation()
	switch {
	case r.GetNewRootFingerprint() != root:
		return nil, fmt.Errorf("GetCA() shows the rotation to %s, want %s", r.GetNewRootFingerprint(), root)
	case r.GetInProgress():
		return nil, fmt.Errorf("still in progress: %s", rotationSummary(r))
	case trusting && r.GetTrusting() != r.GetTotal():
		return nil, fmt.Errorf("completed, not every node trusts the new root yet: %s", rotationSummary(r))
	}
	return resp, nil
}

// rotationSummary describes a rotation's progress in one line.
func rotationSummary(r *api.Rotation) string {
	var nodes []string
	for _, n := range r.GetNodes() {
		nodes = append(nodes, fmt.Sprintf("%s:%s/trusts=%t", n.GetId()[:6], n.GetState(), n.GetTrustsNewRoot()))
	}
	return fmt.Sprintf("in_progress=%t total=%d converged=%d trusting=%d skipped=%d [%s]",
		r.GetInProgress(), r.GetTotal(), r.GetConverged(), r.GetTrusting(), r.GetSkipped(), strings.Join(nodes, " "))
}

// rotNode returns node id's entry in a rotation's progress.
func rotNode(r *api.Rotation, id string) (*api.RotationNode, bool) {
	for _, n := range r.GetNodes() {
		if n.GetId() == id {
			return n, true
		}
	}
	return nil, false
}

// listNodes returns Control.ListNodes from a running manager, by node ID.
func (rc *rotationCluster) listNodes() (map[string]*api.Node, error) {
	ctx, cancel := rotCtx(rc.tb)
	defer cancel()
	resp, err := rc.anyCtl().ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]*api.Node{}
	for _, n := range resp.GetNodes() {
		out[n.GetId()] = n
	}
	return out, nil
}

// waitConvergedExcept waits until every node of the rotation in progress
// but those named has converged, and the rotation is still in progress.
func (rc *rotationCluster) waitConvergedExcept(ids ...string) {
	rc.tb.Helper()
	eventually(rc.tb, waitFor, fmt.Sprintf("every node but %v converged", ids), func() error {
		resp, err := rc.getCA()
		if err != nil {
			return err
		}
		r := resp.GetRotation()
		if !r.GetInProgress() {
			return fmt.Errorf("rotation not in progress: %s", rotationSummary(r))
		}
		for _, n := range r.GetNodes() {
			if slices.Contains(ids, n.GetId()) == (n.GetState() == "converged") {
				return fmt.Errorf("node %s is %s: %s", n.GetId(), n.GetState(), rotationSummary(r))
			}
		}
		return nil
	})
}

// rotChainOf returns the certificate chain creds present, leaf first.
func rotChainOf(tb testing.TB, creds *agent.Credentials) []*x509.Certificate {
	tb.Helper()
	return rotParseChain(tb, creds.Certificate())
}

// rotParseChain parses the chain of a key pair, leaf first.
func rotParseChain(tb testing.TB, pair *tls.Certificate) []*x509.Certificate {
	tb.Helper()
	var out []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatalf("x509.ParseCertificate() = %v", err)
		}
		out = append(out, c)
	}
	return out
}

// rotParseRoot parses a PEM bundle of one root, and returns it as a pool and
// as a certificate.
func rotParseRoot(tb testing.TB, bundle []byte) (*x509.CertPool, *x509.Certificate) {
	tb.Helper()
	pool, roots, err := ca.ParseBundle(bundle)
	if err != nil || len(roots) != 1 {
		tb.Fatalf("ParseBundle() = %d roots, %v; want one root", len(roots), err)
	}
	return pool, roots[0]
}

// holdRotation joins a node with no daemon: it never renews nor gossips,
// so a rotation waits for it (until the grace runs out).
func (rc *rotationCluster) holdRotation() agent.JoinResult {
	rc.tb.Helper()
	res, _ := rc.joinWorker(rc.via())
	rc.waitConverged()
	return res
}

// TestRotationCompletes rotates the root of a 3-manager, 10-worker cluster
// and checks where it leaves every node: certificates signed by the new
// key, the new root alone trusted everywhere, the old key gone from the
// state, old join tokens refused and new ones admitting, and every node
// ready in node ls.
func TestRotationCompletes(t *testing.T) {
	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, baseline) }) // runs last
	rc := newRotationCluster(t, 3, 10, 0)
	oldBundle, oldRoots := rc.bundle, rc.roots()
	before := rc.m(rc.leader()).State()
	oldWorker, oldManager := rc.workerToken, rc.managerToken
	ctx, cancel := rotCtx(t)
	defer cancel()
	extra, err := rc.anyCtl().CreateToken(ctx, &api.CreateTokenRequest{Role: "worker"})
	if err != nil {
		t.Fatalf("Control.CreateToken(worker) = %v", err)
	}
	// A certificate of the old root, to present once the rotation is done.
	oldCert := rc.workers[0].w.Credentials().Certificate()
	if _, _, err := ca.Verify(rotParseChain(t, oldCert), oldRoots, time.Now()); err != nil {
		t.Fatalf("ca.Verify(a worker's certificate, old root) before the rotation = %v", err)
	}

	root := rc.rotate()
	got := rc.waitRotation(root, true)
	r := got.GetRotation()
	if want := uint32(13); r.GetTotal() != want || r.GetSkipped() != 0 {
		t.Errorf("GetCA() after completion: %s; want total %d, none skipped", rotationSummary(r), want)
	}
	newBundle := got.GetBundle()
	if string(newBundle) == string(oldBundle) {
		t.Fatalf("GetCA().Bundle after the rotation is the old bundle")
	}
	newRoots, newRoot := rotParseRoot(t, newBundle)

	// The state: on every manager, the rotation is over and the old key is
	// gone.
	eventually(t, waitFor, "every manager applied the completion", func() error {
		for _, i := range rc.running() {
			st := rc.managers[i].m.State()
			switch {
			case st.Rotation != nil:
				return fmt.Errorf("manager %d: State().Rotation = %+v, want nil", i, st.Rotation)
			case st.LastRotation == nil:
				return fmt.Errorf("manager %d: State().LastRotation = nil", i)
			case string(st.CA.Bundle) != string(newBundle):
				return fmt.Errorf("manager %d: State().CA.Bundle is not GetCA's", i)
			}
		}
		return nil
	})
	after := rc.m(rc.leader()).State()
	if string(after.CA.Key) == string(before.CA.Key) {
		t.Errorf("State().CA.Key after the rotation is the old key")
	}
	if after.CAStatus.Equal(before.CAStatus) {
		t.Errorf("State().CAStatus after the rotation = %s, the old one", after.CAStatus)
	}
	if len(after.LastRotation.Skipped) != 0 {
		t.Errorf("State().LastRotation.Skipped = %v, want none", after.LastRotation.Skipped)
	}

	// Every node: the new bundle alone, a certificate of the new key.
	creds := rc.nodeCreds()
	if len(creds) != 13 {
		t.Fatalf("%d running nodes, want 13", len(creds))
	}
	eventually(t, waitFor, "every node holds the new bundle", func() error {
		for id, c := range creds {
			if string(c.Bundle()) != string(newBundle) {
				return fmt.Errorf("node %s: Credentials().Bundle() is not the new bundle", id)
			}
		}
		return nil
	})
	now := time.Now()
	for id, c := range creds {
		chain := rotChainOf(t, c)
		if !c.Issuer().Equal(after.CAStatus) {
			t.Errorf("node %s: Credentials().Issuer() = %s, want the new CA %s", id, c.Issuer(), after.CAStatus)
		}
		if got, _, err := ca.Verify(chain, newRoots, now); err != nil {
			t.Errorf("node %s: ca.Verify(chain, new root) = %v", id, err)
		} else if got.NodeID != id {
			t.Errorf("node %s: ca.Verify(chain, new root) names %s", id, got.NodeID)
		}
		// Signed by the new key itself: the leaf alone reaches the new
		// root, and not the old one. (The chain a node renewed into during
		// the rotation still carries the new root cross-signed by the old
		// key, as DESIGN.md flow 5 and Docker do, so leaf + chain still
		// verify under the old root until the node next renews; what ends
		// is the trust in the old root, checked below.)
		if _, _, err := ca.Verify(chain[:1], newRoots, now); err != nil {
			t.Errorf("node %s: ca.Verify(leaf alone, new root) = %v", id, err)
		}
		if _, _, err := ca.Verify(chain[:1], oldRoots, now); err == nil {
			t.Errorf("node %s: ca.Verify(leaf alone, old bundle) = nil, want an error: the leaf is signed by the old key", id)
		}
		for _, inter := range chain[1:] {
			if !inter.IsCA || !lcSamePublicKey(inter, newRoot) {
				t.Errorf("node %s: its chain carries another certificate than the cross-signed new root: %s", id, rotChainNames(chain))
			}
		}
		// The node no longer trusts the old root.
		if _, _, err := ca.Verify(rotParseChain(t, oldCert), c.Roots(), now); err == nil {
			t.Errorf("node %s: a certificate of the old root verifies under Credentials().Roots()", id)
		}
	}

	// Both standing tokens and the extra one are gone.
	rotCheckOldTokensRefused(t, rc, oldWorker, oldManager, extra.GetToken())
	if ts, err := rc.anyCtl().ListTokens(ctx, &api.ListTokensRequest{}); err != nil || len(ts.GetTokens()) != 0 {
		t.Errorf("Control.ListTokens() after the rotation = %v, %v; want none", ts.GetTokens(), err)
	}

	// The new tokens admit a worker and a manager.
	rc.workerToken, rc.managerToken = rc.token(rc.running()[0], "worker"), rc.token(rc.running()[0], "manager")
	if rc.workerToken == oldWorker || rc.managerToken == oldManager {
		t.Fatalf("Control.JoinToken() after the rotation returned an old token")
	}
	joined, _ := rc.joinWorker(rc.via())
	// "From this point on, all new node certificates issued are signed
	// with the new root CA, and do not contain any intermediates."
	if chain := rotChainOf(t, joined.Credentials); len(chain) != 1 {
		t.Errorf("worker joined after the rotation: chain %s, want the leaf alone", rotChainNames(chain))
	} else if _, _, err := ca.Verify(chain, newRoots, time.Now()); err != nil {
		t.Errorf("worker joined with the new token: certificate does not verify under the new root: %v", err)
	}
	m := rc.joinManager(rc.config("m3"), rc.managerToken)
	rc.waitVoters(4)
	if string(m.Credentials().Bundle()) != string(newBundle) {
		t.Errorf("manager joined with the new token holds another bundle than the new root")
	}

	eventually(t, waitFor, "node ls shows every node ready", func() error {
		nodes, err := rc.listNodes()
		if err != nil {
			return err
		}
		if len(nodes) != 15 {
			return fmt.Errorf("ListNodes() lists %d nodes, want 15", len(nodes))
		}
		for id, n := range nodes {
			if n.GetTlsStatus() != "ready" {
				return fmt.Errorf("node %s: tls_status %q, want \"ready\"", id, n.GetTlsStatus())
			}
		}
		return nil
	})
}

// rotChainNames describes a chain for an error message: each certificate's
// subject and issuer.
func rotChainNames(chain []*x509.Certificate) string {
	var parts []string
	for _, c := range chain {
		parts = append(parts, fmt.Sprintf("[%s issued by %s]", c.Subject, c.Issuer))
	}
	return strings.Join(parts, " ")
}

// rotCheckOldTokensRefused fails unless joins with the tokens from before a
// completed rotation are refused: they pin the old bundle, and their
// secrets were replaced too.
func rotCheckOldTokensRefused(t *testing.T, rc *rotationCluster, tokens ...string) {
	t.Helper()
	nodes := rc.waitConverged()
	via := rc.via()
	for _, tok := range tokens {
		dir := t.TempDir()
		_, err := agent.Join(t.Context(), agent.JoinConfig{DataDir: dir, Token: tok, Remote: via, Logger: testLogger()})
		if !errors.Is(err, ca.ErrDigestMismatch) || !errors.Is(err, agent.ErrJoinRefused) {
			t.Errorf("agent.Join(token from before the rotation) = %v, want agent.ErrJoinRefused wrapping ca.ErrDigestMismatch", err)
		}
		if names := dirEntries(t, dir); len(names) != 0 {
			t.Errorf("refused join left %v in its data dir", names)
		}
		// The old secret, pinning the new bundle: the secret is refused.
		parsed, err := ca.ParseToken(tok)
		if err != nil {
			t.Fatal(err)
		}
		repinned, err := ca.NewToken(rc.m(rc.running()[0]).State().CA.Bundle, parsed.Secret)
		if err != nil {
			t.Fatal(err)
		}
		_, err = agent.Join(t.Context(), agent.JoinConfig{DataDir: t.TempDir(), Token: repinned.String(), Remote: via, Logger: testLogger()})
		if got := status.Code(err); got != codes.PermissionDenied {
			t.Errorf("agent.Join(old secret, new digest) = %v (code %s), want %s", err, got, codes.PermissionDenied)
		}
	}
	rc.checkNodesUnchanged(t, nodes)
}

// rotMutualTLS runs one mutual-TLS exchange between two nodes' own
// credentials: srv serves with Credentials.ServerTLS, which verifies the
// client against srv's bundle; cli dials presenting its certificate and
// verifying the server's chain against cli's bundle with ca.Verify. (Node
// certificates name node IDs, not addresses: the client checks the chain,
// not a host name.) It returns the identities each side verified.
func rotMutualTLS(srv, cli *agent.Credentials) (serverSaw, clientSaw ca.Identity, err error) {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv.ServerTLS(tls.RequireAndVerifyClientCert))
	if err != nil {
		return ca.Identity{}, ca.Identity{}, err
	}
	defer ln.Close()
	type result struct {
		id  ca.Identity
		err error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- result{err: fmt.Errorf("server handshake: %w", err)}
			return
		}
		cs := tc.ConnectionState()
		if len(cs.VerifiedChains) == 0 {
			done <- result{err: errors.New("server: no verified client chain")}
			return
		}
		id, err := ca.IdentityOf(cs.VerifiedChains[0][0])
		if err == nil {
			_, err = tc.Write([]byte("ok"))
		}
		done <- result{id: id, err: err}
	}()
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cli.Certificate(), nil
		},
		InsecureSkipVerify: true, // VerifyConnection checks the chain against cli's bundle
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, _, err := ca.Verify(cs.PeerCertificates, cli.Roots(), time.Now())
			clientSaw = id
			return err
		},
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cfg)
	if err != nil {
		ln.Close()
		r := <-done
		return ca.Identity{}, ca.Identity{}, fmt.Errorf("client handshake: %w (server: %v)", err, r.err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	// In TLS 1.3 the server checks the client's certificate after the
	// client's handshake returned: read its answer.
	var buf [2]byte
	_, rerr := io.ReadFull(conn, buf[:])
	r := <-done
	if r.err != nil {
		return ca.Identity{}, ca.Identity{}, r.err
	}
	if rerr != nil {
		return ca.Identity{}, ca.Identity{}, fmt.Errorf("client read: %w", rerr)
	}
	return r.id, clientSaw, nil
}

// TestRotationMixedTLS checks the promise of the cross-signed root while a
// rotation runs: a node that renewed to the new CA and a node still on the
// old one complete mutual TLS both ways, each verifying the other's chain
// against its own (old) bundle.
func TestRotationMixedTLS(t *testing.T) {
	rc := newRotationCluster(t, 3, 2, 0)
	held := rc.holdRotation() // never renews: the rotation stays in progress
	rc.rotate()
	renewed := rc.workers[0].w.Credentials()
	eventually(t, waitFor, "a worker daemon renewed to the new CA", func() error {
		st := rc.m(rc.leader()).State()
		if st.Rotation == nil {
			return errors.New("State().Rotation = nil, want the rotation in progress")
		}
		if !renewed.Issuer().Equal(st.CAStatus) {
			return fmt.Errorf("worker's Credentials().Issuer() = %s, want the new CA %s", renewed.Issuer(), st.CAStatus)
		}
		return nil
	})
	old := held.Credentials
	st := rc.m(rc.leader()).State()
	if old.Issuer().Equal(st.CAStatus) || !old.Issuer().Equal(st.Rotation.From) {
		t.Fatalf("the held node's Issuer() = %s, want the old CA %s", old.Issuer(), st.Rotation.From)
	}
	// The renewed certificate verifies under the new root too.
	newRoots, _ := rotParseRoot(t, st.Rotation.Bundle)
	if _, _, err := ca.Verify(rotChainOf(t, renewed), newRoots, time.Now()); err != nil {
		t.Errorf("ca.Verify(renewed worker's chain, new root) = %v", err)
	}
	ids := map[*agent.Credentials]string{renewed: renewed.Identity().NodeID, old: old.Identity().NodeID}
	for _, tc := range []struct {
		name     string
		srv, cli *agent.Credentials
	}{
		{"renewed node serves, old-root node dials", renewed, old},
		{"old-root node serves, renewed node dials", old, renewed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serverSaw, clientSaw, err := rotMutualTLS(tc.srv, tc.cli)
			if err != nil {
				t.Fatalf("mutual TLS: %v", err)
			}
			if serverSaw.NodeID != ids[tc.cli] || clientSaw.NodeID != ids[tc.srv] {
				t.Errorf("server verified %s, client verified %s; want %s and %s", serverSaw.NodeID, clientSaw.NodeID, ids[tc.cli], ids[tc.srv])
			}
		})
	}
	if resp, err := rc.getCA(); err != nil || !resp.GetRotation().GetInProgress() {
		t.Errorf("GetCA() after the handshakes = %v, %v; want the rotation still in progress", resp.GetRotation(), err)
	}
}

// TestRotationSurvivesLeaderLoss stops the leader in the middle of a
// rotation: the rotation lives in the replicated state, so the next leader
// carries it to its end, skipping the stopped leader and a node that never
// renews once the grace has run out.
func TestRotationSurvivesLeaderLoss(t *testing.T) {
	rc := newRotationCluster(t, 3, 4, 3*time.Second)
	held := rc.holdRotation()
	root := rc.rotate()
	l := rc.leader()
	leaderID := rc.managers[l].id
	resp, err := rc.getCA()
	if err != nil || !resp.GetRotation().GetInProgress() {
		t.Fatalf("GetCA() right after RotateCA = %v, %v; want in progress", resp.GetRotation(), err)
	}
	rc.stop(l)

	got := rc.waitRotation(root, false).GetRotation()
	if nl := rc.leader(); rc.managers[nl].id == leaderID {
		t.Fatalf("the stopped manager %s leads", leaderID)
	}
	st := rc.m(rc.leader()).State()
	want := []string{held.Node.NodeID, leaderID}
	if n, _ := st.Node(leaderID); n.Cert.Issuer.Equal(st.CAStatus) {
		// It renewed in the few milliseconds between RotateCA and Stop; if
		// the next leader saw it serve that certificate before it left
		// gossip, it converged, rightly.
		if rn, _ := rotNode(got, leaderID); rn.GetState() == "converged" {
			t.Logf("the stopped leader renewed before it stopped, and converged")
			want = want[:1]
		}
	}
	slices.Sort(want)
	var skipped []string
	for _, n := range got.GetNodes() {
		if n.GetState() == "skipped" {
			skipped = append(skipped, n.GetId())
		}
	}
	slices.Sort(skipped)
	if !slices.Equal(skipped, want) || got.GetSkipped() != uint32(len(want)) {
		t.Errorf("GetCA() skipped %v (count %d), want %v: %s", skipped, got.GetSkipped(), want, rotationSummary(got))
	}
	if st.Rotation != nil || st.LastRotation == nil || !slices.Equal(st.LastRotation.Skipped, want) {
		t.Errorf("State(): Rotation %v, LastRotation %+v; want none in progress and %v skipped", st.Rotation, st.LastRotation, want)
	}
	newBundle := st.CA.Bundle
	eventually(t, waitFor, "every running node on the new root", func() error {
		for id, c := range rc.nodeCreds() {
			if string(c.Bundle()) != string(newBundle) {
				return fmt.Errorf("node %s: Credentials().Bundle() is not the new root", id)
			}
			if !c.Issuer().Equal(st.CAStatus) {
				return fmt.Errorf("node %s: Credentials().Issuer() = %s, want %s", id, c.Issuer(), st.CAStatus)
			}
		}
		return nil
	})
	eventually(t, waitFor, "every running node trusts the new root, as GetCA counts", func() error {
		resp, err := rc.getCA()
		if err != nil {
			return err
		}
		// All but the held node and the stopped leader.
		if r := resp.GetRotation(); r.GetTrusting() != r.GetTotal()-2 {
			return fmt.Errorf("%s; want trusting = total - 2", rotationSummary(r))
		}
		return nil
	})
}

// TestRotationSkipsDownWorker stops a worker before a rotation: it is named
// down, then skipped once the grace has run out, and the rotation completes
// without it. Back up, it is refused by every manager at the TLS handshake,
// and says it must rejoin; a fresh join with the new token works.
func TestRotationSkipsDownWorker(t *testing.T) {
	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, baseline) }) // runs last
	rc := newRotationCluster(t, 3, 3, 2*time.Second)
	down := rc.workers[2]
	down.stop()
	root := rc.rotate()

	state := func() (string, error) {
		resp, err := rc.getCA()
		if err != nil {
			return "", err
		}
		n, ok := rotNode(resp.GetRotation(), down.id)
		if !ok {
			return "", fmt.Errorf("GetCA() does not list %s: %s", down.id, rotationSummary(resp.GetRotation()))
		}
		return n.GetState(), nil
	}
	for _, want := range []string{"down", "skipped"} {
		eventually(t, waitFor, fmt.Sprintf("GetCA() names the stopped worker %s", want), func() error {
			got, err := state()
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("state %q", got)
			}
			return nil
		})
	}
	got := rc.waitRotation(root, false)
	if r := got.GetRotation(); r.GetSkipped() != 1 {
		t.Errorf("GetCA() after completion: %s; want the stopped worker alone skipped", rotationSummary(r))
	}
	newBundle := got.GetBundle()
	eventually(t, waitFor, "every manager applied the completion and holds the new bundle", func() error {
		for _, i := range rc.running() {
			m := rc.managers[i].m
			st := m.State()
			if st.Rotation != nil || !st.WasSkipped(down.id) {
				return fmt.Errorf("manager %d: Rotation %v, LastRotation %+v; want %s skipped", i, st.Rotation, st.LastRotation, down.id)
			}
			if string(m.Credentials().Bundle()) != string(newBundle) {
				return fmt.Errorf("manager %d still holds the old bundle", i)
			}
		}
		return nil
	})
	nodes, err := rc.listNodes()
	if err != nil {
		t.Fatalf("ListNodes() = %v", err)
	}
	for id, n := range nodes {
		want := "ready"
		if id == down.id {
			want = "rejoin needed"
		}
		if n.GetTlsStatus() != want {
			t.Errorf("ListNodes(): node %s tls_status %q, want %q", id, n.GetTlsStatus(), want)
		}
	}

	// Back up, from its data directory: refused at the handshake by every
	// manager, and told to rejoin.
	w := down.restart(t)
	creds := w.Credentials()
	if string(creds.Bundle()) == string(newBundle) {
		t.Fatalf("the restarted worker already holds the new bundle")
	}
	for _, i := range rc.running() {
		addr := rc.managers[i].addr
		cfg := creds.ClientTLS(agent.ManagerName)
		if err := lcRefusedAt(t, addr, cfg, "unknown certificate authority", lcHeartbeat); err != nil {
			t.Errorf("manager %d: Heartbeat with the skipped worker's certificate: %v", i, err)
		}
		if alert, err := lcTLSAlert(addr, cfg); err != nil || !strings.Contains(alert, "unknown certificate authority") {
			t.Errorf("manager %d: TLS handshake with the skipped worker's certificate: alert %q, %v; want \"unknown certificate authority\"", i, alert, err)
		}
	}
	eventually(t, waitFor, "the skipped worker says it was left behind", func() error {
		p := w.Renewer().Problem()
		if !errors.Is(p, agent.ErrLeftBehind) {
			return fmt.Errorf("Renewer().Problem() = %v, want agent.ErrLeftBehind", p)
		}
		if !containsAny(p.Error(), "rejoin") {
			return fmt.Errorf("Renewer().Problem() = %q, want it to say to rejoin", p)
		}
		return nil
	})
	ctx, cancel := rotCtx(t)
	defer cancel()
	if st, err := controlAt(t, down.cfg.SocketPath).Status(ctx, &api.StatusRequest{}); err != nil || !containsAny(st.GetProblem(), "rejoin") {
		t.Errorf("worker's Control.Status() = problem %q, %v; want it to say to rejoin", st.GetProblem(), err)
	}

	// A fresh join with the new token, into a new data directory.
	rc.workerToken = rc.token(rc.running()[0], "worker")
	fresh := rc.startWorker("w3")
	if string(fresh.w.Credentials().Bundle()) != string(newBundle) {
		t.Errorf("the freshly joined worker holds another bundle than the new root")
	}
	eventually(t, waitFor, "node ls shows the fresh worker ready", func() error {
		nodes, err := rc.listNodes()
		if err != nil {
			return err
		}
		n, ok := nodes[fresh.id]
		if !ok || n.GetTlsStatus() != "ready" || n.GetStatus() != "ready" {
			return fmt.Errorf("ListNodes(): fresh worker %s = %v", fresh.id, n)
		}
		return nil
	})
}

// TestRotationToGivenRoot rotates to a root the administrator gives, and
// checks RotateCA's refusals: a rotation while another runs, a certificate
// without its key, and the current root again (its key is not new), which
// leaves the state untouched.
func TestRotationToGivenRoot(t *testing.T) {
	rc := newRotationCluster(t, 3, 1, 0)
	held := rc.holdRotation() // keeps the rotation in progress until removed
	given, err := ca.GenerateRoot(rand.Reader, time.Now(), rc.clusterID)
	if err != nil {
		t.Fatalf("GenerateRoot() = %v", err)
	}
	resp, err := rc.tryRotate(&api.RotateCARequest{CaCert: given.Cert, CaKey: given.Key})
	if err != nil {
		t.Fatalf("RotateCA(given root) = %v", err)
	}
	root := resp.GetRotation().GetNewRootFingerprint()
	if want := agent.BundleFingerprint(given.Bundle); root != want {
		t.Errorf("RotateCA(given root): new root %s, want the given one %s", root, want)
	}

	_, err = rc.tryRotate(&api.RotateCARequest{})
	lcWantCode(t, "RotateCA() while a rotation is in progress", err, codes.FailedPrecondition)
	_, err = rc.tryRotate(&api.RotateCARequest{CaCert: given.Cert})
	lcWantCode(t, "RotateCA(ca_cert without ca_key)", err, codes.InvalidArgument)
	_, err = rc.tryRotate(&api.RotateCARequest{CaKey: given.Key})
	lcWantCode(t, "RotateCA(ca_key without ca_cert)", err, codes.InvalidArgument)
	if got, err := rc.getCA(); err != nil || !got.GetRotation().GetInProgress() || got.GetRotation().GetNewRootFingerprint() != root {
		t.Fatalf("GetCA() after the refused calls = %v, %v; want the rotation to the given root in progress", got.GetRotation(), err)
	}

	// Removing the node that holds it back lets it complete.
	ctx, cancel := rotCtx(t)
	defer cancel()
	if _, err := rc.anyCtl().RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: held.Node.NodeID, Force: true}); err != nil {
		t.Fatalf("RemoveNode(%s) = %v", held.Node.NodeID, err)
	}
	got := rc.waitRotation(root, true)
	if string(got.GetBundle()) != string(given.Bundle) {
		t.Errorf("GetCA().Bundle after the rotation:\n%s\nwant the given root:\n%s", got.GetBundle(), given.Bundle)
	}
	eventually(t, waitFor, "every manager applied the completion", func() error {
		for _, i := range rc.running() {
			st := rc.managers[i].m.State()
			if st.Rotation != nil || string(st.CA.Bundle) != string(given.Bundle) {
				return fmt.Errorf("manager %d: Rotation %v, bundle is the given root: %t", i, st.Rotation, string(st.CA.Bundle) == string(given.Bundle))
			}
		}
		return nil
	})
	givenRoots, _ := rotParseRoot(t, given.Bundle)
	for id, c := range rc.nodeCreds() {
		if _, _, err := ca.Verify(rotChainOf(t, c)[:1], givenRoots, time.Now()); err != nil {
			t.Errorf("node %s: its leaf alone does not verify under the given root: %v", id, err)
		}
	}

	// The current root again: refused, and nothing changes.
	cur := rc.m(rc.leader()).State().CA
	before := map[int]string{}
	for _, i := range rc.running() {
		before[i] = stateJSON(t, rc.managers[i].m.State())
	}
	_, err = rc.tryRotate(&api.RotateCARequest{CaCert: cur.Cert, CaKey: cur.Key})
	lcWantCode(t, "RotateCA(the current root's cert and key)", err, codes.InvalidArgument)
	if err != nil && !containsAny(status.Convert(err).Message(), "new key") {
		t.Errorf("RotateCA(the current root's cert and key) = %v, want the message to ask for a new key", err)
	}
	for _, i := range rc.running() {
		st := rc.managers[i].m.State()
		if st.Rotation != nil {
			t.Errorf("manager %d: State().Rotation = %+v after a refused RotateCA, want nil", i, st.Rotation)
		}
		if got := stateJSON(t, st); got != before[i] {
			t.Errorf("manager %d: state changed by a refused RotateCA: %s", i, lcDiff(got, before[i]))
		}
	}
}

// rotGossipAccess asks a manager's CA.Gossip, over mutual TLS with a worker's
// certificate, for the gossip key and the addresses to join through.
func rotGossipAccess(t *testing.T, rc *rotationCluster, creds *agent.Credentials) (key []byte, peers []string) {
	t.Helper()
	conn := dialAPI(t, rc.via(), clientTLS(creds.Certificate(), creds.Roots()))
	ctx, cancel := rotCtx(t)
	defer cancel()
	resp, err := api.NewCAClient(conn).Gossip(ctx, &api.GossipRequest{})
	if err != nil {
		t.Fatalf("CA.Gossip() with a worker's certificate = %v", err)
	}
	if len(resp.GetPeers()) == 0 {
		t.Fatalf("CA.Gossip() returned no peers")
	}
	return resp.GetKey(), resp.GetPeers()
}

// rotForgeMember starts a gossip member that holds the cluster's gossip key
// (as any node does) and claims to be node id with meta, and joins it to
// the cluster's gossip.
func rotForgeMember(t *testing.T, id string, key []byte, meta membership.Meta, peers []string) *membership.Member {
	t.Helper()
	mem, err := membership.New(membership.Config{
		NodeID: id, BindAddr: "127.0.0.1:0", Key: key, Meta: meta, Timing: membership.Fast, Logger: testLogger(),
	})
	if err != nil {
		t.Fatalf("membership.New(%s) = %v", id, err)
	}
	t.Cleanup(func() { mem.Shutdown() })
	if n, err := mem.Join(peers); err != nil || n == 0 {
		t.Fatalf("forged member %s: Join(%v) = %d, %v", id, peers, n, err)
	}
	return mem
}

// TestRotationIgnoresForgedGossip has gossip lie to the leader with the
// cluster's own gossip key: a node ID the cluster never admitted is never
// counted, and a member of the cluster cannot be counted as converged by
// advertising the new issuer with a certificate the cluster never issued
// to it.
func TestRotationIgnoresForgedGossip(t *testing.T) {
	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, baseline) }) // runs last
	rc := newRotationCluster(t, 3, 2, 0)
	held := rc.holdRotation()
	heldID := held.Node.NodeID
	key, peers := rotGossipAccess(t, rc, rc.workers[0].w.Credentials())
	if string(key) != string(rc.m(0).State().GossipKey) {
		t.Fatalf("CA.Gossip() key is not the state's GossipKey")
	}
	rc.rotate()
	rc.waitConvergedExcept(heldID)
	st := rc.m(rc.leader()).State()
	total := uint32(st.Nodes.Len())
	newMeta := membership.Meta{
		Role:   ca.RoleWorker,
		Serial: "deadbeef", // never issued: serials are random 128-bit numbers
		Issuer: membership.StatusDigest(st.CAStatus),
		Bundle: membership.BundleDigest(st.Rotation.Bundle),
	}

	t.Run("unknown node ID", func(t *testing.T) {
		stranger, err := ca.NewID(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		rotForgeMember(t, stranger, key, newMeta, peers)
		lcHolds(t, 2*time.Second, "GetCA() ignores the stranger", func() error {
			resp, err := rc.getCA()
			if err != nil {
				return err
			}
			r := resp.GetRotation()
			if _, ok := rotNode(r, stranger); ok || r.GetTotal() != total || !r.GetInProgress() {
				return fmt.Errorf("%s; want %d nodes, without %s, in progress", rotationSummary(r), total, stranger)
			}
			return nil
		})
	})

	t.Run("member advertising a certificate never issued", func(t *testing.T) {
		mem := rotForgeMember(t, heldID, key, newMeta, peers)
		// The managers hear the forged member in gossip...
		eventually(t, waitFor, "the forged member is in gossip", func() error {
			if n := mem.NumPeers(); n == 0 {
				return errors.New("the forged member sees no peer")
			}
			return nil
		})
		// ... but gossip proves nothing: the held node never heartbeat to
		// the leader, so it stays down (it is skipped after the grace),
		// and is never counted converged.
		lcHolds(t, 3*time.Second, "the forged node never converges", func() error {
			resp, err := rc.getCA()
			if err != nil {
				return err
			}
			r := resp.GetRotation()
			n, _ := rotNode(r, heldID)
			if !r.GetInProgress() || n.GetState() != "down" || r.GetConverged() != total-1 || r.GetTotal() != total {
				return fmt.Errorf("%s; want in progress, %d of %d converged, %s down", rotationSummary(r), total-1, total, heldID)
			}
			return nil
		})
	})
}

// TestRotationStatusAndNodeLs follows a rotation held by a node that never
// renews in Control.Status on every manager and in node ls.
func TestRotationStatusAndNodeLs(t *testing.T) {
	rc := newRotationCluster(t, 3, 2, 0)
	held := rc.holdRotation()
	heldID := held.Node.NodeID
	rc.rotate()
	rc.waitConvergedExcept(heldID)
	total := uint32(rc.m(rc.leader()).State().Nodes.Len())
	for _, i := range rc.running() {
		eventually(t, waitFor, fmt.Sprintf("manager %d's Status shows the rotation", i), func() error {
			st, err := rc.status(i)
			if err != nil {
				return err
			}
			r := st.GetRotation()
			if r == nil {
				return errors.New("Status().Rotation = nil")
			}
			if !r.GetInProgress() || r.GetTotal() != total || r.GetConverged() != total-1 {
				return fmt.Errorf("Status().Rotation: %s; want in progress, %d of %d converged", rotationSummary(r), total-1, total)
			}
			return nil
		})
	}
	nodes, err := rc.listNodes()
	if err != nil {
		t.Fatalf("ListNodes() = %v", err)
	}
	if len(nodes) != int(total) {
		t.Errorf("ListNodes() lists %d nodes, want %d", len(nodes), total)
	}
	for id, n := range nodes {
		if id == heldID {
			if !strings.HasPrefix(n.GetTlsStatus(), "needs rotation") {
				t.Errorf("ListNodes(): held node tls_status %q, want \"needs rotation...\"", n.GetTlsStatus())
			}
			continue
		}
		if n.GetTlsStatus() != "ready" {
			t.Errorf("ListNodes(): renewed node %s tls_status %q, want \"ready\"", id, n.GetTlsStatus())
		}
	}
}
