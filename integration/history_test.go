package integration

// Histories checked for linearizability (porcupine): concurrent clients
// join nodes, renew, revoke and remove them, issue and revoke admin
// certificates, rotate and read the worker token, create, revoke, list
// and join with extra join tokens, read the nodes, the status and the
// CA, and one rotates the root CA, through every manager
// of a real in-process cluster, while its managers are stopped and
// restarted, partitioned, paused, and their Raft traffic dropped and
// delayed. Each operation's call and answer are recorded; porcupine then
// looks for one order of them that a single sequential quorumca would
// give, and the state after recovery is checked against what was
// acknowledged.

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/node"
)

// recorder collects the operations of every client.
type recorder struct {
	mu   sync.Mutex
	ops  []porcupine.Operation
	rets []int64 // each operation's real return, unknown outcomes too
	t0   time.Time
}

// never is the return of an operation of unknown outcome: its effect, if
// any, may come at any time after its call.
const never = 1 << 62

func (r *recorder) since(t time.Time) int64 { return int64(t.Sub(r.t0)) }

func (r *recorder) add(client int, call time.Time, in histInput, out histOutput) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ret := r.since(time.Now())
	r.rets = append(r.rets, ret)
	if out.Unknown {
		ret = never
	}
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: r.since(call), Return: ret})
}

// historySeed is the seed of the clients' and the faults' choices:
// QUORUMCA_HISTORY_SEED sets it, and a run prints its own. The default
// run takes a fixed one, for the same history in every CI run; a soak
// (QUORUMCA_HISTORY_SOAK) a new one each time, to explore.
func historySeed(t *testing.T) uint64 {
	if s := os.Getenv("QUORUMCA_HISTORY_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("QUORUMCA_HISTORY_SEED=%q: %v", s, err)
		}
		return n
	}
	if os.Getenv("QUORUMCA_HISTORY_SOAK") != "" {
		return uint64(time.Now().UnixNano())
	}
	return 21
}

// histNode is a node a client joined: its current credentials, and the
// serials it was issued.
type histNode struct {
	id       string
	cert     tls.Certificate
	serials  []string
	renewals int
	// busy: a client renews or revokes it now (one at a time, so that
	// the certificate a renewal presents is the node's current one);
	// tainted: a renewal of unknown outcome may have replaced it.
	busy, tainted bool
}

// issuance is a certificate a manager handed out: to check that it
// chains to a root the cluster trusted then.
type issuance struct {
	what       string // join, renew, admin-issue, and the ID
	chain      []*x509.Certificate
	bundle     []byte // the bundle that came with it
	call, ret  int64
	serial, id string
}

// faultSpan is one fault injected, and when.
type faultSpan struct {
	kind       string
	start, end int64
}

// The faults.
const (
	faultRestart   = "restart"
	faultPartition = "partition"
	faultPause     = "pause"
	faultDrop      = "drop"
	faultDelay     = "delay"
)

var faultKinds = []string{faultRestart, faultPartition, faultPause, faultDrop, faultDelay}

// maxRenewals bounds the renewals of one node: a node record keeps
// fsm.MaxPrevCerts earlier certificates, and a revocation of one it no
// longer keeps would be refused for another reason than the model's.
const maxRenewals = 4

// TestHistoriesLinearizableUnderFaults: 4 clients make joins, renewals,
// revocations, removals and inspections of nodes, admin certificate
// issues, removals and inspections, worker token rotations and reads,
// extra join token creations, revocations, listings and joins with them,
// status and CA reads through the 3 managers, and a fifth rotates the root
// CA once and follows it to its completion, while faults chosen from the
// seed hit the managers one at a time: a manager (the leader, or any) is
// stopped and restarted, partitioned, or paused; or the Raft traffic
// drops or is delayed. The recorded history must be linearizable (four
// models, see history_model_test.go), and after recovery every
// acknowledged issuance is in the state, the same on every manager; no
// node ID or serial was issued twice; no certificate was handed to a node
// after its removal was acknowledged; no worker token admitted after
// its rotation was acknowledged, no extra token after its revocation
// was; every certificate chains to a root the
// cluster trusted when it was issued. The seed is printed; a failing one
// reproduces with QUORUMCA_HISTORY_SEED. QUORUMCA_HISTORY_SOAK=D runs the
// clients for D instead (a longer soak).
func TestHistoriesLinearizableUnderFaults(t *testing.T) {
	seed := historySeed(t)
	t.Logf("seed %d (QUORUMCA_HISTORY_SEED=%d reproduces it)", seed, seed)
	// One history; a soak checks one after another, each on a new cluster
	// with the next seed, for as long as it is asked to.
	var soak time.Duration
	if d := os.Getenv("QUORUMCA_HISTORY_SOAK"); d != "" {
		var err error
		if soak, err = time.ParseDuration(d); err != nil {
			t.Fatalf("QUORUMCA_HISTORY_SOAK=%q: %v", d, err)
		}
	}
	start := time.Now()
	var total histSummary
	for s := seed; ; s++ {
		t.Run(fmt.Sprintf("seed=%d", s), func(t *testing.T) {
			total.add(checkOneHistory(t, s, historyLength))
		})
		if t.Failed() || time.Since(start) >= soak {
			break
		}
	}
	t.Logf("histories: %d, operations: %d (%d of unknown outcome), faults: %d", total.histories, total.ops, total.unknown, total.faults())
	t.Logf("operations by kind: %v", total.kinds)
	t.Log("faults × operations (operations in flight while each fault was on):\n" + total.table())
}

// historyLength is how long the clients of one history run.
const historyLength = 20 * time.Second

// histSummary sums up the histories checked.
type histSummary struct {
	histories, ops, unknown int
	kinds                   map[string]int
	injected                map[string]int            // fault: times
	inFlight                map[string]map[string]int // op kind: fault (or none): operations
}

