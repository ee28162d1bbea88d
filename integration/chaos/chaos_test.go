package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// Scenarios run one after the other (no t.Parallel): six containers each,
// on a small machine. Each has its own cluster, network and volumes.

// TestChaosKillLeaderMidRotation starts a root rotation through a follower
// and SIGKILLs the leader at once: another manager takes over and finishes
// the rotation, the killed manager comes back (started again within the
// rotation grace, as a crashed node's supervisor would) and catches up,
// and every node ends on the new root with the identity it had.
func TestChaosKillLeaderMidRotation(t *testing.T) {
	c := newCluster(t, "killleader", 0)
	start := time.Now()
	c.mustCLI("manager1", "update", "--rotation-grace", "30s")
	before := c.certs(services...)
	ids := nodeIDs(c.mustNodes("manager1"))
	oldRoot := []byte(c.mustCLI("manager1", "ca"))
	leader, leaderID, err := c.leaderService("manager1")
	if err != nil {
		t.Fatal(err)
	}
	via := managers[slices.IndexFunc(managers, func(m string) bool { return m != leader })]

	out := c.mustCLI(via, "ca", "--rotate", "-d")
	c.docker("kill", c.ctr(leader))
	killedAt := time.Now()
	t.Logf("rotation started through %s (%s); leader %s (%s) SIGKILLed", via, strings.TrimSpace(out), leader, leaderID)

	// Another manager leads, and the rotation, unfinished, is in the
	// replicated state it leads from.
	var newLeaderID, progress string
	elected := c.eventually("another manager leads, the rotation in progress", waitBound, func() error {
		st, err := c.status(via)
		if err != nil {
			return err
		}
		if st.LeaderID == "" || st.LeaderID == leaderID {
			return fmt.Errorf("%s sees leader %q", via, st.LeaderID)
		}
		if st.Rotation == nil {
			return fmt.Errorf("%s (leader %s) shows no rotation in progress", via, st.LeaderID)
		}
		newLeaderID = st.LeaderID
		progress = fmt.Sprintf("%d/%d converged", st.Rotation.Converged, st.Rotation.Total)
		return nil
	})
	t.Logf("new leader %s after %s; rotation in progress there (%s)", newLeaderID, elected.Round(100*time.Millisecond), progress)

	restartedByDocker := c.running(leader)
	if !restartedByDocker {
		c.docker("start", c.ctr(leader))
	}
	c.waitHealthy(waitBound, leader)
	t.Logf("%s running again %s after the kill (restarted by docker: %v)", leader, since(killedAt), restartedByDocker)

	// The rotation completes: no manager shows it in progress, and the
	// cluster's root is a new one.
	var newRoot []byte
	c.eventually("the rotation completes", 2*waitBound, func() error {
		fps := map[string]bool{}
		for _, m := range managers {
			st, err := c.status(m)
			if err != nil {
				return err
			}
			if st.Rotation != nil {
				return fmt.Errorf("%s: rotation in progress: %d/%d converged, %d skipped", m, st.Rotation.Converged, st.Rotation.Total, st.Rotation.Skipped)
			}
			fps[st.RootFingerprint] = true
		}
		root, err := c.cli(via, "ca")
		if err != nil {
			return err
		}
		if sameCerts([]byte(root), oldRoot) {
			return fmt.Errorf("`ca` still prints the old root %s", describeRoot(oldRoot))
		}
		certs, err := ca.ParseCertificates([]byte(root))
		if err != nil || len(certs) != 1 {
			return fmt.Errorf("`ca` prints %d certificates (%v), want the new root alone", len(certs), err)
		}
		fp := agent.BundleFingerprint([]byte(root))
		if len(fps) != 1 || !fps[fp] {
			return fmt.Errorf("managers' status show roots %v, want %s alone", fps, fp)
		}
		newRoot = []byte(root)
		return nil
	})
	completed := since(killedAt)

	// Nobody was left behind: the same 6 nodes, all ready on the new CA
	// (a skipped node would be "rejoin needed").
	c.eventually("node ls: the same 6 nodes, ready, on the new CA", waitBound, func() error {
		ns, err := c.nodes(via)
		if err != nil {
			return err
		}
		if got := nodeIDs(ns); !slices.Equal(got, ids) {
			return fmt.Errorf("node IDs %v, want the same as before the kill %v", got, ids)
		}
		if err := allReady(ns, 6); err != nil {
			return err
		}
		for _, n := range ns {
			if n.TLSStatus != "ready" {
				return fmt.Errorf("node %s (%s): TLS status %q, want ready", n.ID, c.serviceOf(n), n.TLSStatus)
			}
		}
		return nil
	})
	// Every node's files: the new root alone, a certificate under it that
	// names the same node.
	c.eventually("every node's files on the new root, same identity", waitBound, func() error {
		for _, svc := range services {
			nc, err := c.checkNodeOnRoot(svc, newRoot, before[svc].id)
			if err != nil {
				return err
			}
			if nc.serial == before[svc].serial {
				return fmt.Errorf("%s: node.crt still has serial %s from before the rotation", svc, nc.serial)
			}
		}
		return nil
	})
	st, err := c.status(via)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SUMMARY TestChaosKillLeaderMidRotation: leader %s SIGKILLed right after `ca --rotate -d` via %s; new leader %s in %s; rotation complete %s after the kill "+
		"(new root sha256:%.16s, was sha256:%.16s); same 6 node IDs, all ready, every root-ca.crt the new root, every node.crt verifies under it with its old identity; leader now %s; scenario %s",
		leader, via, newLeaderID, elected.Round(100*time.Millisecond), completed, agent.BundleFingerprint(newRoot), agent.BundleFingerprint(oldRoot), st.LeaderID, since(start))
}

