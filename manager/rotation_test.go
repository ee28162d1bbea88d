package manager

import (
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
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
