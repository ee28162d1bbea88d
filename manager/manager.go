package manager

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/raft"
)

// SocketFile is the control socket's name under the data directory.
const SocketFile = agent.SocketFile

// RaftDir is the Raft directory's name under the data directory.
const RaftDir = "raft"

// Manager is a running manager daemon.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	node    agent.NodeConfig
	creds   *agent.Credentials
	machine *fsm.Machine
	raft    *raft.Node

	apiLn, raftLn, sockLn net.Listener
	apiAddr, raftAddr     string
	server, local         *grpc.Server

	signers signerCache
	roots   atomic.Pointer[parsedBundle] // this manager's bundle, parsed
	extMu   sync.Mutex                   // guards ext
	ext     *externalCA                  // client of the external CAs, when the cluster uses them
	peers   *peerConns
	// obs is what the leader heard in heartbeats; term is this manager's
	// leadership, nil while it does not lead.
	obs     observations
	term    leadership
	renewer *agent.Renewer
	// anonymous holds a token per call without a certificate in progress.
	anonymous chan struct{}
	// gossip is set once serve starts it; RPCs read it concurrently.
	gossip       atomic.Pointer[agent.Gossip]
	rotation     rotationTracker
	rotationKick chan struct{}

	// nodeMu serialises changes to node and node.json.
	nodeMu sync.Mutex

	// cancel stops the background loops started by serve.
	cancel   context.CancelFunc
	loops    sync.WaitGroup
	reasonMu sync.Mutex // guards reason
	reason   error

	stopOnce sync.Once
	stopErr  error
	done     chan struct{}
}

// InitOptions are the choices made once, when a cluster is created.
type InitOptions struct {
	// CertExpiry is the validity of node certificates (default
	// ca.DefaultCertExpiry, minimum ca.MinCertExpiry).
	CertExpiry time.Duration
	// CA is an imported CA (--ca-cert/--ca-key); nil generates a root.
	CA *ca.Material
	// External, when set, makes the cluster use these external CAs
	// (--external-ca) and hold no key. ExternalCert is then the external
	// CA's certificate and chain (--ca-cert), or nil to ask the CA for it.
	External     []fsm.ExternalCA
	ExternalCert []byte
}

// listeners opens the API and Raft listeners, so that nothing is written to
// the data directory when an address is taken.
func (m *Manager) listen() error {
	var err error
	if m.apiLn, err = net.Listen("tcp", m.cfg.ListenAddr); err != nil {
		return fmt.Errorf("manager: listen on --listen-addr %s: %w", m.cfg.ListenAddr, err)
	}
	if m.raftLn, err = net.Listen("tcp", m.cfg.RaftListenAddr); err != nil {
		m.apiLn.Close()
		m.apiLn = nil
		return fmt.Errorf("manager: listen on --raft-addr %s: %w", m.cfg.RaftListenAddr, err)
	}
	m.apiAddr = advertise(m.cfg.AdvertiseAddr, m.apiLn)
	m.raftAddr = advertise(m.cfg.RaftAdvertiseAddr, m.raftLn)
	return nil
}

func newManager(cfg Config) (*Manager, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(cfg.DataDir, SocketFile)
	}
	m := &Manager{
		cfg:          cfg,
		log:          cfg.Logger,
		machine:      fsm.NewMachine(),
		done:         make(chan struct{}),
		rotationKick: make(chan struct{}, 1),
		anonymous:    make(chan struct{}, maxAnonymousCalls),
	}
	return m, nil
}