// TestChaosPartitionManager cuts manager3 off the network: the other two
// keep the cluster going (a cert expiry change renews every connected
// node); reconnected, manager3 catches up with the state and renews too.
func TestChaosPartitionManager(t *testing.T) {
	c := newCluster(t, "partition", 1)
	start := time.Now()
	before := c.certs(services...)
	m3 := before["manager3"].id.NodeID

	c.docker("network", "disconnect", c.networkName(), c.ctr("manager3"))
	cutAt := time.Now()
	c.eventually("the others see manager3 unreachable", waitBound, func() error {
		ns, err := c.nodes("manager1")
		if err != nil {
			return err
		}
		n, ok := nodeByID(ns, m3)
		if !ok {
			return fmt.Errorf("manager3 %s not in node ls", m3)
		}
		if n.Reachability != "unreachable" {
			return fmt.Errorf("manager3 is %s, %s", n.Reachability, n.Status)
		}
		return nil
	})
	// The majority side has (or elects) a leader and takes the update.
	c.eventually("update --cert-expiry 2000h on the majority side", waitBound, func() error {
		_, err := c.cli("manager1", "update", "--cert-expiry", "2000h")
		return err
	})
	updatedAt := time.Now()
	limit := updatedAt.Add(2000*time.Hour + 2*time.Minute)

	connected := slices.DeleteFunc(slices.Clone(services), func(s string) bool { return s == "manager3" })
	renewed := c.eventually("every connected node renews to the 2000h expiry", waitBound, func() error {
		ns, err := c.nodes("manager1")
		if err != nil {
			return err
		}
		for _, svc := range connected {
			nc, err := c.cert(svc)
			if err != nil {
				return err
			}
			if nc.serial == before[svc].serial {
				return fmt.Errorf("%s: node.crt not renewed yet (serial %s, expires %s)", svc, nc.serial, nc.notAfter.Format(time.RFC3339))
			}
			if nc.notAfter.After(limit) {
				return fmt.Errorf("%s: renewed node.crt expires %s, after the 2000h limit %s", svc, nc.notAfter.Format(time.RFC3339), limit.Format(time.RFC3339))
			}
			if nc.id != before[svc].id {
				return fmt.Errorf("%s: renewed node.crt names %+v, want %+v", svc, nc.id, before[svc].id)
			}
			n, ok := nodeByID(ns, nc.id.NodeID)
			if !ok || n.CertSerial != nc.serial {
				return fmt.Errorf("%s: node ls shows serial %q, the node serves %s", svc, n.CertSerial, nc.serial)
			}
		}
		return nil
	})
	// The partitioned manager could renew with no one.
	if nc := c.mustCert("manager3"); nc.serial != before["manager3"].serial {
		t.Errorf("manager3 renewed its certificate while cut off (serial %s -> %s)", before["manager3"].serial, nc.serial)
	}
	partitioned := since(cutAt)

	c.docker("network", "connect", "--ip", c.ip("manager3"), c.networkName(), c.ctr("manager3"))
	joinedAt := time.Now()
	var leaderID string
	c.eventually("manager3 catches up", 2*waitBound, func() error {
		s1, err := c.status("manager1")
		if err != nil {
			return err
		}
		s3, err := c.status("manager3")
		if err != nil {
			return err
		}
		if s3.LeaderID == "" || s3.LeaderID != s1.LeaderID {
			return fmt.Errorf("leader: manager3 sees %q, manager1 %q", s3.LeaderID, s1.LeaderID)
		}
		if s3.RootFingerprint != s1.RootFingerprint {
			return fmt.Errorf("root: manager3 sees %.16s, manager1 %.16s", s3.RootFingerprint, s1.RootFingerprint)
		}
		if s3.CertExpiry != "2000h0m0s" || s3.Nodes != s1.Nodes {
			return fmt.Errorf("manager3's state: cert expiry %q, %d nodes; manager1's: %q, %d nodes", s3.CertExpiry, s3.Nodes, s1.CertExpiry, s1.Nodes)
		}
		for _, m := range s3.Managers {
			if m.Reachability != "reachable" {
				return fmt.Errorf("manager3 sees manager %s %s", m.NodeID, m.Reachability)
			}
		}
		n1, err := c.nodes("manager1")
		if err != nil {
			return err
		}
		n3, err := c.nodes("manager3")
		if err != nil {
			return err
		}
		if err := allReady(n1, 6); err != nil {
			return err
		}
		if err := sameNodes(n1, n3); err != nil {
			return err
		}
		// manager3 renewed too, and node ls knows its new certificate.
		root, err := c.readFile("manager1", rootFile)
		if err != nil {
			return err
		}
		nc, err := c.checkNodeOnRoot("manager3", root, before["manager3"].id)
		if err != nil {
			return err
		}
		if nc.serial == before["manager3"].serial || nc.notAfter.After(limit) {
			return fmt.Errorf("manager3: node.crt serial %s expires %s: not renewed to the 2000h expiry", nc.serial, nc.notAfter.Format(time.RFC3339))
		}
		if n, _ := nodeByID(n1, m3); n.CertSerial != nc.serial {
			return fmt.Errorf("manager3: node ls shows serial %s, the node serves %s", n.CertSerial, nc.serial)
		}
		leaderID = s1.LeaderID
		return nil
	})
	c.waitHealthy(waitBound, services...)
	t.Logf("SUMMARY TestChaosPartitionManager: manager3 cut off %s; the majority took `update --cert-expiry 2000h` and the 5 connected nodes renewed in %s (node ls serials match the files; manager3's cert unchanged meanwhile); "+
		"reconnected, manager3 agreed on leader %s, root, state and node ls, and renewed, in %s; scenario %s",
		partitioned, renewed.Round(100*time.Millisecond), leaderID, since(joinedAt), since(start))
}

