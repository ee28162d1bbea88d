package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// runBench runs quorumca-bench with args and returns its standard output.
func runBench(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRoot()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.ExecuteContext(t.Context())
	cpuProfile, memProfile = "", ""
	return out.String(), err
}

// TestBenchAllSmall runs the three benchmarks at tiny sizes, as JSON, with
// profiles: every figure the table and the note rely on is there and
// consistent. It checks no speed: benchmarks are not timed tests.
func TestBenchAllSmall(t *testing.T) {
	dir := t.TempDir()
	prof := filepath.Join(dir, "cpu.prof")
	heap := filepath.Join(dir, "heap.prof")
	out, err := runBench(t, "--json", "--dir", dir, "--cpuprofile", prof, "--memprofile", heap, "all", "-n", "24", "-c", "4", "--agents", "3")
	if err != nil {
		t.Fatalf("quorumca-bench all = %v", err)
	}
	var results []Result
	if err := json.Unmarshal([]byte(out), &results); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
	byName := map[string]Result{}
	for _, r := range results {
		byName[r.Name] = r
	}
	for _, name := range []string{"join", "renew"} {
		r, ok := byName[name]
		if !ok {
			t.Fatalf("no %s result in %s", name, out)
		}
		if r.N != 24 || r.Concurrency != 4 || r.Rate <= 0 || r.P50 <= 0 || r.P99 < r.P50 || r.CPUPerOp <= 0 {
			t.Errorf("%s: n=%d c=%d rate=%g p50=%g p99=%g cpu=%g; want 24, 4 and positive, ordered figures", name, r.N, r.Concurrency, r.Rate, r.P50, r.P99, r.CPUPerOp)
		}
		if r.Ceiling == nil || r.Ceiling.Rate <= 0 || r.Ceiling.What == "" {
			t.Fatalf("%s: ceiling %+v, want one measured in the run", name, r.Ceiling)
		}
		if want := r.Rate / r.Ceiling.Rate; r.Ratio < want*0.999 || r.Ratio > want*1.001 {
			t.Errorf("%s: ratio %g, want rate/ceiling = %g", name, r.Ratio, want)
		}
		if len(r.Goals) == 0 {
			t.Errorf("%s: no goals checked", name)
		}
		if fi, err := os.Stat(filepath.Join(dir, "cpu-"+name+".prof")); err != nil || fi.Size() == 0 {
			t.Errorf("%s: CPU profile %v, want a non-empty file", name, err)
		}
	}
	rot, ok := byName["rotate"]
	if !ok {
		t.Fatalf("no rotate result in %s", out)
	}
	f := rot.Figures
	if rot.N != 3 || f["completed_s"] <= 0 || f["all_trusting_s"] < f["completed_s"] || f["mib_per_idle_agent"] <= 0 || rot.P99 < rot.P50 || rot.P50 <= 0 {
		t.Errorf("rotate: n=%d figures %v p50=%g p99=%g; want 3 agents, completion before all trusting, memory and convergence measured", rot.N, f, rot.P50, rot.P99)
	}
	if fi, err := os.Stat(heap); err != nil || fi.Size() == 0 {
		t.Errorf("heap profile %v, want a non-empty file", err)
	}
	// Nothing is left behind but what was asked for.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "qcbench-") {
			t.Errorf("data directory %s left behind", e.Name())
		}
	}
}

