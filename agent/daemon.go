package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/membership"
)

// SocketFile is the control socket's name under the data directory.
const SocketFile = "quorumca.sock"

// WorkerConfig configures a worker daemon.
type WorkerConfig struct {
	DataDir string
	// SocketPath defaults to <DataDir>/quorumca.sock.
	SocketPath string
	Logger     *slog.Logger
	// HeartbeatPeriod, Rand and Now go to the Renewer (see RenewerConfig).
	HeartbeatPeriod time.Duration
	Rand            io.Reader
	Now             func() time.Time
	// GossipTiming is the gossip's failure-detection speed.
	GossipTiming membership.Timing
	// GossipKeyGrace is how long the previous gossip key is read after
	// the cluster moved to a new one (see GossipConfig.KeyGrace).
	GossipKeyGrace time.Duration
}

// ErrPromoted is the reason a worker stops by itself when it was promoted:
// the node must go on as a manager (`quorumca run` does).
var ErrPromoted = errors.New("agent: node promoted to manager")

// Worker is a running worker daemon: it holds the node's credentials and
// answers status on its control socket.
type Worker struct {
	cfg   WorkerConfig
	node  NodeConfig
	creds *Credentials
	ln    net.Listener
	srv   *grpc.Server
	once  sync.Once
	done  chan struct{}

	renewer *Renewer
	gossip  *Gossip
	cancel  context.CancelFunc
	loop    sync.WaitGroup

	mu     sync.Mutex // guards reason and node's changes
	reason error
}

// StartWorker starts a worker from its data directory.
func StartWorker(cfg WorkerConfig) (*Worker, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(cfg.DataDir, SocketFile)
	}
	node, err := LoadNodeConfig(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if node.Role != ca.RoleWorker {
		return nil, fmt.Errorf("agent: %s holds a %s; start it as a manager", cfg.DataDir, node.Role.Short())
	}
	creds, err := LoadCredentials(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	ln, err := ListenControl(cfg.SocketPath)
	if err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, node: node, creds: creds, ln: ln, srv: grpc.NewServer(), done: make(chan struct{})}
	api.RegisterControlServer(w.srv, &workerControl{w: w})
	go w.srv.Serve(ln)
	w.renewer = NewRenewer(RenewerConfig{
		Credentials:     creds,
		Managers:        node.Managers,
		OnManagers:      w.saveManagers,
		OnRole:          w.roleChanged,
		OnGossipKey:     func(id string) { w.gossip.WantKey(id) },
		HeartbeatPeriod: cfg.HeartbeatPeriod,
		Rand:            cfg.Rand,
		Now:             cfg.Now,
		Logger:          cfg.Logger.With("component", "renewer"),
	})
	w.gossip = StartGossip(GossipConfig{
		BindAddr:      node.GossipAddr,
		AdvertiseAddr: node.GossipAdvertiseAddr,
		Credentials:   creds,
		Fetch:         w.renewer.Gossip,
		Timing:        cfg.GossipTiming,
		KeyGrace:      cfg.GossipKeyGrace,
		OnAddr:        w.saveGossipAddr,
		Logger:        cfg.Logger.With("component", "gossip"),
	})
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.loop.Add(1)
	go func() { defer w.loop.Done(); w.renewer.Run(ctx) }()
	cfg.Logger.Info("worker started", "node_id", node.NodeID, "cluster_id", node.ClusterID)
	return w, nil
}

// Credentials returns the worker's credentials.
func (w *Worker) Credentials() *Credentials { return w.creds }

// Renewer returns the worker's certificate renewer.
func (w *Worker) Renewer() *Renewer { return w.renewer }

// Reason returns why the worker stopped by itself (ErrPromoted), or nil.
func (w *Worker) Reason() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reason
}

func (w *Worker) roleChanged(role ca.Role) {
	if err := w.saveNode(func(n *NodeConfig) { n.Role = role }); err != nil {
		w.cfg.Logger.Error("record new role", "err", err)
	}
	w.cfg.Logger.Info("promoted: stopping the worker to run as a manager", "role", role)
	w.mu.Lock()
	w.reason = ErrPromoted
	w.mu.Unlock()
	go w.Stop()
}