func (h *histSummary) add(o histSummary) {
	if h.kinds == nil {
		h.kinds, h.injected, h.inFlight = map[string]int{}, map[string]int{}, map[string]map[string]int{}
	}
	h.histories += o.histories
	h.ops += o.ops
	h.unknown += o.unknown
	for k, n := range o.kinds {
		h.kinds[k] += n
	}
	for k, n := range o.injected {
		h.injected[k] += n
	}
	for k, m := range o.inFlight {
		if h.inFlight[k] == nil {
			h.inFlight[k] = map[string]int{}
		}
		for f, n := range m {
			h.inFlight[k][f] += n
		}
	}
}

func (h *histSummary) faults() int {
	n := 0
	for _, c := range h.injected {
		n += c
	}
	return n
}

// checkOneHistory runs the clients for run on a new cluster under faults
// chosen from seed, and checks what they saw.
func checkOneHistory(t *testing.T, seed uint64, run time.Duration) histSummary {
	t.Logf("seed %d (QUORUMCA_HISTORY_SEED=%d reproduces it)", seed, seed)
	raftNet := newFabric(seed)
	// A short grace: the nodes the clients join never run, and a root
	// rotation skips them once it has waited that long.
	c := clustertest.New(t, clustertest.Options{Managers: 3, Grace: 2 * time.Second, Configure: func(name string, cfg *node.Config) {
		dataDir := cfg.DataDir
		cfg.Manager.RaftDial = raftNet.dialer(func() string {
			nc, err := agent.LoadNodeConfig(dataDir)
			if err != nil {
				return ""
			}
			return nc.RaftAdvertiseAddr
		})
	}})
	tok0 := c.Token(c.Leader(), "worker")
	oldBundle := c.Bundle
	// What the clients use, fixed before they start (the nodes change
	// under the faults): each manager's control socket and API address.
	type target struct {
		ctl  api.ControlClient
		addr string
	}
	var targets []target
	for _, m := range c.Managers {
		targets = append(targets, target{ctl: m.Control(), addr: m.Addr()})
	}

	rec := &recorder{t0: time.Now()}
	w := &histWorld{t: t, rec: rec, known: []string{tok0}, roots: [][]byte{oldBundle}, rotCall: never, rotSeen: never}
	ctx, stop := context.WithTimeout(t.Context(), run)
	defer stop()

	// Faults, one at a time at seeded moments, on the leader or on any
	// manager.
	faults := mrand.New(mrand.NewPCG(seed, 1))
	var spans []faultSpan
	var faultErr error
	var faultsDone sync.WaitGroup
	faultsDone.Go(func() {
		// Every kind in each round, in a seeded order.
		var round []string
		for ctx.Err() == nil {
			if !sleepCtx(ctx, time.Duration(200+faults.IntN(600))*time.Millisecond) {
				return
			}
			if len(round) == 0 {
				round = slices.Clone(faultKinds)
				faults.Shuffle(len(round), func(i, j int) { round[i], round[j] = round[j], round[i] })
			}
			kind := round[0]
			round = round[1:]
			onLeader := faults.IntN(2) == 0
			var victim *clustertest.Node
			for _, m := range c.Managers {
				if mgr := m.Node().Manager(); mgr != nil && mgr.IsLeader() {
					victim = m
				}
			}
			if !onLeader || victim == nil {
				victim = c.Managers[faults.IntN(len(c.Managers))]
			}
			down := time.Duration(200+faults.IntN(1000)) * time.Millisecond
			span := faultSpan{kind: kind, start: rec.since(time.Now())}
			switch kind {
			case faultRestart:
				victim.Stop()
				sleepCtx(ctx, down)
				if err := victim.TryRestart(nil); err != nil {
					faultErr = fmt.Errorf("restart %s: %w", victim.Name, err)
					return
				}
			case faultPartition:
				addr := victim.RaftAddr()
				raftNet.isolate(addr, true)
				sleepCtx(ctx, down)
				raftNet.isolate(addr, false)
			case faultPause:
				addr := victim.RaftAddr()
				raftNet.pause(addr)
				sleepCtx(ctx, down)
				raftNet.resume(addr)
			case faultDrop:
				raftNet.lossy(0.02+0.1*faults.Float64(), 0)
				sleepCtx(ctx, down)
				raftNet.lossy(0, 0)
			case faultDelay:
				raftNet.lossy(0, time.Duration(5+faults.IntN(60))*time.Millisecond)
				sleepCtx(ctx, down)
				raftNet.lossy(0, 0)
			}
			span.end = rec.since(time.Now())
			spans = append(spans, span)
		}
	})

	var clients sync.WaitGroup
	for client := range 4 {
		rng := mrand.New(mrand.NewPCG(seed, uint64(client+2)))
		clients.Go(func() {
			for ctx.Err() == nil {
				m := targets[rng.IntN(len(targets))]
				call := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				in, out, record := w.op(cctx, rng, m.ctl, m.addr, call)
				cancel()
				if record {
					rec.add(client, call, in, out)
				}
			}
		})
	}

	// The root rotation: once, by one more client, at a seeded moment;
	// then GetCA until it has completed (after the other clients stop, if
	// need be, for a bounded time).
	var rotator sync.WaitGroup
	rotator.Go(func() {
		const client = 4
		rng := mrand.New(mrand.NewPCG(seed, 77))
		if !sleepCtx(ctx, run/5+time.Duration(rng.Int64N(int64(run/4)))) {
			return
		}
		// Asked again until it is done, or refused because an attempt of
		// unknown outcome has started it.
		for first := true; ctx.Err() == nil; first = false {
			call := time.Now()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := targets[rng.IntN(len(targets))].ctl.RotateCA(cctx, &api.RotateCARequest{})
			cancel()
			out := histOutput{OK: err == nil}
			switch {
			case err == nil:
			case status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "in progress"):
				out = histOutput{Refused: true, Err: err.Error()}
			default:
				out = histOutput{Unknown: true, Err: err.Error()}
			}
			if first {
				w.mu.Lock()
				w.rotAsked, w.rotCall = true, rec.since(call)
				w.mu.Unlock()
			}
			if out.Unknown && notSent(err) {
				continue
			}
			rec.add(client, call, histInput{Op: opCARotate}, out)
			if !out.Unknown {
				break
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
		follow, cancelFollow := context.WithTimeout(t.Context(), run+testkit.Wait)
		var last *api.GetCAResponse
		defer func() { w.mu.Lock(); w.lastCA = last; w.mu.Unlock() }()
		defer cancelFollow()
		for sleepCtx(follow, 100*time.Millisecond) {
			call := time.Now()
			cctx, cancel := context.WithTimeout(follow, 3*time.Second)
			resp, err := targets[rng.IntN(len(targets))].ctl.GetCA(cctx, &api.GetCARequest{})
			cancel()
			if err != nil {
				continue // a failed read says nothing
			}
			last = resp
			out := caOutput(resp)
			rec.add(client, call, histInput{Op: opCA}, out)
			if out.Refused {
				w.mu.Lock()
				w.rotSeen = rec.since(time.Now())
				w.roots = append(w.roots, resp.GetBundle())
				w.mu.Unlock()
				// Completion replaced the worker token: the clients learn
				// the new one as an operator would.
				return
			}
		}
	})
	clients.Wait()
	faultsDone.Wait()
	raftNet.heal()
	if faultErr != nil {
		t.Fatal(faultErr)
	}
	rotator.Wait()

	w.mu.Lock()
	rotCall, rotSeen, rotAsked := w.rotCall, w.rotSeen, w.rotAsked
	w.mu.Unlock()
	if rotAsked && rotSeen != never {
		// The completion, somewhere between its start and its sight:
		// it replaced the join tokens.
		rec.ops = append(rec.ops, porcupine.Operation{ClientId: 4, Input: histInput{Op: opCAComplete}, Output: histOutput{OK: true}, Call: rotCall, Return: rotSeen})
		rec.rets = append(rec.rets, rotSeen)
	} else if rotAsked {
		t.Errorf("the root rotation asked at %s was not seen complete within %s: GetCA() = %v", time.Duration(rotCall), run+testkit.Wait, w.lastCA)
	}

	sum := histSummary{histories: 1, ops: len(rec.ops), kinds: map[string]int{}, injected: map[string]int{}, inFlight: map[string]map[string]int{}}
	for i, op := range rec.ops {
		k := op.Input.(histInput).Op
		sum.kinds[k]++
		if op.Output.(histOutput).Unknown {
			sum.unknown++
		}
		if sum.inFlight[k] == nil {
			sum.inFlight[k] = map[string]int{}
		}
		hit := false
		for _, s := range spans {
			if op.Call < s.end && rec.rets[i] > s.start {
				sum.inFlight[k][s.kind]++
				hit = true
			}
		}
		if !hit {
			sum.inFlight[k]["none"]++
		}
	}
	for _, s := range spans {
		sum.injected[s.kind]++
	}
	kinds := sum.kinds
	t.Logf("operations: %d (%d of unknown outcome), faults: %d; by kind: %v", sum.ops, sum.unknown, len(spans), kinds)
	for _, k := range []string{opJoin, opInspect, opRenew, opRm, opTokenCreate, opTokenRevoke, opJoinExtra} {
		if kinds[k] == 0 {
			t.Errorf("the run made no %s operation: %v", k, kinds)
		}
	}
	if len(spans) == 0 || !rotAsked {
		t.Errorf("the run exercised too little: %d faults, root rotation asked: %v", len(spans), rotAsked)
	}

	checkHistories(t, seed, tok0, rec.ops)

	// The state after recovery: the same on every manager, and holding
	// every acknowledged issuance.
	c.WaitSameState()
	st := c.Leader().Manager().State()
	newBundle := []byte(nil)
	if st.LastRotation != nil {
		newBundle = st.CA.Bundle
	}
	ids, serials := map[string]bool{}, map[string]string{}
	for _, is := range w.issued {
		if is.id != "" && strings.HasPrefix(is.what, opJoin) {
			if ids[is.id] {
				t.Errorf("node ID %s issued twice", is.id)
			}
			ids[is.id] = true
		}
		if prev, ok := serials[is.serial]; ok {
			t.Errorf("serial %s issued twice: %s and %s", is.serial, prev, is.what)
		}
		serials[is.serial] = is.what
		switch {
		case strings.HasPrefix(is.what, opAdminIssue):
			if _, ok := st.Admin(is.serial); !ok {
				t.Errorf("admin certificate %s (%s), whose issue was acknowledged, is not in the state", is.serial, is.what)
			}
		default:
			n, member := st.Node(is.id)
			r, revoked := st.Revoked[is.serial]
			switch {
			case member && !n.Knows(is.serial):
				t.Errorf("node %s: serial %s (%s), acknowledged, is not among its certificates %s, %v", is.id, is.serial, is.what, n.Cert.Serial, n.Prev)
			case !member && !st.IsRemoved(is.id):
				t.Errorf("node %s (%s), acknowledged, is neither a member nor removed", is.id, is.what)
			case !member && (!revoked || r.NodeID != is.id):
				t.Errorf("node %s was removed, but its serial %s (%s) is not revoked for it: %+v", is.id, is.serial, is.what, r)
			}
		}
		checkChain(t, is, oldBundle, newBundle, rotCall, rotSeen)
	}

	// Nothing handed to a node after its removal was acknowledged, and no
	// token admitted after its replacement was acknowledged.
	checkAfterAcks(t, rec.ops, tok0, rotCall, rotSeen)
	checkExtraTokens(t, st, rec.ops, rotAsked, rotCall, rotSeen)

	// Status is each manager's own view: it may lag, but names no root
	// the cluster never had.
	fps := map[string]bool{agent.BundleFingerprint(oldBundle): true}
	if newBundle != nil {
		fps[agent.BundleFingerprint(newBundle)] = true
	}
	for _, fp := range w.fps {
		if !fps[fp] {
			t.Errorf("Status() named root %s, none of the cluster's %v", fp, fps)
		}
	}
	return sum
}

// histWorld is what the clients of one history share.
type histWorld struct {
	t   *testing.T
	rec *recorder

	mu     sync.Mutex // guards the fields below
	nodes  []*histNode
	admins []string
	known  []string   // tokens clients may use: the current and older ones
	extra  []extraTok // extra tokens acknowledged created, revoked ones too
	roots  [][]byte   // bundles seen: the clients trust them all
	issued []issuance // certificates handed out
	fps    []string   // root fingerprints Status answered
	// The root rotation: whether and when it was asked for, and when its
	// completion was first seen (never until then).
	rotAsked         bool
	rotCall, rotSeen int64
	lastCA           *api.GetCAResponse // the rotator's last answer
}

// extraTok is an extra join token a client created.
type extraTok struct{ id, token string }

// pickExtra returns one of the extra tokens created, the last one half
// the time; ok is false if there is none.
func (w *histWorld) pickExtra(rng *mrand.Rand) (tok extraTok, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.extra) == 0 {
		return extraTok{}, false
	}
	if rng.IntN(2) == 0 {
		return w.extra[len(w.extra)-1], true
	}
	return w.extra[rng.IntN(len(w.extra))], true
}