// TestBenchRefusesBadSizes: sizes that cannot run are refused with a
// message, before anything starts.
func TestBenchRefusesBadSizes(t *testing.T) {
	for _, args := range [][]string{
		{"join", "-n", "0"},
		{"renew", "-c", "0"},
		{"rotate", "--agents", "0"},
		{"seal", "--rounds", "0"},
	} {
		_, err := runBench(t, append([]string{"--dir", t.TempDir()}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "at least 1") {
			t.Errorf("quorumca-bench %v = %v, want an error saying at least 1", args, err)
		}
	}
}

// TestWriteTable: the table names every benchmark, its ratio and each goal
// with whether it held.
func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	rs := []Result{
		{Name: "join", N: 10, Concurrency: 2, Rate: 50, P50: 1, P99: 2, Ceiling: &Ceiling{Rate: 100}, Ratio: 0.5, Goals: []Goal{atLeast("ratio to ceiling", 60, 50, "%")}},
		{Name: "rotate", N: 3, P50: 10, P99: 20, Figures: map[string]float64{"completed_s": 4}, Goals: []Goal{atMost("completion", 20, 4, " s")}},
	}
	if err := writeTable(&b, rs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"join", "50%", "rotate: completed_s=4", "join ratio to ceiling", "NO", "rotate completion", "yes"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

// TestBenchSealSmall: the seal benchmark reports joins and renewals on
// sealed stores beside the same on unsealed ones, over the rounds asked.
func TestBenchSealSmall(t *testing.T) {
	out, err := runBench(t, "--json", "--dir", t.TempDir(), "seal", "-n", "12", "-c", "3", "--rounds", "2")
	if err != nil {
		t.Fatalf("quorumca-bench seal = %v", err)
	}
	var results []Result
	if err := json.Unmarshal([]byte(out), &results); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
	var names []string
	for _, r := range results {
		names = append(names, r.Name)
		if r.N != 12 || r.Rate <= 0 || r.Ceiling == nil || r.Ceiling.Rate <= 0 || !strings.Contains(r.Ceiling.What, "unsealed") {
			t.Errorf("%s: n=%d rate=%g ceiling %+v; want 12 operations against a measured unsealed run", r.Name, r.N, r.Rate, r.Ceiling)
		}
		if r.Figures["rounds"] != 2 || len(r.Goals) != 1 || !strings.Contains(r.Goals[0].What, "sealing") {
			t.Errorf("%s: figures %v goals %+v; want 2 rounds and the cost of sealing checked", r.Name, r.Figures, r.Goals)
		}
	}
	if want := []string{"join (sealed)", "renew (sealed)"}; !slices.Equal(names, want) {
		t.Errorf("results %v, want %v", names, want)
	}
}

// TestMain lets the test binary be the scale benchmark's fleet process:
// scale starts os.Executable() with scale-fleet, which under go test is
// this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "scale-fleet" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestBenchScaleSmall runs the scale benchmark with a few nodes, as JSON:
// every figure is there, the fleet joined, idled, renewed in the rotation
// and was listed. It checks no speed.
func TestBenchScaleSmall(t *testing.T) {
	out, err := runBench(t, "--json", "--dir", t.TempDir(), "scale", "-n", "12", "-c", "4", "--idle", "1s")
	if err != nil {
		t.Fatalf("quorumca-bench scale = %v", err)
	}
	var results []Result
	if err := json.Unmarshal([]byte(out), &results); err != nil || len(results) != 1 {
		t.Fatalf("--json output: %v, %d results\n%s", err, len(results), out)
	}
	r := results[0]
	if r.Name != "scale" || r.N != 12 || r.Rate <= 0 {
		t.Errorf("result %s n=%d rate=%g, want scale, 12 and a join rate", r.Name, r.N, r.Rate)
	}
	for _, k := range []string{"idle_leader_us_per_node_s", "heartbeat_period_s", "rotation_storm_s", "storm_heartbeat_p99_ms", "node_ls_ms", "nodes_marked_down", "join_storm_s",
		"storm_leaderships_lost", "storm_sched_latency_p99_ms", "storm_sched_latency_max_ms"} {
		if _, ok := r.Figures[k]; !ok {
			t.Errorf("no figure %s in %v", k, r.Figures)
		}
	}
	if got := r.Figures["storm_renewals"]; got < 12 {
		t.Errorf("storm_renewals = %g, want every node (12) renewed in the rotation", got)
	}
	if len(r.Goals) != 4 {
		t.Errorf("%d goals, want 4", len(r.Goals))
	}
}
