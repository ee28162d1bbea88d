package manager

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/raft"
)

// InitOptions are the choices made once, when a cluster is created.
type InitOptions struct {
	// CertExpiry is the validity of node certificates (default
	// ca.DefaultCertExpiry, minimum ca.MinCertExpiry).
	CertExpiry time.Duration
	// CA is an imported CA (--ca-cert/--ca-key); nil generates a root.
	CA *ca.Material
	// Autolock turns autolock on from the start: Init makes the unlock key
	// (the state's UnlockKey) and seals this manager's keys under it.
	Autolock bool
	// External, when set, makes the cluster use these external CAs
	// (--external-ca) and hold no key. ExternalCert is then the external
	// CA's certificate and chain (--ca-cert), or nil to ask the CA for it.
	External     []fsm.ExternalCA
	ExternalCert []byte
}

func newManager(cfg Config) (*Manager, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Manager{
		cfg:          cfg,
		log:          cfg.Logger,
		machine:      fsm.NewMachine(),
		ready:        make(chan struct{}),
		metrics:      newMetrics(),
		rotationKick: make(chan struct{}, 1),
		anonymous:    make(chan struct{}, maxAnonymousCalls),
		signing:      make(chan struct{}, cfg.MaxConcurrentSigns),
	}, nil
}

// Init creates a new cluster in cfg.DataDir (DESIGN.md flow 1): cluster ID,
// root CA, both join secrets, a one-voter Raft, this manager's own
// certificate and node.json; Run then serves it. A data directory that
// already holds a cluster is refused untouched; on any failure, what Init
// created is removed.
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
			m.Close()
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
	unlockKey, nk, err := m.initialKeys(opts, keyPEM)
	if err != nil {
		return nil, err
	}
	if m.creds, err = agent.NewManagerCredentials(cfg.DataDir, nk, issued.PEM, material.Bundle); err != nil {
		return nil, err
	}
	m.node = agent.NodeConfig{
		NodeID: nodeID, ClusterID: clusterID, Role: ca.RoleManager,
		Managers:   []string{m.apiAddr},
		ListenAddr: Bound(cfg.ListenAddr, m.apiLn), AdvertiseAddr: m.apiAddr,
		RaftAddr: Bound(cfg.RaftListenAddr, m.raftLn), RaftAdvertiseAddr: m.raftAddr,
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
	if h, err := os.Hostname(); err == nil && fsm.ValidHostname(h) {
		self.Hostname = h
	}
	if _, err := m.propose(ctx, fsm.Command{At: now, Init: &fsm.Init{
		ClusterID: clusterID, CertExpiry: opts.CertExpiry, CA: material, External: opts.External,
		WorkerSecret: workerSecret, ManagerSecret: managerSecret, GossipKey: gossipKey, Manager: self,
		UnlockKey: unlockKey,
	}}); err != nil {
		return nil, err
	}
	if m.store, err = agent.NewNodeStore(cfg.DataDir, m.node); err != nil {
		return nil, err
	}
	m.assemble()
	m.log.Info("cluster initialized", "cluster_id", clusterID, "node_id", nodeID,
		"api", m.apiAddr, "raft", m.raftAddr, "root", fingerprint(material.Bundle))
	return m, nil
}

// Open returns the manager of the node whose node.json store holds: its
// state comes back from the Raft log and snapshots; nothing is
// re-initialised. A node with no Raft state yet (it joined or was promoted
// moments ago) asks the leader to make it a voter when it runs.
func Open(ctx context.Context, cfg Config, store *agent.NodeStore) (_ *Manager, err error) {
	m, err := newManager(cfg)
	if err != nil {
		return nil, err
	}
	m.store, m.node = store, store.Get()
	if m.node.Role != ca.RoleManager {
		return nil, fmt.Errorf("manager: %s holds a %s; run it as a worker", m.cfg.DataDir, m.node.Role.Short())
	}
	if m.node.GossipAddr == "" {
		m.node.GossipAddr, m.node.GossipAdvertiseAddr = m.cfg.GossipAddr, m.cfg.GossipAdvertiseAddr
	}
	if err := m.loadCredentials(); err != nil {
		return nil, err
	}
	if err := m.listen(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	m.fresh = !dirHasFiles(filepath.Join(m.cfg.DataDir, RaftDir))
	if err := m.openRaft(false); err != nil {
		return nil, err
	}
	if err := m.dropPreviousDataKey(); err != nil {
		return nil, err
	}
	m.assemble()
	return m, nil
}

// listen opens the API and Raft listeners (or takes those the
// configuration hands over), so that nothing is written to the data
// directory when an address is taken.
func (m *Manager) listen() error {
	m.apiLn, m.raftLn = m.cfg.APIListener, m.cfg.RaftListener
	var err error
	if m.apiLn == nil {
		if m.apiLn, err = net.Listen("tcp", m.cfg.ListenAddr); err != nil {
			return fmt.Errorf("manager: listen on --listen-addr %s: %w", m.cfg.ListenAddr, err)
		}
	}
	if m.raftLn == nil {
		if m.raftLn, err = net.Listen("tcp", m.cfg.RaftListenAddr); err != nil {
			m.apiLn.Close()
			m.apiLn = nil
			return fmt.Errorf("manager: listen on --raft-addr %s: %w", m.cfg.RaftListenAddr, err)
		}
	}
	m.apiAddr = advertise(m.cfg.AdvertiseAddr, m.apiLn)
	m.raftAddr = advertise(m.cfg.RaftAdvertiseAddr, m.raftLn)
	return nil
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
	rc.ForceNewCluster = m.cfg.ForceNewCluster
	rc.Authorize = m.checkRaftPeer
	rc.Dial = m.cfg.RaftDial
	if m.cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = m.cfg.HeartbeatTimeout
	}
	if m.cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = m.cfg.ElectionTimeout
	}
	if m.cfg.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = m.cfg.LeaderLeaseTimeout
	}
	if m.cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = m.cfg.SnapshotThreshold
		rc.TrailingLogs = m.cfg.SnapshotThreshold
	}
	if m.cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = m.cfg.SnapshotInterval
	}
	rc.ApplyTimeout = m.cfg.ApplyTimeout
	if !m.cfg.Unsealed {
		nk := m.creds.NodeKey()
		rc.Keys = &raft.Keys{Current: nk.DataKey}
		if len(nk.PrevDataKey) > 0 {
			rc.Keys.Previous = [][]byte{nk.PrevDataKey}
		}
	}
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