// rootPool returns the roots the clients trust: every bundle seen.
func (w *histWorld) rootPool() *x509.CertPool {
	w.mu.Lock()
	defer w.mu.Unlock()
	pool := x509.NewCertPool()
	for _, b := range w.roots {
		pool.AppendCertsFromPEM(b)
	}
	return pool
}

// rotStarted reports whether the root rotation was asked for at or
// before at.
func (w *histWorld) rotStarted(at int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rotAsked && at >= w.rotCall
}

// renew renews n's certificate at the manager at addr, or at the leader
// it redirects to.
func (w *histWorld) renew(ctx context.Context, addr string, n *histNode) (*api.RenewNodeCertificateResponse, *tls.Certificate, error) {
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := ca.NewCSR(rand.Reader, key, "")
	if err != nil {
		return nil, nil, err
	}
	cfg := clientTLS(&n.cert, w.rootPool())
	for range 2 {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return nil, nil, err
		}
		resp, err := api.NewCAClient(conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{Csr: csr})
		conn.Close()
		if leader, ok := api.LeaderRedirect(err); ok {
			addr = leader
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		_, ders, err := pemChain(resp.GetCertificate())
		if err != nil {
			return nil, nil, err
		}
		return resp, &tls.Certificate{Certificate: ders, PrivateKey: key}, nil
	}
	return nil, nil, errRedirected
}