// sameNodes compares two node ls answers: IDs, roles, certificates, TLS
// status.
func sameNodes(a, b []nodeJSON) error {
	if len(a) != len(b) {
		return fmt.Errorf("node ls: %d nodes against %d", len(a), len(b))
	}
	for _, x := range a {
		y, ok := nodeByID(b, x.ID)
		if !ok {
			return fmt.Errorf("node ls: %s missing on one side", x.ID)
		}
		if x.Role != y.Role || x.CertSerial != y.CertSerial || !x.CertNotAfter.Equal(y.CertNotAfter) || x.TLSStatus != y.TLSStatus {
			return fmt.Errorf("node ls: %s differs: %+v against %+v", x.ID, x, y)
		}
	}
	return nil
}

// TestChaosPauseWorkerThroughRotation freezes worker3 (docker pause)
// through a root rotation: the rotation completes after the grace and
// leaves it behind; unpaused, it is refused and says to rejoin; rejoined
// with the current token (from the shared volume), it is a new worker on
// the new root.
func TestChaosPauseWorkerThroughRotation(t *testing.T) {
	c := newCluster(t, "pauseworker", 2)
	start := time.Now()
	const grace = 10 * time.Second
	c.mustCLI("manager1", "update", "--rotation-grace", grace.String())
	before := c.certs(services...)
	w3 := before["worker3"].id
	oldRoot := []byte(c.mustCLI("manager1", "ca"))
	w3creds := c.credentials("worker3")

	// Connections from the host with worker3's certificate, opened (and
	// used) before the rotation: they stay open through it.
	oldConns := map[string]*grpc.ClientConn{}
	for _, m := range managers {
		conn, err := grpc.NewClient(c.ip(m)+":2377", grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, w3creds, oldRoot))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		oldConns[m] = conn
		// Gossip is answered by every manager itself; a heartbeat only
		// by the leader (the others redirect it there).
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err = gossip(ctx, conn)
		cancel()
		if err != nil {
			t.Fatalf("control: CA.Gossip with worker3's certificate at %s before the rotation: %v", m, err)
		}
	}

	c.docker("pause", c.ctr("worker3"))
	rotStart := time.Now()
	out, err := c.cliTimeout(3*time.Minute, "manager1", "ca", "--rotate", "-q")
	if err != nil {
		t.Fatalf("ca --rotate -q with worker3 paused: %v", err)
	}
	took := since(rotStart)
	newRoot := []byte(out)
	certs, err := ca.ParseCertificates(newRoot)
	if err != nil || len(certs) != 1 || sameCerts(newRoot, oldRoot) {
		t.Fatalf("ca --rotate -q printed %q (%v), want the new root alone", out, err)
	}
	if took < grace {
		t.Errorf("the rotation completed in %s with worker3 paused, before the %s grace", took, grace)
	}
	if now := c.mustCLI("manager1", "ca"); !sameCerts([]byte(now), newRoot) {
		t.Errorf("`ca` prints %s after the rotation, `ca --rotate -q` printed %s", describeRoot([]byte(now)), describeRoot(newRoot))
	}
	for _, n := range c.mustNodes("manager1") {
		want := "ready"
		if n.ID == w3.NodeID {
			want = "rejoin needed"
		}
		if n.TLSStatus != want {
			t.Errorf("node ls: %s (%s) TLS status %q, want %q", n.ID, c.serviceOf(n), n.TLSStatus, want)
		}
	}

	// Its certificate of the old root opens no manager any more: a new
	// TLS connection with it is refused, even by a client that trusts the
	// new root.
	var refusals []string
	for _, m := range managers {
		how, err := refused(t.Context(), c.ip(m)+":2377", clientTLS(t, w3creds, newRoot), heartbeat)
		if err != nil {
			t.Errorf("%s: CA.Heartbeat with worker3's old certificate, on a new connection: %v", m, err)
			continue
		}
		refusals = append(refusals, m+": "+how)
	}
	t.Logf("new connections with worker3's old certificate: %v", refusals)
	// Nor does a connection opened before the rotation completed: every
	// call is checked against the trust bundle of now, as every call is
	// checked against the removed nodes.
	var accepted, refusedOld []string
	for _, m := range managers {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := heartbeat(ctx, oldConns[m])
		cancel()
		switch code := status.Code(err); code {
		case codes.OK:
			accepted = append(accepted, m)
		case codes.PermissionDenied, codes.Unauthenticated:
			refusedOld = append(refusedOld, fmt.Sprintf("%s: %s: %s", m, code, status.Convert(err).Message()))
		default:
			t.Errorf("%s: CA.Heartbeat with worker3's old certificate on a connection from before the rotation: %v, want PermissionDenied", m, err)
		}
	}
	t.Logf("connections from before the rotation with worker3's old certificate: refused by %v, accepted by %v", refusedOld, accepted)
	if len(accepted) > 0 {
		st, _ := c.status("manager1")
		t.Errorf("BUG (quorumca, not this test): on connections opened before the rotation completed, %v (leader %s) still accept worker3's certificate of the old root "+
			"(CA.Heartbeat succeeds); only new handshakes are refused: authz.Decide must verify a chain again when the bundle moved on", accepted, st.LeaderAddr)
	}

	// Unpaused, worker3 is refused (its heartbeats fail) and says it must
	// rejoin. It must not get back in: that it renews into the new CA is
	// the documented refusal failing.
	c.docker("unpause", c.ctr("worker3"))
	unpausedAt := time.Now()
	var problem string
	var readmitted *nodeCert
	c.eventually("worker3 says it must rejoin", waitBound, func() error {
		if nc, err := c.cert("worker3"); err == nil && nc.serial != before["worker3"].serial {
			readmitted = &nc
			return nil
		}
		st, err := c.status("worker3")
		if err != nil {
			return err
		}
		if p := strings.ToLower(st.Problem); !strings.Contains(p, "rejoin") || !strings.Contains(p, "left behind") {
			return fmt.Errorf("worker3's status problem is %q", st.Problem)
		}
		problem = st.Problem
		return nil
	})
	logs, err := c.tryDockerAll("logs", "--since", unpausedAt.Add(-time.Second).UTC().Format(time.RFC3339), c.ctr("worker3"))
	if err != nil {
		t.Fatal(err)
	}
	if readmitted != nil {
		n, _ := nodeByID(c.mustNodes("manager1"), w3.NodeID)
		_, _, verr := ca.VerifyPEM(readmitted.pem, newRoot, time.Now())
		nodeFile, _ := c.readFile("worker3", "/data/node.json")
		var nodeCfg struct {
			Managers []string `json:"managers"`
		}
		json.Unmarshal(nodeFile, &nodeCfg)
		st, _ := c.status("manager1")
		t.Logf("worker3 heartbeats to the first manager that answers of %v; the leader is %s", nodeCfg.Managers, st.LeaderAddr)
		t.Errorf("BUG (quorumca, not this test): worker3 %s, skipped by the rotation while paused and named \"rejoin needed\", was NOT refused when unpaused: "+
			"it heartbeated and renewed into the new CA (node.crt serial %s -> %s, verifies under the new root: %v; node ls now: status %q, TLS status %q). "+
			"docker pause kept its gRPC connections open, authenticated at handshakes from before the rotation completed, and a manager accepts the old "+
			"root's certificate on such a connection (see above). README: \"when it comes back, the managers refuse its old-root certificate and the node says ... "+
			"to rejoin\". worker3's log since the unpause:\n%s",
			w3.NodeID, before["worker3"].serial, readmitted.serial, verr == nil, n.Status, n.TLSStatus, logs)
	} else {
		if !strings.Contains(logs, "heartbeat failed") {
			t.Errorf("worker3's log since the unpause has no failed heartbeat:\n%s", logs)
		}
		if n, ok := nodeByID(c.mustNodes("manager1"), w3.NodeID); !ok || n.Status != "down" || n.TLSStatus != "rejoin needed" {
			t.Errorf("node ls: worker3 %s is %+v, want down and rejoin needed", w3.NodeID, n)
		}
		t.Logf("worker3 left behind: %q", problem)
	}

	// Rejoin: a new container with an empty data volume joins with the
	// token the managers keep current in the shared volume.
	if out, err := c.composeCmd(t.Context(), "rm", "-s", "-f", "worker3"); err != nil {
		t.Fatalf("docker-compose rm -s -f worker3: %v\n%s", err, out)
	}
	c.docker("volume", "rm", c.project+"_worker3")
	c.mustCLI("manager1", "node", "rm", "--force", w3.NodeID)
	if out, err := c.composeCmd(t.Context(), "up", "-d", "worker3"); err != nil {
		t.Fatalf("docker-compose up -d worker3: %v\n%s", err, out)
	}
	rejoinAt := time.Now()
	c.waitHealthy(waitBound, "worker3")
	var newID string
	c.eventually("worker3 rejoined as a new worker on the new root", waitBound, func() error {
		st, err := c.status("worker3")
		if err != nil {
			return err
		}
		if st.NodeID == "" || st.NodeID == w3.NodeID {
			return fmt.Errorf("worker3 is node %q", st.NodeID)
		}
		if st.Problem != "" {
			return fmt.Errorf("worker3's problem: %s", st.Problem)
		}
		ns, err := c.nodes("manager1")
		if err != nil {
			return err
		}
		if err := allReady(ns, 6); err != nil {
			return err
		}
		if _, ok := nodeByID(ns, w3.NodeID); ok {
			return fmt.Errorf("the old worker3 %s is still listed", w3.NodeID)
		}
		n, ok := nodeByID(ns, st.NodeID)
		if !ok || n.Role != string(ca.RoleWorker) || n.TLSStatus != "ready" {
			return fmt.Errorf("node ls: new worker3 %s is %+v", st.NodeID, n)
		}
		want := ca.Identity{NodeID: st.NodeID, Role: ca.RoleWorker, ClusterID: w3.ClusterID}
		if _, err := c.checkNodeOnRoot("worker3", newRoot, want); err != nil {
			return err
		}
		newID = st.NodeID
		return nil
	})
	for _, svc := range services[:5] {
		if _, err := c.checkNodeOnRoot(svc, newRoot, before[svc].id); err != nil {
			t.Error(err)
		}
	}
	outcome := fmt.Sprintf("unpaused, worker3 reports %q, its heartbeats fail", problem)
	if readmitted != nil {
		outcome = "unpaused, worker3 was NOT refused: it renewed into the new CA over its pre-rotation connection (BUG, see above)"
	}
	t.Logf("SUMMARY TestChaosPauseWorkerThroughRotation: worker3 paused; `ca --rotate -q` completed in %s (grace %s) and node ls says worker3 \"rejoin needed\"; "+
		"new connections with its old certificate refused by the 3 managers; %s; rejoined from an empty volume with the published token as %s in %s, on the new root; scenario %s",
		took, grace, outcome, newID, since(rejoinAt), since(start))
}

