package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/wait"
	"github.com/quorumca/quorumca/node"
)

// rotateBound bounds one rotation, and the agents' start and gossip;
// idleWindow is how long idle agents are watched for the CPU they use.
const (
	rotateBound = 3 * time.Minute
	idleWindow  = 5 * time.Second
)

// startAgents joins a real worker daemons the way `quorumca join` does,
// spread over the managers, c at a time: each with its own key, data
// directory, control socket, heartbeats and memberlist member.
func startAgents(ctx context.Context, cl *cluster, a, c int) (_ []*node.Node, retried int, _ error) {
	workers := make([]*node.Node, a)
	var retries atomic.Int64
	addrs := cl.addrs()
	life := ctx // the agents run until the benchmark ends, not one operation
	_, err := run(ctx, a, c, func(ctx context.Context, i int) error {
		cfg := cl.config(fmt.Sprintf("a%d", i))
		join := func(addr string) (*node.Node, error) {
			cfg.Join = &node.Join{Token: cl.workerToken, Addr: addr}
			return node.Start(life, cfg)
		}
		w, err := join(addrs[i%len(addrs)])
		// 503 nodes on two cores can starve the Raft leader of its lease:
		// a join refused while the managers elect a new leader is tried
		// again, as an operator would, and counted.
		for try := 1; err != nil && status.Code(err) == codes.Unavailable && try < 5; try++ {
			retries.Add(1)
			if !wait.Sleep(ctx, time.Second) {
				break
			}
			if err = os.RemoveAll(cfg.DataDir); err == nil {
				w, err = join(addrs[(i+try)%len(addrs)])
			}
		}
		if err != nil {
			return err
		}
		if w.Worker() == nil {
			w.Stop()
			return errors.New("the worker token made a manager")
		}
		workers[i] = w
		return nil
	})
	if err != nil {
		stopAgents(workers)
		return nil, 0, fmt.Errorf("start agents: %w", err)
	}
	return workers, int(retries.Load()), nil
}

// note tells the person running the benchmark how far it got.
func note(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func stopAgents(workers []*node.Node) {
	var wg sync.WaitGroup
	for _, w := range workers {
		if w != nil {
			wg.Go(func() { w.Stop() })
		}
	}
	wg.Wait()
}

// memInUse is the heap and stack this process holds after a collection.
func memInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

// benchRotate starts a agents beside the cluster, waits until gossip knows
// them all, measures the memory they hold idle, then rotates the root and
// times the rotation's completion and each agent's convergence (it holds a
// certificate of the new CA).
func benchRotate(ctx context.Context, cl *cluster, a int) (Result, error) {
	before := memInUse()
	stopStartProfile := profile("agents")
	workers, retried, err := startAgents(ctx, cl, a, 4)
	stopStartProfile()
	if err != nil {
		return Result{}, err
	}
	defer stopAgents(workers)
	note("rotate: %d agents started (%d joins retried); waiting for gossip to know them all", a, retried)
	members := a + len(cl.managers)
	stopGossipProfile := profile("gossip")
	err = poll(ctx, rotateBound, func() error {
		for i, w := range workers {
			m := w.Worker().Gossip().Member()
			if m == nil {
				return fmt.Errorf("agent %d has not started gossip yet", i)
			}
			if got := m.NumPeers(); got < members-1 {
				return fmt.Errorf("agent %d knows %d gossip peers of %d", i, got, members-1)
			}
		}
		return nil
	})
	stopGossipProfile()
	if err != nil {
		return Result{}, fmt.Errorf("gossip: %w", err)
	}
	// What the idle agents cost: CPU over a few seconds of heartbeats and
	// gossip, then the memory they hold.
	stopIdleProfile := profile("idle")
	cpu0 := cpuTime()
	if !wait.Sleep(ctx, idleWindow) {
		stopIdleProfile()
		return Result{}, ctx.Err()
	}
	idleCores := (cpuTime() - cpu0).Seconds() / idleWindow.Seconds()
	stopIdleProfile()
	after := memInUse()
	if err := writeHeapProfile(); err != nil {
		return Result{}, fmt.Errorf("heap profile: %w", err)
	}
	perAgent := float64(after-min(before, after)) / float64(a) / (1 << 20)

	leader := cl.leader()
	if leader < 0 {
		return Result{}, errors.New("rotate: no leader")
	}
	note("rotate: %.2f MiB per idle agent, %.2f cores busy idle; rotating", perAgent, idleCores)
	ctl := api.NewControlClient(cl.control[leader])
	stopProfile := profile("rotate")
	defer stopProfile()
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	resp, err := ctl.RotateCA(rctx, &api.RotateCARequest{})
	cancel()
	if err != nil {
		return Result{}, fmt.Errorf("rotate: %w", err)
	}
	root := resp.GetRotation().GetNewRootFingerprint()
	newCA := cl.managers[leader].State().CAStatus

	conv := make(latencies, a)
	done := make([]bool, a)
	left := a
	var completed, trusting time.Duration
	err = poll(ctx, rotateBound, func() error {
		now := time.Since(start)
		for i, w := range workers {
			if !done[i] && w.Worker().Credentials().Issuer().Equal(newCA) {
				done[i], conv[i] = true, now
				left--
			}
		}
		gctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		st, err := ctl.GetCA(gctx, &api.GetCARequest{})
		cancel()
		if err != nil {
			return err
		}
		r := st.GetRotation()
		if r.GetNewRootFingerprint() != root {
			return fmt.Errorf("GetCA shows the rotation to %s, want %s", r.GetNewRootFingerprint(), root)
		}
		if completed == 0 && !r.GetInProgress() {
			completed = now
		}
		if completed > 0 && trusting == 0 && r.GetTrusting() == r.GetTotal() {
			trusting = now
		}
		if left > 0 || completed == 0 || trusting == 0 {
			return fmt.Errorf("%d agents on the old CA; in progress %t; %d of %d nodes trusting", left, r.GetInProgress(), r.GetTrusting(), r.GetTotal())
		}
		return nil
	})
	if err != nil {
		return Result{}, fmt.Errorf("rotate: %w", err)
	}
	r := Result{
		Name: "rotate", N: a,
		Seconds: completed.Seconds(),
		P50:     conv.percentile(0.50), P99: conv.percentile(0.99),
		Figures: map[string]float64{
			"completed_s":        completed.Seconds(),
			"all_trusting_s":     trusting.Seconds(),
			"mib_per_idle_agent": perAgent,
			"agent_join_retries": float64(retried),
			"idle_cores":         idleCores,
		},
	}
	r.Goals = []Goal{
		atMost(fmt.Sprintf("completion for %d agents", a), 20, completed.Seconds(), " s"),
		atMost("memory per idle agent", 1, perAgent, " MiB"),
	}
	return r, nil
}
