package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// SocketFile is the control socket's name under the data directory.
const SocketFile = "quorumca.sock"

// WorkerConfig configures a worker daemon.
type WorkerConfig struct {
	DataDir string
	// SocketPath defaults to <DataDir>/quorumca.sock.
	SocketPath string
	Logger     *slog.Logger
}

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
	if err := os.Remove(cfg.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agent: remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", cfg.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("agent: control socket %s: %w", cfg.SocketPath, err)
	}
	if err := os.Chmod(cfg.SocketPath, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: control socket %s: %w", cfg.SocketPath, err)
	}
	w := &Worker{cfg: cfg, node: node, creds: creds, ln: ln, srv: grpc.NewServer(), done: make(chan struct{})}
	api.RegisterControlServer(w.srv, &workerControl{w: w})
	go w.srv.Serve(ln)
	cfg.Logger.Info("worker started", "node_id", node.NodeID, "cluster_id", node.ClusterID)
	return w, nil
}

// Credentials returns the worker's credentials.
func (w *Worker) Credentials() *Credentials { return w.creds }

// Stop stops the worker. Safe to call more than once.
func (w *Worker) Stop() {
	w.once.Do(func() {
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
	sum := sha256.Sum256(firstCertDER(w.creds.Bundle()))
	resp := &api.StatusResponse{
		ClusterId:       w.node.ClusterID,
		NodeId:          w.node.NodeID,
		Role:            string(ca.RoleWorker),
		RootFingerprint: hex.EncodeToString(sum[:]),
	}
	for _, addr := range w.node.Managers {
		reach := "unreachable"
		if reachManager(ctx, w.creds, addr) == nil {
			reach = "reachable"
		}
		resp.Managers = append(resp.Managers, &api.Manager{Addr: addr, Reachability: reach})
	}
	return resp, nil
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

func firstCertDER(bundle []byte) []byte {
	certs, err := ca.ParseCertificates(bundle)
	if err != nil {
		return nil
	}
	return certs[0].Raw
}
