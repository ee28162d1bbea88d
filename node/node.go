// Package node owns a node's life. When the data directory holds no node
// yet it creates the cluster (init) or joins one; then it runs the daemon
// the node's role calls for — a manager or a worker — and switches between
// them when the cluster promotes or demotes the node, until its context
// ends. It alone opens the control socket and records the node's role in
// node.json, and it stops what it started in order: the socket's server,
// then the daemon, which stops its own goroutines before it returns.
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/audit"
	"github.com/quorumca/quorumca/internal/wait"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/worker"
)

// SocketFile is the control socket's name under the data directory.
const SocketFile = agent.SocketFile

// Config configures a node.
type Config struct {
	// DataDir holds the node: certificates/, node.json, and raft/ on a
	// manager.
	DataDir string
	// SocketPath is the control socket; default <DataDir>/quorumca.sock.
	SocketPath string
	// Logger receives the logs; default discard. Out, if set, receives the
	// few lines meant for people (the cluster was created, the node
	// joined).
	Logger *slog.Logger
	Out    io.Writer

	// Addresses, each "" to take what node.json recorded at init or join,
	// else the default (a flag given on the command line overrides the
	// record).
	ListenAddr, AdvertiseAddr       string
	RaftAddr, RaftAdvertiseAddr     string
	GossipAddr, GossipAdvertiseAddr string

	// Manager holds the manager's settings other than the data directory,
	// the addresses and the logger (timings, --publish-tokens, the
	// external CA client's bounds). Its Rand, Now, HeartbeatPeriod and
	// gossip settings serve the worker too.
	Manager manager.Config

	// UnlockKeyFile, when the node's keys are sealed under the cluster's
	// unlock key (autolock), is a file whose first line holds the key: a
	// locked manager reads it, and waits for it, unattended.
	UnlockKeyFile string

	// What to do when DataDir holds no node yet: create a cluster with
	// Init, or join one with Join. With neither, a data directory without a
	// node is an error. When it holds one, Join.Addr is taken as one of
	// ManagerAddrs.
	Init *manager.InitOptions
	Join *Join

	// ManagerAddrs are manager API addresses the node tries first, before
	// those node.json records (a manager restored from a backup on a new
	// address): recorded in node.json at start.
	ManagerAddrs []string

	// Hooks run after every change of the node's certificate files
	// (--on-renew, --reload-signal).
	Hooks agent.HookConfig
	// CertGroup, a group's name or ID, may read the certificate files
	// (node.crt, root-ca.crt, crl.pem, and a worker's node.key: a
	// manager's holds its Raft data key and stays 0600). Empty: the
	// owner alone reads node.key, and root alone can reach the files.
	CertGroup string
	// MetricsAddr, when set, is where the node serves Prometheus metrics
	// (/metrics) and its probes (/healthz, /readyz): --metrics-addr.
	MetricsAddr string

	// AuditLog, when set, is the file where the node, while it runs a
	// manager, appends the manager's audit log (--audit-log; see
	// manager/audit.go). Start opens it (mode 0600) or fails; a worker
	// keeps it open for the day it is promoted.
	AuditLog string
}

// Join says how to join a cluster.
type Join struct {
	// Token is the join token; or TokenFile holds it (its first line).
	Token, TokenFile string
	// Addr is the API address of the manager to join through.
	Addr string
	// Retry makes the node ask again until the join succeeds (and wait
	// for TokenFile to appear): for nodes that start unattended.
	Retry bool
}

// Validate checks the configuration; its messages name the field.
func (c Config) Validate() error {
	switch {
	case c.DataDir == "":
		return errors.New("node: DataDir (--data-dir) is empty")
	case c.Init != nil && c.Join != nil:
		return errors.New("node: Init (--init) and Join (--join-token-file) exclude each other: one node creates the cluster, the others join it")
	case c.Join != nil && c.Join.Addr == "":
		return errors.New("node: Join.Addr (the manager to join through) is empty")
	case c.Join != nil && (c.Join.Token == "") == (c.Join.TokenFile == ""):
		return errors.New("node: give Join.Token or Join.TokenFile, not both or neither")
	}
	return c.Hooks.Validate()
}

