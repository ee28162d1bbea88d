// boltdb/bolt v1.3.1, which wrote the files of the release before, trips
// the race detector's pointer checks (checkptr) in its own code: this test,
// the only one that runs it, runs without -race.

//go:build !race

package raft

import (
	"fmt"
	"path/filepath"
	"testing"

	hraft "github.com/hashicorp/raft"
	raftboltdbv1 "github.com/hashicorp/raft-boltdb"

	"github.com/quorumca/quorumca/internal/testkit"
)

// TestOpensV1Store: a raft.db written by raft-boltdb v1 on boltdb/bolt
// (the release before) opens in place on raft-boltdb/v2 and bbolt, and is
// sealed: its entries come back whole.
func TestOpensV1Store(t *testing.T) {
	c := testkit.NewCA(t)
	id, dir := newID(t), t.TempDir()
	v1, err := raftboltdbv1.NewBoltStore(filepath.Join(dir, dbFile))
	if err != nil {
		t.Fatalf("raft-boltdb v1: %v", err)
	}
	_, trans := hraft.NewInmemTransport(hraft.ServerAddress("127.0.0.1:1"))
	snaps, err := hraft.NewFileSnapshotStore(dir, snapshotsRetained, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := hraft.DefaultConfig()
	rc.LocalID = hraft.ServerID(id)
	ln, err := listenLocal()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := hraft.BootstrapCluster(rc, v1, v1, snaps, trans, hraft.Configuration{Servers: []hraft.Server{{
		Suffrage: hraft.Voter, ID: hraft.ServerID(id), Address: hraft.ServerAddress(addr),
	}}}); err != nil {
		t.Fatalf("BootstrapCluster(v1 store) = %v", err)
	}
	var logs []*hraft.Log
	for i := range 10 {
		logs = append(logs, &hraft.Log{Index: uint64(2 + i), Term: 1, Type: hraft.LogCommand, Data: fmt.Appendf(nil, "v1-%d=%s", i, marker)})
	}
	if err := v1.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	v1.Close()
	trans.Close()

	n := startNode(t, c, id, dir, addr, false, withKeys(&Keys{Current: newDataKey(t)}))
	waitLeader(t, n)
	testkit.Eventually(t, "the v1 store's entries applied", testkit.True(func() bool {
		v, ok := n.sm.get("v1-9")
		return ok && v == marker
	}))
	n.Shutdown()
	if files := filesHolding(t, dir, marker); len(files) > 0 {
		t.Errorf("after sealing the v1 store, the secret is still in clear in %v", files)
	}
}
