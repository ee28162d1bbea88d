package integration

// Histories checked for linearizability (porcupine): concurrent clients
// join, remove and inspect nodes and rotate the worker token through every
// manager of a real in-process cluster, while the leader is stopped and
// restarted, or partitioned from the other managers, again and again. Each operation's call and answer are
// recorded; porcupine then looks for one order of them that a single
// sequential quorumca would give.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/node"
)

// fabric carries the managers' Raft connections (manager.Config.RaftDial)
// and can isolate a manager: its dials fail, dials to it fail, and the
// connections it has are cut, as a partition would.
type fabric struct {
	mu       sync.Mutex
	isolated map[string]bool // by Raft address
	conns    []fabricConn
}

type fabricConn struct {
	from, to string
	conn     net.Conn
}

// dialer returns the Raft dialer of the manager whose Raft address self
// returns (known once it runs).
func (f *fabric) dialer(self func() string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, address string) (net.Conn, error) {
		from := self()
		f.mu.Lock()
		cut := f.isolated[from] || f.isolated[address]
		f.mu.Unlock()
		if cut {
			return nil, fmt.Errorf("fabric: %s and %s are partitioned", from, address)
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", address)
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		f.conns = append(f.conns, fabricConn{from: from, to: address, conn: conn})
		f.mu.Unlock()
		return conn, nil
	}
}

// isolate cuts addr off (or heals it, with false).
func (f *fabric) isolate(addr string, cut bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isolated == nil {
		f.isolated = map[string]bool{}
	}
	f.isolated[addr] = cut
	if !cut {
		return
	}
	kept := f.conns[:0]
	for _, c := range f.conns {
		if c.from == addr || c.to == addr {
			c.conn.Close()
			continue
		}
		kept = append(kept, c)
	}
	f.conns = kept
}

// The operations of the model, and what they answered.
type histInput struct {
	Op    string // join, rm, inspect, rotate
	ID    string // rm, inspect: the node
	Token string // join: the token used
}

type histOutput struct {
	Unknown bool   // the call failed in a way that says nothing of its effect
	OK      bool   // join, rm: done; inspect: the node is a member
	Refused bool   // join: bad token; rm: no such node
	ID      string // join: the node ID
	Token   string // rotate: the new token
	Err     string // what a failed call said, for the reader of a failure
}

// Two models check a history. Joins and token rotations go to tokenModel:
// a join with the current worker token succeeds, with another one is
// refused. Each node's own operations (its acknowledged join, removals,
// inspections) go to memberModel, one partition per node: a node is a
// member from its join until a removal, and inspection tells which.

// tokenModel's state is the worker token, "" once a rotation of unknown
// outcome may have changed it to one nobody knows.
func tokenModel(initial string) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return initial },
		Step: func(st, in, out any) (bool, any) {
			tok, i, o := st.(string), in.(histInput), out.(histOutput)
			switch i.Op {
			case "join":
				switch {
				case o.Unknown:
					return true, tok
				case o.OK:
					return tok == "" || i.Token == tok, tok
				default:
					return tok == "" || i.Token != tok, tok
				}
			case "rotate":
				if o.Unknown {
					return true, ""
				}
				return o.Token != tok, o.Token
			}
			return false, tok
		},
		DescribeOperation: describeOp,
	}
}

// Membership states of one node.
const (
	notJoined = iota
	member
	removed
)

// memberModel checks each node's operations; its partitions are the nodes.
var memberModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byNode := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range history {
			id := op.Input.(histInput).ID
			if op.Input.(histInput).Op == "join" {
				id = op.Output.(histOutput).ID
			}
			if _, ok := byNode[id]; !ok {
				order = append(order, id)
			}
			byNode[id] = append(byNode[id], op)
		}
		var out [][]porcupine.Operation
		for _, id := range order {
			out = append(out, byNode[id])
		}
		return out
	},
	Init: func() any { return notJoined },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(int), in.(histInput), out.(histOutput)
		switch i.Op {
		case "join": // acknowledged joins only
			return s == notJoined, member
		case "rm":
			switch {
			case o.Unknown:
				if s == member {
					return true, removed
				}
				return true, s
			case o.OK:
				return s == member, removed
			default:
				return s != member, s
			}
		case "inspect":
			return o.OK == (s == member), s
		}
		return false, s
	},
	DescribeOperation: describeOp,
}

func describeOp(in, out any) string {
	i, o := in.(histInput), out.(histOutput)
	res := "ok"
	switch {
	case o.Unknown:
		res = "?"
	case i.Op == "inspect" && !o.OK:
		res = "absent"
	case o.Refused:
		res = "refused"
	}
	tail := func(s string) string { return s[max(0, len(s)-6):] }
	return fmt.Sprintf("%s(%s%s) -> %s %s", i.Op, tail(i.ID), tail(i.Token), res, tail(o.ID+o.Token))
}

// recorder collects the operations of every client.
type recorder struct {
	mu  sync.Mutex
	ops []porcupine.Operation
	t0  time.Time
}

