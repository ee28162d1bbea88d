package manager

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
)

func TestPeriodFor(t *testing.T) {
	const base = 5 * time.Second
	tests := []struct {
		rate, n int
		want    time.Duration
	}{
		{1000, 0, base},
		{1000, 3, base},
		{1000, 5000, base},                // 1000/s at 5s
		{1000, 5001, 6 * time.Second},     // rounded up to a whole second
		{1000, 10000, 10 * time.Second},   // 1000/s at 10s
		{1000, 100000, 100 * time.Second}, // 1000/s at 100s
		{50, 10000, 200 * time.Second},
		{0, 10000, base}, // no bound
	}
	for _, tt := range tests {
		got := periodFor(base, tt.rate, tt.n)
		if got != tt.want {
			t.Errorf("periodFor(%v, %d/s, %d nodes) = %v, want %v", base, tt.rate, tt.n, got, tt.want)
		}
		if tt.rate > 0 && tt.n > 0 {
			if rate := float64(tt.n) / got.Seconds(); rate > float64(tt.rate) {
				t.Errorf("periodFor(%v, %d/s, %d nodes) = %v: %.0f heartbeats a second, over the bound", base, tt.rate, tt.n, got, rate)
			}
		}
	}
}

// TestLivenessFollowsToldPeriod: after the cluster shrinks and nodes are
// told a shorter period, a node told the longer one is judged by it until
// it has had three of them to hear the new one.
func TestLivenessFollowsToldPeriod(t *testing.T) {
	const base = time.Second
	t0 := time.Unix(1_000_000, 0)
	var ps periods
	if got := ps.live(base, t0); got != base {
		t.Fatalf("live() before any period told = %v, want the base %v", got, base)
	}
	ps.tell(10*time.Second, t0)
	if got := ps.live(base, t0); got != 10*time.Second {
		t.Errorf("live() after telling 10s = %v, want 10s", got)
	}
	ps.tell(2*time.Second, t0.Add(time.Second))
	for _, tt := range []struct {
		at   time.Duration
		want time.Duration
	}{
		{2 * time.Second, 10 * time.Second},  // a node told 10s may still be waiting
		{30 * time.Second, 10 * time.Second}, // three 10s periods after the change
		{31 * time.Second, 2 * time.Second},  // every node has heartbeated since
	} {
		if got := ps.live(base, t0.Add(tt.at)); got != tt.want {
			t.Errorf("live() at +%v = %v, want %v", tt.at, got, tt.want)
		}
	}
	ps.tell(20*time.Second, t0.Add(40*time.Second))
	if got := ps.live(base, t0.Add(40*time.Second)); got != 20*time.Second {
		t.Errorf("live() after growing to 20s = %v, want 20s", got)
	}
}

// TestHeartbeatPeriodGrowsWithCluster: a leader bounded to fewer
// heartbeats a second than its nodes at the configured period would make
// tells a longer period, and judges liveness by it.
func TestHeartbeatPeriodGrowsWithCluster(t *testing.T) {
	m := initManager(t, func(c *Config) { c.MaxHeartbeatsPerSecond = 1 })
	conn := dial(t, m.Addr(), m.Credentials().ClientTLS(agent.ManagerName))
	resp, err := api.NewCAClient(conn).Heartbeat(t.Context(), &api.HeartbeatRequest{})
	if err != nil {
		t.Fatalf("Heartbeat() = %v", err)
	}
	// One node at one heartbeat a second: a period of a second, not the
	// configured one.
	if got := time.Duration(resp.GetPeriodMs()) * time.Millisecond; got != time.Second {
		t.Errorf("Heartbeat() period = %v, want 1s (1 node at 1 heartbeat a second; configured %v)", got, m.cfg.HeartbeatPeriod)
	}
	if got := m.livePeriod(time.Now()); got != time.Second {
		t.Errorf("livePeriod() = %v, want the 1s told", got)
	}
}

// TestHeartbeatBundleOnlyWhenChanged: the bundle travels only to a node
// that holds another one.
func TestHeartbeatBundleOnlyWhenChanged(t *testing.T) {
	m := initManager(t, nil)
	conn := dial(t, m.Addr(), m.Credentials().ClientTLS(agent.ManagerName))
	bundle := m.State().CA.Bundle
	for _, tt := range []struct {
		name, digest string
		want         []byte
	}{
		{"no bundle held", "", bundle},
		{"another bundle held", agent.BundleDigest([]byte("another")), bundle},
		{"the cluster's bundle held", agent.BundleDigest(bundle), nil},
	} {
		resp, err := api.NewCAClient(conn).Heartbeat(t.Context(), &api.HeartbeatRequest{BundleDigest: tt.digest})
		if err != nil {
			t.Fatalf("%s: Heartbeat() = %v", tt.name, err)
		}
		if string(resp.GetBundle()) != string(tt.want) {
			t.Errorf("%s: Heartbeat() bundle of %d bytes, want %d", tt.name, len(resp.GetBundle()), len(tt.want))
		}
	}
}