// Init creates a new cluster in cfg.DataDir (DESIGN.md flow 1): cluster ID,
// root CA, both join secrets, a one-voter Raft, and this manager's own
// certificate; then serves. A data directory that already holds a cluster
// is refused untouched; on any failure, what Init created is removed.
func Init(ctx context.Context, cfg Config, opts InitOptions) (_ *Manager, err error) {
	m, err := newManager(cfg)
	if err != nil {
		return nil, err
	}
	cfg = m.cfg
	if err := agent.CheckFresh(cfg.DataDir); err != nil {
		return nil, err
	}
	if opts.CertExpiry == 0 {
		opts.CertExpiry = ca.DefaultCertExpiry
	}
	if opts.CertExpiry < ca.MinCertExpiry {
		return nil, fmt.Errorf("manager: --cert-expiry %s is under the minimum of %s", opts.CertExpiry, ca.MinCertExpiry)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	if err := m.listen(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Stop()
			// CheckFresh found none of these: they are all ours to remove.
			os.RemoveAll(agent.CertDir(cfg.DataDir))
			os.RemoveAll(filepath.Join(cfg.DataDir, RaftDir))
			os.Remove(filepath.Join(cfg.DataDir, agent.NodeFile))
		}
	}()

	now := cfg.Now()
	clusterID, err := ca.NewID(cfg.Rand)
	if err != nil {
		return nil, err
	}
	nodeID, err := ca.NewID(cfg.Rand)
	if err != nil {
		return nil, err
	}
	var material ca.Material
	switch {
	case len(opts.External) > 0:
		if opts.CA != nil {
			return nil, fmt.Errorf("manager: an external CA holds its key: give --ca-cert without --ca-key")
		}
		// The first manager's node ID names the trial certificate.
		m.node.NodeID = nodeID
		if material, err = m.externalMaterial(ctx, opts.External, opts.ExternalCert, clusterID); err != nil {
			return nil, err
		}
	case opts.CA != nil:
		material = *opts.CA
	default:
		if material, err = ca.GenerateRoot(cfg.Rand, now, clusterID); err != nil {
			return nil, err
		}
	}
	signing := &fsm.State{CA: material, External: opts.External}
	workerSecret, err := ca.NewSecret(cfg.Rand)
	if err != nil {
		return nil, err
	}
	managerSecret, err := ca.NewSecret(cfg.Rand)
	if err != nil {
		return nil, err
	}
	gossipKey := make([]byte, fsm.GossipKeySize)
	if _, err := io.ReadFull(cfg.Rand, gossipKey); err != nil {
		return nil, fmt.Errorf("manager: gossip key: %w", err)
	}
	key, err := ca.GenerateKey(cfg.Rand)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(cfg.Rand, key, nodeID)
	if err != nil {
		return nil, err
	}
	id := ca.Identity{NodeID: nodeID, Role: ca.RoleManager, ClusterID: clusterID}
	issued, status, err := m.signNode(ctx, signing, csr, key.Public(), id, opts.CertExpiry)
	if err != nil {
		return nil, err
	}
	if m.creds, err = agent.NewCredentials(cfg.DataDir, keyPEM, issued.PEM, material.Bundle); err != nil {
		return nil, err
	}
	m.node = agent.NodeConfig{
		NodeID: nodeID, ClusterID: clusterID, Role: ca.RoleManager,
		Managers:   []string{m.apiAddr},
		ListenAddr: bound(cfg.ListenAddr, m.apiLn), AdvertiseAddr: m.apiAddr,
		RaftAddr: bound(cfg.RaftListenAddr, m.raftLn), RaftAdvertiseAddr: m.raftAddr,
		GossipAddr: cfg.GossipAddr, GossipAdvertiseAddr: cfg.GossipAdvertiseAddr,
	}
	if err := m.openRaft(true); err != nil {
		return nil, err
	}
	if err := m.waitLeader(ctx); err != nil {
		return nil, err
	}
	self := fsm.Node{
		ID: nodeID, Role: ca.RoleManager, Addr: m.apiAddr, RaftAddr: m.raftAddr,
		Cert: certInfo(issued, status),
	}
	if _, err := m.propose(ctx, fsm.Command{At: now, Init: &fsm.Init{
		ClusterID: clusterID, CertExpiry: opts.CertExpiry, CA: material, External: opts.External,
		WorkerSecret: workerSecret, ManagerSecret: managerSecret, GossipKey: gossipKey, Manager: self,
	}}); err != nil {
		return nil, err
	}
	if err := agent.SaveNodeConfig(cfg.DataDir, m.node); err != nil {
		return nil, err
	}
	if err := m.serve(); err != nil {
		return nil, err
	}
	m.log.Info("cluster initialized", "cluster_id", clusterID, "node_id", nodeID,
		"api", m.apiAddr, "raft", m.raftAddr, "root", fingerprint(material.Bundle))
	return m, nil
}

