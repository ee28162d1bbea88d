package manager

// Prometheus metrics of a manager. Every manager exports them, not only the
// leader, so that a failover leaves nothing stale: what comes from the
// replicated state (the CA's expiry, the rotation, the nodes) is read at
// each scrape; what this manager did (certificates issued, heartbeats
// answered) is counted as it happens.

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
)

// metrics are what a manager counts as it happens.
type metrics struct {
	issued     *prometheus.CounterVec
	issueTime  *prometheus.HistogramVec
	heartbeats *prometheus.CounterVec
	externals  *prometheus.CounterVec
	applyTime  prometheus.Histogram
	// signing counts the renewals being signed and committed now
	// (Config.MaxConcurrentSigns bounds it).
	signing prometheus.Gauge
	// silentClosed counts the API connections closed for silence
	// (quietListener).
	silentClosed prometheus.Counter
	// markedDown counts the nodes this manager's rotation step, as
	// leader, found down (rotationView).
	markedDown prometheus.Counter
}

// external counts a request to an external CA (cfssl.Config.Observe).
func (mt *metrics) external(url, result string) {
	mt.externals.WithLabelValues(url, result).Inc()
}

func newMetrics() *metrics {
	return &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quorumca_issuance_total",
			Help: "Certificate requests this manager answered, by kind (join, renew, admin), role and result (ok, or the reason of the refusal).",
		}, []string{"kind", "role", "result"}),
		issueTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "quorumca_issuance_duration_seconds",
			Help:    "Time this manager took to answer a certificate request, by kind and result.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"kind", "result"}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quorumca_heartbeats_total",
			Help: "Heartbeats this manager answered, by result.",
		}, []string{"result"}),
		externals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quorumca_external_ca_requests_total",
			Help: "Requests this manager made to external CAs, by URL and result (ok, not_taken, refused, down).",
		}, []string{"url", "result"}),
		applyTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "quorumca_raft_apply_duration_seconds",
			Help:    "Time to commit and apply a change this manager proposed to Raft.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		silentClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quorumca_api_silent_connections_closed_total",
			Help: "API connections closed before they sent a byte, the oldest first, when more than 256 were silent at once (a flood, or a manager too busy to read them).",
		}),
		markedDown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quorumca_rotation_nodes_marked_down_total",
			Help: "Nodes this manager, leading a root rotation, found down (silent for three heartbeat periods): each time one goes down. A node down at a rotation's end is left behind once the grace passes.",
		}),
		signing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quorumca_signing_in_flight",
			Help: "Renewals this manager is signing and committing now; beyond its bound (--max-concurrent-signs) they are answered busy.",
		}),
	}
}

// issuanceKinds names the methods that issue a certificate.
var issuanceKinds = map[string]string{
	api.CA_IssueNodeCertificate_FullMethodName:       "join",
	api.CA_RenewNodeCertificate_FullMethodName:       "renew",
	api.Control_IssueAdminCertificate_FullMethodName: "admin",
	api.CA_Heartbeat_FullMethodName:                  "heartbeat",
}

// observe counts the calls that reach this manager directly (a call
// relayed by another manager was counted there).
func (m *Manager) observe(arrival authz.Arrival) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		kind := issuanceKinds[info.FullMethod]
		if kind == "" || arrival == authz.Forwarded {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		result := resultOf(err)
		if kind == "heartbeat" {
			m.metrics.heartbeats.WithLabelValues(result).Inc()
			return resp, err
		}
		role := peerRole(ctx)
		if j, ok := resp.(*api.IssueNodeCertificateResponse); ok && j.GetRole() != "" {
			role = j.GetRole()
		}
		if kind == "admin" {
			role = string(ca.RoleAdmin)
		}
		m.metrics.issued.WithLabelValues(kind, role, result).Inc()
		m.metrics.issueTime.WithLabelValues(kind, result).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// resultOf names a call's outcome: "ok", the reason a manager attached
// (bad_token, external_ca_down, removed...), or the gRPC code.
func resultOf(err error) string {
	if err == nil {
		return "ok"
	}
	if reason, _ := api.ErrorReason(err); reason != "" {
		return strings.ToLower(reason)
	}
	return strings.ToLower(status.Code(err).String())
}

// peerRole is the role the caller's certificate names, "none" without one.
func peerRole(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "none"
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		if ou := ti.State.PeerCertificates[0].Subject.OrganizationalUnit; len(ou) == 1 {
			return ou[0]
		}
	}
	return "none"
}

// Collector returns the manager's metrics: the counters, and what the
// replicated state and Raft say at each scrape.
func (m *Manager) Collector() prometheus.Collector { return managerCollector{m} }

type managerCollector struct{ m *Manager }

