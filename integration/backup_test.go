package integration

// Backup and restore: a backup taken while the cluster works (a join
// storm, a rotation) restores, after every manager is lost, into a
// cluster with the same identity, which every worker rejoins without
// rejoining.

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/backup"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

var testPassphrase = backup.Secret{Passphrase: []byte("correct horse battery staple")}

// takeBackup backs the cluster up through n's control socket, as
// `quorumca backup` does, and returns the file and what it holds.
func takeBackup(t *testing.T, n *clustertest.Node) ([]byte, backup.Header, *fsm.State) {
	t.Helper()
	return takeBackupWith(t, n, testPassphrase)
}

// takeBackupWith is takeBackup with the key given ("" unlock key: the
// state's).
func takeBackupWith(t *testing.T, n *clustertest.Node, secret backup.Secret) ([]byte, backup.Header, *fsm.State) {
	t.Helper()
	stream, err := n.Control().Backup(testkit.Ctx(t), &api.BackupRequest{})
	if err != nil {
		t.Fatalf("Control.Backup() = %v", err)
	}
	info, data, err := api.ReceiveBackup(stream)
	if err != nil {
		t.Fatalf("Control.Backup() stream = %v", err)
	}
	st, err := fsm.ReadState(bytes.NewReader(data))
	if err != nil || st.Index != info.GetIndex() {
		t.Fatalf("the backup's state: %v; index %d, want %d", err, st.Index, info.GetIndex())
	}
	if secret.Passphrase == nil && secret.UnlockKey == "" {
		secret.UnlockKey = st.UnlockKey
	}
	var file bytes.Buffer
	h, err := backup.Write(&file, rand.Reader, backup.Header{Term: info.GetTerm(), TakenFrom: info.GetTakenFrom(), TakenAt: time.Unix(0, info.GetTakenAt())}, secret, st)
	if err != nil {
		t.Fatalf("backup.Write() = %v", err)
	}
	return file.Bytes(), h, st
}

// serialsOf returns the serial of every node of st, by ID.
func serialsOf(st *fsm.State) map[string]string {
	out := map[string]string{}
	for id, n := range st.Nodes.All() {
		out[id] = n.Cert.Serial
	}
	return out
}