var errRedirected = errors.New("redirected twice")

// join joins a node with in.Token (the worker token, or an extra one) at
// the manager at addr, as the agent does, and keeps what it was issued;
// it returns what the join answered, and whether to record it (not when
// the node refused the bundle served, and sent nothing).
func (w *histWorld) join(ctx context.Context, addr string, call time.Time, in histInput) (histOutput, bool, error) {
	res, err := agent.Join(ctx, agent.JoinConfig{DataDir: w.t.TempDir(), Token: in.Token, Remote: addr, Logger: testkit.Logger(), Timeout: 3 * time.Second})
	switch {
	case err == nil:
		cert := res.Credentials.Certificate()
		chain, err := parseDERs(cert.Certificate)
		if err != nil {
			w.t.Errorf("%s: the certificate stored: %v", in.Op, err)
			return histOutput{}, false, err
		}
		out := histOutput{OK: true, ID: res.Node.NodeID, Serial: chain[0].SerialNumber.Text(16)}
		is := issuance{what: in.Op + " " + out.ID, chain: chain, bundle: res.Credentials.Bundle(), serial: out.Serial, id: out.ID,
			call: w.rec.since(call), ret: w.rec.since(time.Now())}
		w.mu.Lock()
		w.nodes = append(w.nodes, &histNode{id: out.ID, cert: *cert, serials: []string{out.Serial}})
		w.issued = append(w.issued, is)
		w.mu.Unlock()
		return out, true, nil
	case errors.Is(err, agent.ErrJoinRefused) && status.Code(err) == codes.Aborted && in.Op == opJoinExtra:
		// An extra token's join whose commit found a new CA (a root
		// rotation began): nothing was recorded, and it says nothing of
		// the token.
		return histOutput{Refused: true, Lenient: true}, true, err
	case api.HasReason(err, api.ReasonBadToken) || errors.Is(err, agent.ErrJoinRefused) && status.Code(err) == codes.Aborted:
		// A wrong token (rotated, revoked, dropped); or the worker token
		// was rotated between the check and the commit: nothing was
		// recorded.
		return histOutput{Refused: true}, true, err
	case errors.Is(err, ca.ErrDigestMismatch):
		// The bundle the manager served is not the one the token pins:
		// the node refused, and sent nothing. Only a root rotation changes
		// the bundle.
		if !w.rotStarted(w.rec.since(time.Now())) {
			w.t.Errorf("%s with token …%s: the bundle served is not the one it pins, and no root rotation was asked: %v", in.Op, tail(in.Token), err)
		}
		return histOutput{}, false, err
	default:
		return histOutput{Unknown: true}, true, err
	}
}