var (
	descCAExpiry = prometheus.NewDesc("quorumca_ca_certificate_expiry_timestamp_seconds",
		"NotAfter of the cluster's CA certificates: the signing CA, the certificates of its chain, and the trusted roots.",
		[]string{"kind", "subject"}, nil)
	descRotation = prometheus.NewDesc("quorumca_rotation_in_progress",
		"1 while a root CA rotation runs.", nil, nil)
	descRotationNodes = prometheus.NewDesc("quorumca_rotation_nodes",
		"Nodes of the rotation in progress: total, renewed (serving a certificate of the new CA), trusting the new root, skipped (unreachable past the grace).",
		[]string{"state"}, nil)
	descNodes = prometheus.NewDesc("quorumca_nodes",
		"Nodes the cluster records, by role, status (ready, down; unknown on a manager that does not lead: only the leader hears heartbeats) and TLS status.",
		[]string{"role", "status", "tls_status"}, nil)
	descRevoked = prometheus.NewDesc("quorumca_revoked_certificates",
		"Unexpired revoked certificates the CRLs list.", nil, nil)
	descRaftState = prometheus.NewDesc("quorumca_raft_state",
		"1 for this manager's Raft state (leader, follower, candidate, shutdown).",
		[]string{"state"}, nil)
	descRaftLeader = prometheus.NewDesc("quorumca_raft_has_leader",
		"1 when this manager knows a leader.", nil, nil)
	descRaftIndex = prometheus.NewDesc("quorumca_raft_index",
		"Raft indexes of this manager: commit, applied, last_log.",
		[]string{"index"}, nil)
	descRaftContact = prometheus.NewDesc("quorumca_raft_last_contact_seconds",
		"Time since this follower last heard from the leader (0 on the leader).", nil, nil)
	descPeriod = prometheus.NewDesc("quorumca_heartbeat_period_seconds",
		"The heartbeat period this manager tells nodes now: the configured one, or longer in a cluster too large for --max-heartbeats-per-second at it.", nil, nil)
)

func (c managerCollector) Describe(ch chan<- *prometheus.Desc) {
	c.m.metrics.issued.Describe(ch)
	c.m.metrics.issueTime.Describe(ch)
	c.m.metrics.heartbeats.Describe(ch)
	c.m.metrics.externals.Describe(ch)
	c.m.metrics.applyTime.Describe(ch)
	c.m.metrics.signing.Describe(ch)
	c.m.metrics.silentClosed.Describe(ch)
	c.m.metrics.markedDown.Describe(ch)
	for _, d := range []*prometheus.Desc{descPeriod, descCAExpiry, descRotation, descRotationNodes, descNodes, descRevoked, descRaftState, descRaftLeader, descRaftIndex, descRaftContact} {
		ch <- d
	}
}

func (c managerCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	m.metrics.issued.Collect(ch)
	m.metrics.issueTime.Collect(ch)
	m.metrics.heartbeats.Collect(ch)
	m.metrics.externals.Collect(ch)
	m.metrics.applyTime.Collect(ch)
	m.metrics.signing.Collect(ch)
	m.metrics.silentClosed.Collect(ch)
	m.metrics.markedDown.Collect(ch)
	st := m.machine.State()
	now := m.cfg.Now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descPeriod, m.heartbeatPeriod(st.Nodes.Len()).Seconds())
	if st.Initialized() {
		signing, _ := ca.ParseCertificates(st.CA.Cert)
		seen := map[[2]string]bool{} // a label set may be collected once
		for _, part := range []struct {
			kind string
			pem  []byte
		}{{"signing", st.CA.Cert}, {"chain", st.CA.Chain}, {"root", st.CA.Bundle}} {
			certs, _ := ca.ParseCertificates(part.pem)
			for _, cert := range certs {
				key := [2]string{part.kind, cert.Subject.String()}
				if seen[key] || (part.kind == "chain" && len(signing) > 0 && cert.Equal(signing[0])) {
					continue
				}
				seen[key] = true
				gauge(descCAExpiry, float64(cert.NotAfter.Unix()), part.kind, cert.Subject.String())
			}
		}
		leader := m.raft.IsLeader()
		byStatus := map[[3]string]float64{}
		for _, n := range st.Nodes.All() {
			status := "unknown" // only the leader hears heartbeats
			if leader {
				status = "down"
				if m.live(n.ID, now) {
					status = "ready"
				}
			}
			byStatus[[3]string{string(n.Role), status, tlsStatus(st, n, "")}]++
		}
		for k, v := range byStatus {
			gauge(descNodes, v, k[0], k[1], k[2])
		}
		rotating := 0.0
		if st.Rotation != nil {
			rotating = 1
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			r := m.rotationOfLeader(ctx, st)
			cancel()
			gauge(descRotationNodes, float64(r.GetTotal()), "total")
			gauge(descRotationNodes, float64(r.GetConverged()), "renewed")
			gauge(descRotationNodes, float64(r.GetTrusting()), "trusting")
			gauge(descRotationNodes, float64(r.GetSkipped()), "skipped")
		}
		gauge(descRotation, rotating)
		gauge(descRevoked, float64(len(st.RevokedAt(now))))
	}
	stats := m.raft.Stats()
	state := strings.ToLower(stats["state"])
	for _, s := range []string{"leader", "follower", "candidate", "shutdown"} {
		v := 0.0
		if s == state {
			v = 1
		}
		gauge(descRaftState, v, s)
	}
	leaderID, _ := m.raft.Leader()
	hasLeader := 0.0
	if leaderID != "" {
		hasLeader = 1
	}
	gauge(descRaftLeader, hasLeader)
	for _, k := range []string{"commit_index", "applied_index", "last_log_index"} {
		if v, err := strconv.ParseUint(stats[k], 10, 64); err == nil {
			gauge(descRaftIndex, float64(v), strings.TrimSuffix(k, "_index"))
		}
	}
	contact := 0.0
	if !m.raft.IsLeader() {
		if t := m.raft.LastContact(); !t.IsZero() {
			contact = time.Since(t).Seconds()
		}
	}
	gauge(descRaftContact, contact)
}
