package raft

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

const (
	// dbFile is the bolt file, in DataDir, that holds the log and the
	// stable store.
	dbFile = "raft.db"
	// snapshotsRetained is how many snapshots are kept in DataDir/snapshots.
	snapshotsRetained = 2
	// logCacheSize is how many recent log entries are kept in memory, in
	// front of the bolt store, for replication.
	logCacheSize = 512
	// boltOpenTimeout bounds the wait for the bolt file's lock, which
	// another process using the same DataDir holds.
	boltOpenTimeout = 2 * time.Second
	// maxPool is how many idle connections the transport keeps per peer.
	maxPool = 3
	// transportTimeout bounds each Raft RPC's I/O, and dialling a peer.
	transportTimeout = 10 * time.Second
	// leaderChangesBuffer is the capacity of LeaderChanges' channel.
	leaderChangesBuffer = 16
)

// logStableStore is the log store and the stable store in one, as the bolt
// store is.
type logStableStore interface {
	hraft.LogStore
	hraft.StableStore
}

// hasKey reports whether the stable store holds key.
func hasKey(store hraft.StableStore, key []byte) bool {
	_, err := store.Get(key)
	return err == nil
}

// Server is one member of the Raft configuration.
type Server struct {
	// ID is the server's node ID.
	ID string
	// Addr is the address the other managers dial to reach it.
	Addr string
	// Voter is true for a voter, false for a non-voter.
	Voter bool
}

// Node is this manager's member of the Raft cluster: it replicates a
// StateMachine over mutual TLS and keeps its log and snapshots on disk.
// Its methods may be called from any goroutine.
type Node struct {
	id           string
	raft         *hraft.Raft
	trans        *hraft.NetworkTransport
	stream       *streamLayer
	store        *raftboltdb.BoltStore
	disk         *diskWatch
	log          *slog.Logger
	applyTimeout time.Duration

	notify   chan bool     // hashicorp/raft's NotifyCh
	leaderCh chan bool     // LeaderChanges
	done     chan struct{} // closed when Shutdown begins
	stopFwd  chan struct{} // closed to stop forwardLeadership
	fwdDone  chan struct{} // closed when forwardLeadership returns

	shutdownOnce sync.Once
	shutdownErr  error

	dataDir  string
	applied  *appliedIndex
	recMu    sync.Mutex // guards recovery
	recovery *Recovery  // a forced new cluster not yet finished
}

