// Package worker is the worker daemon: a node that holds a certificate,
// heartbeats to the leader, renews by itself, gossips, and answers status
// on its control socket. The node package runs it, and switches it for a
// manager when the cluster promotes the node.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/membership"
)

// Config configures a worker daemon.
type Config struct {
	// Store is the node's node.json; Credentials its key, certificate and
	// bundle. Both are the node's, kept across role changes.
	Store       *agent.NodeStore
	Credentials *agent.Credentials
	Logger      *slog.Logger
	// HeartbeatPeriod, Rand and Now go to the Renewer (see
	// agent.RenewerConfig).
	HeartbeatPeriod time.Duration
	Rand            io.Reader
	Now             func() time.Time
	// GossipTiming is the gossip's failure-detection speed;
	// GossipKeyGrace how long the previous gossip key is read after the
	// cluster moved to a new one (see agent.GossipConfig).
	GossipTiming   membership.Timing
	GossipKeyGrace time.Duration
	// Reloads are the node's renewal hooks, nil for none (see
	// agent.RenewerConfig).
	Reloads agent.Reloads
}

// ErrPromoted is the reason Run returns when the cluster promoted the
// node: it must go on as a manager.
var ErrPromoted = errors.New("worker: node promoted to manager")

// ErrLeft is the reason Run returns when the node removed itself from the
// cluster (quorumca leave): the node then deletes its credentials and
// stops.
var ErrLeft = errors.New("worker: node left the cluster")

// Worker is a worker daemon.
type Worker struct {
	cfg     Config
	renewer *agent.Renewer
	gossip  *agent.Gossip

	mu   sync.Mutex // guards quit
	quit context.CancelCauseFunc
}

// New returns a worker of the node whose store and credentials cfg holds;
// Run runs it.
func New(cfg Config) (*Worker, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	nc := cfg.Store.Get()
	if nc.Role != ca.RoleWorker {
		return nil, fmt.Errorf("worker: the node holds a %s; run it as a manager", nc.Role.Short())
	}
	w := &Worker{cfg: cfg}
	w.renewer = agent.NewRenewer(agent.RenewerConfig{
		Credentials:     cfg.Credentials,
		Managers:        nc.Managers,
		OnManagers:      w.saveManagers,
		OnRole:          w.roleChanged,
		OnGossipKey:     func(id string) { w.gossip.WantKey(id) },
		HeartbeatPeriod: cfg.HeartbeatPeriod,
		Rand:            cfg.Rand,
		Now:             cfg.Now,
		Reloads:         cfg.Reloads,
		Logger:          cfg.Logger.With("component", "renewer"),
	})
	w.gossip = agent.NewGossip(agent.GossipConfig{
		BindAddr:      nc.GossipAddr,
		AdvertiseAddr: nc.GossipAdvertiseAddr,
		Credentials:   cfg.Credentials,
		Fetch:         w.renewer.Gossip,
		Timing:        cfg.GossipTiming,
		KeyGrace:      cfg.GossipKeyGrace,
		OnAddr:        w.saveGossipAddr,
		Logger:        cfg.Logger.With("component", "gossip"),
	})
	return w, nil
}

// Run heartbeats, renews and gossips until ctx is done (it returns nil) or
// the cluster promotes the node (it returns ErrPromoted, once everything
// it started has stopped).
func (w *Worker) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w.mu.Lock()
	w.quit = cancel
	w.mu.Unlock()
	nc := w.cfg.Store.Get()
	w.cfg.Logger.Info("worker started", "node_id", nc.NodeID, "cluster_id", nc.ClusterID)
	var wg sync.WaitGroup
	wg.Go(func() { w.renewer.Run(ctx) })
	wg.Go(func() { w.gossip.Run(ctx) })
	<-ctx.Done()
	wg.Wait()
	if cause := context.Cause(ctx); errors.Is(cause, ErrPromoted) || errors.Is(cause, ErrLeft) {
		return cause
	}
	return nil
}

