package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"
)

// sealCost is the most that sealing the Raft stores may cost: the sealed
// rate must be at least 1-sealCost of the unsealed one.
const sealCost = 0.05

// sealRound is one mode's run of a round: its joins and its renewals.
type sealRound struct {
	join, renew measured
}

// runSeal measures joins and renewals on a cluster whose managers seal
// their Raft stores (the product) and on one whose managers do not, in
// rounds that run both modes in alternate order, each on a fresh cluster.
// It compares the medians of the rounds: the machine's drift over the run
// falls on both modes alike.
func (o *options) runSeal(cmd *cobra.Command, _ []string) error {
	if o.n < 1 || o.c < 1 || o.rounds < 1 {
		return fmt.Errorf("-n, -c and --rounds must be at least 1")
	}
	ctx, log, dir, done, err := o.start(cmd)
	if err != nil {
		return err
	}
	defer done()
	runs := map[bool][]sealRound{}
	for r := range o.rounds {
		modes := []bool{false, true}
		if r%2 == 1 {
			modes = []bool{true, false}
		}
		for _, unsealed := range modes {
			note("seal: round %d of %d, %s stores: %d joins and renewals, %d at a time", r+1, o.rounds, sealMode(unsealed), o.n, o.c)
			got, err := sealRun(ctx, filepath.Join(dir, fmt.Sprintf("seal-%d-%s", r, sealMode(unsealed))), o.n, o.c, unsealed, log)
			if err != nil {
				return fmt.Errorf("seal, round %d, %s stores: %w", r+1, sealMode(unsealed), err)
			}
			runs[unsealed] = append(runs[unsealed], got)
		}
	}
	var results []Result
	for _, op := range []struct {
		name string
		of   func(sealRound) measured
	}{
		{"join", func(s sealRound) measured { return s.join }},
		{"renew", func(s sealRound) measured { return s.renew }},
	} {
		sealed, plain := medianRun(runs[false], op.of), medianRun(runs[true], op.of)
		r := result(op.name+" (sealed)", o.c, sealed, ceiling(fmt.Sprintf("the same %ss on unsealed stores (median of %d rounds)", op.name, o.rounds), plain))
		r.Figures = map[string]float64{"rounds": float64(o.rounds), "cost_percent": 100 * (1 - r.Ratio)}
		r.Goals = []Goal{atMost("cost of sealing", 100*sealCost, 100*(1-r.Ratio), "%")}
		results = append(results, r)
	}
	return o.write(cmd, results)
}

func sealMode(unsealed bool) string {
	if unsealed {
		return "unsealed"
	}
	return "sealed"
}

// sealRun starts a 3-manager cluster in dir, joins n simulated nodes and
// renews each once, and stops the cluster.
func sealRun(ctx context.Context, dir string, n, c int, unsealed bool, log *slog.Logger) (sealRound, error) {
	cl, err := startCluster(ctx, dir, 3, unsealed, log)
	if err != nil {
		return sealRound{}, err
	}
	defer cl.stop()
	nodes, join, err := joinAll(ctx, cl, n, c)
	if err != nil {
		return sealRound{}, fmt.Errorf("join: %w", err)
	}
	conns, err := connect(ctx, nodes, c)
	if err != nil {
		return sealRound{}, err
	}
	defer closeAll(conns)
	renew, err := run(ctx, len(conns), c, func(ctx context.Context, i int) error { return renewOne(ctx, conns[i]) })
	if err != nil {
		return sealRound{}, fmt.Errorf("renew: %w", err)
	}
	return sealRound{join: join, renew: renew}, nil
}

// medianRun returns the run of median rate among the rounds.
func medianRun(rounds []sealRound, of func(sealRound) measured) measured {
	ms := make([]measured, len(rounds))
	for i, r := range rounds {
		ms[i] = of(r)
	}
	slices.SortFunc(ms, func(a, b measured) int { return cmp.Compare(a.rate(), b.rate()) })
	return ms[len(ms)/2]
}
