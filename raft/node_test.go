package raft

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/quorumca/quorumca/internal/testkit"
)

func TestClusterReplicates(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	nodes := startCluster(t, c, 3, nil)
	leader := nodes[0]

	res, err := leader.Apply(t.Context(), []byte("a=1"))
	if err != nil {
		t.Fatalf("Apply(a=1) = %v", err)
	}
	if idx, ok := res.(uint64); !ok || idx == 0 {
		t.Errorf("Apply(a=1) result = %v, want the entry's index", res)
	}
	for _, n := range nodes {
		testkit.Eventually(t, "a=1 on "+n.id, testkit.True(func() bool {
			v, ok := n.sm.get("a")
			return ok && v == "1"
		}))
	}

	servers, err := leader.Servers()
	if err != nil {
		t.Fatalf("Servers() = %v", err)
	}
	if len(servers) != 3 {
		t.Fatalf("Servers() = %v, want 3 servers", servers)
	}
	for _, s := range servers {
		if !s.Voter {
			t.Errorf("Servers() has %+v, want every server a voter", s)
		}
	}

	// Adding a voter already present at the same address does nothing.
	if err := leader.AddVoter(t.Context(), nodes[1].id, nodes[1].addr); err != nil {
		t.Errorf("AddVoter(existing voter) = %v, want nil", err)
	}
	if err := leader.Barrier(t.Context()); err != nil {
		t.Errorf("Barrier() = %v", err)
	}
	if err := leader.VerifyLeader(t.Context()); err != nil {
		t.Errorf("VerifyLeader() = %v", err)
	}
	if got := leader.Stats()["num_peers"]; got != "2" {
		t.Errorf("Stats()[num_peers] = %q, want 2", got)
	}
}

func TestApplyOnFollowerReturnsNotLeader(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	nodes := startCluster(t, c, 3, nil)
	leader, follower := nodes[0], nodes[1]
	testkit.Eventually(t, "the follower to learn the leader", testkit.True(func() bool {
		id, _ := follower.Leader()
		return id == leader.id
	}))

	_, err := follower.Apply(t.Context(), []byte("a=1"))
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower.Apply() = %v, want ErrNotLeader", err)
	}
	var nle *NotLeaderError
	if !errors.As(err, &nle) {
		t.Fatalf("follower.Apply() = %T, want *NotLeaderError", err)
	}
	if nle.LeaderID != leader.id || nle.LeaderAddr != leader.addr {
		t.Errorf("follower.Apply() names leader %s at %s, want %s at %s", nle.LeaderID, nle.LeaderAddr, leader.id, leader.addr)
	}
	for name, call := range map[string]func() error{
		"AddVoter":     func() error { return follower.AddVoter(t.Context(), newID(t), "127.0.0.1:1") },
		"RemoveServer": func() error { return follower.RemoveServer(t.Context(), leader.id) },
		"Barrier":      func() error { return follower.Barrier(t.Context()) },
		"VerifyLeader": func() error { return follower.VerifyLeader(t.Context()) },
	} {
		if err := call(); !errors.Is(err, ErrNotLeader) {
			t.Errorf("follower.%s() = %v, want ErrNotLeader", name, err)
		}
	}
	if follower.LastContact().IsZero() {
		t.Errorf("follower.LastContact() is zero, want the last heartbeat's time")
	}
}