// TestRenewalStormAnsweredBusy: with every signing slot taken, a renewal
// waits its turn; behind a full queue, or when no turn comes within
// signWait, it is answered ResourceExhausted, reason BUSY, with the wait
// to retry after, and nothing is signed or written.
func TestRenewalStormAnsweredBusy(t *testing.T) {
	m := initManager(t, func(c *Config) { c.MaxConcurrentSigns = 1 })
	conn := dial(t, m.Addr(), m.Credentials().ClientTLS(agent.ManagerName))
	key, err := ca.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.NewCSR(nil, key, "")
	if err != nil {
		t.Fatal(err)
	}
	renew := func() error {
		_, err := api.NewCAClient(conn).RenewNodeCertificate(t.Context(), &api.RenewNodeCertificateRequest{Csr: csr})
		return err
	}
	wantBusy := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.ResourceExhausted || !api.HasReason(err, api.ReasonBusy) {
			t.Fatalf("%s: RenewNodeCertificate() = %v, want ResourceExhausted with reason BUSY", what, err)
		}
		if d, ok := api.RetryAfter(err); !ok || d != busyRetry {
			t.Errorf("%s: RetryAfter() = %v, %v, want %v", what, d, ok, busyRetry)
		}
	}
	self, _ := m.State().Node(m.NodeID())
	m.signing <- struct{}{} // a renewal in flight holds the one slot

	// The queue full: busy at once.
	m.signWaiting.Add(signQueue)
	start := time.Now()
	err = renew()
	m.signWaiting.Add(-signQueue)
	wantBusy("queue full", err)
	if d := time.Since(start); d >= signWait {
		t.Errorf("busy answer behind a full queue took %v, want it at once (under %v)", d, signWait)
	}
	// Room in the queue, but the slot never frees: busy after signWait.
	start = time.Now()
	wantBusy("slot held", renew())
	if d := time.Since(start); d < signWait {
		t.Errorf("busy answer with room in the queue after %v, want a wait of %v first", d, signWait)
	}
	if after, _ := m.State().Node(m.NodeID()); after.Cert.Serial != self.Cert.Serial {
		t.Errorf("the node's certificate %s after busy answers, want %s: nothing signed", after.Cert.Serial, self.Cert.Serial)
	}
	// A renewal waiting its turn takes the slot when it frees.
	done := make(chan error, 1)
	go func() { done <- renew() }()
	testkit.Eventually(t, "the renewal to wait in the queue", testkit.True(func() bool { return m.signWaiting.Load() == 1 }))
	<-m.signing
	if err := <-done; err != nil {
		t.Fatalf("RenewNodeCertificate() once the slot freed = %v", err)
	}
	if n, w := len(m.signing), m.signWaiting.Load(); n != 0 || w != 0 {
		t.Errorf("%d signing slots held and %d waiting after the renewal, want 0 and 0", n, w)
	}
}