// Start restarts a manager from its data directory: the state comes back
// from the Raft log and snapshots; nothing is re-initialized.
func Start(ctx context.Context, cfg Config) (_ *Manager, err error) {
	m, err := newManager(cfg)
	if err != nil {
		return nil, err
	}
	if m.node, err = agent.LoadNodeConfig(m.cfg.DataDir); err != nil {
		return nil, err
	}
	if m.node.Role != ca.RoleManager {
		return nil, fmt.Errorf("manager: %s holds a %s; start it as a worker", m.cfg.DataDir, m.node.Role.Short())
	}
	if m.node.GossipAddr == "" {
		m.node.GossipAddr, m.node.GossipAdvertiseAddr = m.cfg.GossipAddr, m.cfg.GossipAdvertiseAddr
	}
	if m.creds, err = agent.LoadCredentials(m.cfg.DataDir); err != nil {
		return nil, err
	}
	if err := m.listen(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Stop()
		}
	}()
	// A worker promoted to manager has no Raft state yet: it must ask to
	// become a voter once it listens.
	fresh := !dirHasFiles(filepath.Join(m.cfg.DataDir, RaftDir))
	if err := m.openRaft(false); err != nil {
		return nil, err
	}
	if err := m.serve(); err != nil {
		return nil, err
	}
	if fresh {
		if err := m.becomeVoter(ctx, m.node.Managers); err != nil {
			return nil, err
		}
	}
	m.log.Info("manager started", "node_id", m.node.NodeID, "cluster_id", m.node.ClusterID, "api", m.apiAddr, "raft", m.raftAddr)
	return m, nil
}

// Join admits this node to a cluster with a token through the manager at
// remote. A manager token makes it a manager: it starts, and asks the
// leader to make it a Raft voter once its Raft transport listens; the
// *Manager is returned. A worker token makes it a worker: the started
// *agent.Worker is returned instead. The API and Raft listeners are opened
// first, so a manager can advertise them; a worker does not need them, so a
// port already taken only matters for a manager token.
func Join(ctx context.Context, cfg Config, token, remote string) (_ *Manager, _ *agent.Worker, err error) {
	m, err := newManager(cfg)
	if err != nil {
		return nil, nil, err
	}
	cfg = m.cfg
	if err := agent.CheckFresh(cfg.DataDir); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("manager: %w", err)
	}
	listenErr := m.listen()
	jc := agent.JoinConfig{
		DataDir: cfg.DataDir, Token: token, Remote: remote, Rand: cfg.Rand, Logger: cfg.Logger,
	}
	jc.Node = agent.NodeConfig{GossipAddr: cfg.GossipAddr, GossipAdvertiseAddr: cfg.GossipAdvertiseAddr}
	if listenErr == nil {
		jc.Addr, jc.RaftAddr = m.apiAddr, m.raftAddr
		jc.Node.ListenAddr, jc.Node.AdvertiseAddr = bound(cfg.ListenAddr, m.apiLn), m.apiAddr
		jc.Node.RaftAddr, jc.Node.RaftAdvertiseAddr = bound(cfg.RaftListenAddr, m.raftLn), m.raftAddr
	}
	res, err := agent.Join(ctx, jc)
	if err != nil {
		m.closeListeners()
		if listenErr != nil {
			return nil, nil, fmt.Errorf("%w (a manager token also needs: %v)", err, listenErr)
		}
		return nil, nil, err
	}
	if res.Node.Role != ca.RoleManager {
		m.closeListeners()
		w, err := agent.StartWorker(m.workerConfig())
		return nil, w, err
	}
	m.creds, m.node = res.Credentials, res.Node
	defer func() {
		if err != nil {
			m.Stop()
		}
	}()
	if err := m.openRaft(false); err != nil {
		return nil, nil, err
	}
	if err := m.serve(); err != nil {
		return nil, nil, err
	}
	if err := m.becomeVoter(ctx, append([]string{remote}, res.Node.Managers...)); err != nil {
		return nil, nil, err
	}
	m.log.Info("manager joined", "node_id", m.node.NodeID, "cluster_id", m.node.ClusterID, "api", m.apiAddr, "raft", m.raftAddr)
	return m, nil, nil
}

// becomeVoter asks the leader, found through any of the given managers,
// to add this manager as a Raft voter, retrying while a leader is being
// elected. The leader must see this manager's own certificate: other
// managers redirect the call to it.
func (m *Manager) becomeVoter(ctx context.Context, remotes []string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req := &api.AddVoterRequest{RaftAddr: m.raftAddr, Addr: m.apiAddr}
	var last error
	for attempt := 0; ; attempt++ {
		for _, r := range remotes {
			if r == m.apiAddr {
				continue
			}
			err := m.addVoterVia(ctx, r, req)
			if err == nil {
				return nil
			}
			last = err
		}
		if !sleep(ctx, backoff(attempt)) {
			return fmt.Errorf("manager: could not become a Raft voter: %w", last)
		}
	}
}