func (r *recorder) add(client int, call time.Time, in histInput, out histOutput) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ret := int64(time.Since(r.t0))
	if out.Unknown {
		// Its effect, if any, may come at any time after the call.
		ret = 1 << 62
	}
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: int64(call.Sub(r.t0)), Return: ret})
}

// historySeed is the seed of the clients' and the faults' choices:
// QUORUMCA_HISTORY_SEED reproduces a run, which prints its own.
func historySeed(t *testing.T) uint64 {
	if s := os.Getenv("QUORUMCA_HISTORY_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("QUORUMCA_HISTORY_SEED=%q: %v", s, err)
		}
		return n
	}
	return uint64(time.Now().UnixNano())
}

// TestHistoriesLinearizableUnderLeaderFaults: 4 clients make joins,
// removals, inspections and token rotations through the 3 managers for a
// few seconds while the leader is stopped (its calls in flight fail) and
// restarted, again and again; the recorded history must be linearizable
// under quorumcaModel, and afterwards every acknowledged join is a member
// or was removed, the same on every manager. The seed is printed; a
// failing one reproduces with QUORUMCA_HISTORY_SEED.
// QUORUMCA_HISTORY_SOAK=D runs for D instead (a longer soak).
func TestHistoriesLinearizableUnderLeaderFaults(t *testing.T) {
	seed := historySeed(t)
	t.Logf("seed %d (QUORUMCA_HISTORY_SEED=%d reproduces it)", seed, seed)
	run := 6 * time.Second
	if d := os.Getenv("QUORUMCA_HISTORY_SOAK"); d != "" {
		var err error
		if run, err = time.ParseDuration(d); err != nil {
			t.Fatalf("QUORUMCA_HISTORY_SOAK=%q: %v", d, err)
		}
	}
	var raftNet fabric
	c := clustertest.New(t, clustertest.Options{Managers: 3, Configure: func(name string, cfg *node.Config) {
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
	var tokMu sync.Mutex
	known := []string{tok0} // tokens clients may use: the current and older ones
	var ids struct {
		sync.Mutex
		list []string
	}
	ctx, stop := context.WithTimeout(t.Context(), run)
	defer stop()

	// Faults, at seeded moments: the leader is stopped and started
	// again, or cut off from the other managers' Raft traffic (it goes on
	// serving its clients, and relaying) and then healed.
	faults := rand.New(rand.NewPCG(seed, 1))
	var restarts, isolations int
	var faultErr error
	var faultsDone sync.WaitGroup
	faultsDone.Go(func() {
		for ctx.Err() == nil {
			if !sleepCtx(ctx, time.Duration(500+faults.IntN(1000))*time.Millisecond) {
				return
			}
			var leader *clustertest.Node
			for _, m := range c.Managers {
				if mgr := m.Node().Manager(); mgr != nil && mgr.IsLeader() {
					leader = m
				}
			}
			if leader == nil {
				continue // an election runs
			}
			down := time.Duration(200+faults.IntN(800)) * time.Millisecond
			if faults.IntN(2) == 0 {
				addr := leader.RaftAddr()
				raftNet.isolate(addr, true)
				isolations++
				sleepCtx(ctx, down)
				raftNet.isolate(addr, false)
				continue
			}
			leader.Stop()
			restarts++
			sleepCtx(ctx, down)
			if err := leader.TryRestart(nil); err != nil {
				faultErr = fmt.Errorf("restart %s: %w", leader.Name, err)
				return
			}
		}
	})

	var clients sync.WaitGroup
	for client := range 4 {
		rng := rand.New(rand.NewPCG(seed, uint64(client+2)))
		clients.Go(func() {
			for ctx.Err() == nil {
				m := targets[rng.IntN(len(targets))]
				call := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				var in histInput
				var out histOutput
				var err error
				switch p := rng.IntN(10); {
				case p < 4:
					tokMu.Lock()
					in = histInput{Op: "join", Token: known[rng.IntN(len(known))]}
					if rng.IntN(3) > 0 {
						in.Token = known[len(known)-1]
					}
					tokMu.Unlock()
					var res agent.JoinResult
					res, err = agent.Join(cctx, agent.JoinConfig{DataDir: t.TempDir(), Token: in.Token, Remote: m.addr, Logger: testkit.Logger(), Timeout: 3 * time.Second})
					switch {
					case err == nil:
						out = histOutput{OK: true, ID: res.Node.NodeID}
						ids.Lock()
						ids.list = append(ids.list, res.Node.NodeID)
						ids.Unlock()
					case api.HasReason(err, api.ReasonBadToken) || errors.Is(err, agent.ErrJoinRefused) && status.Code(err) == codes.Aborted:
						// A wrong token; or the token was rotated between
						// the check and the commit: nothing was recorded.
						out = histOutput{Refused: true}
					default:
						out = histOutput{Unknown: true}
					}
				case p < 6:
					in = histInput{Op: "rm", ID: pick(&ids.Mutex, &ids.list, rng)}
					if in.ID == "" {
						cancel()
						continue
					}
					_, err = m.ctl.RemoveNode(cctx, &api.RemoveNodeRequest{NodeId: in.ID, Force: true})
					switch status.Code(err) {
					case codes.OK:
						out = histOutput{OK: true}
					case codes.NotFound:
						out = histOutput{Refused: true}
					default:
						out = histOutput{Unknown: true}
					}
				case p < 9:
					in = histInput{Op: "inspect", ID: pick(&ids.Mutex, &ids.list, rng)}
					if in.ID == "" {
						cancel()
						continue
					}
					_, err = m.ctl.ListNodes(cctx, &api.ListNodesRequest{NodeId: in.ID})
					switch status.Code(err) {
					case codes.OK:
						out = histOutput{OK: true}
					case codes.NotFound:
						out = histOutput{}
					default:
						cancel()
						continue // a failed read says nothing: not recorded
					}
				default:
					in = histInput{Op: "rotate"}
					var resp *api.JoinTokenResponse
					resp, err = m.ctl.JoinToken(cctx, &api.JoinTokenRequest{Role: "worker", Rotate: true})
					if err != nil {
						out = histOutput{Unknown: true}
					} else {
						out = histOutput{Token: resp.GetToken()}
						tokMu.Lock()
						known = append(known, resp.GetToken())
						tokMu.Unlock()
					}
				}
				cancel()
				if err != nil {
					out.Err = err.Error()
				}
				if out.Unknown && notSent(err) {
					continue // the manager was down: the call never left
				}
				rec.add(client, call, in, out)
			}
		})
	}
	clients.Wait()
	faultsDone.Wait()
	if faultErr != nil {
		t.Fatal(faultErr)
	}

	var kinds = map[string]int{}
	unknown := 0
	for _, op := range rec.ops {
		kinds[op.Input.(histInput).Op]++
		if op.Output.(histOutput).Unknown {
			unknown++
		}
	}
	t.Logf("%d operations (%v; %d of unknown outcome), %d leader restarts, %d leader isolations", len(rec.ops), kinds, unknown, restarts, isolations)
	if kinds["join"] == 0 || kinds["inspect"] == 0 || restarts+isolations == 0 {
		t.Fatalf("the run exercised too little: %v, %d restarts, %d isolations", kinds, restarts, isolations)
	}
	var tokenOps, memberOps []porcupine.Operation
	issued := map[string]bool{}
	for _, op := range rec.ops {
		in, out := op.Input.(histInput), op.Output.(histOutput)
		switch {
		case in.Op == "rotate", in.Op == "join" && !out.Unknown:
			// A join of unknown outcome constrains nothing here (the
			// model takes it either way); left in, each would stand
			// open against every later operation and slow the check.
			tokenOps = append(tokenOps, op)
		}
		if in.Op == "join" && out.OK {
			if issued[out.ID] {
				t.Errorf("node ID %s issued twice", out.ID)
			}
			issued[out.ID] = true
		}
		if in.Op != "rotate" && !(in.Op == "join" && !out.OK) {
			memberOps = append(memberOps, op)
		}
	}
	for _, check := range []struct {
		what  string
		model porcupine.Model
		ops   []porcupine.Operation
	}{{"joins and token rotations", tokenModel(tok0), tokenOps}, {"each node's membership", memberModel, memberOps}} {
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
		if check.model.Partition != nil {
			// Name the node whose history fails, and show it.
			one := check.model
			one.Partition = nil
			for _, part := range check.model.Partition(check.ops) {
				if porcupine.CheckOperations(one, part) {
					continue
				}
				for _, op := range part {
					ret := fmt.Sprint(time.Duration(op.Return))
					if op.Return == 1<<62 {
						ret = "?"
					}
					t.Logf("  client %d %s..%s %s %q", op.ClientId, time.Duration(op.Call), ret, describeOp(op.Input, op.Output), op.Output.(histOutput).Err)
				}
				break
			}
		}
	}

	// After the faults, every acknowledged join is a member or was
	// removed, the same on every manager: nothing acknowledged was lost.
	c.WaitSameState()
	st := c.Leader().Manager().State()
	for _, op := range rec.ops {
		in, out := op.Input.(histInput), op.Output.(histOutput)
		if in.Op != "join" || !out.OK {
			continue
		}
		if _, member := st.Node(out.ID); !member && !st.IsRemoved(out.ID) {
			t.Errorf("node %s, whose join was acknowledged, is neither a member nor removed", out.ID)
		}
	}
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

// pick returns one of the IDs in list (under mu) at random, "" for none.
func pick(mu *sync.Mutex, list *[]string, rng *rand.Rand) string {
	mu.Lock()
	defer mu.Unlock()
	if len(*list) == 0 {
		return ""
	}
	return (*list)[rng.IntN(len(*list))]
}

// sleepCtx sleeps d, or less if ctx ends; it reports whether ctx goes on.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
