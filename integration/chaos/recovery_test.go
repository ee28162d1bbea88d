package chaos

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// managerFlags are the daemon flags docker-compose.yml gives a manager,
// but the bootstrap ones (--init, --join-token-file).
func (c *cluster) managerFlags(svc string) []string {
	ip := c.ip(svc)
	return []string{"--data-dir", "/data", "--publish-tokens", "/tokens", "--unlock-key-file", "/run/secrets/unlock.key",
		"--listen-addr", "0.0.0.0:2377", "--raft-addr", "0.0.0.0:2378", "--gossip-addr", "0.0.0.0:7946",
		"--advertise-addr", ip + ":2377", "--raft-advertise-addr", ip + ":2378", "--gossip-advertise-addr", ip + ":7946"}
}

// compose runs docker-compose on the project and fails the test on error.
func (c *cluster) compose(args ...string) string {
	c.t.Helper()
	out, err := c.composeCmd(c.t.Context(), args...)
	if err != nil {
		c.t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// destroy removes services' containers and their data volumes: lost for
// good.
func (c *cluster) destroy(svcs ...string) {
	c.t.Helper()
	c.compose(append([]string{"rm", "-f", "-s"}, svcs...)...)
	for _, svc := range svcs {
		c.docker("volume", "rm", c.project+"_"+svc)
	}
}

// runOnce runs, in place of svc's container, a one-off container of svc
// (same volumes, network and address) with args, detached, and returns
// its name.
func (c *cluster) runOnce(svc string, args ...string) string {
	c.t.Helper()
	name := c.project + "_" + svc + "_once"
	c.compose(append([]string{"run", "-d", "--no-deps", "--name", name, svc}, args...)...)
	return name
}

// workerIdentities returns the node ID and serial of each worker's
// certificate.
func (c *cluster) workerIdentities() map[string]nodeCert {
	c.t.Helper()
	return c.certs(workers...)
}

// TestChaosLoseMajority: two managers are killed and their volumes
// wiped. The third, run once with --force-new-cluster, leads alone with
// the cluster's identity: the two lost are listed, and every worker renews
// under its own ID. Healed (the two services come back on empty volumes
// and join with the published manager token), the cluster is 3 managers
// and 3 workers again, the workers with the same IDs.
func TestChaosLoseMajority(t *testing.T) {
	c := newCluster(t, "losemajority", 5)
	start := time.Now()
	before := c.workerIdentities()
	m1 := c.mustCert("manager1").id.NodeID
	var lost []string
	for _, svc := range []string{"manager2", "manager3"} {
		lost = append(lost, c.mustCert(svc).id.NodeID)
	}
	slices.Sort(lost)

	c.destroy("manager2", "manager3")
	c.compose("rm", "-f", "-s", "manager1")
	killed := time.Now()
	c.runOnce("manager1", append([]string{"run", "--force-new-cluster"}, c.managerFlags("manager1")...)...)
	var st statusJSON
	c.eventually("manager1 recovered alone", waitBound, func() (err error) {
		if st, err = c.status("manager1"); err != nil {
			return err
		}
		if st.Recovery == nil || st.Recovery.Kind != "force-new-cluster" || st.LeaderID != m1 {
			return fmt.Errorf("status: leader %q, recovery %+v", st.LeaderID, st.Recovery)
		}
		return nil
	})
	recovered := since(killed)
	if got := slices.Sorted(slices.Values(st.Recovery.Lost)); !slices.Equal(got, lost) {
		t.Errorf("status lists the lost managers %v, want %v", got, lost)
	}
	// Every worker renews under its own ID: a shorter cert expiry makes
	// them all renew now.
	c.mustCLI("manager1", "update", "--cert-expiry", "2000h")
	c.eventually("every worker renewed as itself", waitBound, func() error {
		for _, svc := range workers {
			nc, err := c.cert(svc)
			if err != nil {
				return err
			}
			if nc.id != before[svc].id {
				return fmt.Errorf("%s holds %+v, was %+v", svc, nc.id, before[svc].id)
			}
			if nc.serial == before[svc].serial {
				return fmt.Errorf("%s has not renewed", svc)
			}
		}
		return nil
	})

	// Heal: manager1 back under its own command, two new managers.
	c.docker("rm", "-f", c.project+"_manager1_once")
	c.compose("up", "-d")
	ns := c.waitClusterReady(2 * waitBound)
	for _, svc := range workers {
		if n, ok := nodeByID(ns, before[svc].id.NodeID); !ok || n.Role != "swarm-worker" {
			t.Errorf("%s (%s) is not a worker of the healed cluster", svc, before[svc].id.NodeID)
		}
	}
	for _, svc := range []string{"manager2", "manager3"} {
		id := c.mustCert(svc).id.NodeID
		if slices.Contains(lost, id) {
			t.Errorf("%s came back as the lost %s: it should have joined anew", svc, id)
		}
	}
	voters := 0
	for _, m := range c.mustStatus("manager1").Managers {
		if m.Voter {
			voters++
		}
	}
	if voters != 3 {
		t.Errorf("the healed cluster has %d voters, want 3", voters)
	}
	t.Logf("SUMMARY TestChaosLoseMajority: manager2 and manager3 destroyed with their volumes; manager1 run with --force-new-cluster led alone %s later, listing both lost; "+
		"the 3 workers renewed under their own IDs; healed with 2 new managers joining by the published token: 6 ready, 3 voters; scenario %s", recovered, since(start))
}

// TestChaosRestoreFromBackup: a backup taken through manager2 survives
// the loss of every manager and its volume. Restored into a new manager1
// volume, it brings the cluster back with the same ID and root: the
// workers, untouched, reconnect under their own IDs, and two new managers
// join.
func TestChaosRestoreFromBackup(t *testing.T) {
	c := newCluster(t, "restore", 6)
	start := time.Now()
	before := c.workerIdentities()
	st0 := c.mustStatus("manager1")
	old := map[string]bool{}
	for _, svc := range managers {
		old[c.mustCert(svc).id.NodeID] = true
	}
	if err := c.writeFile("manager2", "/tokens/backup.pass", []byte("correct horse battery staple\n")); err != nil {
		t.Fatal(err)
	}
	out := c.mustCLI("manager2", "backup", "--out", "/tokens/cluster.backup", "--passphrase-file", "/tokens/backup.pass")
	if !strings.Contains(out, st0.ClusterID) {
		t.Fatalf("backup said:\n%s", out)
	}

	c.destroy(managers...)
	lostAt := time.Now()
	restore := append([]string{"restore", "/tokens/cluster.backup", "--passphrase-file", "/tokens/backup.pass"}, c.managerFlags("manager1")...)
	restore = slices.DeleteFunc(restore, func(a string) bool {
		return a == "--publish-tokens" || a == "/tokens" || a == "--unlock-key-file" || a == "/run/secrets/unlock.key"
	})
	out, err := c.composeCmd(t.Context(), append([]string{"run", "--rm", "--no-deps", "manager1"}, restore...)...)
	if err != nil || !strings.Contains(out, "Restored cluster "+st0.ClusterID) {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	c.compose("up", "-d")
	ns := c.waitClusterReady(2 * waitBound)
	ready := since(lostAt)
	st := c.mustStatus("manager1")
	if st.ClusterID != st0.ClusterID || st.RootFingerprint != st0.RootFingerprint || st.Recovery == nil || st.Recovery.Kind != "restore" {
		t.Errorf("after the restore: cluster %s root %.16s recovery %+v; want %s, %.16s, a restore", st.ClusterID, st.RootFingerprint, st.Recovery, st0.ClusterID, st0.RootFingerprint)
	}
	for _, svc := range workers {
		nc := c.mustCert(svc)
		if nc.id != before[svc].id {
			t.Errorf("%s holds %+v after the restore, was %+v", svc, nc.id, before[svc].id)
		}
		if n, ok := nodeByID(ns, nc.id.NodeID); !ok || n.Status != "ready" {
			t.Errorf("%s (%s) is not ready in the restored cluster", svc, nc.id.NodeID)
		}
	}
	for _, svc := range managers {
		if id := c.mustCert(svc).id.NodeID; old[id] {
			t.Errorf("%s runs the lost manager %s", svc, id)
		}
	}
	t.Logf("SUMMARY TestChaosRestoreFromBackup: backup through manager2 (passphrase); the 3 managers destroyed with their volumes; restored into a new manager1 volume, "+
		"all 6 ready %s after the loss: same cluster ID and root, the 3 workers untouched under their IDs, 3 new managers; scenario %s", ready, since(start))
}

// mustStatus is status that fails the test on error.
func (c *cluster) mustStatus(svc string) statusJSON {
	c.t.Helper()
	st, err := c.status(svc)
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}