// lookupGroup returns the ID of a group given by name or number.
func lookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("node: --cert-group %s: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

// daemon is what a role runs: a manager or a worker.
type daemon interface {
	// Run runs the daemon until ctx ends (nil) or its role changes
	// (manager.ErrRoleChanged, worker.ErrPromoted); everything it started
	// has stopped when it returns.
	Run(ctx context.Context) error
	// Local returns the gRPC server of the control socket for this role.
	Local() *grpc.Server
	// Close releases what the daemon holds when Run will not run.
	Close() error
}

// Node is a running node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	store  *agent.NodeStore
	cancel context.CancelFunc
	done   chan struct{}

	// hooks run on every change of the certificate files; nil for none.
	hooks *agent.Hooks
	// metricsAddr is where the metrics server listens ("" for none);
	// metricsDone is closed once it has stopped.
	metricsAddr string
	metricsDone chan struct{}
	// certGID is CertGroup's ID, -1 for none.
	certGID int

	mu  sync.Mutex // guards cur, err and unlockKey
	cur daemon
	err error
	// unlockKey is the key the node was unlocked with, in memory only.
	unlockKey string
}

func (n *Node) setUnlockKey(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.unlockKey = key
}

func (n *Node) getUnlockKey() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.unlockKey
}

// Locked reports whether the node waits for its unlock key.
func (n *Node) Locked() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.cur.(*locked)
	return ok
}

// Run runs the node of cfg until ctx ends, as Start and then Done do; it
// returns why the node stopped by itself, or nil.
func Run(ctx context.Context, cfg Config) error {
	n, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	<-n.Done()
	return n.Err()
}

// Start bootstraps the node if its data directory holds none yet (init
// or join), starts the daemon of its role, and returns once that daemon
// serves. The node then runs until ctx ends or Stop is called.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(cfg.DataDir, SocketFile)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	cfg.Manager.Logger = cfg.Logger
	n := &Node{cfg: cfg, log: cfg.Logger, done: make(chan struct{}), certGID: -1}
	if cfg.CertGroup != "" {
		gid, err := lookupGroup(cfg.CertGroup)
		if err != nil {
			return nil, err
		}
		n.certGID = gid
	}
	if cfg.Hooks.Enabled() {
		n.hooks = agent.NewHooks(cfg.Hooks, n.credentials, n.log)
	}
	if err := agent.CheckDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if cfg.AuditLog != "" {
		log, err := audit.Open(cfg.AuditLog)
		if err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		n.cfg.Manager.Audit = log
	}
	// The metrics address is taken first: a port in use fails the start
	// before anything is written.
	var metricsLn net.Listener
	if cfg.MetricsAddr != "" {
		var err error
		if metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			n.cfg.Manager.Audit.Close()
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
	}
	first, err := n.bootstrap(ctx)
	if err != nil {
		n.cfg.Manager.Audit.Close()
		if metricsLn != nil {
			metricsLn.Close()
		}
		return nil, err
	}
	ctx, n.cancel = context.WithCancel(ctx)
	if metricsLn != nil {
		ln := metricsLn
		n.metricsAddr = ln.Addr().String()
		n.metricsDone = make(chan struct{})
		go func() {
			defer close(n.metricsDone)
			n.serveMetrics(ctx, ln)
		}()
	}
	started := make(chan struct{})
	go n.run(ctx, first, started)
	select {
	case <-started:
	case <-n.done:
	}
	if err := n.Err(); err != nil {
		n.cancel()
		return nil, err
	}
	return n, nil
}

// Stop ends the node and waits until everything it started has stopped;
// it returns Err.
func (n *Node) Stop() error {
	n.cancel()
	<-n.done
	if n.metricsDone != nil {
		<-n.metricsDone
	}
	return n.Err()
}

// Done is closed when the node has stopped.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err returns why the node stopped by itself (nil when its context ended
// or Stop was called).
func (n *Node) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// Manager returns the node's manager while it runs one, else nil.
func (n *Node) Manager() *manager.Manager {
	n.mu.Lock()
	defer n.mu.Unlock()
	m, _ := n.cur.(*manager.Manager)
	return m
}

// Worker returns the node's worker while it runs one, else nil.
func (n *Node) Worker() *worker.Worker {
	n.mu.Lock()
	defer n.mu.Unlock()
	w, _ := n.cur.(*worker.Worker)
	return w
}

// credentials returns the credentials of the daemon the node runs, or nil
// (locked, or between daemons).
func (n *Node) credentials() *agent.Credentials {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch d := n.cur.(type) {
	case *manager.Manager:
		return d.Credentials()
	case *worker.Worker:
		return d.Credentials()
	}
	return nil
}

// Hooks returns the node's renewal hooks, nil without any.
func (n *Node) Hooks() *agent.Hooks { return n.hooks }

// Store returns the node's node.json.
func (n *Node) Store() *agent.NodeStore { return n.store }

// MetricsAddr returns where the node serves its metrics, "" for nowhere.
func (n *Node) MetricsAddr() string { return n.metricsAddr }