// op makes one operation of a client's choosing through the manager
// whose control client is ctl and API address addr, and returns it with
// whether to record it (a call that never reached a manager, a failed
// read, or nothing to name is not).
func (w *histWorld) op(ctx context.Context, rng *mrand.Rand, ctl api.ControlClient, addr string, call time.Time) (histInput, histOutput, bool) {
	t, rec, mu := w.t, w.rec, &w.mu
	nodes, admins, known, roots, issued, fps := &w.nodes, &w.admins, &w.known, &w.roots, &w.issued, &w.fps
	rotStarted, renew := w.rotStarted, w.renew
	var in histInput
	var out histOutput
	var err error
	// pickNode returns a node joined, or nil; with claim, one no other
	// client renews or revokes now, marked busy.
	pickNode := func(claim bool) *histNode {
		mu.Lock()
		defer mu.Unlock()
		if len(*nodes) == 0 {
			return nil
		}
		n := (*nodes)[rng.IntN(len(*nodes))]
		if claim {
			if n.busy {
				return nil
			}
			n.busy = true
		}
		return n
	}
	release := func(n *histNode) {
		mu.Lock()
		n.busy = false
		mu.Unlock()
	}
	addIssued := func(is issuance) {
		is.call, is.ret = rec.since(call), rec.since(time.Now())
		mu.Lock()
		*issued = append(*issued, is)
		mu.Unlock()
	}
	switch p := rng.IntN(112); {
	case p < 24:
		mu.Lock()
		in = histInput{Op: opJoin, Token: (*known)[rng.IntN(len(*known))]}
		if rng.IntN(3) > 0 {
			in.Token = (*known)[len(*known)-1]
		}
		mu.Unlock()
		var record bool
		if out, record, err = w.join(ctx, addr, call, in); !record {
			return in, out, false
		}
	case p < 32:
		n := pickNode(false)
		if n == nil {
			return in, out, false
		}
		in = histInput{Op: opRm, ID: n.id}
		_, err = ctl.RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: in.ID, Force: true})
		out = notFoundOutput(err)
	case p < 46:
		n := pickNode(false)
		if n == nil {
			return in, out, false
		}
		in = histInput{Op: opInspect, ID: n.id}
		var resp *api.ListNodesResponse
		resp, err = ctl.ListNodes(ctx, &api.ListNodesRequest{NodeId: in.ID})
		switch status.Code(err) {
		case codes.OK:
			if len(resp.GetNodes()) != 1 {
				t.Errorf("ListNodes(%s) = %d nodes, want 1", in.ID, len(resp.GetNodes()))
				return in, out, false
			}
			out = histOutput{OK: true, Serial: resp.GetNodes()[0].GetCertSerial()}
		case codes.NotFound:
			out = histOutput{}
		default:
			return in, out, false // a failed read says nothing
		}
	case p < 50:
		in = histInput{Op: opRotate}
		var resp *api.JoinTokenResponse
		resp, err = ctl.JoinToken(ctx, &api.JoinTokenRequest{Role: "worker", Rotate: true})
		if err != nil {
			out = histOutput{Unknown: true}
		} else {
			out = histOutput{OK: true, Token: resp.GetToken()}
			mu.Lock()
			*known = append(*known, resp.GetToken())
			mu.Unlock()
		}
	case p < 55:
		in = histInput{Op: opToken}
		var resp *api.JoinTokenResponse
		if resp, err = ctl.JoinToken(ctx, &api.JoinTokenRequest{Role: "worker"}); err != nil {
			return in, out, false
		}
		out = histOutput{OK: true, Token: resp.GetToken()}
		mu.Lock()
		if !slices.Contains(*known, out.Token) {
			*known = append(*known, out.Token)
		}
		mu.Unlock()
	case p < 69:
		n := pickNode(true)
		if n == nil {
			return in, out, false
		}
		defer release(n)
		mu.Lock()
		skip := n.tainted || n.renewals >= maxRenewals
		mu.Unlock()
		if skip {
			return in, out, false
		}
		in = histInput{Op: opRenew, ID: n.id}
		var resp *api.RenewNodeCertificateResponse
		var cert *tls.Certificate
		resp, cert, err = renew(ctx, addr, n)
		switch {
		case err == nil:
			chain, err := parseDERs(cert.Certificate)
			if err != nil {
				t.Errorf("renew %s: %v", n.id, err)
				return in, out, false
			}
			out = histOutput{OK: true, Serial: chain[0].SerialNumber.Text(16)}
			mu.Lock()
			n.cert, n.serials, n.renewals = *cert, append(n.serials, out.Serial), n.renewals+1
			*roots = append(*roots, resp.GetBundle())
			mu.Unlock()
			addIssued(issuance{what: opRenew + " " + n.id, chain: chain, bundle: resp.GetBundle(), serial: out.Serial, id: n.id})
		case notSent(err) || errors.Is(err, errRedirected) || strings.Contains(err.Error(), "x509: "):
			// Never reached the leader, or the client did not trust the
			// manager's certificate (a root it has not learned yet).
			return in, out, false
		case status.Code(err) == codes.Aborted:
			// The commit found a new CA (a root rotation began): nothing
			// recorded.
			out = histOutput{Refused: true, Lenient: true}
		case refusedRenewal(err):
			out = histOutput{Refused: true}
			// A node the rotation skipped (it never heartbeats) is left
			// behind: its renewal is refused while it is a member.
			out.Lenient = rotStarted(rec.since(call))
		default:
			out = histOutput{Unknown: true}
			mu.Lock()
			n.tainted = true
			mu.Unlock()
		}
	case p < 76:
		n := pickNode(true)
		if n == nil {
			return in, out, false
		}
		defer release(n)
		mu.Lock()
		serial := n.serials[rng.IntN(len(n.serials))]
		mu.Unlock()
		in = histInput{Op: opRevoke, ID: n.id, Serial: serial}
		_, err = ctl.RevokeCertificate(ctx, &api.RevokeCertificateRequest{Serial: serial})
		out = revokeOutput(err)
	case p < 82:
		in = histInput{Op: opAdminIssue}
		csr := newCSR(t)
		var resp *api.IssueAdminCertificateResponse
		resp, err = ctl.IssueAdminCertificate(ctx, &api.IssueAdminCertificateRequest{Csr: csr, TtlSeconds: 3600})
		if err != nil {
			// Unknown, and nothing names it: counted, not modelled.
			out = histOutput{Unknown: true}
			break
		}
		chain, _, err := pemChain(resp.GetCertificate())
		if err != nil {
			t.Errorf("admin-cert: %v", err)
			return in, out, false
		}
		out = histOutput{OK: true, Serial: resp.GetSerial()}
		if got := chain[0].SerialNumber.Text(16); got != out.Serial {
			t.Errorf("IssueAdminCertificate() serial %s, but the certificate has %s", out.Serial, got)
		}
		mu.Lock()
		*admins = append(*admins, out.Serial)
		mu.Unlock()
		addIssued(issuance{what: opAdminIssue + " " + out.Serial, chain: chain, bundle: resp.GetBundle(), serial: out.Serial})
	case p < 86:
		s := pick(mu, admins, rng)
		if s == "" {
			return in, out, false
		}
		if rng.IntN(2) == 0 {
			in = histInput{Op: opAdminRm, ID: s}
			_, err = ctl.RevokeAdminCertificates(ctx, &api.RevokeAdminCertificatesRequest{Serials: []string{s}})
			out = notFoundOutput(err)
		} else {
			in = histInput{Op: opRevoke, ID: "admin:" + s, Serial: s}
			_, err = ctl.RevokeCertificate(ctx, &api.RevokeCertificateRequest{Serial: s})
			out = revokeOutput(err)
		}
	case p < 91:
		s := pick(mu, admins, rng)
		if s == "" {
			return in, out, false
		}
		in = histInput{Op: opAdminInspect, ID: s}
		var resp *api.ListAdminCertificatesResponse
		if resp, err = ctl.ListAdminCertificates(ctx, &api.ListAdminCertificatesRequest{}); err != nil {
			return in, out, false
		}
		for _, a := range resp.GetCertificates() {
			if a.GetSerial() == s {
				out = histOutput{OK: a.GetRevokedAt() == 0, Refused: a.GetRevokedAt() != 0}
			}
		}
	case p < 96:
		in = histInput{Op: opStatus}
		var resp *api.StatusResponse
		if resp, err = ctl.Status(ctx, &api.StatusRequest{}); err != nil {
			return in, out, false
		}
		out = histOutput{OK: true}
		mu.Lock()
		*fps = append(*fps, resp.GetRootFingerprint())
		mu.Unlock()
	case p < 100:
		in = histInput{Op: opCA}
		var resp *api.GetCAResponse
		if resp, err = ctl.GetCA(ctx, &api.GetCARequest{}); err != nil {
			return in, out, false
		}
		out = caOutput(resp)
	case p < 103:
		// An extra worker token, as `join-token create worker --ttl 1h`
		// makes one: it outlives the run, and admits any number of nodes.
		in = histInput{Op: opTokenCreate}
		var resp *api.CreateTokenResponse
		if resp, err = ctl.CreateToken(ctx, &api.CreateTokenRequest{Role: "worker", TtlSeconds: 3600}); err != nil {
			// Unknown, and nothing names it: counted, not modelled.
			out = histOutput{Unknown: true}
			break
		}
		out = histOutput{OK: true, ID: resp.GetId(), Token: resp.GetToken()}
		mu.Lock()
		w.extra = append(w.extra, extraTok{id: out.ID, token: out.Token})
		mu.Unlock()
	case p < 106:
		// One created, revoked already or not; now and then one that
		// never was.
		tok, ok := w.pickExtra(rng)
		if !ok || rng.IntN(8) == 0 {
			tok = extraTok{id: fmt.Sprintf("nosuch%06d", rng.IntN(1_000_000))}
		}
		in = histInput{Op: opTokenRevoke, TokenID: tok.id}
		_, err = ctl.RevokeToken(ctx, &api.RevokeTokenRequest{Id: tok.id})
		out = notFoundOutput(err)
	case p < 110:
		tok, ok := w.pickExtra(rng)
		if !ok {
			return in, out, false
		}
		in = histInput{Op: opJoinExtra, TokenID: tok.id, Token: tok.token}
		var record bool
		if out, record, err = w.join(ctx, addr, call, in); !record {
			return in, out, false
		}
	default:
		tok, ok := w.pickExtra(rng)
		if !ok {
			return in, out, false
		}
		in = histInput{Op: opTokenList, TokenID: tok.id}
		var resp *api.ListTokensResponse
		if resp, err = ctl.ListTokens(ctx, &api.ListTokensRequest{}); err != nil {
			return in, out, false // a failed read says nothing
		}
		for _, lt := range resp.GetTokens() {
			if lt.GetId() == tok.id {
				out = histOutput{OK: true}
			}
		}
	}
	if err != nil {
		out.Err = err.Error()
	}
	if out.Unknown && notSent(err) {
		return in, out, false // the manager was down: the call never left
	}
	return in, out, true
}

