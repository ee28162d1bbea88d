package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/node"
)

// scrape fetches path from n's metrics address.
func scrape(t *testing.T, n *clustertest.Node, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + n.Node().MetricsAddr() + path)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// families scrapes and parses n's /metrics.
func families(t *testing.T, n *clustertest.Node) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := scrape(t, n, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics of %s: %d %s", n.Name, code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics of %s: %v\n%s", n.Name, err, body)
	}
	return fams
}

// gathered returns n's metrics as its registry gathers them.
func gathered(t *testing.T, n *clustertest.Node) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := n.Node().Registry().Gather()
	if err != nil {
		t.Fatalf("gather %s's metrics: %v", n.Name, err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// value returns the value of the metric of fam whose labels include
// labels, and whether there is one.
func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	fam, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetricsFromALiveCluster: every node serves metrics that pass
// Prometheus's lint; the node certificate's expiry is the certificate's,
// the CA's is the root's; the issuance counters move with a join and a
// refused one; /healthz and /readyz answer, and a removed worker is not
// ready.
func TestMetricsFromALiveCluster(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 2, Configure: func(_ string, cfg *node.Config) {
		cfg.MetricsAddr = "127.0.0.1:0"
	}})
	m0, w0, w1 := c.Managers[0], c.Workers[0], c.Workers[1]
	for _, n := range []*clustertest.Node{m0, w0} {
		problems, err := testutil.GatherAndLint(n.Node().Registry())
		if err != nil || len(problems) > 0 {
			t.Errorf("lint of %s's metrics: %v %+v", n.Name, err, problems)
		}
		fams := families(t, n)
		leaf := n.Credentials().Leaf()
		if v, ok := value(fams, "quorumca_node_certificate_expiry_timestamp_seconds", map[string]string{"node_id": n.ID()}); !ok || int64(v) != leaf.NotAfter.Unix() {
			t.Errorf("%s: node certificate expiry = %v (%v), want %d", n.Name, v, ok, leaf.NotAfter.Unix())
		}
		if code, body := scrape(t, n, "/healthz"); code != http.StatusOK {
			t.Errorf("%s /healthz = %d %s", n.Name, code, body)
		}
	}
	testkit.Eventually(t, "m0 and w0 ready", func() error {
		for _, n := range []*clustertest.Node{m0, w0} {
			if code, body := scrape(t, n, "/readyz"); code != http.StatusOK {
				return fmt.Errorf("%s /readyz = %d %s", n.Name, code, body)
			}
		}
		return nil
	})
	fams := families(t, m0)
	root := m0.Manager().State().CA
	certs, err := ca.ParseCertificates(root.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := value(fams, "quorumca_ca_certificate_expiry_timestamp_seconds", map[string]string{"kind": "root"}); !ok || int64(v) != certs[0].NotAfter.Unix() {
		t.Errorf("root expiry = %v (%v), want %d", v, ok, certs[0].NotAfter.Unix())
	}
	if v, _ := value(fams, "quorumca_raft_state", map[string]string{"state": "leader"}); v != 1 {
		t.Errorf("quorumca_raft_state{state=leader} = %v on the only manager", v)
	}
	// hashicorp/raft's own, through its go-metrics sink.
	var raftOwn []string
	for name := range fams {
		if strings.HasPrefix(name, "quorumca_raft_") {
			raftOwn = append(raftOwn, name)
		}
	}
	if _, ok := fams["quorumca_raft_commitTime"]; !ok {
		t.Errorf("no quorumca_raft_commitTime from hashicorp/raft's metrics; raft metrics: %v", raftOwn)
	}
	joins := func() (ok, bad float64) {
		fams := families(t, m0)
		ok, _ = value(fams, "quorumca_issuance_total", map[string]string{"kind": "join", "role": "swarm-worker", "result": "ok"})
		bad, _ = value(fams, "quorumca_issuance_total", map[string]string{"kind": "join", "result": "bad_token"})
		return ok, bad
	}
	ok0, bad0 := joins()
	if ok0 < 2 {
		t.Errorf("joins ok = %v after two workers joined", ok0)
	}
	c.AddWorker("w2")
	if _, _, err := c.TryJoin(wrongSecret(t, c.WorkerToken), m0.Addr()); err == nil {
		t.Fatal("a join with a wrong token succeeded")
	}
	if ok1, bad1 := joins(); ok1 != ok0+1 || bad1 != bad0+1 {
		t.Errorf("joins after one more and a wrong token: ok %v -> %v, bad_token %v -> %v", ok0, ok1, bad0, bad1)
	}

	if _, err := c.Ctl().RemoveNode(testkit.Ctx(t), &api.RemoveNodeRequest{NodeId: w1.ID(), Force: true}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the removed worker is not ready", func() error {
		if code, body := scrape(t, w1, "/readyz"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz = %d %s", code, body)
		}
		return nil
	})
}