// SocketPath returns the control socket's path.
func (n *Node) SocketPath() string { return n.cfg.SocketPath }

func (n *Node) set(d daemon, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cur = d
	if err != nil {
		n.err = err
	}
}

// run serves the node's daemons one after the other, switching role when
// the cluster asks, until ctx ends or a daemon fails.
func (n *Node) run(ctx context.Context, d daemon, started chan struct{}) {
	defer close(n.done)
	// After the daemon stopped: it writes no line any more.
	defer n.cfg.Manager.Audit.Close()
	if n.hooks != nil {
		hctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { n.hooks.Run(hctx) })
		defer func() { stop(); wg.Wait() }()
	}
	for {
		begun := time.Now()
		err := n.serve(ctx, d, started)
		if started != nil && isClosed(started) {
			// Start has returned; the daemons after this one start on
			// their own. A daemon that ended before it was seen ready
			// (a locked manager that unlocked at once: serve's select
			// may take its end first) leaves started to the next one,
			// or Start would wait for ever.
			started = nil
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errUnlocked):
			if d, err = n.open(ctx); err != nil {
				n.set(nil, err)
				return
			}
			continue
		case errors.Is(err, worker.ErrLeft):
			n.set(nil, n.forget())
			return
		case !errors.Is(err, manager.ErrRoleChanged) && !errors.Is(err, worker.ErrPromoted):
			n.set(nil, err)
			return
		}
		if err := n.switchRole(); err != nil {
			n.set(nil, err)
			return
		}
		// Never spin: a role switch takes a second at least.
		if !wait.Sleep(ctx, time.Second-time.Since(begun)) {
			return
		}
		if d, err = n.open(ctx); err != nil {
			n.set(nil, err)
			return
		}
	}
}

// forget deletes what made the data directory a node of the cluster, its
// credentials and node.json, once the node left it: the directory may
// then join again.
func (n *Node) forget() error {
	n.cfg.Logger.Info("left the cluster: deleting the node's credentials and node.json", "data_dir", n.cfg.DataDir)
	if err := os.RemoveAll(agent.CertDir(n.cfg.DataDir)); err != nil {
		return fmt.Errorf("the node left the cluster, but its credentials remain: %w", err)
	}
	if err := os.Remove(filepath.Join(n.cfg.DataDir, agent.NodeFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("the node left the cluster, but its node.json remains: %w", err)
	}
	return nil
}

// serve runs d with the control socket serving it, and closes started
// once d serves.
func (n *Node) serve(ctx context.Context, d daemon, started chan struct{}) error {
	ln, err := agent.ListenControl(n.cfg.SocketPath)
	if err != nil {
		d.Close()
		return err
	}
	local := d.Local()
	var wg sync.WaitGroup
	wg.Go(func() { local.Serve(ln) })
	defer func() {
		manager.StopServer(local)
		wg.Wait()
		n.set(nil, nil)
	}()
	n.set(d, nil)
	if creds := n.credentials(); creds != nil {
		if err := n.followFiles(creds, d); err != nil {
			d.Close()
			return err
		}
	}
	var ready <-chan struct{} = closed
	if m, ok := d.(*manager.Manager); ok {
		ready = m.Ready()
	}
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }() // always waited for below
	select {
	case <-ready:
		if started != nil {
			close(started)
		}
		return <-runErr
	case err := <-runErr:
		return err
	}
}

// followFiles applies --cert-group to the daemon's certificate files and
// runs the hooks on every change of them.
func (n *Node) followFiles(creds *agent.Credentials, d daemon) error {
	if n.certGID >= 0 {
		_, isWorker := d.(*worker.Worker)
		if err := creds.SetGroup(n.certGID, isWorker); err != nil {
			return err
		}
	}
	if n.hooks != nil {
		creds.OnUpdate(n.hooks.Changed)
	}
	return nil
}

// switchRole records the role the node's certificate names now, after its
// daemon stopped for a role change. A demoted manager's Raft state goes:
// should it be promoted again, it rejoins the voters afresh.
func (n *Node) switchRole() error {
	var keks []ca.KEK
	if kek, err := ca.ParseUnlockKey(n.getUnlockKey()); err == nil {
		keks = append(keks, kek)
	}
	creds, err := agent.LoadCredentials(n.cfg.DataDir, keks...)
	if err != nil {
		return err
	}
	role := creds.Identity().Role
	if err := n.store.Update(func(nc *agent.NodeConfig) { nc.Role = role }); err != nil {
		return err
	}
	if role != ca.RoleManager {
		if err := os.RemoveAll(filepath.Join(n.cfg.DataDir, manager.RaftDir)); err != nil {
			return fmt.Errorf("node: remove the Raft state of a demoted manager: %w", err)
		}
	}
	n.log.Info("role changed", "role", role)
	return nil
}

