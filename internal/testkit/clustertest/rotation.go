package clustertest

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/testkit"
)

// Ctl returns a control client of the first running manager.
func (c *Cluster) Ctl() api.ControlClient {
	c.tb.Helper()
	run := c.RunningManagers()
	if len(run) == 0 {
		c.tb.Fatalf("no running manager")
	}
	return run[0].Control()
}

// SetGrace sets the rotation grace with Control.Update.
func (c *Cluster) SetGrace(grace time.Duration) {
	c.tb.Helper()
	secs := int64(grace / time.Second)
	resp, err := c.Ctl().Update(testkit.Ctx(c.tb), &api.UpdateRequest{RotationGraceSeconds: secs})
	if err != nil {
		c.tb.Fatalf("Control.Update(rotation_grace_seconds: %d) = %v", secs, err)
	}
	if resp.GetRotationGraceSeconds() != secs {
		c.tb.Fatalf("Control.Update(rotation_grace_seconds: %d) answered %d", secs, resp.GetRotationGraceSeconds())
	}
}

// TryRotate calls Control.RotateCA on a running manager.
func (c *Cluster) TryRotate(req *api.RotateCARequest) (*api.RotateCAResponse, error) {
	c.tb.Helper()
	return c.Ctl().RotateCA(testkit.Ctx(c.tb), req)
}

// Rotate starts a rotation to a new generated root and returns the new
// root's fingerprint.
func (c *Cluster) Rotate() string {
	c.tb.Helper()
	resp, err := c.TryRotate(&api.RotateCARequest{})
	if err != nil {
		c.tb.Fatalf("Control.RotateCA() = %v", err)
	}
	r := resp.GetRotation()
	if !r.GetInProgress() || r.GetNewRootFingerprint() == "" {
		c.tb.Fatalf("Control.RotateCA() = %v, want a rotation in progress", r)
	}
	return r.GetNewRootFingerprint()
}

// GetCA calls Control.GetCA on a running manager.
func (c *Cluster) GetCA() (*api.GetCAResponse, error) {
	c.tb.Helper()
	return c.Ctl().GetCA(testkit.Ctx(c.tb), &api.GetCARequest{})
}

// WaitRotation waits until the rotation to the root with fingerprint root
// has completed and, if trusting, every node trusts the new root; it
// returns the last GetCA answer.
func (c *Cluster) WaitRotation(root string, trusting bool) *api.GetCAResponse {
	c.tb.Helper()
	var last *api.GetCAResponse
	testkit.Eventually(c.tb, "rotation completed", func() (err error) {
		last, err = c.RotationDone(root, trusting)
		return err
	})
	return last
}

// RotationDone returns GetCA's answer if the rotation to the root with
// fingerprint root has completed and, if trusting, every node trusts the
// new root; otherwise an error that says how far it is.
func (c *Cluster) RotationDone(root string, trusting bool) (*api.GetCAResponse, error) {
	c.tb.Helper()
	resp, err := c.GetCA()
	if err != nil {
		return nil, err
	}
	r := resp.GetRotation()
	switch {
	case r.GetNewRootFingerprint() != root:
		return nil, fmt.Errorf("GetCA() shows the rotation to %s, want %s", r.GetNewRootFingerprint(), root)
	case r.GetInProgress():
		return nil, fmt.Errorf("still in progress: %s", RotationSummary(r))
	case trusting && r.GetTrusting() != r.GetTotal():
		return nil, fmt.Errorf("completed, not every node trusts the new root yet: %s", RotationSummary(r))
	}
	return resp, nil
}

// RotationSummary describes a rotation's progress in one line.
func RotationSummary(r *api.Rotation) string {
	var nodes []string
	for _, n := range r.GetNodes() {
		nodes = append(nodes, fmt.Sprintf("%s:%s/trusts=%t", n.GetId()[:6], n.GetState(), n.GetTrustsNewRoot()))
	}
	return fmt.Sprintf("in_progress=%t total=%d converged=%d trusting=%d skipped=%d [%s]",
		r.GetInProgress(), r.GetTotal(), r.GetConverged(), r.GetTrusting(), r.GetSkipped(), strings.Join(nodes, " "))
}

// RotationNode returns node id's entry in a rotation's progress.
func RotationNode(r *api.Rotation, id string) (*api.RotationNode, bool) {
	for _, n := range r.GetNodes() {
		if n.GetId() == id {
			return n, true
		}
	}
	return nil, false
}

// ListNodes returns Control.ListNodes from a running manager, by node ID.
func (c *Cluster) ListNodes() (map[string]*api.Node, error) {
	c.tb.Helper()
	resp, err := c.Ctl().ListNodes(testkit.Ctx(c.tb), &api.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]*api.Node{}
	for _, n := range resp.GetNodes() {
		out[n.GetId()] = n
	}
	return out, nil
}

// WaitConvergedExcept waits until every node of the rotation in progress
// but those named has converged, and the rotation is still in progress.
func (c *Cluster) WaitConvergedExcept(ids ...string) {
	c.tb.Helper()
	testkit.Eventually(c.tb, fmt.Sprintf("every node but %v converged", ids), func() error {
		resp, err := c.GetCA()
		if err != nil {
			return err
		}
		r := resp.GetRotation()
		if !r.GetInProgress() {
			return fmt.Errorf("rotation not in progress: %s", RotationSummary(r))
		}
		for _, n := range r.GetNodes() {
			if slices.Contains(ids, n.GetId()) == (n.GetState() == "converged") {
				return fmt.Errorf("node %s is %s: %s", n.GetId(), n.GetState(), RotationSummary(r))
			}
		}
		return nil
	})
}

// HoldRotation joins a node with no daemon: it never renews nor gossips,
// so a rotation waits for it (until the grace runs out).
func (c *Cluster) HoldRotation() agent.JoinResult {
	c.tb.Helper()
	res, _ := c.JoinNoDaemon(c.Via())
	c.WaitConverged()
	return res
}

// Heartbeats returns, for every running daemon, how many heartbeats the
// leader has answered it, by node ID (see agent.Renewer.Heartbeats).
func (c *Cluster) Heartbeats() map[string]int {
	out := map[string]int{}
	for _, n := range c.Nodes() {
		if nn := n.Node(); nn != nil {
			if m := nn.Manager(); m != nil {
				out[n.ID()] = m.Renewer().Heartbeats()
			} else if w := nn.Worker(); w != nil {
				out[n.ID()] = w.Renewer().Heartbeats()
			}
		}
	}
	return out
}

// HeartbeatRounds returns a condition for testkit.HoldsUntil that holds
// once every daemon running now has had k more heartbeats answered than
// it had when HeartbeatRounds was called.
func (c *Cluster) HeartbeatRounds(k int) func() error {
	base := c.Heartbeats()
	return func() error {
		now := c.Heartbeats()
		for id, b := range base {
			if got := now[id] - b; got < k {
				return fmt.Errorf("node %s had %d heartbeats answered, want %d", id, got, k)
			}
		}
		return nil
	}
}
