package chaos

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
)

// The fault scenarios: the network between managers degraded, the leader
// cut off, the leader's disk full, the managers restarted one by one under
// a storm of joins. Each sends joins, renewals, removals and token
// rotations from the host, records them (history), and ends with
// checkInvariants against every manager's own state.

// opBound bounds each operation a scenario expects to complete, retries
// included.
const opBound = 30 * time.Second

// joinRefused reports whether a join failed because the cluster refused
// it (the token), not because it could not be reached.
func joinRefused(err error) bool { return errors.Is(err, agent.ErrJoinRefused) }

// renewRefused reports whether a renewal failed because the cluster
// refused the node's certificate: PermissionDenied or Unauthenticated, or
// a handshake the server ended with a TLS alert (then the gRPC code is
// Unavailable, and only the message tells it from a lost connection).
func renewRefused(err error) bool {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.PermissionDenied, codes.Unauthenticated:
		return true
	case codes.Unavailable:
		return strings.Contains(st.Message(), "remote error: tls: ")
	}
	return false
}

// TestChaosNetemManagers degrades every manager's network (tc netem: 10%
// loss, 100ms±50ms delay on all it sends, so between managers both ways):
// joins through each manager, a renewal, a worker token rotation and a
// node removal still complete within opBound, the cluster keeps a leader,
// the rotated token and the removed node's certificate are refused.
func TestChaosNetemManagers(t *testing.T) {
	c := newCluster(t, "netem", 7)
	h := newHistory(t)
	start := time.Now()
	b := c.baseline()
	// 10% loss and 100ms±50ms delay on all each manager sends; where the
	// kernel has no netem (this suite's CI VM kernel lacks sch_netem), 10%
	// loss alone, between managers, with iptables.
	fault := "netem loss 10% delay 100ms±50ms on the 3 managers' eth0"
	var removers []func() error
	var proxied []func() int // connections through each delay proxy, without netem
	for _, m := range managers {
		remove, err := c.netem(m, "loss", "10%", "delay", "100ms", "50ms")
		if errors.Is(err, errNoNetem) {
			t.Logf("%v: falling back to 10%% loss between managers (iptables statistic) and 100ms±50ms of delay (a delay proxy in each manager's namespace)", err)
			fault = "NO netem in this kernel: 10% random drop of every packet between managers (iptables statistic), and 100ms+0-50ms of delay each way on every connection between managers (a delay proxy in each manager's namespace)"
			removers = removers[:0]
			for _, m := range managers {
				others := slices.DeleteFunc(slices.Clone(managers), func(o string) bool { return o == m })
				removeDelay, accepted, err := c.delayTo(m, 100*time.Millisecond, 50*time.Millisecond, others...)
				if err != nil {
					t.Fatal(err)
				}
				proxied = append(proxied, accepted)
				removeDrop := c.dropTo(m, 0.10, others...)
				removers = append(removers, func() error { return errors.Join(removeDrop(), removeDelay()) })
			}
			// Connections opened before the redirect do not go through the
			// proxies: cut the managers apart for a moment, so that they
			// open new ones.
			var heals []func() error
			for i, m := range managers {
				heals = append(heals, c.cut(m, managers[i+1:]...))
			}
			time.Sleep(1500 * time.Millisecond) // the cut itself: nothing to poll
			for _, heal := range heals {
				if err := heal(); err != nil {
					t.Fatal(err)
				}
			}
			// The leader dials both followers (a follower may dial no one):
			// each of those connections, both ways, goes through its proxy.
			c.eventually("connections between managers through the delay proxies", opBound, func() error {
				total := 0
				for _, n := range proxied {
					total += n()
				}
				if total < 2 {
					return fmt.Errorf("%d connections through the proxies, want the leader's two at least", total)
				}
				return nil
			})
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out, err := c.inNetns(m, sbin("tc"), "qdisc", "show", "dev", "eth0")
		if err != nil || !strings.Contains(out, "netem") || !strings.Contains(out, "loss 10%") {
			t.Fatalf("%s: tc qdisc show dev eth0 = %q, %v; want the netem qdisc", m, out, err)
		}
		removers = append(removers, remove)
	}
	netemAt := time.Now()
	watch := c.watchLeader(managers...)
	stopped := false
	defer func() {
		if !stopped {
			watch.Stop()
		}
	}()

	var slowest time.Duration
	timed := func(what string, f func() error) {
		t.Helper()
		slowest = max(slowest, c.eventually(what+" under netem", opBound, f))
	}
	var joined []hostCreds
	for _, m := range managers {
		timed("a join through "+m, func() error {
			n, err := c.join(h, "client", m, "worker-0", b.token, 15*time.Second)
			if err == nil {
				joined = append(joined, n)
			}
			return err
		})
	}
	timed("a renewal of "+joined[0].id.NodeID, func() error {
		n, err := c.renewAs(h, "client", "manager2", joined[0], 15*time.Second)
		if err == nil {
			joined[0] = n
		}
		return err
	})
	var token1 string
	timed("join-token --rotate worker", func() (err error) {
		token1, err = c.rotateWorkerToken(h, "admin", "manager3", "worker-0", "worker-1", 20*time.Second)
		return err
	})
	// The old token: refused (an answer, not a lost packet).
	timed("the rotated-out token refused", func() error {
		_, err := c.join(h, "client", "manager1", "worker-0", b.token, 15*time.Second)
		if err == nil {
			t.Fatal("a join with the worker token acknowledged as rotated out was admitted")
		}
		if !joinRefused(err) {
			return err
		}
		return nil
	})
	timed("a join with the new token", func() error {
		n, err := c.join(h, "client", "manager2", "worker-1", token1, 15*time.Second)
		if err == nil {
			joined = append(joined, n)
		}
		return err
	})
	gone := joined[1]
	timed("node rm "+gone.id.NodeID, func() error {
		return c.removeNode(h, "admin", "manager1", gone.id.NodeID, 20*time.Second)
	})
	timed("the removed node's renewal refused", func() error {
		_, err := c.renewAs(h, "client", "manager3", gone, 15*time.Second)
		if err == nil {
			t.Fatalf("node %s renewed after its removal was acknowledged", gone.id.NodeID)
		}
		if !renewRefused(err) {
			return err
		}
		return nil
	})
	// The fault stays on for faultFor in all: joins go on through each
	// manager in turn meanwhile (one every 500ms), each bounded by opBound.
	const faultFor = 20 * time.Second
	pace := time.NewTicker(500 * time.Millisecond)
	for i := 0; time.Since(netemAt) < faultFor; i++ {
		<-pace.C
		m := managers[i%len(managers)]
		if _, err := c.join(h, "steady", m, "worker-1", token1, opBound); err != nil {
			t.Errorf("a join through %s under the fault: %v", m, err)
		}
	}
	pace.Stop()
	watch.Stop()
	stopped = true
	degraded := since(netemAt)
	if watch.longestGap > 15*time.Second {
		t.Errorf("under netem the cluster went %s without a known leader (%d of %d samples leaderless)", watch.longestGap.Round(100*time.Millisecond), watch.leaderless, watch.samples)
	}
	for i, remove := range removers {
		if err := remove(); err != nil {
			t.Errorf("removing %s's fault: %v", managers[i], err)
		}
	}
	if len(proxied) > 0 {
		total := 0
		for _, n := range proxied {
			total += n()
		}
		fault += fmt.Sprintf(" (%d connections went through the proxies)", total)
	}
	inv := c.checkInvariants(h, b)
	sent, acked := h.count("join")
	t.Logf("SUMMARY TestChaosNetemManagers: %s, for %s; %d joins sent, %d acknowledged (one through each manager, one with the rotated-in token, then one every 500ms), "+
		"a renewal, join-token --rotate and node rm each completed, slowest op (retries included) %s, bound %s; the rotated-out token and the removed node's certificate refused; "+
		"leader known in %d of %d samples, longest gap %s, leaders seen %d; %s; scenario %s",
		fault, degraded, sent, acked, slowest.Round(100*time.Millisecond), opBound, watch.samples-watch.leaderless, watch.samples, watch.longestGap.Round(100*time.Millisecond), len(watch.leaders), inv, since(start))
}

// TestChaosIsolateLeader cuts the leader off from the two other managers
// (the host and the workers still reach it): they elect a new leader and
// go on admitting joins and removing nodes; the old leader acknowledges
// no write sent to it while cut off; healed, the three agree.
func TestChaosIsolateLeader(t *testing.T) {
	c := newCluster(t, "isolate", 8)
	h := newHistory(t)
	start := time.Now()
	b := c.baseline()
	old, oldID, err := c.leaderService("manager1")
	if err != nil {
		t.Fatal(err)
	}
	others := slices.DeleteFunc(slices.Clone(managers), func(m string) bool { return m == old })
	// Two nodes joined before: one the majority removes, one the old
	// leader is asked to remove.
	x, err := c.join(h, "client", others[0], "worker-0", b.token, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	y, err := c.join(h, "client", others[1], "worker-0", b.token, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	heal := c.cut(old, others...)
	cutAt := time.Now()
	// Writes to the old leader, at once (it may still think it leads) and
	// again once the others have elected: none may be acknowledged.
	var wg sync.WaitGroup
	writeToOld := func(round string) {
		wg.Add(2)
		go func() {
			defer wg.Done()
			c.join(h, "old-leader-client-"+round, old, "worker-0", b.token, 20*time.Second)
		}()
		go func() {
			defer wg.Done()
			c.removeNode(h, "old-leader-admin-"+round, old, y.id.NodeID, 25*time.Second)
		}()
	}
	writeToOld("at-cut")

	var newID string
	elected := c.eventually("the two others elect a new leader", waitBound, func() error {
		var seen []string
		for _, m := range others {
			st, err := c.status(m)
			if err != nil {
				return err
			}
			seen = append(seen, st.LeaderID)
		}
		if seen[0] == "" || seen[0] == oldID || seen[0] != seen[1] {
			return fmt.Errorf("%v see leaders %v (the old one is %s)", others, seen, oldID)
		}
		newID = seen[0]
		return nil
	})
	writeToOld("after-election")
	// The majority admits and removes.
	for _, m := range others {
		c.eventually("a join through "+m, opBound, func() error {
			_, err := c.join(h, "client", m, "worker-0", b.token, 15*time.Second)
			return err
		})
	}
	c.eventually("node rm "+x.id.NodeID+" through "+others[0], opBound, func() error {
		return c.removeNode(h, "admin", others[0], x.id.NodeID, 20*time.Second)
	})
	c.eventually("the removed node's renewal refused", opBound, func() error {
		_, err := c.renewAs(h, "client", others[1], x, 15*time.Second)
		if err == nil {
			t.Fatalf("node %s renewed after its removal was acknowledged", x.id.NodeID)
		}
		if !renewRefused(err) {
			return err
		}
		return nil
	})
	// What the old leader says meanwhile: its status, and the nodes it
	// lists, if it answers (node ls is a read the leader answers).
	oldSt, stErr := c.status(old)
	oldView := fmt.Sprintf("status: role %q, leader %q, problem %q (err %v)", oldSt.Role, oldSt.LeaderID, oldSt.Problem, stErr)
	if ns, err := c.nodes(old); err != nil {
		oldView += fmt.Sprintf("; node ls fails: %v", firstLine(err.Error()))
	} else {
		missing := 0
		for _, o := range h.all() {
			if o.Op == "join" && o.OK && o.Start.After(cutAt) {
				if _, ok := nodeByID(ns, o.NodeID); !ok {
					missing++
				}
			}
		}
		oldView += fmt.Sprintf("; node ls answers %d nodes, missing %d acknowledged since the cut (a stale read)", len(ns), missing)
	}
	t.Logf("the old leader %s while cut off: %s", old, oldView)
	wg.Wait()

	var toOld, ackedByOld []string
	for _, o := range h.all() {
		if o.Via == old && o.Start.After(cutAt) {
			toOld = append(toOld, fmt.Sprintf("%s %s: %s", o.Op, o.End.Sub(o.Start).Round(100*time.Millisecond), firstLine(o.Result)))
			if o.OK {
				ackedByOld = append(ackedByOld, o.Op+" "+o.Arg)
			}
		}
	}
	if len(ackedByOld) > 0 {
		t.Errorf("the old leader %s, cut off, acknowledged writes: %v", old, ackedByOld)
	}
	for _, s := range toOld {
		t.Logf("write to the old leader: %s", s)
	}

	if err := heal(); err != nil {
		t.Fatal(err)
	}
	healedAt := time.Now()
	c.eventually("the three managers agree on the leader, all reachable", waitBound, c.managersAgree)
	converged := since(healedAt)
	inv := c.checkInvariants(h, b)
	sent, acked := h.count("join")
	t.Logf("SUMMARY TestChaosIsolateLeader: leader %s (%s) cut off from %v; they elected %s in %s and admitted joins and node rm (%d joins sent, %d acknowledged in all); "+
		"%d writes sent to the old leader while cut off, none acknowledged; old leader's view then: %s; healed, the 3 agreed in %s; %s; scenario %s",
		old, oldID, others, newID, elected.Round(100*time.Millisecond), sent, acked, len(toOld), oldView, converged, inv, since(start))
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// managersAgree checks that the three managers know the same leader and
// see every manager reachable.
func (c *cluster) managersAgree() error {
	var leader string
	for _, m := range managers {
		st, err := c.status(m)
		if err != nil {
			return err
		}
		if st.LeaderID == "" || (leader != "" && st.LeaderID != leader) {
			return fmt.Errorf("%s sees leader %q, another %q", m, st.LeaderID, leader)
		}
		leader = st.LeaderID
		for _, mm := range st.Managers {
			if mm.Reachability != "reachable" {
				return fmt.Errorf("%s sees manager %s %s", m, mm.NodeID, mm.Reachability)
			}
		}
	}
	return nil
}

// TestChaosLeaderDiskFull fills the file system of the leader's data
// directory (each manager's data volume is bound to a 64 MiB tmpfs of the
// host): the cluster stays available (the full leader steps down, or
// refuses writes saying its disk is full), nothing acknowledged is lost,
// and once the space is freed the manager serves again.
func TestChaosLeaderDiskFull(t *testing.T) {
	override, disks := smallDisks(t, 64<<20, managers...)
	c := newCluster(t, "diskfull", 9, override)
	h := newHistory(t)
	start := time.Now()
	b := c.baseline()
	full, fullID, err := c.leaderService("manager1")
	if err != nil {
		t.Fatal(err)
	}
	others := slices.DeleteFunc(slices.Clone(managers), func(m string) bool { return m == full })
	restarts0 := strings.TrimSpace(c.docker("inspect", "-f", "{{.RestartCount}}", c.ctr(full)))
	for _, m := range managers {
		c.eventually("a join through "+m, opBound, func() error {
			_, err := c.join(h, "client", m, "worker-0", b.token, 15*time.Second)
			return err
		})
	}

	filler := filepath.Join(disks[full], "chaos-filler")
	filled := fillDisk(t, filler)
	fullAt := time.Now()
	// Joins go on through every manager (the others relay them to the
	// leader) until the full leader has noticed (its status says its disk
	// is full, or it no longer leads, or it stopped answering), and a join
	// sent after that is acknowledged.
	var noticed string
	var noticedAt time.Time
	available := c.eventually("the full leader notices, and the cluster admits joins after", 2*waitBound, func() error {
		for _, m := range append(slices.Clone(others), full) {
			c.join(h, "client", m, "worker-0", b.token, 15*time.Second)
		}
		if noticed == "" {
			st, err := c.status(full)
			switch {
			case err != nil:
				noticed = "its status fails: " + firstLine(err.Error())
			case strings.Contains(st.Problem, "disk full"):
				noticed = fmt.Sprintf("its status says %q (health %s)", st.Problem, st.Health)
			default:
				if st2, err := c.status(others[0]); err == nil && st2.LeaderID != "" && st2.LeaderID != fullID {
					noticed = fmt.Sprintf("it no longer leads: %s sees %s", others[0], st2.LeaderID)
				}
			}
			if noticed == "" {
				return fmt.Errorf("%s (%s) leads on, its status says nothing of its full disk", full, fullID)
			}
			noticedAt = time.Now()
			t.Logf("%s after the fill, the full leader %s: %s", since(fullAt), full, noticed)
		}
		for _, o := range h.all() {
			if o.Op == "join" && o.OK && o.Start.After(noticedAt) {
				return nil
			}
		}
		return fmt.Errorf("no join acknowledged since the full leader noticed (%s)", noticed)
	})
	// The disk stays full for holdFor more: joins go on through each
	// manager in turn (one every 500ms), and one of the nodes joined
	// before is removed through the full manager.
	const holdFor = 15 * time.Second
	pace := time.NewTicker(500 * time.Millisecond)
	for i := 0; time.Since(noticedAt) < holdFor; i++ {
		<-pace.C
		c.join(h, "steady", managers[i%len(managers)], "worker-0", b.token, 15*time.Second)
	}
	pace.Stop()
	var gone string
	for _, o := range h.all() {
		if o.Op == "join" && o.OK && o.Start.Before(fullAt) {
			gone = o.NodeID
			break
		}
	}
	rmErr := c.removeNode(h, "admin", full, gone, 20*time.Second)
	t.Logf("node rm %s through the full manager: %v", gone, rmErr)
	leaderWhileFull := "unknown"
	if st, err := c.status(others[0]); err == nil {
		leaderWhileFull = st.LeaderID
	}
	// What writes through the full manager got: acknowledged (relayed),
	// or an error that says its disk is full, or no answer (down).
	var saidFull, unclear []string
	acked := 0
	for _, o := range h.all() {
		if o.Op != "join" || o.Via != full || o.Start.Before(fullAt) {
			continue
		}
		switch {
		case o.OK:
			acked++
		case strings.Contains(o.Result, "disk full"):
			saidFull = append(saidFull, firstLine(o.Result))
		default:
			unclear = append(unclear, firstLine(o.Result))
		}
	}
	t.Logf("joins through the full manager while full: %d acknowledged, %d said disk full, %d other errors: %q", acked, len(saidFull), len(unclear), unclear)
	for _, o := range h.all() {
		if !o.OK && o.Start.After(fullAt) {
			t.Logf("failed while full: %s through %s at +%s: %s", o.Op, o.Via, o.Start.Sub(fullAt).Round(100*time.Millisecond), firstLine(o.Result))
		}
	}
	restarts := strings.TrimSpace(c.docker("inspect", "-f", "{{.RestartCount}}", c.ctr(full)))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freedAt := time.Now()
	c.waitHealthy(2*waitBound, full)
	c.eventually(full+" serves again: no problem, a join through it", waitBound, func() error {
		st, err := c.status(full)
		if err != nil {
			return err
		}
		if st.Problem != "" {
			return fmt.Errorf("%s: problem %q", full, st.Problem)
		}
		_, err = c.join(h, "client", full, "worker-0", b.token, 15*time.Second)
		return err
	})
	recovered := since(freedAt)
	c.eventually("the three managers agree on the leader, all reachable", waitBound, c.managersAgree)
	inv := c.checkInvariants(h, b)
	sent, ackedAll := h.count("join")
	t.Logf("SUMMARY TestChaosLeaderDiskFull: leader %s (%s) had its 64 MiB data file system filled (%d MiB written); it noticed: %s; the cluster admitted joins again %s after the fill "+
		"and went on for %s more (leader then %s; through the full manager meanwhile: %d joins acknowledged, %d said disk full, %d other errors; node rm through it: %v); container restarts %s -> %s; space freed, %s served again in %s; %d joins sent, %d acknowledged; %s; scenario %s",
		full, fullID, filled>>20, noticed, available.Round(100*time.Millisecond), holdFor, leaderWhileFull, acked, len(saidFull), len(unclear), errOrOK(rmErr), restarts0, restarts, full, recovered, sent, ackedAll, inv, since(start))
}

// TestChaosRollingRestartJoinStorm restarts the managers one at a time,
// each once the cluster is whole again, while three clients join new
// nodes through the managers in turn (one join every 400ms each):
// afterwards every acknowledged join is a node on every manager.
func TestChaosRollingRestartJoinStorm(t *testing.T) {
	c := newCluster(t, "rolling", 10)
	h := newHistory(t)
	start := time.Now()
	b := c.baseline()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pace := time.NewTicker(400 * time.Millisecond)
			defer pace.Stop()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-pace.C:
				}
				c.join(h, fmt.Sprintf("client%d", i), managers[(i+n)%len(managers)], "worker-0", b.token, 10*time.Second)
			}
		}()
	}
	stopClients := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer stopClients()

	var restarts []string
	for _, m := range managers {
		at := time.Now()
		c.docker("restart", "-t", "10", c.ctr(m))
		c.waitHealthy(waitBound, m)
		c.eventually("the three managers agree on the leader, all reachable, after "+m+"'s restart", waitBound, c.managersAgree)
		ackedSince := 0
		for _, o := range h.all() {
			if o.Op == "join" && o.OK && o.Start.After(at) {
				ackedSince++
			}
		}
		restarts = append(restarts, fmt.Sprintf("%s whole again in %s (%d joins acknowledged meanwhile)", m, since(at), ackedSince))
	}
	stopClients()
	sent, acked := h.count("join")
	if acked < 20 {
		t.Errorf("only %d of %d joins acknowledged through the rolling restart", acked, sent)
	}
	inv := c.checkInvariants(h, b)
	t.Logf("SUMMARY TestChaosRollingRestartJoinStorm: 3 clients joined through the managers in turn while each manager was restarted in its turn: %s; %d joins sent, %d acknowledged; %s; scenario %s",
		strings.Join(restarts, "; "), sent, acked, inv, since(start))
}

func errOrOK(err error) string {
	if err != nil {
		return firstLine(err.Error())
	}
	return "acknowledged"
}
