package manager

import (
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/progress"
)

// TestBundleDigestAgrees: the leader counts a node as trusting the new
// root when the digest the node sends (agent.BundleDigest) is the one
// progress computes.
func TestBundleDigestAgrees(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("root"), []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")} {
		if got, want := progress.BundleDigest(b), agent.BundleDigest(b); got != want {
			t.Errorf("progress.BundleDigest(%q) = %s, want agent.BundleDigest's %s", b, got, want)
		}
	}
}

// TestRotationToAPI: the API's form says what progress computed.
func TestRotationToAPI(t *testing.T) {
	if v := rotationToAPI(nil); v.info != nil || v.done || v.skipped != nil {
		t.Errorf("rotationToAPI(nil) = %+v, want the zero view", v)
	}
	t0 := time.Date(2030, time.January, 1, 0, 0, 0, 0, time.UTC)
	p := &progress.Progress{
		InProgress: true, StartedAt: t0, Grace: 90 * time.Second, NewBundle: []byte("new"),
		Nodes: []progress.Node{
			{ID: "m1", Role: ca.RoleManager, State: progress.Converged, TrustsNewRoot: true},
			{ID: "w1", Role: ca.RoleWorker, State: progress.Skipped, DownSince: t0.Add(time.Minute)},
			{ID: "w2", Role: ca.RoleWorker, State: progress.Down},
		},
		Counts:  progress.Counts{Total: 3, Converged: 1, Trusting: 1, Skipped: 1},
		Skipped: []string{"w1"},
	}
	v := rotationToAPI(p)
	i := v.info
	if !i.GetInProgress() || i.GetStartedAt() != t0.Unix() || i.GetCompletedAt() != 0 || i.GetGraceSeconds() != 90 ||
		i.GetNewRootFingerprint() != fingerprint([]byte("new")) || i.GetTotal() != 3 || i.GetConverged() != 1 ||
		i.GetTrusting() != 1 || i.GetSkipped() != 1 || v.done || len(v.skipped) != 1 || v.skipped[0] != "w1" {
		t.Errorf("rotationToAPI(%+v) = %+v, %v, %v", p, i, v.done, v.skipped)
	}
	want := []struct {
		id, role, state string
		downSince       int64
		trusts          bool
	}{
		{"m1", string(ca.RoleManager), "converged", 0, true},
		{"w1", string(ca.RoleWorker), "skipped", t0.Add(time.Minute).Unix(), false},
		{"w2", string(ca.RoleWorker), "down", 0, false},
	}
	if len(i.GetNodes()) != len(want) {
		t.Fatalf("rotationToAPI() has %d nodes, want %d", len(i.GetNodes()), len(want))
	}
	for k, n := range i.GetNodes() {
		w := want[k]
		if n.GetId() != w.id || n.GetRole() != w.role || n.GetState() != w.state || n.GetDownSince() != w.downSince || n.GetTrustsNewRoot() != w.trusts {
			t.Errorf("node %d = %+v, want %+v", k, n, w)
		}
	}

	p.InProgress, p.CompletedAt, p.Done = false, t0.Add(time.Hour), false
	if i := rotationToAPI(p).info; i.GetInProgress() || i.GetCompletedAt() != t0.Add(time.Hour).Unix() {
		t.Errorf("rotationToAPI(completed) = in progress %t, completed at %d; want false, %d", i.GetInProgress(), i.GetCompletedAt(), t0.Add(time.Hour).Unix())
	}
}