// TestPageOf: pages of ListNodes cover every node once, in order, and go
// on where the last page ended when nodes joined or left in between.
func TestPageOf(t *testing.T) {
	var nodes []fsm.Node
	for _, id := range []string{"m2", "m1"} {
		nodes = append(nodes, fsm.Node{ID: id, Role: ca.RoleManager})
	}
	for i := range 7 {
		nodes = append(nodes, fsm.Node{ID: fmt.Sprintf("w%d", 7-i), Role: ca.RoleWorker})
	}
	st := &fsm.State{Nodes: fsm.NewNodeMap(nodes...)}
	sorted := st.SortedNodes()
	ids := func(ns []fsm.Node) (out []string) {
		for _, n := range ns {
			out = append(out, n.ID)
		}
		return out
	}

	var got []string
	token := ""
	for page := 0; ; page++ {
		if page > len(sorted) {
			t.Fatalf("pages never end: token %q", token)
		}
		p, next, err := pageOf(sorted, 3, token)
		if err != nil {
			t.Fatalf("pageOf(page %d) = %v", page, err)
		}
		if len(p) > 3 {
			t.Errorf("page %d holds %d nodes, want at most 3", page, len(p))
		}
		got = append(got, ids(p)...)
		if next == "" {
			break
		}
		token = next
	}
	if diff := cmp.Diff(ids(sorted), got); diff != "" {
		t.Errorf("pages (-want +got):\n%s", diff)
	}

	// The first page ends at w1; then w1 and w3 leave, and w0 and m0
	// join: the next page goes on after w1.
	first, token, err := pageOf(sorted, 3, "")
	if err != nil || token == "" {
		t.Fatalf("pageOf(first) = %v, %q, %v", ids(first), token, err)
	}
	changed := st.Nodes.Without("w1").Without("w3").With(fsm.Node{ID: "w0", Role: ca.RoleWorker}).With(fsm.Node{ID: "m0", Role: ca.RoleManager})
	next, _, err := pageOf((&fsm.State{Nodes: changed}).SortedNodes(), 3, token)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"w2", "w4", "w5"}, ids(next)); diff != "" {
		t.Errorf("page after %q with nodes changed (-want +got):\n%s", token, diff)
	}

	if p, next, err := pageOf(sorted, 0, ""); err != nil || len(p) != len(sorted) || next != "" {
		t.Errorf("pageOf(size 0) = %d nodes, %q, %v; want all %d in one page (MaxNodesPage)", len(p), next, err, len(sorted))
	}
	for _, bad := range []string{"x", "2/w1", "0/", "w1"} {
		if _, _, err := pageOf(sorted, 3, bad); !errors.Is(err, fsm.ErrBadCommand) {
			t.Errorf("pageOf(token %q) = %v, want ErrBadCommand", bad, err)
		}
	}
}

func TestLookSpacing(t *testing.T) {
	for _, tt := range []struct {
		n    int
		want time.Duration
	}{
		{3, 300 * time.Microsecond},
		{100, 10 * time.Millisecond},
		{5000, 500 * time.Millisecond},
		{10000, time.Second},
		{100000, time.Second},
	} {
		if got := lookSpacing(tt.n); got != tt.want {
			t.Errorf("lookSpacing(%d) = %v, want %v", tt.n, got, tt.want)
		}
	}
}

// TestNewLeaderJudgesMembershipAfterCatchingUp: a leader whose term is
// not ready (it has not applied its predecessor's last entries, such as
// a node's join) does not answer that node "not a member": it waits for
// its term's barrier, then judges on the state it has caught up to. The
// history checks caught a renewal refused so, during a leader change.
func TestNewLeaderJudgesMembershipAfterCatchingUp(t *testing.T) {
	m := initManager(t, nil)
	st := m.State()
	cluster := testkit.CAFrom(t, st.ClusterID, st.CA)
	leaf := cluster.Issue(t, ca.RoleWorker)
	id := leaf.ID
	creds, err := agent.NewCredentials(t.TempDir(), leaf.KeyPEM, leaf.CertPEM, st.CA.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	conn := dial(t, m.Addr(), creds.ClientTLS(agent.ManagerName))

	// The leader's term starts over, not ready: as a leader just elected.
	fresh := &term{since: time.Now(), ready: make(chan struct{})}
	m.term.set(fresh)
	done := make(chan error, 1)
	go func() {
		_, err := api.NewCAClient(conn).Heartbeat(t.Context(), &api.HeartbeatRequest{})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Heartbeat() of a node the leader has not applied yet, before its term is ready = %v, want it to wait", err)
	case <-time.After(300 * time.Millisecond):
	}
	// The predecessor's entry: the node's join. Then the barrier.
	cert := creds.Leaf()
	n := fsm.Node{ID: id.NodeID, Role: id.Role, Cert: fsm.CertInfo{
		Serial: serialHex(leaf.Serial), NotBefore: cert.NotBefore, NotAfter: cert.NotAfter, Issuer: ca.StatusOf(cluster.Cert),
	}}
	if _, err := m.propose(t.Context(), fsm.Command{At: time.Now(), Issue: &fsm.Issue{Node: n, Join: true, SecretHash: fsm.HashSecret(st.WorkerSecret)}}); err != nil {
		t.Fatalf("propose the join = %v", err)
	}
	close(fresh.ready)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Heartbeat() once the term is ready and the join applied = %v, want an answer", err)
		}
	case <-time.After(testkit.Wait):
		t.Fatalf("Heartbeat() did not answer within %v of the term being ready", testkit.Wait)
	}
}