// Open opens the stores in cfg.DataDir, starts the mutual-TLS transport on
// cfg.Listener and starts Raft. If cfg.Bootstrap is set and the stores hold
// no state yet, it first bootstraps a cluster whose only voter is this
// node; with existing state, the node resumes from it (the state machine is
// restored from the latest snapshot and the log that follows it).
//
// The Node owns cfg.Listener from then on: Shutdown closes it, and so does
// an Open that fails.
func Open(cfg Config) (n *Node, err error) {
	if cfg.Listener != nil {
		defer func() {
			if err != nil {
				_ = cfg.Listener.Close()
			}
		}()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	advertise, err := cfg.advertiseAddr()
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	hlog := newHCLogger(logger, "raft")

	// Snapshots hold the whole state, CA keys included, and hashicorp/raft
	// writes them with the process's umask: the directory guards them.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("raft: create data dir: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("raft: restrict data dir to its owner: %w", err)
	}
	path := filepath.Join(cfg.DataDir, dbFile)
	store, err := openBolt(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && store != nil {
			_ = store.Close()
		}
	}()
	fileSnaps, err := hraft.NewFileSnapshotStoreWithLogger(cfg.DataDir, snapshotsRetained, hlog.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("raft: open snapshot store: %w", err)
	}
	var s *sealer
	switch {
	case cfg.Keys != nil:
		if s, err = newSealer(*cfg.Keys); err != nil {
			return nil, err
		}
		if !sealedUnder(store, s) {
			if store, err = seal(store, cfg.DataDir, fileSnaps, s, logger); err != nil {
				return nil, err
			}
		}
	case hasKey(store, sealedWith):
		return nil, fmt.Errorf("raft: %s is sealed: this manager needs its data key to read it", path)
	}
	// The stores report every write's outcome, so that a full disk is told
	// apart from a lost quorum. The watch sits under the log cache, which
	// would lose the error's chain.
	disk := &diskWatch{log: logger}
	var stores logStableStore = store
	var rawSnaps hraft.SnapshotStore = fileSnaps
	if s != nil {
		stores = &sealedStore{logStableStore: stores, s: s, file: path}
		rawSnaps = &sealedSnapshots{SnapshotStore: fileSnaps, s: s}
	}
	if cfg.wrapStore != nil {
		stores = cfg.wrapStore(stores)
	}
	stores = &watchedStore{logStableStore: stores, file: path, disk: disk}
	snaps := &watchedSnapshots{SnapshotStore: rawSnaps, dir: filepath.Join(cfg.DataDir, "snapshots"), disk: disk}
	logs, err := hraft.NewLogCache(logCacheSize, stores)
	if err != nil {
		return nil, fmt.Errorf("raft: open log cache: %w", err)
	}

	stream := newStreamLayer(streamConfig{
		listener:  cfg.Listener,
		advertise: advertise,
		tls:       cfg.TLS,
		clusterID: cfg.ClusterID,
		authorize: cfg.Authorize,
		dial:      cfg.Dial,
		log:       logger,
	})
	trans := hraft.NewNetworkTransportWithConfig(&hraft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: maxPool,
		Timeout: transportTimeout,
		Logger:  hlog.Named("net"),
	})
	defer func() {
		if err != nil {
			_ = trans.Close()
			_ = stream.Close()
		}
	}()

	notify := make(chan bool, leaderChangesBuffer)
	rc := hraft.DefaultConfig()
	rc.LocalID = hraft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.NotifyCh = notify
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	// A removed node keeps running until its owner shuts it down, so that
	// Shutdown stays the one way the Node stops.
	rc.ShutdownOnRemove = false
	if err := hraft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft: %w", err) // Validate should have caught it
	}

	applied, err := openAppliedIndex(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = applied.close()
		}
	}()
	sm := fsm{sm: cfg.StateMachine, applied: applied}
	rec, err := readRecovery(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	switch {
	case rec != nil && rec.Done:
		// Recovered already; the caller has yet to record it.
	case cfg.ForceNewCluster || rec != nil:
		if rec, err = forceNewCluster(rc, sm, logs, stores, snaps, trans, cfg.DataDir, advertise, rec, logger); err != nil {
			return nil, err
		}
	}

	if cfg.Bootstrap {
		has, err := hraft.HasExistingState(logs, stores, snaps)
		if err != nil {
			return nil, fmt.Errorf("raft: read existing state: %w", err)
		}
		if !has {
			err := hraft.BootstrapCluster(rc, logs, stores, snaps, trans, hraft.Configuration{
				Servers: []hraft.Server{{
					Suffrage: hraft.Voter,
					ID:       hraft.ServerID(cfg.NodeID),
					Address:  hraft.ServerAddress(advertise),
				}},
			})
			if err != nil {
				return nil, fmt.Errorf("raft: bootstrap: %w", err)
			}
			logger.Info("raft: bootstrapped a one-voter cluster", "node_id", cfg.NodeID, "addr", advertise)
		}
	}

	r, err := hraft.NewRaft(rc, sm, logs, stores, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("raft: start: %w", err)
	}
	n = &Node{
		id:           cfg.NodeID,
		raft:         r,
		trans:        trans,
		stream:       stream,
		store:        store,
		disk:         disk,
		log:          logger,
		applyTimeout: cfg.ApplyTimeout,
		notify:       notify,
		leaderCh:     make(chan bool, leaderChangesBuffer),
		dataDir:      cfg.DataDir,
		applied:      applied,
		recovery:     rec,
		done:         make(chan struct{}),
		stopFwd:      make(chan struct{}),
		fwdDone:      make(chan struct{}),
	}
	go n.forwardLeadership()
	return n, nil
}