func TestLeaderFailover(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	nodes := startCluster(t, c, 3, nil)
	old := nodes[0]
	if _, err := old.Apply(t.Context(), []byte("a=1")); err != nil {
		t.Fatalf("Apply(a=1) = %v", err)
	}
	for _, n := range nodes {
		testkit.Eventually(t, "a=1 on "+n.id, testkit.True(func() bool { _, ok := n.sm.get("a"); return ok }))
	}

	if err := old.Shutdown(); err != nil {
		t.Fatalf("Shutdown() = %v", err)
	}
	if _, err := old.Apply(t.Context(), []byte("x=1")); !errors.Is(err, ErrShutdown) {
		t.Errorf("Apply() after Shutdown = %v, want ErrShutdown", err)
	}
	leader := waitLeader(t, nodes[1], nodes[2])
	if _, err := leader.Apply(t.Context(), []byte("b=2")); err != nil {
		t.Fatalf("new leader Apply(b=2) = %v", err)
	}

	// The old leader comes back from its data dir, on its address, and
	// catches up as a follower.
	back := old.restart(t, c, false, nil)
	testkit.Eventually(t, "the restarted node to catch up", testkit.True(func() bool {
		a, _ := back.sm.get("a")
		b, _ := back.sm.get("b")
		return a == "1" && b == "2"
	}))
	if id, _ := back.Leader(); id != leader.id {
		t.Errorf("restarted node's Leader() = %s, want %s", id, leader.id)
	}
	if _, err := leader.Apply(t.Context(), []byte("c=3")); err != nil {
		t.Fatalf("Apply(c=3) = %v", err)
	}
	testkit.Eventually(t, "c=3 on the restarted node", testkit.True(func() bool { _, ok := back.sm.get("c"); return ok }))
}

func TestApplyWithoutQuorum(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	nodes := startCluster(t, c, 3, func(cfg *Config) { cfg.ApplyTimeout = 2 * time.Second })
	leader := nodes[0]
	if _, err := leader.Apply(t.Context(), []byte("a=1")); err != nil {
		t.Fatalf("Apply(a=1) = %v", err)
	}
	for _, n := range nodes[1:] {
		if err := n.Shutdown(); err != nil {
			t.Fatalf("Shutdown() = %v", err)
		}
	}

	// Without a deadline, Apply is bounded by ApplyTimeout.
	start := time.Now()
	_, err := leader.Apply(context.Background(), []byte("b=2"))
	took := time.Since(start)
	if !errors.Is(err, ErrNoQuorum) && !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Apply() without quorum = %v, want ErrNoQuorum or ErrNotLeader", err)
	}
	if took > 5*time.Second {
		t.Errorf("Apply() without quorum took %s, want it bounded by ApplyTimeout (2s)", took)
	}
	t.Logf("Apply() without quorum = %v after %s", err, took)

	// With a deadline, Apply returns by the deadline.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = leader.Apply(ctx, []byte("c=3"))
	took = time.Since(start)
	if !errors.Is(err, ErrNoQuorum) && !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Apply(ctx) without quorum = %v, want ErrNoQuorum or ErrNotLeader", err)
	}
	if took > 5*time.Second {
		t.Errorf("Apply(ctx) without quorum took %s, want it bounded by the deadline", took)
	}
}

func TestErrorMapping(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, nil)
	waitLeader(t, n)
	tests := []struct {
		err  error
		want []error
	}{
		{context.DeadlineExceeded, []error{ErrNoQuorum, context.DeadlineExceeded}},
		{hraft.ErrEnqueueTimeout, []error{ErrNoQuorum}},
		{hraft.ErrLeadershipLost, []error{ErrNoQuorum}},
		{hraft.ErrNotLeader, []error{ErrNotLeader}},
		{hraft.ErrLeadershipTransferInProgress, []error{ErrNotLeader}},
		{hraft.ErrRaftShutdown, []error{ErrShutdown}},
		{context.Canceled, []error{context.Canceled}},
	}
	for _, tt := range tests {
		got := n.fail("apply", "commit", tt.err, 2*time.Second)
		for _, want := range tt.want {
			if !errors.Is(got, want) {
				t.Errorf("fail(%v) = %v, want it to wrap %v", tt.err, got, want)
			}
		}
		if errors.Is(tt.err, context.Canceled) && errors.Is(got, ErrNoQuorum) {
			t.Errorf("fail(%v) = %v, want not ErrNoQuorum: the caller gave up", tt.err, got)
		}
		t.Logf("fail(%v) = %v", tt.err, got)
	}
}