// addVoterVia asks the manager at addr to add this one as a voter, and
// follows its redirect to the leader once.
func (m *Manager) addVoterVia(ctx context.Context, addr string, req *api.AddVoterRequest) error {
	for hop := 0; ; hop++ {
		conn, err := m.peers.get(addr)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = api.NewControlClient(conn).AddVoter(cctx, req)
		cancel()
		leader, redirected := api.LeaderRedirect(err)
		if !redirected || hop > 0 || leader == m.apiAddr {
			return err
		}
		addr = leader
	}
}

func (m *Manager) openRaft(bootstrap bool) error {
	rc := raft.DefaultConfig()
	rc.NodeID = m.node.NodeID
	rc.DataDir = filepath.Join(m.cfg.DataDir, RaftDir)
	rc.Listener = m.raftLn
	rc.AdvertiseAddr = m.raftAddr
	rc.TLS = m.raftTLS()
	rc.ClusterID = m.node.ClusterID
	rc.StateMachine = stateMachine{m.machine, m.log}
	rc.Logger = m.log.With("component", "raft")
	rc.Bootstrap = bootstrap
	rc.Authorize = m.checkRaftPeer
	if m.cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = m.cfg.HeartbeatTimeout
	}
	if m.cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = m.cfg.ElectionTimeout
	}
	if m.cfg.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = m.cfg.LeaderLeaseTimeout
	}
	rc.ApplyTimeout = m.cfg.ApplyTimeout
	if err := os.MkdirAll(rc.DataDir, 0o700); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	n, err := raft.Open(rc)
	if err != nil {
		return err
	}
	m.raft = n
	m.raftLn = nil // owned by raft now
	return nil
}

// raftTLS is the mutual-TLS configuration of the Raft transport: the
// current certificate both ways, peers verified against the bundle (the
// raft package checks they are managers of this cluster). The raft package
// wants RootCAs set; a new bundle reaches it through Node.SetTLS.
func (m *Manager) raftTLS() *tls.Config {
	cfg := m.creds.ServerTLS(tls.RequireAndVerifyClientCert)
	cfg.RootCAs = m.creds.Roots()
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return m.creds.Certificate(), nil
	}
	return cfg
}

// waitLeader waits until this node, the only voter after bootstrap, is
// the Raft leader.
func (m *Manager) waitLeader(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	id, err := m.raft.WaitLeader(ctx)
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if id != m.node.NodeID {
		return fmt.Errorf("manager: %s leads a cluster that was just bootstrapped by %s", id, m.node.NodeID)
	}
	return nil
}

func (m *Manager) serve() error {
	m.peers = newPeerConns(m.creds)
	m.server = grpc.NewServer(
		grpc.Creds(serverCreds(m.creds, m.checkHandshake)),
		grpc.ChainUnaryInterceptor(m.intercept(authz.Direct)),
		grpc.InTapHandle(m.tapAnonymous),
		grpc.MaxRecvMsgSize(maxRecvMsg),
		grpc.ConnectionTimeout(handshakeTimeout),
		// Fixed flow-control windows: a caller cannot make the manager
		// buffer more than this per connection before a call is checked.
		grpc.InitialWindowSize(64<<10),
		grpc.InitialConnWindowSize(256<<10),
	)
	m.local = grpc.NewServer(grpc.Creds(localCreds{}), grpc.ChainUnaryInterceptor(m.intercept(authz.Local)), grpc.MaxRecvMsgSize(maxRecvMsg))
	for _, s := range []*grpc.Server{m.server, m.local} {
		api.RegisterCAServer(s, caService{m: m})
		api.RegisterControlServer(s, controlService{m: m})
		api.RegisterInternalServer(s, internalService{m: m})
	}

	// listenUnix removes a stale socket, and nothing else.
	ln, err := listenUnix(m.cfg.SocketPath)
	if err != nil {
		return err
	}
	m.sockLn = ln
	go m.server.Serve(newQuietListener(m.apiLn, maxQuietConns))
	go m.local.Serve(m.sockLn)

	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.renewer = agent.NewRenewer(agent.RenewerConfig{
		Credentials:     m.creds,
		Managers:        append([]string{m.apiAddr}, m.node.Managers...),
		OnManagers:      m.saveManagers,
		OnRole:          m.roleChanged,
		Self:            m.apiAddr,
		HeartbeatPeriod: m.cfg.HeartbeatPeriod,
		Rand:            m.cfg.Rand,
		Now:             m.cfg.Now,
		Logger:          m.log.With("component", "renewer"),
	})
	m.creds.OnUpdate(func() {
		if m.raft != nil {
			m.raft.SetTLS(m.raftTLS())
		}
		if m.peers != nil {
			m.peers.renewed()
		}
	})
	m.gossip.Store(agent.StartGossip(agent.GossipConfig{
		BindAddr:      m.node.GossipAddr,
		AdvertiseAddr: m.node.GossipAdvertiseAddr,
		Credentials:   m.creds,
		Fetch:         m.renewer.Gossip,
		Accept:        m.acceptGossip,
		OnChange:      m.kickRotation,
		Timing:        m.cfg.GossipTiming,
		KeyGrace:      m.cfg.GossipKeyGrace,
		OnAddr:        m.saveGossipAddr,
		Logger:        m.log.With("component", "gossip"),
	}))
	m.loops.Add(3)
	go func() { defer m.loops.Done(); m.renewer.Run(ctx) }()
	go func() { defer m.loops.Done(); m.followLeadership(ctx) }()
	go func() { defer m.loops.Done(); m.followState(ctx) }()
	if dir := m.cfg.PublishTokens; dir != "" {
		m.loops.Add(1)
		go func() { defer m.loops.Done(); m.publishTokens(ctx, dir) }()
	}
	return nil
}