// TestChaosRestartAll turns autolock on, puts the unlock key where the
// managers' --unlock-key-file points, and restarts every container at
// once: the managers come up locked and unlock themselves from the file;
// the same nodes come back, on the same root, with no problem and no
// rejoin.
func TestChaosRestartAll(t *testing.T) {
	c := newCluster(t, "restartall", 3)
	start := time.Now()

	// Autolock on, and the unlock key where the managers' --unlock-key-file
	// points (the volume the three mount at /run/secrets).
	c.mustCLI("manager2", "update", "--autolock=true")
	key := strings.TrimSpace(c.mustCLI("manager1", "unlock-key", "-q"))
	if !strings.HasPrefix(key, "QCKEY-1-") {
		t.Fatalf("unlock-key -q printed %q, want an unlock key", key)
	}
	if err := c.writeFile("manager1", "/run/secrets/unlock.key", []byte(key+"\n")); err != nil {
		t.Fatal(err)
	}
	c.eventually("every manager's node.key sealed under the unlock key", waitBound, func() error {
		for _, svc := range managers {
			b, err := c.readFile(svc, keyFile)
			if err != nil {
				return err
			}
			if !strings.Contains(string(b), "SEALED PRIVATE KEY") || strings.Contains(string(b), "BEGIN PRIVATE KEY") || strings.Contains(string(b), "BEGIN EC PRIVATE KEY") {
				return fmt.Errorf("%s: node.key not sealed", svc)
			}
		}
		return nil
	})

	before := c.certs(services...)
	ids := nodeIDs(c.mustNodes("manager1"))
	root := []byte(c.mustCLI("manager1", "ca"))
	startedAt := map[string]string{}
	for _, svc := range services {
		startedAt[svc] = strings.TrimSpace(c.docker("inspect", "-f", "{{.State.StartedAt}}", c.ctr(svc)))
	}

	restartAt := time.Now()
	if out, err := c.composeCmd(t.Context(), "restart", "-t", "10"); err != nil {
		t.Fatalf("docker-compose restart: %v\n%s", err, out)
	}
	restarted := since(restartAt)
	for _, svc := range services {
		if now := strings.TrimSpace(c.docker("inspect", "-f", "{{.State.StartedAt}}", c.ctr(svc))); now == startedAt[svc] {
			t.Fatalf("%s was not restarted (started at %s)", svc, now)
		}
	}
	ns := c.waitClusterReady(2 * waitBound)
	ready := since(restartAt)
	if got := nodeIDs(ns); !slices.Equal(got, ids) {
		t.Errorf("node IDs after the restart %v, want %v", got, ids)
	}
	// Each manager came up locked, and unlocked itself from the file.
	for _, svc := range managers {
		logs, err := c.tryDockerAll("logs", "--since", restartAt.Add(-time.Second).UTC().Format(time.RFC3339), c.ctr(svc))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs, "this manager is locked") || !strings.Contains(logs, "unlocked by --unlock-key-file") {
			t.Errorf("%s's log since the restart does not show it locked, then unlocked from the file:\n%s", svc, logs)
		}
	}
	if now := []byte(c.mustCLI("manager1", "ca")); !sameCerts(now, root) {
		t.Errorf("root after the restart %s, want %s", describeRoot(now), describeRoot(root))
	}
	c.eventually("every node reports no problem, on the same root", waitBound, func() error {
		for _, svc := range services {
			st, err := c.status(svc)
			if err != nil {
				return err
			}
			if st.Problem != "" {
				return fmt.Errorf("%s: problem %q", svc, st.Problem)
			}
			if st.NodeID != before[svc].id.NodeID {
				return fmt.Errorf("%s: node %s, was %s", svc, st.NodeID, before[svc].id.NodeID)
			}
			if st.RootFingerprint != agent.BundleFingerprint(root) {
				return fmt.Errorf("%s: root %.16s, want %.16s", svc, st.RootFingerprint, agent.BundleFingerprint(root))
			}
			if strings.Contains(st.Role, "manager") && st.LeaderID == "" {
				return fmt.Errorf("%s knows no leader", svc)
			}
		}
		return nil
	})
	renewed := 0
	for _, svc := range services {
		nc, err := c.checkNodeOnRoot(svc, root, before[svc].id)
		if err != nil {
			t.Error(err)
			continue
		}
		if nc.serial != before[svc].serial {
			renewed++
			t.Logf("%s renewed its certificate across the restart (serial %s -> %s)", svc, before[svc].serial, nc.serial)
		}
	}
	t.Logf("SUMMARY TestChaosRestartAll: autolock on, unlock key in the managers' /run/secrets; docker-compose restart took %s; the 3 managers came up locked and unlocked from the file; all 6 healthy and ready %s after it; same 6 node IDs, same root, no node reports a problem, "+
		"every node.crt verifies with its old identity (%d renewed across the restart); scenario %s", restarted, ready, renewed, since(start))
}

