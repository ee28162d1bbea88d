// Command quorumca-bench measures how fast a real quorumca cluster joins,
// renews and rotates, beside ceilings measured in the same run: a real
// 3-manager cluster (Raft on fsynced bolt stores, gRPC over mutual TLS,
// memberlist) runs in this process on 127.0.0.1, driven by simulated nodes
// that do everything a node does but keep their credentials in memory
// (join, renew), or by real agent daemons (rotate).
//
//	quorumca-bench all                       # the three, at the default sizes
//	quorumca-bench join -n 2000 -c 64 --cpuprofile join.prof
//	quorumca-bench --json rotate --agents 500
//	quorumca-bench scale --nodes 10000       # make bench-scale
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

type options struct {
	json       bool
	cpuprofile string
	memprofile string
	dir        string
	keep       bool
	logFile    string
	n, c       int
	agents     int
	unsealed   bool
	rounds     int
	idle       time.Duration
}

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "quorumca-bench:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var o options
	root := &cobra.Command{
		Use:           "quorumca-bench",
		Short:         "Benchmark a real quorumca cluster against ceilings measured in the same run",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.BoolVar(&o.json, "json", false, "print the results as JSON instead of a table")
	pf.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of each benchmark's cluster run to this path, with -join, -renew or -rotate before its extension")
	pf.StringVar(&o.memprofile, "memprofile", "", "write a heap profile of the idle agents (rotate) to this file")
	pf.StringVar(&o.dir, "dir", "", "parent of the run's data directory (default: the system's temp dir; it must be on a real disk, the Raft stores fsync)")
	pf.BoolVar(&o.keep, "keep", false, "keep the data directory")
	pf.BoolVar(&o.unsealed, "unsealed", false, "run the managers with their Raft stores unsealed (in clear), to compare with a run that seals them (the default)")
	pf.StringVar(&o.logFile, "log", "", "append the managers' logs to this file (default: formatted, then discarded)")

	// sizes gives cmd its -n and -c with their defaults. Each command has
	// its own variables (a flag's default is stored when it is registered:
	// shared ones would all take the last command's), copied into o when
	// the command runs.
	sizes := func(cmd *cobra.Command, n int, what string) {
		nodes, conc := new(int), new(int)
		cmd.Flags().IntVarP(nodes, "nodes", "n", n, what)
		cmd.Flags().IntVarP(conc, "concurrency", "c", 64, "concurrent joiners (and renewers)")
		cmd.PreRun = func(*cobra.Command, []string) { o.n, o.c = *nodes, *conc }
	}
	join := &cobra.Command{
		Use:   "join",
		Short: "N joins by C concurrent joiners, and the same joins without Raft",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return o.run(cmd, true, false, false) },
	}
	sizes(join, 2000, "number of joins (and renewals)")
	renew := &cobra.Command{
		Use:   "renew",
		Short: "N renewals over established connections, and the sign-only ceiling",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return o.run(cmd, false, true, false) },
	}
	sizes(renew, 2000, "number of joins (and renewals)")
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "a root rotation with A real agents: completion, convergence, memory per idle agent",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return o.run(cmd, false, false, true) },
	}
	rotate.Flags().IntVar(&o.agents, "agents", 500, "number of agent daemons")
	all := &cobra.Command{
		Use:   "all",
		Short: "join, renew and rotate",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return o.run(cmd, true, true, true) },
	}
	sizes(all, 2000, "number of joins (and renewals)")
	all.Flags().IntVar(&o.agents, "agents", 500, "number of agent daemons")
	seal := &cobra.Command{
		Use:   "seal",
		Short: "N joins and N renewals on sealed Raft stores and on unsealed ones, in alternate rounds: what sealing costs",
		Args:  cobra.NoArgs,
		RunE:  o.runSeal,
	}
	sizes(seal, 1000, "number of joins (and renewals) per round and mode")
	seal.Flags().IntVar(&o.rounds, "rounds", 3, "rounds: each runs both modes, in alternate order; the medians are compared")
	scale := &cobra.Command{
		Use:   "scale",
		Short: "N simulated nodes (real joins, mutual TLS, heartbeats) on 3 managers: idle CPU per node, join storm, a rotation's renewal storm, node ls",
		Args:  cobra.NoArgs,
		RunE:  o.runScale,
	}
	sizes(scale, 10000, "number of simulated nodes")
	scale.Flags().DurationVar(&o.idle, "idle", 20*time.Second, "how long idle CPU is profiled")
	var (
		managers       string
		fleetN, fleetC int
		fleetProfile   string
	)
	fleetCmd := &cobra.Command{
		Use:    "scale-fleet --managers A,B,C -n N -c C < token",
		Short:  "the simulated nodes of scale, in their own process (scale runs it)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in := bufio.NewReader(cmd.InOrStdin())
			token, err := in.ReadString('\n')
			if err != nil {
				return fmt.Errorf("read the join token from standard input: %w", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runFleet(ctx, strings.TrimSpace(token), strings.Split(managers, ","), fleetN, fleetC, fleetProfile, in, cmd.OutOrStdout())
		},
	}
	fleetCmd.Flags().StringVar(&managers, "managers", "", "API addresses of the managers, comma-separated")
	// Its own variables: a flag's default is set when it is registered,
	// and the other commands' -n and -c share o's.
	fleetCmd.Flags().IntVarP(&fleetN, "nodes", "n", 0, "number of simulated nodes")
	fleetCmd.Flags().IntVarP(&fleetC, "concurrency", "c", 64, "concurrent joiners")
	fleetCmd.Flags().String("token-file", "-", "where the join token comes from: standard input")
	fleetCmd.Flags().StringVar(&fleetProfile, "profile", "", "write a CPU profile of the nodes' life after the join storm to this file")
	root.AddCommand(join, renew, rotate, all, seal, scale, fleetCmd)
	return root
}