// workerConfig is the configuration a worker started in place of this
// manager runs with: the same data directory, socket, timings and
// randomness.
func (m *Manager) workerConfig() agent.WorkerConfig {
	return agent.WorkerConfig{
		DataDir: m.cfg.DataDir, SocketPath: m.cfg.SocketPath, Logger: m.cfg.Logger,
		HeartbeatPeriod: m.cfg.HeartbeatPeriod, Rand: m.cfg.Rand, Now: m.cfg.Now,
		GossipTiming: m.cfg.GossipTiming, GossipKeyGrace: m.cfg.GossipKeyGrace,
	}
}

func (m *Manager) saveGossipAddr(bind string) {
	if err := m.saveNode(func(n *agent.NodeConfig) { n.GossipAddr = bind }); err != nil {
		m.log.Warn("record gossip address", "err", err)
	}
}

// saveNode changes node.json under nodeMu, so that concurrent changes do
// not undo one another.
func (m *Manager) saveNode(change func(*agent.NodeConfig)) error {
	m.nodeMu.Lock()
	defer m.nodeMu.Unlock()
	change(&m.node)
	return agent.SaveNodeConfig(m.cfg.DataDir, m.node)
}

// ErrRoleChanged is the reason a manager stops by itself when it was
// demoted: the node must go on as a worker (`quorumca run` does).
var ErrRoleChanged = errors.New("manager: node role changed")

// roleChanged is called by the renewer once this node holds a certificate
// for a new role: record it and stop, so the daemon restarts as a worker.
func (m *Manager) roleChanged(role ca.Role) {
	if err := m.saveNode(func(n *agent.NodeConfig) { n.Role = role }); err != nil {
		m.log.Error("record new role", "err", err)
	}
	m.log.Info("demoted: stopping the manager side to run as a worker", "role", role)
	m.reasonMu.Lock()
	m.reason = ErrRoleChanged
	m.reasonMu.Unlock()
	go func() {
		m.Stop()
		// Raft state of a former manager must not come back if it is
		// promoted again: it rejoins the voters afresh.
		os.RemoveAll(filepath.Join(m.cfg.DataDir, RaftDir))
	}()
}

// Reason returns why the manager stopped by itself (ErrRoleChanged), or
// nil.
func (m *Manager) Reason() error {
	m.reasonMu.Lock()
	defer m.reasonMu.Unlock()
	return m.reason
}

// Gossip returns this manager's gossip, or nil before it started.
func (m *Manager) Gossip() *agent.Gossip { return m.gossip.Load() }

// Renewer returns the renewer of this manager's own certificate.
func (m *Manager) Renewer() *agent.Renewer { return m.renewer }

func (m *Manager) saveManagers(addrs []string) {
	if err := m.saveNode(func(n *agent.NodeConfig) { n.Managers = addrs }); err != nil {
		m.log.Warn("record managers", "err", err)
	}
}

func dirHasFiles(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) > 0
}