// Apply replicates cmd and waits until this manager's StateMachine has
// applied it, then returns the StateMachine's result. Only the leader can
// apply: elsewhere it returns a *NotLeaderError (ErrNotLeader) naming the
// leader. If the entry is not committed within ctx's deadline, or
// ApplyTimeout when ctx has none, or the leader loses its leadership
// meanwhile, it returns an error wrapping ErrNoQuorum; the entry may still
// be committed later, so commands should be safe to retry. If this node's
// disk is full, such failures wrap ErrDiskFull instead (see DiskError).
func (n *Node) Apply(ctx context.Context, cmd []byte) (any, error) {
	ctx, cancel, bound := n.bound(ctx)
	defer cancel()
	if err := n.ready(ctx, "apply"); err != nil {
		return nil, err
	}
	f := n.raft.Apply(cmd, bound)
	if err := n.wait(ctx, f); err != nil {
		return nil, n.fail("apply", "commit", err, bound)
	}
	return f.Response(), nil
}

// DiskError returns a *DiskFullError (ErrDiskFull) naming the file if this
// node's last write to its Raft stores (the log, the stable store or a
// snapshot) failed because its disk is full, and nil otherwise, including
// once a later write has succeeded. A manager with a full disk cannot lead:
// it steps down at its first failed log write.
func (n *Node) DiskError() error { return n.disk.get() }

// Term returns the current Raft term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == hraft.Leader }

// Leader returns the current leader's node ID and address, or "" and ""
// when no leader is known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// LeaderChanges returns a channel that receives true when this node becomes
// the leader and false when it stops being the leader. Raft never waits for
// the receiver: when the buffer is full the oldest value is dropped, so the
// last value is always delivered. The channel is never closed; a leader
// that shuts down delivers a final false.
func (n *Node) LeaderChanges() <-chan bool { return n.leaderCh }

// forwardLeadership copies hashicorp/raft's notifications to leaderCh
// without ever blocking, until Shutdown has stopped Raft.
func (n *Node) forwardLeadership() {
	defer close(n.fwdDone)
	for {
		select {
		case v := <-n.notify:
			n.deliver(v)
		case <-n.stopFwd:
			for {
				select {
				case v := <-n.notify:
					n.deliver(v)
				default:
					return
				}
			}
		}
	}
}

// deliver sends v on leaderCh, dropping the oldest values to make room.
// Only forwardLeadership sends on leaderCh, so this ends.
func (n *Node) deliver(v bool) {
	for {
		select {
		case n.leaderCh <- v:
			return
		default:
		}
		select {
		case <-n.leaderCh:
		default:
		}
	}
}

// AddVoter makes the manager id, reachable at addr, a voter, and waits until
// the change is committed. The new manager should already be running (with
// an empty DataDir and Bootstrap off), or the change cannot commit in a
// cluster of one. Only the leader can add voters (ErrNotLeader elsewhere).
// Adding a voter already present at addr does nothing; at another address,
// its address is updated.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	if id == "" || addr == "" {
		return fmt.Errorf("raft: add voter: node ID %q and address %q must both be set", id, addr)
	}
	ctx, cancel, bound := n.bound(ctx)
	defer cancel()
	if err := n.ready(ctx, "add voter"); err != nil {
		return err
	}
	if !n.IsLeader() {
		return n.notLeader()
	}
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if s.ID == id && s.Addr == addr && s.Voter {
			return nil
		}
	}
	f := n.raft.AddVoter(hraft.ServerID(id), hraft.ServerAddress(addr), 0, bound)
	if err := n.wait(ctx, f); err != nil {
		return n.fail("add voter "+id, "commit", err, bound)
	}
	n.log.Info("raft: added voter", "node_id", id, "addr", addr)
	return nil
}