// TestChaosRemovedNodeCertsRefused removes a stopped worker: its
// certificate, copied out of its volume, no longer opens any manager.
func TestChaosRemovedNodeCertsRefused(t *testing.T) {
	c := newCluster(t, "removed", 4)
	start := time.Now()
	creds := c.credentials("worker2")
	nc, err := parseNodeCert(creds.cert)
	if err != nil {
		t.Fatal(err)
	}
	id := nc.id.NodeID
	cfg := clientTLS(t, creds, creds.root)
	// Control: before the removal, every manager takes its calls. These
	// connections stay open across the removal.
	open := map[string]*grpc.ClientConn{}
	for _, m := range managers {
		conn, err := grpc.NewClient(c.ip(m)+":2377", grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		open[m] = conn
		// Gossip is answered by every manager itself; a heartbeat only
		// by the leader (the others redirect it there).
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err = gossip(ctx, conn)
		cancel()
		if err != nil {
			t.Fatalf("control: CA.Gossip with worker2's certificate at %s before its removal: %v", m, err)
		}
	}

	c.docker("stop", c.ctr("worker2"))
	c.mustCLI("manager1", "node", "rm", "--force", id)
	removedAt := time.Now()
	var refusals []string
	for _, m := range managers {
		addr := c.ip(m) + ":2377"
		c.eventually(m+" refuses the removed worker's certificate", waitBound, func() error {
			hb, err := refused(t.Context(), addr, cfg, heartbeat)
			if err != nil {
				return fmt.Errorf("CA.Heartbeat: %w", err)
			}
			rn, err := refused(t.Context(), addr, cfg, renew)
			if err != nil {
				return fmt.Errorf("CA.RenewNodeCertificate: %w", err)
			}
			// A connection made before the removal is no way around it.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := renew(ctx, open[m]); status.Code(err) != codes.PermissionDenied {
				return fmt.Errorf("CA.RenewNodeCertificate on a connection opened before the removal: %v, want %s", err, codes.PermissionDenied)
			}
			refusals = append(refusals, fmt.Sprintf("%s: Heartbeat %s; RenewNodeCertificate %s; on the connection from before: %s", m, hb, rn, codes.PermissionDenied))
			return nil
		})
	}
	for _, r := range refusals {
		t.Log(r)
	}
	for _, m := range managers {
		ns := c.mustNodes(m)
		if _, ok := nodeByID(ns, id); ok || len(ns) != 5 {
			t.Errorf("node ls on %s lists %v, want 5 nodes without worker2 %s", m, nodeIDs(ns), id)
		}
	}

	// A worker removed while it runs: its status says so (exit 4) and
	// the image's HEALTHCHECK turns its container unhealthy.
	st3, err := c.status("worker3")
	if err != nil {
		t.Fatal(err)
	}
	c.mustCLI("manager1", "node", "rm", "--force", st3.NodeID)
	removed3 := time.Now()
	c.eventually("worker3's status says it was removed", waitBound, func() error {
		st, err := c.status("worker3")
		if err != nil {
			return err
		}
		if st.Health != "removed" {
			return fmt.Errorf("health %q (%s)", st.Health, st.Problem)
		}
		return nil
	})
	c.eventually("worker3's container unhealthy", waitBound, func() error {
		if h := c.health("worker3"); h != "unhealthy" {
			return fmt.Errorf("worker3 is %s", h)
		}
		return nil
	})
	for _, svc := range []string{"manager1", "worker1"} {
		if h := c.health(svc); h != "healthy" {
			t.Errorf("%s is %s after worker3's removal, want healthy", svc, h)
		}
	}
	t.Logf("SUMMARY TestChaosRemovedNodeCertsRefused: worker2 %s stopped and removed (node rm --force); its certificate worked at the 3 managers before, and all 3 refused Heartbeat and RenewNodeCertificate on new connections and on those opened before, within %s after; node ls lists 5 nodes without it; worker3, removed while running, reported itself removed and its container turned unhealthy %s after; scenario %s",
		id, since(removedAt), since(removed3), since(start))
}

func gossip(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := api.NewCAClient(conn).Gossip(ctx, &api.GossipRequest{})
	return err
}

func heartbeat(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := api.NewCAClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{})
	return err
}

func renew(ctx context.Context, conn *grpc.ClientConn) error {
	csr, err := newCSR()
	if err != nil {
		return err
	}
	_, err = api.NewCAClient(conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{Csr: csr})
	return err
}