func (o *options) run(cmd *cobra.Command, join, renew, rotate bool) (err error) {
	if (join || renew) && (o.n < 1 || o.c < 1) {
		return fmt.Errorf("-n and -c must be at least 1")
	}
	if rotate && o.agents < 1 {
		return fmt.Errorf("--agents must be at least 1")
	}
	ctx, log, dir, done, err := o.start(cmd)
	if err != nil {
		return err
	}
	defer done()

	var results []Result
	if join || renew {
		note("starting 3 managers in %s", dir)
		cl, err := startCluster(ctx, dir+"/joins", 3, o.unsealed, log)
		if err != nil {
			return err
		}
		defer cl.stop()
		var nodes []joined
		if join {
			note("join: %d joins, %d at a time, then the ceiling", o.n, o.c)
			r, js, err := benchJoin(ctx, cl, o.n, o.c)
			if err != nil {
				return err
			}
			results, nodes = append(results, r), js
		} else {
			note("renew: joining %d nodes first", o.n)
			if nodes, _, err = joinAll(ctx, cl, o.n, o.c); err != nil {
				return err
			}
		}
		if renew {
			note("renew: %d renewals, %d at a time, then the ceiling", len(nodes), o.c)
			r, err := benchRenew(ctx, nodes, o.c)
			if err != nil {
				return err
			}
			results = append(results, r)
		}
		cl.stop()
	}
	if rotate {
		note("rotate: 3 managers and %d agents", o.agents)
		cl, err := startCluster(ctx, dir+"/rotate", 3, o.unsealed, log)
		if err != nil {
			return err
		}
		defer cl.stop()
		r, err := benchRotate(ctx, cl, o.agents)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	return o.write(cmd, results)
}

// start sets up a run: a context that SIGINT and SIGTERM cancel, the
// managers' logger, the run's data directory, the profiles asked for. done
// undoes it all.
func (o *options) start(cmd *cobra.Command) (_ context.Context, _ *slog.Logger, dir string, done func(), err error) {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	log, closeLog, err := o.logger()
	if err != nil {
		stop()
		return nil, nil, "", nil, err
	}
	if dir, err = workDir(o.dir); err != nil {
		closeLog()
		stop()
		return nil, nil, "", nil, err
	}
	cpuProfile, memProfile = o.cpuprofile, o.memprofile
	return ctx, log, dir, func() {
		if !o.keep {
			os.RemoveAll(dir)
		}
		closeLog()
		stop()
	}, nil
}

// write prints the results as a table, or as JSON with --json.
func (o *options) write(cmd *cobra.Command, results []Result) error {
	if o.json {
		return writeJSON(cmd.OutOrStdout(), results)
	}
	return writeTable(cmd.OutOrStdout(), results)
}

// cpuProfile and memProfile are the --cpuprofile and --memprofile paths.
var cpuProfile, memProfile string

// writeHeapProfile writes a heap profile to --memprofile, if asked.
func writeHeapProfile() error {
	if memProfile == "" {
		return nil
	}
	f, err := os.Create(memProfile)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// profile starts a CPU profile of the cluster's part of benchmark name,
// when --cpuprofile asked for one: the file is the flag's path with
// "-<name>" before its extension. The returned function stops it.
func profile(name string) (stop func() error) {
	if cpuProfile == "" {
		return func() error { return nil }
	}
	f, err := os.Create(profilePath(name))
	if err != nil {
		return func() error { return err }
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() error { return err }
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}
}

// profilePath is --cpuprofile's path with "-<name>" before its extension.
func profilePath(name string) string {
	ext := filepath.Ext(cpuProfile)
	return strings.TrimSuffix(cpuProfile, ext) + "-" + name + ext
}

// logger formats the managers' logs as the daemon does, into the log file
// or nowhere.
func (o *options) logger() (*slog.Logger, func(), error) {
	var w io.Writer = io.Discard
	closeLog := func() {}
	if o.logFile != "" {
		f, err := os.OpenFile(o.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, nil, err
		}
		w, closeLog = f, func() { f.Close() }
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})), closeLog, nil
}

// runScale runs the scale benchmark on a fresh 3-manager cluster.
func (o *options) runScale(cmd *cobra.Command, _ []string) error {
	if o.n < 1 || o.c < 1 || o.idle <= 0 {
		return fmt.Errorf("--nodes and -c must be at least 1, --idle positive")
	}
	if err := raiseFileLimit(o.n + 2000); err != nil {
		return err
	}
	ctx, log, dir, done, err := o.start(cmd)
	if err != nil {
		return err
	}
	defer done()
	start := time.Now()
	note("scale: starting 3 managers in %s", dir)
	cl, err := startCluster(ctx, dir+"/scale", 3, o.unsealed, log)
	if err != nil {
		return err
	}
	defer cl.stop()
	r, err := benchScale(ctx, cl, o.n, o.c, o.idle)
	if err != nil {
		return err
	}
	r.Figures["run_s"] = time.Since(start).Seconds()
	return o.write(cmd, []Result{r})
}

// raiseFileLimit makes sure the process may open want files: the leader
// holds a connection per simulated node.
func raiseFileLimit(want int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= uint64(want) {
		return nil
	}
	next := lim
	next.Cur = uint64(want)
	if next.Max < next.Cur {
		next.Max = next.Cur
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		return fmt.Errorf("scale needs %d open files (the leader's end of a connection per node), the limit is %d and raising it failed (%v): raise it with ulimit -n, or give fewer --nodes", want, lim.Cur, err)
	}
	return nil
}