// RemoveServer removes the manager id from the Raft configuration and waits
// until the change is committed. Only the leader can remove servers
// (ErrNotLeader elsewhere); removing a server that is not a member does
// nothing. A leader may remove itself: it steps down once the change
// commits.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	ctx, cancel, bound := n.bound(ctx)
	defer cancel()
	if err := n.ready(ctx, "remove server"); err != nil {
		return err
	}
	if !n.IsLeader() {
		return n.notLeader()
	}
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	member := false
	for _, s := range servers {
		member = member || s.ID == id
	}
	if !member {
		return nil
	}
	f := n.raft.RemoveServer(hraft.ServerID(id), 0, bound)
	if err := n.wait(ctx, f); err != nil {
		return n.fail("remove server "+id, "commit", err, bound)
	}
	n.log.Info("raft: removed server", "node_id", id)
	return nil
}

// Servers returns the latest Raft configuration known to this node, which
// may not be committed yet.
func (n *Node) Servers() ([]Server, error) {
	if n.isShutdown() {
		return nil, fmt.Errorf("%w (during servers)", ErrShutdown)
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, n.fail("servers", "read", err, 0)
	}
	cs := f.Configuration().Servers
	servers := make([]Server, len(cs))
	for i, s := range cs {
		servers[i] = Server{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == hraft.Voter}
	}
	return servers, nil
}

// Barrier waits until every entry committed before it has been applied to
// the StateMachine: a new leader calls it before it reads the state. Only
// the leader can call it (ErrNotLeader elsewhere).
func (n *Node) Barrier(ctx context.Context) error {
	ctx, cancel, bound := n.bound(ctx)
	defer cancel()
	if err := n.ready(ctx, "barrier"); err != nil {
		return err
	}
	f := n.raft.Barrier(bound)
	if err := n.wait(ctx, f); err != nil {
		return n.fail("barrier", "commit", err, bound)
	}
	return nil
}

// VerifyLeader checks with a majority that this node is still the leader,
// so that what it reads from the StateMachine is not stale.
func (n *Node) VerifyLeader(ctx context.Context) error {
	ctx, cancel, bound := n.bound(ctx)
	defer cancel()
	if err := n.ready(ctx, "verify leader"); err != nil {
		return err
	}
	f := n.raft.VerifyLeader()
	if err := n.wait(ctx, f); err != nil {
		return n.fail("verify leader", "confirm its leadership", err, bound)
	}
	return nil
}

// LastContact returns when this node last heard from a leader; it is
// meaningful on followers.
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// Stats returns hashicorp/raft's statistics (state, term, last_log_index,
// commit_index, applied_index, last_snapshot_index, latest_configuration,
// last_contact, num_peers and more), for people and debugging.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// SetTLS replaces the TLS configuration for Raft connections made from now
// on, for a renewed certificate or a rotated trust bundle; connections
// already made are kept. It checks cfg as Config.Validate checks
// Config.TLS.
func (n *Node) SetTLS(cfg *tls.Config) error {
	if err := validateTLS(cfg); err != nil {
		return err
	}
	n.stream.setTLS(cfg)
	return nil
}

// Shutdown stops Raft, closes the transport, every Raft connection and the
// listener, and closes the stores. When it returns, no goroutine of the
// Node is left, except that an Apply still waiting on a dropped entry may
// be abandoned. It may be called more than once and from any goroutine;
// every call returns once the first is done, with its result.
func (n *Node) Shutdown() error {
	n.shutdownOnce.Do(func() {
		close(n.done)
		var errs []error
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft: shut down raft: %w", err))
		}
		// hashicorp/raft closes the transport, which closes the stream
		// layer; close both again in case something else had stopped Raft.
		if err := n.trans.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raft: close transport: %w", err))
		}
		if err := n.stream.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raft: close listener: %w", err))
		}
		close(n.stopFwd)
		<-n.fwdDone
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raft: close %s: %w", dbFile, err))
		}
		if err := n.applied.close(); err != nil {
			errs = append(errs, fmt.Errorf("raft: close %s: %w", appliedFile, err))
		}
		n.shutdownErr = errors.Join(errs...)
		n.log.Info("raft: shut down", "node_id", n.id)
	})
	return n.shutdownErr
}