// TestBackupRestoreKeepsIdentities: of 3 managers and 5 workers, a backup
// is taken through a follower during a storm of joins (every join
// acknowledged before it is in it), another during a root rotation. Every
// manager is then lost with its data directory. The second backup
// restores into a new manager: the nodes and serials are the backup's, the
// backup's managers removed; each worker (which renewed after the backup,
// so that the restored state does not record the certificate it holds),
// told the new manager's address, reconnects under its own ID, is asked to
// renew, renews, and the rotation completes.
func TestBackupRestoreKeepsIdentities(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3, Workers: 5, Grace: 5 * time.Second})
	follower := c.Follower()

	// A join storm, and a backup in the middle of it.
	var mu sync.Mutex
	var acked []string // node IDs of joins that returned
	stop := make(chan struct{})
	var storm sync.WaitGroup
	storm.Go(func() {
		for i := 0; i < 40; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, res, err := c.TryJoin(c.WorkerToken, c.Via())
			if err != nil {
				t.Errorf("join %d during the storm: %v", i, err)
				return
			}
			mu.Lock()
			acked = append(acked, res.Node.NodeID)
			mu.Unlock()
		}
	})
	testkit.Eventually(t, "joins under way", testkit.True(func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 5 }))
	mu.Lock()
	before := slices.Clone(acked)
	mu.Unlock()
	file1, h1, st1 := takeBackup(t, follower)
	close(stop)
	storm.Wait()
	for _, id := range before {
		if _, ok := st1.Node(id); !ok {
			t.Errorf("node %s, whose join returned before the backup began, is not in it (index %d)", id, h1.Index)
		}
	}
	if _, got, err := backup.Read(bytes.NewReader(file1), testPassphrase); err != nil || got.Index != h1.Index {
		t.Fatalf("backup.Read(the storm's backup) = %v", err)
	}

	// A rotation held by a node that never heartbeats, and a backup of it.
	c.HoldRotation()
	root := c.Rotate()
	file2, h2, st2 := takeBackup(t, c.Leader())
	if st2.Rotation == nil {
		t.Fatalf("the rotation's backup holds no rotation")
	}
	// The workers renew after the backup: the restored state does not
	// record the certificates they then hold, and asks them to renew.
	workerSerials := map[string]string{}
	for _, w := range c.Workers {
		workerSerials[w.ID()] = w.Credentials().Leaf().SerialNumber.Text(16)
		w.Renewer().RenewSoon()
	}
	testkit.Eventually(t, "every worker renewed after the backup", func() error {
		for _, w := range c.Workers {
			serial := w.Credentials().Leaf().SerialNumber.Text(16)
			if serial == workerSerials[w.ID()] {
				return fmt.Errorf("worker %s has not renewed", w.Name)
			}
			if n, _ := st2.Node(w.ID()); n.Knows(serial) {
				return fmt.Errorf("worker %s holds a certificate the backup records", w.Name)
			}
		}
		return nil
	})
	for _, w := range c.Workers {
		workerSerials[w.ID()] = w.Credentials().Leaf().SerialNumber.Text(16)
	}

	// Every manager lost.
	for _, m := range c.Managers {
		m.Stop()
		if err := os.RemoveAll(m.Dir); err != nil {
			t.Fatal(err)
		}
	}

	// Restore the rotation's backup into a new manager.
	hr, st, err := backup.Read(bytes.NewReader(file2), testPassphrase)
	if err != nil {
		t.Fatalf("backup.Read() = %v", err)
	}
	restored := restoreInto(t, c, "r0", st, hr.Term)
	r := c.StartPrepared("r0")
	rst := recovered(t, r, fsm.RecoveryRestore)
	if r.ID() != restored.NodeID || rst.ClusterID != c.ClusterID || rst.Recovery.From != h2.Index {
		t.Fatalf("restored manager %s of cluster %s from index %d; want %s, %s, %d", r.ID(), rst.ClusterID, rst.Recovery.From, restored.NodeID, c.ClusterID, h2.Index)
	}
	want := serialsOf(st2)
	for _, m := range st2.Managers() {
		delete(want, m.ID)
		if !rst.IsRemoved(m.ID) {
			t.Errorf("the backup's manager %s is not removed", m.ID)
		}
	}
	got := serialsOf(rst)
	delete(got, r.ID())
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("restored nodes and serials differ from the backup's:\n got %v\nwant %v", got, want)
	}
	if rst.Rotation == nil {
		t.Errorf("the restored state lost the rotation in progress")
	}

	// The workers, pointed at the new manager, reconnect as themselves.
	addr := r.Manager().Addr()
	for _, w := range c.Workers {
		w.Stop()
		w.RestartWith(func(cfg *node.Config) { cfg.ManagerAddrs = []string{addr} })
	}
	// The nodes the storm joined have no daemon: the rotation skips them
	// once its grace runs out.
	c.WaitRotation(root, false)
	bundle := r.Manager().State().CA.Bundle
	testkit.Eventually(t, "every worker trusts the new root", func() error {
		for _, w := range c.Workers {
			if !bytes.Equal(w.Credentials().Bundle(), bundle) {
				return fmt.Errorf("worker %s holds another bundle", w.Name)
			}
		}
		return nil
	})
	for _, w := range c.Workers {
		creds := w.Credentials()
		if creds.Identity().NodeID != w.ID() || creds.Identity().ClusterID != c.ClusterID {
			t.Errorf("worker %s holds %+v after the restore", w.Name, creds.Identity())
		}
		if creds.Leaf().SerialNumber.Text(16) == workerSerials[w.ID()] {
			t.Errorf("worker %s did not renew for the rotation", w.Name)
		}
		certPEM, err := os.ReadFile(filepath.Join(creds.Dir(), agent.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := ca.VerifyPEM(certPEM, bundle, time.Now()); err != nil {
			t.Errorf("worker %s's certificate does not verify under the restored cluster's bundle: %v", w.Name, err)
		}
	}
}

// TestBackupWithoutLeader: with the majority lost, a backup is refused
// with a message that names --stale; a stale one is taken from what the
// manager applied, and says so.
func TestBackupWithoutLeader(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 3})
	survivor := c.Follower()
	want := survivor.Manager().State().Index
	for _, m := range c.Managers {
		if m != survivor {
			m.Stop()
		}
	}
	stream, err := survivor.Control().Backup(testkit.Ctx(t), &api.BackupRequest{})
	if err == nil {
		_, _, err = api.ReceiveBackup(stream)
	}
	if err == nil || !strings.Contains(err.Error(), "--stale") {
		t.Fatalf("Backup() without a leader = %v, want a refusal naming --stale", err)
	}
	stream, err = survivor.Control().Backup(testkit.Ctx(t), &api.BackupRequest{Stale: true})
	if err != nil {
		t.Fatal(err)
	}
	info, data, err := api.ReceiveBackup(stream)
	if err != nil || !info.GetStale() || info.GetIndex() < want || info.GetTakenFrom() != survivor.ID() {
		t.Fatalf("Backup(stale) = %+v, %v; want a stale copy of %s at index %d or later", info, err, survivor.ID(), want)
	}
	if st, err := fsm.ReadState(bytes.NewReader(data)); err != nil || st.ClusterID != c.ClusterID {
		t.Fatalf("the stale backup's state: %v", err)
	}
}