// TestRotationMoved: the applied commands that kick the leader's look at
// the rotation are those that change the rotation, its grace, or the set
// of nodes while one is in progress; not renewals, nor anything while no
// rotation runs.
func TestRotationMoved(t *testing.T) {
	node := func(id string, serial string) fsm.Node {
		return fsm.Node{ID: id, Role: ca.RoleWorker, Cert: fsm.CertInfo{Serial: serial}}
	}
	rot := &fsm.Rotation{StartedAt: time.Unix(100, 0)}
	base := &fsm.State{Index: 10, ClusterID: "c", Rotation: rot, Nodes: fsm.NewNodeMap(node("a", "1"), node("b", "1"))}
	with := func(index uint64, change func(s *fsm.State)) *fsm.State {
		s := *base
		s.Index = index
		change(&s)
		return &s
	}
	tests := []struct {
		name       string
		prev, next *fsm.State
		want       bool
	}{
		{"first look", nil, base, true},
		{"same state", base, base, false},
		{"a renewal", base, with(11, func(s *fsm.State) { s.Nodes = s.Nodes.With(node("a", "2")) }), false},
		{"renewals and refusals", base, with(15, func(s *fsm.State) { s.Nodes = s.Nodes.With(node("b", "2")) }), false},
		{"a join", base, with(11, func(s *fsm.State) { s.Nodes = s.Nodes.With(node("c", "1")) }), true},
		{"a removal", base, with(11, func(s *fsm.State) { s.Nodes = s.Nodes.Without("b") }), true},
		{"a join and a removal between two looks", base, with(12, func(s *fsm.State) { s.Nodes = s.Nodes.Without("b").With(node("c", "1")) }), true},
		{"grace changed", base, with(11, func(s *fsm.State) { s.RotationGrace = time.Minute }), true},
		{"rotation completed", base, with(11, func(s *fsm.State) { s.Rotation = nil }), true},
		{"rotation started", with(10, func(s *fsm.State) { s.Rotation = nil }), base, true},
		{"join without a rotation", with(10, func(s *fsm.State) { s.Rotation = nil }), with(11, func(s *fsm.State) {
			s.Rotation = nil
			s.Nodes = s.Nodes.With(node("c", "1"))
		}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rotationMoved(tt.prev, tt.next); got != tt.want {
				t.Errorf("rotationMoved() = %t, want %t", got, tt.want)
			}
		})
	}
}

// TestHeardNews: a heartbeat kicks the leader's look at the rotation only
// when it shows something new of its node: first heard, another
// certificate or bundle, or heard again after being silent.
func TestHeardNews(t *testing.T) {
	const period = time.Second
	t0 := time.Unix(1000, 0)
	prev := observation{at: t0, serial: "1", issuer: ca.TLSStatus{IssuerSubject: []byte("old")}, bundle: "d1"}
	again := func(after time.Duration, change func(*observation)) observation {
		ob := prev
		ob.at = t0.Add(after)
		if change != nil {
			change(&ob)
		}
		return ob
	}
	tests := []struct {
		name string
		ok   bool
		ob   observation
		want bool
	}{
		{"first heartbeat", false, again(0, nil), true},
		{"nothing new", true, again(period, nil), false},
		{"nothing new, 2.9 periods later", true, again(2900*time.Millisecond, nil), false},
		{"heard again after 3 silent periods", true, again(3*period, nil), true},
		{"another serial", true, again(period, func(o *observation) { o.serial = "2" }), true},
		{"another issuer", true, again(period, func(o *observation) { o.issuer = ca.TLSStatus{IssuerSubject: []byte("new")} }), true},
		{"another bundle", true, again(period, func(o *observation) { o.bundle = "d2" }), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := heardNews(prev, tt.ok, tt.ob, period); got != tt.want {
				t.Errorf("heardNews(%+v, %t, %+v) = %t, want %t", prev, tt.ok, tt.ob, got, tt.want)
			}
		})
	}
}

// TestRotationJitter: a rotation's renewals fall due within three
// heartbeat periods of its start, whenever a node hears of it; a node that hears
// late still waits up to half a period, and never less than the least.
func TestRotationJitter(t *testing.T) {
	const period = 10 * time.Second
	start := time.Unix(5000, 0)
	tests := []struct {
		name  string
		after time.Duration
		least time.Duration
		want  time.Duration
	}{
		{"heard at the start", 0, time.Second, 3 * period},
		{"heard a period in", period, time.Second, 2 * period},
		{"heard 2.6 periods in", 26 * time.Second, time.Second, 5 * time.Second},
		{"heard after the window (a new leader)", 4 * period, time.Second, 5 * time.Second},
		{"a least over the window", 0, time.Minute, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rotationJitter(start, start.Add(tt.after), period, tt.least); got != tt.want {
				t.Errorf("rotationJitter(+%v, period %v, least %v) = %v, want %v", tt.after, period, tt.least, got, tt.want)
			}
		})
	}
}