func (n *Node) isShutdown() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// bound returns ctx bounded by ApplyTimeout if it has no deadline, its
// cancel function, and the time left.
func (n *Node) bound(ctx context.Context) (context.Context, context.CancelFunc, time.Duration) {
	if d, ok := ctx.Deadline(); ok {
		ctx, cancel := context.WithCancel(ctx)
		return ctx, cancel, time.Until(d)
	}
	ctx, cancel := context.WithTimeout(ctx, n.applyTimeout)
	return ctx, cancel, n.applyTimeout
}

// ready returns why the call op must not start: the node is shut down, or
// ctx is already done (which says nothing about the quorum).
func (n *Node) ready(ctx context.Context, op string) error {
	if n.isShutdown() {
		return fmt.Errorf("%w (during %s)", ErrShutdown, op)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("raft: %s not started: %w", op, err)
	}
	return nil
}

// wait waits for f, for ctx to be done, or for Shutdown, whichever comes
// first. hashicorp/raft's futures cannot be abandoned, so f is waited on by
// a goroutine that ends when Raft answers; Raft answers every future of a
// leader that steps down or shuts down.
func (n *Node) wait(ctx context.Context, f hraft.Future) error {
	errc := make(chan error, 1)
	go func() { errc <- f.Error() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	case <-n.done:
	}
	select {
	case err := <-errc: // an answer that came at the same time wins
		return err
	default:
	}
	if n.isShutdown() {
		return ErrShutdown
	}
	return ctx.Err()
}

// fail turns an error from hashicorp/raft or from waiting on it into one of
// this package's: ErrNotLeader (as *NotLeaderError), ErrDiskFull,
// ErrNoQuorum or ErrShutdown where they apply. A failure on a node whose
// disk is full is put down to the disk, not the quorum: the leader steps
// down when it cannot write its log, and its callers should hear why. op
// names the call; verb says what the leader could not do in time; bound is
// the time the call had.
func (n *Node) fail(op, verb string, err error, bound time.Duration) error {
	switch {
	case errors.Is(err, hraft.ErrNotLeader), errors.Is(err, hraft.ErrLeadershipTransferInProgress):
		return n.notLeader()
	case errors.Is(err, hraft.ErrRaftShutdown), errors.Is(err, ErrShutdown):
		return fmt.Errorf("%w (during %s)", ErrShutdown, op)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("raft: %s abandoned (a change may still commit): %w", op, err)
	}
	if full := n.disk.get(); full != nil {
		return fmt.Errorf("raft: %s: %w (%w)", op, full, err)
	}
	switch {
	case errors.Is(err, hraft.ErrLeadershipLost):
		return fmt.Errorf("%w: %s: leadership was lost before the change committed (it may still commit under the next leader); check that %s up and reachable: %w",
			ErrNoQuorum, op, n.majority(), err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, hraft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %s: the leader could not %s within %s; check that %s up and reachable: %w",
			ErrNoQuorum, op, verb, bound.Round(time.Millisecond), n.majority(), err)
	}
	return fmt.Errorf("raft: %s: %w", op, err)
}

// majority says how many managers make a quorum, for error messages: "at
// least 2 of the 3 managers are".
func (n *Node) majority() string {
	voters := 0
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == hraft.Voter {
				voters++
			}
		}
	}
	switch voters {
	case 0:
		return "a majority of the managers are"
	case 1:
		return "the only manager is"
	}
	return fmt.Sprintf("at least %d of the %d managers are", voters/2+1, voters)
}

// notLeader returns a *NotLeaderError naming the leader this node knows of.
func (n *Node) notLeader() error {
	id, addr := n.Leader()
	return &NotLeaderError{LeaderID: id, LeaderAddr: addr}
}