func TestSnapshotCatchUp(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	snapshotOften := func(cfg *Config) {
		cfg.SnapshotThreshold = 8
		cfg.SnapshotInterval = 50 * time.Millisecond
		cfg.TrailingLogs = 2
	}
	leader := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, snapshotOften)
	waitLeader(t, leader)
	const entries = 30
	for i := range entries {
		if _, err := leader.Apply(t.Context(), fmt.Appendf(nil, "k%d=%d", i, i)); err != nil {
			t.Fatalf("Apply(k%d) = %v", i, err)
		}
	}
	testkit.Eventually(t, "a snapshot", testkit.True(func() bool {
		idx, _ := strconv.Atoi(leader.Stats()["last_snapshot_index"])
		return idx >= entries/2
	}))
	snaps, err := os.ReadDir(filepath.Join(leader.dir, "snapshots"))
	if err != nil || len(snaps) == 0 {
		t.Fatalf("ReadDir(snapshots) = %d entries, %v; want snapshots on disk", len(snaps), err)
	}

	late := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", false, snapshotOften)
	if err := leader.AddVoter(t.Context(), late.id, late.addr); err != nil {
		t.Fatalf("AddVoter() = %v", err)
	}
	testkit.Eventually(t, "the late node to catch up", testkit.True(func() bool { return late.sm.len() == entries }))
	if late.sm.restored() == 0 {
		t.Errorf("late node restored %d snapshots, want it to catch up from a snapshot", late.sm.restored())
	}
}

func TestLeaderChanges(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, nil)
	select {
	case v := <-n.LeaderChanges():
		if !v {
			t.Fatalf("LeaderChanges() delivered %v, want true", v)
		}
	case <-time.After(testkit.Wait):
		t.Fatalf("LeaderChanges() delivered nothing in %s", testkit.Wait)
	}
	if !n.IsLeader() {
		t.Errorf("IsLeader() = false after LeaderChanges() said true")
	}
	if id, addr := n.Leader(); id != n.id || addr != n.addr {
		t.Errorf("Leader() = %s, %s; want %s, %s", id, addr, n.id, n.addr)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatalf("Shutdown() = %v", err)
	}
	select {
	case v := <-n.LeaderChanges():
		if v {
			t.Errorf("LeaderChanges() after Shutdown delivered %v, want false", v)
		}
	default:
		t.Errorf("LeaderChanges() after Shutdown delivered nothing, want false")
	}
	if err := n.Shutdown(); err != nil {
		t.Errorf("second Shutdown() = %v, want nil", err)
	}
}

func TestLeaderChangesKeepsLast(t *testing.T) {
	n := &Node{notify: make(chan bool), leaderCh: make(chan bool, 2), stopFwd: make(chan struct{}), fwdDone: make(chan struct{})}
	go n.forwardLeadership()
	for _, v := range []bool{true, false, true, false, true} {
		n.notify <- v
	}
	close(n.stopFwd)
	<-n.fwdDone
	var got []bool
	for len(n.leaderCh) > 0 {
		got = append(got, <-n.leaderCh)
	}
	if len(got) != 2 || got[0] != false || got[1] != true {
		t.Errorf("LeaderChanges() after true,false,true,false,true with room for 2 = %v, want [false true]", got)
	}
}

func TestRestartDoesNotRebootstrap(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	n := startNode(t, c, newID(t), t.TempDir(), "127.0.0.1:0", true, nil)
	waitLeader(t, n)
	var last uint64
	for _, cmd := range []string{"a=1", "b=2"} {
		res, err := n.Apply(t.Context(), []byte(cmd))
		if err != nil {
			t.Fatalf("Apply(%s) = %v", cmd, err)
		}
		last = res.(uint64)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatalf("Shutdown() = %v", err)
	}

	again := n.restart(t, c, true, nil)
	waitLeader(t, again)
	res, err := again.Apply(t.Context(), []byte("c=3"))
	if err != nil {
		t.Fatalf("Apply(c=3) after restart = %v", err)
	}
	if idx := res.(uint64); idx <= last {
		t.Errorf("Apply(c=3) after restart at index %d, want after %d (the log goes on)", idx, last)
	}
	for _, k := range []string{"a", "b", "c"} {
		if _, ok := again.sm.get(k); !ok {
			t.Errorf("state after restart has no %q", k)
		}
	}
	servers, err := again.Servers()
	if err != nil || len(servers) != 1 || servers[0].ID != n.id {
		t.Errorf("Servers() after restart = %v, %v; want only %s", servers, err, n.id)
	}
}