// Credentials returns the worker's credentials.
func (w *Worker) Credentials() *agent.Credentials { return w.cfg.Credentials }

// Renewer returns the worker's certificate renewer.
func (w *Worker) Renewer() *agent.Renewer { return w.renewer }

// Gossip returns the worker's gossip.
func (w *Worker) Gossip() *agent.Gossip { return w.gossip }

// roleChanged is called by the renewer once the node holds a certificate
// of another role: Run ends with ErrPromoted.
func (w *Worker) roleChanged(role ca.Role) {
	w.cfg.Logger.Info("promoted: stopping the worker to run as a manager", "role", role)
	w.mu.Lock()
	quit := w.quit
	w.mu.Unlock()
	if quit != nil {
		quit(ErrPromoted)
	}
}

func (w *Worker) saveManagers(addrs []string) {
	if err := w.cfg.Store.Update(func(n *agent.NodeConfig) { n.Managers = addrs }); err != nil {
		w.cfg.Logger.Warn("record managers", "err", err)
	}
}

func (w *Worker) saveGossipAddr(bind string) {
	if err := w.cfg.Store.Update(func(n *agent.NodeConfig) { n.GossipAddr = bind }); err != nil {
		w.cfg.Logger.Warn("record gossip address", "err", err)
	}
}

// Local returns the gRPC server of the worker's control socket: its status
// and the trust bundle it holds.
// A call the worker does not serve (administration: node ls, join-token,
// ...) is refused with ErrManagerOnly's message rather than gRPC's
// "method ListNodes not implemented".
func (w *Worker) Local() *grpc.Server {
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(managerOnlyUnary), grpc.ChainStreamInterceptor(managerOnlyStream))
	api.RegisterControlServer(s, &control{w: w})
	return s
}

// ErrManagerOnly is the message (as a FailedPrecondition status) of a call
// to a worker's control socket that only a manager answers.
var ErrManagerOnly = errors.New("this node is a worker: administration runs on a manager; give the --data-dir of a manager on its machine, or --host tcp://MANAGER:2377 with an admin certificate (quorumca admin-cert create, on a manager)")

// managerOnly turns the Unimplemented error of a Control method the worker
// does not serve into ErrManagerOnly's, naming the call.
func managerOnly(method string, err error) error {
	if status.Code(err) != codes.Unimplemented {
		return err
	}
	return status.Errorf(codes.FailedPrecondition, "%s: %v", path.Base(method), ErrManagerOnly)
}

func managerOnlyUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, managerOnly(info.FullMethod, err)
}

func managerOnlyStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return managerOnly(info.FullMethod, handler(srv, ss))
}

// control is the worker's part of the Control API, on its socket only.
type control struct {
	api.UnimplementedControlServer
	w *Worker
}

// onSocket refuses a call that did not come on the control socket.
func onSocket(ctx context.Context) error {
	if p, ok := peer.FromContext(ctx); !ok || p.Addr.Network() != "unix" {
		return status.Error(codes.PermissionDenied, "a worker serves its control socket only")
	}
	return nil
}

func (c *control) Status(ctx context.Context, _ *api.StatusRequest) (*api.StatusResponse, error) {
	if err := onSocket(ctx); err != nil {
		return nil, err
	}
	w := c.w
	nc := w.cfg.Store.Get()
	resp := &api.StatusResponse{
		ClusterId:       nc.ClusterID,
		NodeId:          nc.NodeID,
		Role:            string(ca.RoleWorker),
		RootFingerprint: agent.BundleFingerprint(w.cfg.Credentials.Bundle()),
	}
	if err := w.renewer.Problem(); err != nil {
		resp.Problem = err.Error()
	}
	for _, addr := range nc.Managers {
		reach := "unreachable"
		if reachManager(ctx, w.cfg.Credentials, addr) == nil {
			reach = "reachable"
		}
		resp.Managers = append(resp.Managers, &api.Manager{Addr: addr, Reachability: reach})
	}
	resp.Health = w.health(resp)
	return resp, nil
}