// assemble makes what Run starts: the API server, the connections to the
// other managers, the renewer of this manager's own certificate and its
// gossip.
func (m *Manager) assemble() {
	m.peers = newPeerConns(m.creds)
	m.server = grpc.NewServer(
		grpc.Creds(serverCreds(m.creds, m.checkHandshake)),
		grpc.ChainUnaryInterceptor(m.observe(authz.Direct), m.intercept(authz.Direct)),
		grpc.ChainStreamInterceptor(m.interceptStream(authz.Direct)),
		grpc.InTapHandle(m.tapAnonymous),
		grpc.MaxRecvMsgSize(maxRecvMsg),
		grpc.ConnectionTimeout(handshakeTimeout),
		// Fixed flow-control windows: a caller cannot make the manager
		// buffer more than this per connection before a call is checked.
		grpc.InitialWindowSize(64<<10),
		grpc.InitialConnWindowSize(256<<10),
		// A leader holds a connection per node: its messages are a few
		// KiB, so an 8 KiB read buffer, and a write buffer taken from a
		// pool only while it has something to write, instead of 32 KiB
		// of each per connection for as long as it stays open.
		grpc.ReadBufferSize(8<<10),
		grpc.SharedWriteBuffer(true),
	)
	m.register(m.server)
	m.renewer = agent.NewRenewer(agent.RenewerConfig{
		Credentials:     m.creds,
		Managers:        append([]string{m.apiAddr}, m.node.Managers...),
		OnManagers:      m.saveManagers,
		OnRole:          m.roleChanged,
		Self:            m.apiAddr,
		HeartbeatPeriod: m.cfg.HeartbeatPeriod,
		Rand:            m.cfg.Rand,
		Now:             m.cfg.Now,
		Reloads:         m.cfg.Reloads,
		Logger:          m.log.With("component", "renewer"),
	})
	m.creds.OnUpdate(func() {
		m.raft.SetTLS(m.raftTLS())
		m.peers.renewed()
	})
	m.gossip = agent.NewGossip(agent.GossipConfig{
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
	})
}

// register puts the manager's services on s.
func (m *Manager) register(s *grpc.Server) {
	api.RegisterCAServer(s, caService{m: m})
	api.RegisterControlServer(s, controlService{m: m})
	api.RegisterInternalServer(s, internalService{m: m})
}

// Local returns the gRPC server of the manager's control socket: the same
// services as the API, for the socket's user (its host's administrator).
func (m *Manager) Local() *grpc.Server {
	s := grpc.NewServer(grpc.Creds(localCreds{}), grpc.ChainUnaryInterceptor(m.intercept(authz.Local)),
		grpc.ChainStreamInterceptor(m.interceptStream(authz.Local)), grpc.MaxRecvMsgSize(maxRecvMsg))
	m.register(s)
	return s
}

// Close releases what Init or Open took (Raft, its stores and listener,
// the API listener, connections) when Run will not run; Run closes it all
// itself when it returns. Calls after the first return the first's result.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		if m.peers != nil {
			m.peers.close()
		}
		m.extMu.Lock()
		if m.ext != nil {
			m.ext.close()
		}
		m.extMu.Unlock()
		var errs []error
		if m.raft != nil {
			errs = append(errs, m.raft.Shutdown())
		}
		for _, ln := range []net.Listener{m.apiLn, m.raftLn} {
			if ln != nil && ln.Close() != nil {
				// Closed already by a server that served it.
				continue
			}
		}
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

func dirHasFiles(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) > 0
}