func TestRemoveServer(t *testing.T) {
	testkit.CheckGoroutines(t)
	c := testkit.NewCA(t)
	nodes := startCluster(t, c, 3, nil)
	leader := nodes[0]
	if err := leader.RemoveServer(t.Context(), nodes[2].id); err != nil {
		t.Fatalf("RemoveServer() = %v", err)
	}
	if err := leader.RemoveServer(t.Context(), nodes[2].id); err != nil {
		t.Errorf("RemoveServer(removed) = %v, want nil", err)
	}
	servers, err := leader.Servers()
	if err != nil || len(servers) != 2 {
		t.Fatalf("Servers() = %v, %v; want 2 servers", servers, err)
	}
	for _, s := range servers {
		if s.ID == nodes[2].id {
			t.Errorf("Servers() = %v, still has %s", servers, s.ID)
		}
	}
	if _, err := leader.Apply(t.Context(), []byte("a=1")); err != nil {
		t.Errorf("Apply() after removal = %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	c := testkit.NewCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wild, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer wild.Close()
	good := DefaultConfig()
	good.NodeID = newID(t)
	good.DataDir = t.TempDir()
	good.Listener = ln
	good.TLS = c.TLSConfig(t, manager(c, good.NodeID))
	good.ClusterID = c.ClusterID
	good.StateMachine = newKV()
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(good) = %v", err)
	}
	tests := []struct {
		name   string
		change func(*Config)
	}{
		{"no node ID", func(c *Config) { c.NodeID = "" }},
		{"no data dir", func(c *Config) { c.DataDir = "" }},
		{"no listener", func(c *Config) { c.Listener = nil }},
		{"no cluster ID", func(c *Config) { c.ClusterID = "" }},
		{"no state machine", func(c *Config) { c.StateMachine = nil }},
		{"no TLS", func(c *Config) { c.TLS = nil }},
		{"no roots", func(c *Config) { t := c.TLS.Clone(); t.RootCAs = nil; c.TLS = t }},
		{"TLS 1.1 only", func(c *Config) { t := c.TLS.Clone(); t.MaxVersion = 0x0302; c.TLS = t }},
		{"insecure", func(c *Config) { t := c.TLS.Clone(); t.InsecureSkipVerify = true; c.TLS = t }},
		{"unspecified listener address", func(c *Config) { c.Listener = wild }},
		{"bad advertise address", func(c *Config) { c.AdvertiseAddr = "manager-1" }},
		{"heartbeat too short", func(c *Config) { c.HeartbeatTimeout = time.Millisecond }},
		{"election shorter than heartbeat", func(c *Config) { c.ElectionTimeout = c.HeartbeatTimeout / 2 }},
		{"lease longer than heartbeat", func(c *Config) { c.LeaderLeaseTimeout = 2 * c.HeartbeatTimeout }},
		{"negative apply timeout", func(c *Config) { c.ApplyTimeout = -time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.change(&cfg)
			if err := cfg.Validate(); err == nil {
				t.Errorf("Validate() = nil, want an error")
			} else {
				t.Logf("Validate() = %v", err)
			}
		})
	}
	// Zero timings take the defaults.
	zero := good
	zero.HeartbeatTimeout, zero.ElectionTimeout, zero.LeaderLeaseTimeout = 0, 0, 0
	if err := zero.Validate(); err != nil {
		t.Errorf("Validate(zero timings) = %v, want nil", err)
	}
	// An unspecified listener address is fine with an advertise address.
	adv := good
	adv.Listener = wild
	adv.AdvertiseAddr = "192.0.2.1:2378"
	if err := adv.Validate(); err != nil {
		t.Errorf("Validate(0.0.0.0 listener, AdvertiseAddr) = %v, want nil", err)
	}
}