// restoreInto restores st (a backup's, at term) into the data directory
// the cluster gives the node named name.
func restoreInto(t *testing.T, c *clustertest.Cluster, name string, st *fsm.State, term uint64) manager.Restored {
	t.Helper()
	cfg := c.NodeConfig(name)
	mc := cfg.Manager
	mc.DataDir, mc.Logger = cfg.DataDir, cfg.Logger
	mc.ListenAddr, mc.RaftListenAddr, mc.GossipAddr = cfg.ListenAddr, cfg.RaftAddr, cfg.GossipAddr
	restored, err := manager.Restore(t.Context(), mc, st, term)
	if err != nil {
		t.Fatalf("manager.Restore() = %v", err)
	}
	return restored
}

// TestRecoveryWithAutolock: with autolock on, a backup keyed by the
// unlock key restores into a manager that starts locked and unlocks from
// its key file; and a surviving manager forced into a new cluster does so
// once unlocked, from its key file too.
func TestRecoveryWithAutolock(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "unlock.key")
	c := clustertest.New(t, clustertest.Options{Managers: 3, Init: manager.InitOptions{Autolock: true},
		Configure: func(_ string, cfg *node.Config) { cfg.UnlockKeyFile = keyFile }})
	file, _, _ := takeBackupWith(t, c.Leader(), backup.Secret{})
	key := c.Leader().Manager().State().UnlockKey
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := backup.Read(bytes.NewReader(file), testPassphrase); err == nil {
		t.Fatalf("a backup keyed by the unlock key opened with a passphrase")
	}

	// Force a new cluster on a survivor: it restarts locked, unlocks from
	// the file, then recovers.
	survivor := c.Follower()
	for _, m := range c.Managers {
		if m != survivor {
			m.Stop()
			os.RemoveAll(m.Dir)
		}
	}
	survivor.Stop()
	survivor.RestartWith(forceNewCluster)
	recovered(t, survivor, fsm.RecoveryForceNewCluster)
	survivor.Stop()

	// Restore the backup: the new manager's keys are sealed under the
	// unlock key; it unlocks from the same file.
	_, st, err := backup.Read(bytes.NewReader(file), backup.Secret{UnlockKey: key})
	if err != nil {
		t.Fatalf("backup.Read(unlock key) = %v", err)
	}
	restoreInto(t, c, "r0", st, 1)
	r := c.StartPrepared("r0")
	recovered(t, r, fsm.RecoveryRestore)
	if kek := r.Manager().Credentials().NodeKey().KEK; kek == nil {
		t.Errorf("the restored manager's keys are not sealed under the unlock key")
	}
}