// caOutput is what a GetCA answer says of the root rotation.
func caOutput(resp *api.GetCAResponse) histOutput {
	r := resp.GetRotation()
	switch {
	case r == nil:
		return histOutput{}
	case r.GetInProgress():
		return histOutput{OK: true}
	default:
		return histOutput{Refused: true}
	}
}

// notFoundOutput is what an answer says of a call that is refused only
// when what it names does not exist (any more): done, refused, or unknown
// (a failure says nothing of whether it took effect).
func notFoundOutput(err error) histOutput {
	switch status.Code(err) {
	case codes.OK:
		return histOutput{OK: true}
	case codes.NotFound:
		return histOutput{Refused: true}
	default:
		return histOutput{Unknown: true}
	}
}

// revokeOutput is what RevokeCertificate's answer says: a serial revoked
// already, or no longer a member's, is refused as a bad command.
func revokeOutput(err error) histOutput {
	switch status.Code(err) {
	case codes.OK:
		return histOutput{OK: true}
	case codes.InvalidArgument, codes.NotFound:
		return histOutput{Refused: true}
	default:
		return histOutput{Unknown: true}
	}
}

// refusedRenewal reports whether err is a refusal of the node's
// certificate: by its status, or at the TLS handshake.
func refusedRenewal(err error) bool {
	switch status.Code(err) {
	case codes.PermissionDenied, codes.Unauthenticated, codes.NotFound:
		return true
	}
	return containsAny(err.Error(), "remote error: tls: bad certificate", "remote error: tls: certificate required", "remote error: tls: unknown certificate")
}