// Stop shuts the manager down: the API servers, then Raft. Safe to call
// more than once.
func (m *Manager) Stop() error {
	m.stopOnce.Do(func() {
		// Gossip first: its fetches use the renewer's connections, which
		// the renewer closes when it stops.
		if g := m.gossip.Load(); g != nil {
			g.Stop()
		}
		if m.cancel != nil {
			m.cancel()
			m.loops.Wait()
		}
		if m.server != nil {
			stopGRPC(m.server)
		}
		if m.local != nil {
			stopGRPC(m.local)
		}
		if m.peers != nil {
			m.peers.close()
		}
		m.extMu.Lock()
		if m.ext != nil {
			m.ext.close()
		}
		m.extMu.Unlock()
		if m.raft != nil {
			m.stopErr = m.raft.Shutdown()
		}
		m.closeListeners()
		close(m.done)
	})
	return m.stopErr
}

// stopGRPC stops gracefully, but not for longer than a few seconds.
func stopGRPC(s *grpc.Server) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		s.Stop()
		<-done
	}
}

func (m *Manager) closeListeners() {
	for _, ln := range []net.Listener{m.apiLn, m.raftLn, m.sockLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// diskProblem says, when this manager's last write to its Raft stores
// failed for lack of space, which manager and file; nil otherwise.
func (m *Manager) diskProblem() error {
	if err := m.raft.DiskError(); err != nil {
		return fmt.Errorf("on manager %s (%s): %w", m.node.NodeID, m.apiAddr, err)
	}
	return nil
}

// Done is closed when the manager has stopped.
func (m *Manager) Done() <-chan struct{} { return m.done }

// Addr returns the advertised API address.
func (m *Manager) Addr() string { return m.apiAddr }

// RaftAddr returns the advertised Raft address.
func (m *Manager) RaftAddr() string { return m.raftAddr }

// NodeID returns this manager's node ID.
func (m *Manager) NodeID() string { return m.node.NodeID }

// ClusterID returns the cluster ID.
func (m *Manager) ClusterID() string { return m.node.ClusterID }

// IsLeader reports whether this manager is the Raft leader.
func (m *Manager) IsLeader() bool { return m.raft.IsLeader() }

// State returns the replicated state as this manager has applied it.
func (m *Manager) State() *fsm.State { return m.machine.State() }

// Credentials returns this manager's own credentials.
func (m *Manager) Credentials() *agent.Credentials { return m.creds }

// SocketPath returns the control socket's path.
func (m *Manager) SocketPath() string { return m.cfg.SocketPath }

// propose commits a command and returns the state after it, or the reason
// it was refused.
func (m *Manager) propose(ctx context.Context, cmd fsm.Command) (*fsm.State, error) {
	b, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, m.cfg.ApplyTimeout)
		defer cancel()
	}
	out, err := m.raft.Apply(ctx, b)
	if err != nil {
		if errors.Is(err, raft.ErrDiskFull) {
			return nil, fmt.Errorf("on manager %s (%s): %w", m.node.NodeID, m.apiAddr, err)
		}
		return nil, err
	}
	res, ok := out.(fsm.Result)
	if !ok {
		panic(fmt.Sprintf("manager: state machine returned %T", out)) // broken invariant
	}
	return res.State, res.Err
}

// stateMachine adapts fsm.Machine to raft.StateMachine. When the Machine
// halts at a command a newer quorumca wrote, it says so at Error level,
// once, and takes no more snapshots: one would claim the entries it did
// not apply.
type stateMachine struct {
	m   *fsm.Machine
	log *slog.Logger
}

func (s stateMachine) Apply(index uint64, cmd []byte) any {
	wasHalted := s.m.Halted() != nil
	out := s.m.Apply(index, cmd)
	if err := s.m.Halted(); err != nil && !wasHalted {
		s.log.Error("this manager applies the replicated log no further", "err", err)
	}
	return out
}
func (s stateMachine) Snapshot() (raft.Snapshot, error) {
	if err := s.m.Halted(); err != nil {
		return nil, err
	}
	return snapshot{s.m.Snapshot()}, nil
}
func (s stateMachine) Restore(r io.Reader) error { return s.m.Restore(r) }

type snapshot struct{ st *fsm.State }

func (s snapshot) Persist(w io.Writer) error { _, err := s.st.WriteTo(w); return err }
func (snapshot) Release()                    {}

// bound is the listen address to record for a restart: the configured one,
// or, when it asked for any free port (":0"), the port it got, so that a
// restarted node listens where it advertised.
func bound(configured string, ln net.Listener) string {
	if _, port, err := net.SplitHostPort(configured); err == nil && port != "0" {
		return configured
	}
	host, _, _ := net.SplitHostPort(configured)
	return net.JoinHostPort(host, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
}
