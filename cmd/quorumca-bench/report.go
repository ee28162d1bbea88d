package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one benchmark's outcome: the cluster's figures, the ceiling
// measured in the same run, and the goals checked against them.
type Result struct {
	Name        string `json:"name"`
	N           int    `json:"n"`
	Concurrency int    `json:"concurrency,omitempty"`
	// Rate is operations per second over the whole timed run; P50 and P99
	// are per-operation latencies, in milliseconds.
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"per_second,omitempty"`
	P50     float64 `json:"p50_ms"`
	P99     float64 `json:"p99_ms"`
	// CPUPerOp is the process's CPU time per operation (clients and
	// servers: they share the process); Cores how many cores it kept busy.
	CPUPerOp float64 `json:"cpu_ms_per_op,omitempty"`
	Cores    float64 `json:"cores_busy,omitempty"`
	// Ceiling is the same work without Raft and forwarding (join) or
	// without network and Raft (renew); Ratio is Rate over Ceiling.Rate.
	Ceiling *Ceiling `json:"ceiling,omitempty"`
	Ratio   float64  `json:"ratio,omitempty"`
	// Figures are the benchmark's other measurements, by name.
	Figures map[string]float64 `json:"figures,omitempty"`
	Goals   []Goal             `json:"goals"`
}

// Ceiling is a run of the reference loop.
type Ceiling struct {
	What     string  `json:"what"`
	Rate     float64 `json:"per_second"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
	CPUPerOp float64 `json:"cpu_ms_per_op"`
	Cores    float64 `json:"cores_busy"`
}

func ceiling(what string, m measured) *Ceiling {
	return &Ceiling{What: what, Rate: m.rate(), P50: m.lat.percentile(0.50), P99: m.lat.percentile(0.99), CPUPerOp: m.cpuPerOp(), Cores: m.cores()}
}

// result is the Result of a run measured beside the ceiling ceil.
func result(name string, c int, m measured, ceil *Ceiling) Result {
	return Result{
		Name: name, N: m.n, Concurrency: c,
		Seconds: m.wall.Seconds(), Rate: m.rate(),
		P50: m.lat.percentile(0.50), P99: m.lat.percentile(0.99),
		CPUPerOp: m.cpuPerOp(), Cores: m.cores(),
		Ceiling: ceil, Ratio: m.rate() / ceil.Rate,
	}
}

// Goal is one target of the issue, and whether this run met it.
type Goal struct {
	What string  `json:"what"`
	Want string  `json:"want"`
	Got  float64 `json:"got"`
	Held bool    `json:"held"`
}

func atLeast(what string, want, got float64, unit string) Goal {
	return Goal{What: what, Want: fmt.Sprintf(">= %g%s", want, unit), Got: got, Held: got >= want}
}

func atMost(what string, want, got float64, unit string) Goal {
	return Goal{What: what, Want: fmt.Sprintf("<= %g%s", want, unit), Got: got, Held: got <= want}
}

// latencies summarises per-operation durations.
type latencies []time.Duration

// percentile returns the p-th quantile (nearest rank), in milliseconds.
func (l latencies) percentile(p float64) float64 {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return ms(s[min(max(i, 0), len(s)-1)])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// writeTable prints results for people.
func writeTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "bench\tn\tc\tper second\tp50 ms\tp99 ms\tcpu ms/op\tcores\tceiling/s\tceil p50\tceil p99\tceil cpu ms/op\tceil cores\tratio\t")
	for _, r := range results {
		ceil := "-\t-\t-\t-\t-\t-"
		if r.Ceiling != nil {
			c := r.Ceiling
			ceil = fmt.Sprintf("%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.0f%%", c.Rate, c.P50, c.P99, c.CPUPerOp, c.Cores, 100*r.Ratio)
		}
		rate, cpu := "-", "-\t-"
		if r.Rate > 0 {
			rate, cpu = fmt.Sprintf("%.0f", r.Rate), fmt.Sprintf("%.2f\t%.2f", r.CPUPerOp, r.Cores)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.2f\t%.2f\t%s\t%s\t\n", r.Name, r.N, r.Concurrency, rate, r.P50, r.P99, cpu, ceil)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		if len(r.Figures) > 0 {
			var keys []string
			for k := range r.Figures {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			var parts []string
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s=%.3g", k, r.Figures[k]))
			}
			fmt.Fprintf(w, "%s: %s\n", r.Name, strings.Join(parts, " "))
		}
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\twant\tgot\theld\t")
	for _, r := range results {
		for _, g := range r.Goals {
			held := "yes"
			if !g.Held {
				held = "NO"
			}
			fmt.Fprintf(tw, "%s %s\t%s\t%.3g\t%s\t\n", r.Name, g.What, g.Want, g.Got, held)
		}
	}
	return tw.Flush()
}

func writeJSON(w io.Writer, results []Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(results)
}