func (w *Worker) saveManagers(addrs []string) {
	if err := w.saveNode(func(n *NodeConfig) { n.Managers = addrs }); err != nil {
		w.cfg.Logger.Warn("record managers", "err", err)
	}
}

func (w *Worker) saveGossipAddr(bind string) {
	if err := w.saveNode(func(n *NodeConfig) { n.GossipAddr = bind }); err != nil {
		w.cfg.Logger.Warn("record gossip address", "err", err)
	}
}

// saveNode changes node.json under the lock, so that concurrent changes
// do not undo one another.
func (w *Worker) saveNode(change func(*NodeConfig)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	change(&w.node)
	return SaveNodeConfig(w.cfg.DataDir, w.node)
}

// Gossip returns the worker's gossip.
func (w *Worker) Gossip() *Gossip { return w.gossip }

// Stop stops the worker. Safe to call more than once.
func (w *Worker) Stop() {
	w.once.Do(func() {
		// Gossip first: its fetches use the renewer's connections, which
		// the renewer closes when it stops.
		w.gossip.Stop()
		w.cancel()
		w.loop.Wait()
		w.srv.Stop()
		w.ln.Close()
		close(w.done)
	})
}

// Done is closed when the worker has stopped.
func (w *Worker) Done() <-chan struct{} { return w.done }

type workerControl struct {
	api.UnimplementedControlServer
	w *Worker
}

func (c *workerControl) Status(ctx context.Context, _ *api.StatusRequest) (*api.StatusResponse, error) {
	if p, ok := peer.FromContext(ctx); !ok || p.Addr.Network() != "unix" {
		return nil, status.Error(codes.PermissionDenied, "worker status is served on the control socket only")
	}
	w := c.w
	resp := &api.StatusResponse{
		ClusterId:       w.node.ClusterID,
		NodeId:          w.node.NodeID,
		Role:            string(ca.RoleWorker),
		RootFingerprint: BundleFingerprint(w.creds.Bundle()),
	}
	if err := w.renewer.Problem(); err != nil {
		resp.Problem = err.Error()
	}
	w.mu.Lock()
	managers := slices.Clone(w.node.Managers)
	w.mu.Unlock()
	for _, addr := range managers {
		reach := "unreachable"
		if reachManager(ctx, w.creds, addr) == nil {
			reach = "reachable"
		}
		resp.Managers = append(resp.Managers, &api.Manager{Addr: addr, Reachability: reach})
	}
	return resp, nil
}

// GetCA returns the trust bundle this worker holds; a rotation's progress
// is the managers' to tell.
func (c *workerControl) GetCA(ctx context.Context, _ *api.GetCARequest) (*api.GetCAResponse, error) {
	if p, ok := peer.FromContext(ctx); !ok || p.Addr.Network() != "unix" {
		return nil, status.Error(codes.PermissionDenied, "the worker's trust bundle is served on the control socket only")
	}
	return &api.GetCAResponse{Bundle: c.w.creds.Bundle()}, nil
}

// reachManager checks that a manager answers over mutual TLS with a
// certificate of this cluster.
func reachManager(ctx context.Context, creds *Credentials, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(creds.ClientTLS(ManagerName))))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = api.NewCAClient(conn).GetRootBundle(ctx, &api.GetRootBundleRequest{})
	return err
}

// BundleDigest names a trust bundle in heartbeats: the SHA-256 of its
// PEM, hex.
func BundleDigest(bundle []byte) string {
	sum := sha256.Sum256(bundle)
	return hex.EncodeToString(sum[:])
}

// BundleFingerprint returns the SHA-256 of a bundle's first certificate, hex.
func BundleFingerprint(bundle []byte) string {
	certs, err := ca.ParseCertificates(bundle)
	if err != nil {
		return "?"
	}
	sum := sha256.Sum256(certs[0].Raw)
	return hex.EncodeToString(sum[:])
}