// checkHistories checks the four models.
func checkHistories(t *testing.T, seed uint64, tok0 string, ops []porcupine.Operation) {
	t.Helper()
	var tokenOps, extraOps, entityOps, rotationOps []porcupine.Operation
	for _, op := range ops {
		in, out := op.Input.(histInput), op.Output.(histOutput)
		switch in.Op {
		case opJoinExtra:
			if !out.Unknown {
				// As a join above.
				extraOps = append(extraOps, op)
			}
			if out.OK {
				entityOps = append(entityOps, op)
			}
		case opTokenCreate:
			if out.OK {
				// One of unknown outcome names no token.
				extraOps = append(extraOps, op)
			}
		case opTokenRevoke, opTokenList:
			extraOps = append(extraOps, op)
		case opJoin:
			if !out.Unknown {
				// A join of unknown outcome constrains nothing here (the
				// model takes it either way); left in, each would stand
				// open against every later operation and slow the check.
				tokenOps = append(tokenOps, op)
			}
			if out.OK {
				entityOps = append(entityOps, op)
			}
		case opRotate, opToken:
			tokenOps = append(tokenOps, op)
		case opCAComplete:
			tokenOps = append(tokenOps, op)
			extraOps = append(extraOps, op)
		case opCARotate, opCA:
			rotationOps = append(rotationOps, op)
		case opAdminIssue:
			if out.OK {
				entityOps = append(entityOps, op)
			}
		case opRm, opInspect, opRenew, opRevoke, opAdminRm, opAdminInspect:
			entityOps = append(entityOps, op)
		}
	}
	for _, check := range []struct {
		what  string
		model porcupine.Model
		ops   []porcupine.Operation
	}{
		{"the worker token", tokenModel(tok0), tokenOps},
		{"each extra token", extraTokenModel, extraOps},
		{"each node and admin certificate", entityModel, entityOps},
		{"the root rotation", rotationModel, rotationOps},
	} {
		res, info := porcupine.CheckOperationsVerbose(check.model, check.ops, time.Minute)
		if res == porcupine.Ok {
			continue
		}
		// Kept after the test, for a person to read.
		f, err := os.CreateTemp("", "quorumca-history-*.html")
		path := "(not written)"
		if err == nil {
			path = f.Name()
			porcupine.Visualize(check.model, info, f)
			f.Close()
		}
		t.Errorf("the history of %s is %s (seed %d; visualization: %s; operations: %s)", check.what, res, seed, path, dumpOps(check.ops))
		parts := [][]porcupine.Operation{check.ops}
		if check.model.Partition != nil {
			parts = check.model.Partition(check.ops)
		}
		// Name the part whose history fails, and show it.
		one := check.model
		one.Partition = nil
		for _, part := range parts {
			if porcupine.CheckOperations(one, part) {
				continue
			}
			for _, op := range part {
				ret := fmt.Sprint(time.Duration(op.Return))
				if op.Return == never {
					ret = "?"
				}
				t.Logf("  client %d %s..%s %s %q", op.ClientId, time.Duration(op.Call), ret, describeOp(op.Input, op.Output), op.Output.(histOutput).Err)
			}
			break
		}
	}
}

// checkAfterAcks checks what follows an acknowledgement in real time,
// whatever order porcupine found: no renewal of a node is acknowledged
// if it was called after its removal was; no join with a token succeeds
// if it was called after a rotation of the worker token, called once
// that token was known, was acknowledged (or after a root rotation
// asked once it was known was seen complete); no join with an extra
// token succeeds if it was called after the token's revocation was
// acknowledged (or after a root rotation asked once the token was
// created was seen complete).
func checkAfterAcks(t *testing.T, ops []porcupine.Operation, tok0 string, rotCall, rotSeen int64) {
	t.Helper()
	removedAt := map[string]int64{}
	known := map[string]int64{tok0: 0} // token: when first known
	// Extra tokens, by ID: when their creation returned, and when their
	// first acknowledged revocation did.
	createdAt, revokedAt := map[string]int64{}, map[string]int64{}
	var rotations []porcupine.Operation
	for _, op := range ops {
		in, out := op.Input.(histInput), op.Output.(histOutput)
		switch {
		case in.Op == opRm && out.OK:
			if at, ok := removedAt[in.ID]; !ok || op.Return < at {
				removedAt[in.ID] = op.Return
			}
		case in.Op == opTokenCreate && out.OK:
			createdAt[out.ID] = op.Return
		case in.Op == opTokenRevoke && out.OK:
			if at, ok := revokedAt[in.TokenID]; !ok || op.Return < at {
				revokedAt[in.TokenID] = op.Return
			}
		case (in.Op == opRotate || in.Op == opToken) && out.OK:
			if at, ok := known[out.Token]; !ok || op.Return < at {
				known[out.Token] = op.Return
			}
			if in.Op == opRotate {
				rotations = append(rotations, op)
			}
		}
	}
	for _, op := range ops {
		in, out := op.Input.(histInput), op.Output.(histOutput)
		switch {
		case in.Op == opRenew && out.OK:
			if at, ok := removedAt[in.ID]; ok && op.Call > at {
				t.Errorf("node %s renewed (serial %s) at %s, after its removal was acknowledged at %s", in.ID, out.Serial, time.Duration(op.Call), time.Duration(at))
			}
		case in.Op == opJoin && out.OK:
			since, ok := known[in.Token]
			if !ok {
				t.Errorf("join with a token no operation returned: …%s", tail(in.Token))
				continue
			}
			for _, r := range rotations {
				if r.Call > since && r.Return < op.Call && r.Output.(histOutput).Token != in.Token {
					t.Errorf("join of %s with token …%s at %s admitted after the token's rotation (to …%s) was acknowledged at %s", out.ID, tail(in.Token), time.Duration(op.Call), tail(r.Output.(histOutput).Token), time.Duration(r.Return))
				}
			}
			if rotSeen != never && rotCall > since && rotSeen < op.Call {
				t.Errorf("join of %s with token …%s at %s admitted after the root rotation that replaced it was seen complete at %s", out.ID, tail(in.Token), time.Duration(op.Call), time.Duration(rotSeen))
			}
		case in.Op == opJoinExtra && out.OK:
			created, ok := createdAt[in.TokenID]
			if !ok {
				t.Errorf("join of %s with extra token %s, whose creation no operation acknowledged", out.ID, in.TokenID)
				continue
			}
			if at, ok := revokedAt[in.TokenID]; ok && op.Call > at {
				t.Errorf("join of %s with extra token %s at %s admitted after the token's revocation was acknowledged at %s", out.ID, in.TokenID, time.Duration(op.Call), time.Duration(at))
			}
			if rotSeen != never && rotCall > created && rotSeen < op.Call {
				t.Errorf("join of %s with extra token %s at %s admitted after the root rotation that dropped it was seen complete at %s", out.ID, in.TokenID, time.Duration(op.Call), time.Duration(rotSeen))
			}
		}
	}
}