// health is this worker's api.Health*, from what Status found.
func (w *Worker) health(resp *api.StatusResponse) string {
	problem := w.renewer.Problem()
	now := time.Now
	if w.cfg.Now != nil {
		now = w.cfg.Now
	}
	switch {
	case errors.Is(problem, agent.ErrRefused):
		return api.HealthRemoved
	case errors.Is(problem, agent.ErrLeftBehind):
		return api.HealthLeftBehind
	case !now().Before(w.cfg.Credentials.NotAfter()):
		return api.HealthCertExpired
	case !slices.ContainsFunc(resp.Managers, func(m *api.Manager) bool { return m.GetReachability() == "reachable" }):
		return api.HealthNoLeader
	case problem != nil:
		return api.HealthProblem
	}
	return api.HealthOK
}

// GetCA returns the trust bundle this worker holds; a rotation's progress
// is the managers' to tell.
func (c *control) GetCA(ctx context.Context, _ *api.GetCARequest) (*api.GetCAResponse, error) {
	if err := onSocket(ctx); err != nil {
		return nil, err
	}
	return &api.GetCAResponse{Bundle: c.w.cfg.Credentials.Bundle()}, nil
}

// RemoveNode, on the worker's socket, is `quorumca leave`: the worker has
// a manager remove it (its own certificate may ask that for itself), then
// stops with ErrLeft, and the node deletes its credentials. Another node
// ID is a manager's business.
func (c *control) RemoveNode(ctx context.Context, req *api.RemoveNodeRequest) (*api.RemoveNodeResponse, error) {
	if err := onSocket(ctx); err != nil {
		return nil, err
	}
	w := c.w
	nc := w.cfg.Store.Get()
	if req.GetNodeId() != nc.NodeID {
		return nil, status.Errorf(codes.FailedPrecondition, "RemoveNode: %v", ErrManagerOnly)
	}
	var errs []error
	left := func(how string) (*api.RemoveNodeResponse, error) {
		w.cfg.Logger.Info("left the cluster", "node_id", nc.NodeID, "how", how)
		w.mu.Lock()
		quit := w.quit
		w.mu.Unlock()
		if quit != nil {
			quit(ErrLeft)
		}
		return &api.RemoveNodeResponse{}, nil
	}
	for _, addr := range nc.Managers {
		err := removeSelf(ctx, w.cfg.Credentials, addr, nc.NodeID)
		// A node already removed is refused as such: it has left, too.
		if err == nil || api.HasReason(err, authz.ReasonRemoved) {
			return left("removed by manager " + addr)
		}
		if s, ok := status.FromError(err); ok {
			err = errors.New(s.Message())
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	// The managers refuse this node's certificate at the handshake (a
	// removed node's is): the renewer concluded so from their answers. The
	// node is out of the cluster already.
	if errors.Is(w.renewer.Problem(), agent.ErrRefused) {
		return left("the managers refuse its certificate")
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("the node knows no manager"))
	}
	return nil, status.Errorf(codes.Unavailable, "no manager removed this node, which still runs as a member; retry, or have it removed with `quorumca node rm %s` on a manager: %v", nc.NodeID, errors.Join(errs...))
}

// removeSelf asks the manager at addr, over mutual TLS with the node's
// certificate, to remove the node id (itself).
func removeSelf(ctx context.Context, creds *agent.Credentials, addr, id string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(creds.ClientTLS(agent.ManagerName))))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = api.NewControlClient(conn).RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: id, Force: true})
	return err
}

// reachManager checks that a manager answers over mutual TLS with a
// certificate of this cluster.
func reachManager(ctx context.Context, creds *agent.Credentials, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(creds.ClientTLS(agent.ManagerName))))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = api.NewCAClient(conn).GetRootBundle(ctx, &api.GetRootBundleRequest{})
	return err
}

// Close releases what New took, when Run will not run: nothing, for a
// worker (Run starts everything it needs).
func (w *Worker) Close() error { return nil }