// TestReloadingNodeKeepsItsPresentedCertificate: a heartbeat that says the
// node's consumers are still reloading is recorded with the certificate
// the node showed before, so that a rotation does not count the new one
// while a server may present the old; the next heartbeat without the
// flag records the new one, and is news.
func TestReloadingNodeKeepsItsPresentedCertificate(t *testing.T) {
	const period = time.Second
	t0 := time.Unix(1000, 0)
	oldIssuer, newIssuer := ca.TLSStatus{IssuerSubject: []byte("old")}, ca.TLSStatus{IssuerSubject: []byte("new")}
	var obs observations
	obs.heard("n1", observation{at: t0, serial: "1", issuer: oldIssuer, bundle: "d"}, false)

	renewed := observation{at: t0.Add(period), serial: "2", issuer: newIssuer, bundle: "d"}
	prev, ok := obs.heard("n1", renewed, true)
	got, _ := obs.get("n1")
	if got.serial != "1" || !got.issuer.Equal(oldIssuer) || !got.at.Equal(renewed.at) {
		t.Fatalf("after a reloading heartbeat with serial 2: recorded serial %s at %v, want serial 1 of the old issuer, heard at %v", got.serial, got.at, renewed.at)
	}
	if heardNews(prev, ok, got, period) {
		t.Errorf("a reloading heartbeat is news to the rotation: %+v after %+v", got, prev)
	}

	renewed.at = renewed.at.Add(period)
	prev, ok = obs.heard("n1", renewed, false)
	got, _ = obs.get("n1")
	if got.serial != "2" || !got.issuer.Equal(newIssuer) {
		t.Fatalf("after the reload: recorded serial %s, want 2 of the new issuer", got.serial)
	}
	if !heardNews(prev, ok, got, period) {
		t.Errorf("the heartbeat after the reload is not news to the rotation")
	}

	// A node first heard while reloading shows no certificate yet.
	obs.heard("n2", observation{at: t0, serial: "7", issuer: newIssuer}, true)
	if got, _ := obs.get("n2"); got.serial != "" {
		t.Errorf("a node first heard reloading is recorded with serial %q, want none", got.serial)
	}
}

// TestWentDown: the leader counts a node down once when it goes down in a
// rotation, not again while it stays down, and anew in another rotation.
func TestWentDown(t *testing.T) {
	t0 := time.Date(2030, time.January, 1, 0, 0, 0, 0, time.UTC)
	tracker := func(rot time.Time, ids ...string) progress.Tracker {
		tr := progress.Tracker{Rotation: rot, DownSince: map[string]time.Time{}}
		for _, id := range ids {
			tr.DownSince[id] = t0
		}
		return tr
	}
	for _, tc := range []struct {
		name       string
		prev, next progress.Tracker
		want       int
	}{
		{"none", progress.Tracker{}, tracker(t0), 0},
		{"first", progress.Tracker{}, tracker(t0, "w1", "w2"), 2},
		{"still down", tracker(t0, "w1"), tracker(t0, "w1"), 0},
		{"one more", tracker(t0, "w1"), tracker(t0, "w1", "w2"), 1},
		{"back up", tracker(t0, "w1", "w2"), tracker(t0, "w2"), 0},
		{"another rotation", tracker(t0, "w1"), tracker(t0.Add(time.Hour), "w1"), 1},
	} {
		if got := wentDown(tc.prev, tc.next); got != tc.want {
			t.Errorf("%s: wentDown() = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestRotationSettles: the leader completes a rotation only once it has
// been done at every look for rotationSettle, so that servers reloading
// on a signal, and programs polling the files, present the new
// certificate before the bundle drops the old root. A look that finds it
// not done starts the wait over; the first done look asks for a wake-up.
func TestRotationSettles(t *testing.T) {
	t0 := time.Date(2030, time.January, 1, 0, 0, 0, 0, time.UTC)
	var tr rotationTracker
	woken := make(chan struct{}, 4)
	wake := func() { woken <- struct{}{} }
	steps := []struct {
		done bool
		at   time.Duration
		want bool
	}{
		{false, 0, false},
		{true, time.Second, false},                        // done: the wait starts
		{true, time.Second + rotationSettle/2, false},     // not long enough
		{false, 2 * time.Second, false},                   // a node holds it back again
		{true, 3 * time.Second, false},                    // the wait starts over
		{true, 3*time.Second + rotationSettle - 1, false}, // just short
		{true, 3*time.Second + rotationSettle, true},      // settled
		{true, 3*time.Second + 2*rotationSettle, true},    // still
	}
	for i, s := range steps {
		if got := tr.settled(s.done, t0.Add(s.at), wake); got != s.want {
			t.Errorf("step %d: settled(%v, +%v) = %v, want %v", i, s.done, s.at, got, s.want)
		}
	}
	for range 2 { // one wake-up per wait started
		select {
		case <-woken:
		case <-time.After(rotationSettle + testkit.Wait):
			t.Fatal("no wake-up after the settle time")
		}
	}
	tr.restart()
	if tr.settled(true, t0.Add(time.Hour), wake) {
		t.Error("settled() after restart = true at the first done look")
	}
}