// checkExtraTokens checks the extra tokens in the state after recovery:
// every one whose creation was acknowledged is there, unless a
// revocation (of any outcome) or the root rotation may have dropped it;
// none whose revocation was acknowledged, or that was created before the
// root rotation was asked and seen complete, is.
func checkExtraTokens(t *testing.T, st *fsm.State, ops []porcupine.Operation, rotAsked bool, rotCall, rotSeen int64) {
	t.Helper()
	revoked := map[string]bool{} // by ID: acknowledged
	tried := map[string]bool{}   // by ID: a revocation of any outcome
	for _, op := range ops {
		in, out := op.Input.(histInput), op.Output.(histOutput)
		if in.Op == opTokenRevoke && !out.Refused {
			tried[in.TokenID] = true
			revoked[in.TokenID] = revoked[in.TokenID] || out.OK
		}
	}
	for _, op := range ops {
		in, out := op.Input.(histInput), op.Output.(histOutput)
		if in.Op != opTokenCreate || !out.OK {
			continue
		}
		_, there := st.Tokens[out.ID]
		dropped := rotSeen != never && op.Return < rotCall
		mayDrop := rotAsked && (rotSeen == never || op.Call < rotSeen)
		switch {
		case there && revoked[out.ID]:
			t.Errorf("extra token %s, whose revocation was acknowledged, is in the state after recovery", out.ID)
		case there && dropped:
			t.Errorf("extra token %s, created at %s before the root rotation was asked at %s and seen complete at %s, is in the state after recovery", out.ID, time.Duration(op.Return), time.Duration(rotCall), time.Duration(rotSeen))
		case !there && !tried[out.ID] && !mayDrop:
			t.Errorf("extra token %s, whose creation was acknowledged at %s, is not in the state after recovery, and nothing revoked it", out.ID, time.Duration(op.Return))
		}
	}
}

// checkChain checks that is's certificate chains to a root the cluster
// trusted when it was issued: the old root before the root rotation was
// asked, the new one after its completion was seen, either in between;
// and to the bundle handed out with it.
func checkChain(t *testing.T, is issuance, oldBundle, newBundle []byte, rotCall, rotSeen int64) {
	t.Helper()
	verify := func(bundle []byte) error {
		pool, _, err := ca.ParseBundle(bundle)
		if err != nil {
			return err
		}
		_, _, err = ca.Verify(is.chain, pool, time.Now())
		return err
	}
	if err := verify(is.bundle); err != nil {
		t.Errorf("%s (serial %s): does not verify under the bundle handed out with it: %v", is.what, is.serial, err)
	}
	var trusted [][]byte
	switch {
	case is.ret < rotCall:
		trusted = [][]byte{oldBundle}
	case is.call > rotSeen && newBundle != nil:
		trusted = [][]byte{newBundle}
	default:
		trusted = [][]byte{oldBundle}
		if newBundle != nil {
			trusted = append(trusted, newBundle)
		}
	}
	var errs []error
	for _, b := range trusted {
		err := verify(b)
		if err == nil {
			return
		}
		errs = append(errs, err)
	}
	t.Errorf("%s (serial %s, issued %s..%s): chains to no root the cluster trusted then (%d bundles): %v; chain %s",
		is.what, is.serial, time.Duration(is.call), time.Duration(is.ret), len(trusted), errors.Join(errs...), chainNames(is.chain))
}

// table writes the faults × operations table: for each kind of
// operation, how many were in flight while each kind of fault was on (and
// while none was).
func (h *histSummary) table() string {
	opKinds := slices.Sorted(maps.Keys(h.inFlight))
	cols := append(slices.Clone(faultKinds), "none")
	var b strings.Builder
	fmt.Fprintf(&b, "%-14s", "op \\ fault")
	for _, c := range cols {
		fmt.Fprintf(&b, " %9s", c)
	}
	fmt.Fprintf(&b, "\n%-14s", "(injected)")
	for _, c := range cols {
		if c == "none" {
			fmt.Fprintf(&b, " %9s", "-")
			continue
		}
		fmt.Fprintf(&b, " %9d", h.injected[c])
	}
	for _, k := range opKinds {
		fmt.Fprintf(&b, "\n%-14s", k)
		for _, c := range cols {
			fmt.Fprintf(&b, " %9d", h.inFlight[k][c])
		}
	}
	return b.String()
}

// pemChain parses a PEM chain, leaf first.
func pemChain(b []byte) ([]*x509.Certificate, [][]byte, error) {
	var ders [][]byte
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		ders = append(ders, block.Bytes)
	}
	chain, err := parseDERs(ders)
	return chain, ders, err
}

func parseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("no certificate")
	}
	var out []*x509.Certificate
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// dumpOps writes ops, one a line in call order, to a file kept after the
// test, and returns its name.
func dumpOps(ops []porcupine.Operation) string {
	f, err := os.CreateTemp("", "quorumca-history-*.txt")
	if err != nil {
		return "(not written)"
	}
	defer f.Close()
	sorted := slices.Clone(ops)
	slices.SortFunc(sorted, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	for _, op := range sorted {
		fmt.Fprintf(f, "%d %d %d %+v %+v\n", op.ClientId, op.Call, op.Return, op.Input, op.Output)
	}
	return f.Name()
}

// notSent reports whether err says the call never reached a manager: its
// socket or port refused the connection (it was stopped).
func notSent(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such file or directory")
}

// pick returns one of the strings in list (under mu) at random, "" for
// none.
func pick(mu *sync.Mutex, list *[]string, rng *mrand.Rand) string {
	mu.Lock()
	defer mu.Unlock()
	if len(*list) == 0 {
		return ""
	}
	return (*list)[rng.IntN(len(*list))]
}

// sleepCtx sleeps d, or less if ctx ends; it reports whether ctx goes on.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