// open returns the daemon of the node stored in the data directory: a
// locked one while its keys are sealed under an unlock key it was not
// given.
func (n *Node) open(ctx context.Context) (daemon, error) {
	var keks []ca.KEK
	if key := n.getUnlockKey(); key != "" {
		kek, err := ca.ParseUnlockKey(key)
		if err != nil {
			return nil, err
		}
		keks = append(keks, kek)
	}
	creds, err := agent.LoadCredentials(n.cfg.DataDir, keks...)
	var le *agent.LockedError
	if errors.As(err, &le) {
		return newLocked(n, le), nil
	}
	if err != nil {
		return nil, err
	}
	nc := n.store.Get()
	// The certificate says what the node is: it wins over node.json, which
	// a crash may have left behind a renewal into a new role.
	role := creds.Identity().Role
	gossip, gossipAdv := first(n.cfg.GossipAddr, nc.GossipAddr), first(n.cfg.GossipAdvertiseAddr, nc.GossipAdvertiseAddr)
	if role != nc.Role || gossip != nc.GossipAddr || gossipAdv != nc.GossipAdvertiseAddr {
		if err := n.store.Update(func(c *agent.NodeConfig) {
			c.Role, c.GossipAddr, c.GossipAdvertiseAddr = role, gossip, gossipAdv
		}); err != nil {
			return nil, err
		}
		nc = n.store.Get()
	}
	if role == ca.RoleManager {
		m, err := manager.Open(ctx, n.managerConfig(nc), n.store)
		if err == nil {
			// Forced once: a later manager of this node (after a demotion
			// and a promotion) joins the cluster as any other.
			n.cfg.Manager.ForceNewCluster = false
		}
		return m, err
	}
	if n.cfg.Manager.ForceNewCluster {
		return nil, fmt.Errorf("node: --force-new-cluster: %s holds a worker; run it on a manager that survived the loss of the others", n.cfg.DataDir)
	}
	if nk := creds.NodeKey(); nk.KEK != nil || len(nk.DataKey) > 0 {
		// A demotion stopped before the node.key of a worker was written.
		if err := creds.SetNodeKey(func(k *agent.NodeKey) { *k = agent.NodeKey{Key: k.Key} }); err != nil {
			return nil, err
		}
	}
	mc := n.cfg.Manager
	return worker.New(worker.Config{
		Store: n.store, Credentials: creds, Logger: n.log,
		HeartbeatPeriod: mc.HeartbeatPeriod, Rand: mc.Rand, Now: mc.Now,
		GossipTiming: mc.GossipTiming, GossipKeyGrace: mc.GossipKeyGrace,
		Reloads: n.reloads(),
	})
}

// managerConfig is the manager's configuration for a node that recorded
// nc: an address the configuration gives overrides the recorded one,
// which overrides the default.
func (n *Node) managerConfig(nc agent.NodeConfig) manager.Config {
	mc := n.cfg.Manager
	mc.DataDir = n.cfg.DataDir
	mc.UnlockKey = n.getUnlockKey()
	mc.ListenAddr = first(n.cfg.ListenAddr, nc.ListenAddr, manager.DefaultListenAddr)
	mc.RaftListenAddr = first(n.cfg.RaftAddr, nc.RaftAddr, manager.DefaultRaftAddr)
	mc.AdvertiseAddr = first(n.cfg.AdvertiseAddr, recordedFor(mc.ListenAddr, nc.AdvertiseAddr))
	mc.RaftAdvertiseAddr = first(n.cfg.RaftAdvertiseAddr, recordedFor(mc.RaftListenAddr, nc.RaftAdvertiseAddr))
	mc.GossipAddr = first(n.cfg.GossipAddr, nc.GossipAddr, agent.DefaultGossipAddr)
	mc.GossipAdvertiseAddr = first(n.cfg.GossipAdvertiseAddr, nc.GossipAdvertiseAddr)
	mc.Reloads = n.reloads()
	return mc
}

// reloads are the node's hooks as its renewer asks them, nil for none (not
// a nil *Hooks in the interface).
func (n *Node) reloads() agent.Reloads {
	if n.hooks == nil {
		return nil
	}
	return n.hooks
}

// isClosed reports whether c is closed.
func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// closed is a channel that is closed: a worker serves as soon as it runs.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()
