package node

// The metrics address (--metrics-addr): Prometheus metrics at /metrics,
// and /healthz (the daemon runs) and /readyz (the node can do its job)
// for probes.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	gometrics "github.com/hashicorp/go-metrics"
	gmprom "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// Registry returns the node's metrics: its own, and its manager's while it
// runs one.
func (n *Node) Registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(nodeCollector{n})
	return reg
}

// nodeCollector is unchecked (it describes nothing up front): what it
// exports depends on the role the node runs at the scrape.
type nodeCollector struct{ n *Node }

var (
	descNodeCert = prometheus.NewDesc("quorumca_node_certificate_expiry_timestamp_seconds",
		"NotAfter of this node's certificate.", []string{"node_id", "role"}, nil)
	descBundle = prometheus.NewDesc("quorumca_trust_bundle_root_expiry_timestamp_seconds",
		"NotAfter of each root of the trust bundle this node holds.", []string{"subject"}, nil)
	descRenewals = prometheus.NewDesc("quorumca_renewals_total",
		"Renewals of this node's certificate since its daemon started, by result (ok, failed) and reason.", []string{"result", "reason"}, nil)
	descLocked = prometheus.NewDesc("quorumca_locked",
		"1 while this manager waits for its unlock key.", nil, nil)
)

func (nodeCollector) Describe(chan<- *prometheus.Desc) {}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	locked := 0.0
	if n.Locked() {
		locked = 1
	}
	ch <- prometheus.MustNewConstMetric(descLocked, prometheus.GaugeValue, locked)
	creds := n.credentials()
	if creds == nil {
		return
	}
	id, leaf := creds.Identity(), creds.Leaf()
	ch <- prometheus.MustNewConstMetric(descNodeCert, prometheus.GaugeValue, float64(leaf.NotAfter.Unix()), id.NodeID, string(id.Role))
	if roots, err := ca.ParseCertificates(creds.Bundle()); err == nil {
		for _, r := range roots {
			ch <- prometheus.MustNewConstMetric(descBundle, prometheus.GaugeValue, float64(r.NotAfter.Unix()), r.Subject.String())
		}
	}
	if r := n.renewer(); r != nil {
		ok, failed := r.RenewalCounts()
		ch <- prometheus.MustNewConstMetric(descRenewals, prometheus.CounterValue, float64(ok), "ok", "")
		for reason, v := range failed {
			ch <- prometheus.MustNewConstMetric(descRenewals, prometheus.CounterValue, float64(v), "failed", reason)
		}
	}
	if m := n.Manager(); m != nil {
		m.Collector().Collect(ch)
	}
}

// renewer returns the renewer of the daemon the node runs, or nil.
func (n *Node) renewer() *agent.Renewer {
	if m := n.Manager(); m != nil {
		return m.Renewer()
	}
	if w := n.Worker(); w != nil {
		return w.Renewer()
	}
	return nil
}

// Ready says why the node cannot do its job now, nil if it can: locked,
// starting, its certificate expired, removed or left behind, no leader
// (a manager), no manager answering its heartbeats (a worker).
func (n *Node) Ready() error {
	if n.Locked() {
		return errors.New(api.HealthLocked)
	}
	creds := n.credentials()
	if creds == nil {
		return errors.New("starting")
	}
	now := time.Now
	if n.cfg.Manager.Now != nil {
		now = n.cfg.Manager.Now
	}
	if !now().Before(creds.NotAfter()) {
		return errors.New(api.HealthCertExpired)
	}
	if m := n.Manager(); m != nil {
		if health, problem := m.Health(); health != api.HealthOK {
			return fmt.Errorf("%s %s", health, problem)
		}
		return nil
	}
	r := n.renewer()
	if r == nil {
		return errors.New("starting")
	}
	if p := r.Problem(); errors.Is(p, agent.ErrRefused) || errors.Is(p, agent.ErrLeftBehind) {
		return p
	}
	period := r.Period()
	if last := r.LastHeartbeat(); last.IsZero() || now().Sub(last) > 3*period {
		return errors.New("no manager answered a heartbeat in three periods")
	}
	return nil
}

// raftSink is the process's one go-metrics sink: hashicorp/raft reports
// its own metrics (commit and apply times, replication, FSM) through the
// go-metrics global, which a process has once; they are exported as they
// come, named quorumca_raft_*, beside the node's.
var raftSink struct {
	once sync.Once
	reg  *prometheus.Registry
	err  error
}

func raftGatherer() (prometheus.Gatherer, error) {
	raftSink.once.Do(func() {
		reg := prometheus.NewRegistry()
		sink, err := gmprom.NewPrometheusSinkFrom(gmprom.PrometheusOpts{Registerer: reg, Expiration: time.Minute, Name: "quorumca_raft_sink"})
		if err != nil {
			raftSink.err = err
			return
		}
		cfg := gometrics.DefaultConfig("quorumca")
		cfg.EnableHostname = false
		cfg.EnableRuntimeMetrics = false
		cfg.EnableServiceLabel = false
		if _, err := gometrics.NewGlobal(cfg, sink); err != nil {
			raftSink.err = err
			return
		}
		raftSink.reg = reg
	})
	return raftSink.reg, raftSink.err
}

// serveMetrics serves /metrics, /healthz and /readyz on ln until ctx ends.
func (n *Node) serveMetrics(ctx context.Context, ln net.Listener) {
	mux := http.NewServeMux()
	gatherers := prometheus.Gatherers{n.Registry()}
	if g, err := raftGatherer(); err != nil {
		n.log.Warn("hashicorp/raft's metrics are not exported", "err", err)
	} else {
		gatherers = append(gatherers, g)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherers, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := n.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		n.log.Warn("metrics server stopped", "err", err)
	}
}
