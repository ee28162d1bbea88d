package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

// cluster is a real cluster of managers in this process: real Raft on bolt
// stores (fsynced) under dir, mutual TLS on 127.0.0.1, real memberlist,
// the product's default timings.
type cluster struct {
	dir string
	// unsealed runs the managers with their Raft stores unsealed.
	unsealed    bool
	log         *slog.Logger
	nodes       []*node.Node
	managers    []*manager.Manager
	control     []*grpc.ClientConn
	workerToken string
}

// startCluster inits one manager and joins size-1 more through it.
// With unsealed, the managers' Raft stores are written in clear, to
// measure what sealing costs.
func startCluster(ctx context.Context, dir string, size int, unsealed bool, log *slog.Logger) (_ *cluster, err error) {
	c := &cluster{dir: dir, log: log, unsealed: unsealed}
	defer func() {
		if err != nil {
			c.stop()
		}
	}()
	cfg := c.config("m0")
	cfg.Init = &manager.InitOptions{}
	n, err := startLabelled(ctx, cfg, "m0")
	if err != nil {
		return nil, fmt.Errorf("init the first manager: %w", err)
	}
	if err := c.add(n); err != nil {
		return nil, err
	}
	managerToken, err := c.token(ctx, "manager")
	if err != nil {
		return nil, err
	}
	if c.workerToken, err = c.token(ctx, "worker"); err != nil {
		return nil, err
	}
	for i := 1; i < size; i++ {
		name := fmt.Sprintf("m%d", i)
		cfg := c.config(name)
		cfg.Join = &node.Join{Token: managerToken, Addr: c.managers[0].Addr()}
		n, err := startLabelled(ctx, cfg, name)
		if err != nil {
			return nil, fmt.Errorf("join manager %d: %w", i, err)
		}
		if err := c.add(n); err != nil {
			return nil, err
		}
	}
	return c, c.waitVoters(ctx, size)
}

// startLabelled starts a manager whose goroutines carry the pprof label
// of its name, so that a CPU profile tells the managers apart.
func startLabelled(ctx context.Context, cfg node.Config, name string) (n *node.Node, err error) {
	labelled(ctx, name, func(ctx context.Context) { n, err = node.Start(ctx, cfg) })
	return n, err
}

// config is a node configuration with its own data directory and
// ephemeral loopback ports.
func (c *cluster) config(name string) node.Config {
	return node.Config{
		DataDir:    filepath.Join(c.dir, name),
		ListenAddr: "127.0.0.1:0",
		RaftAddr:   "127.0.0.1:0",
		GossipAddr: "127.0.0.1:0",
		SocketPath: filepath.Join(c.dir, name+".sock"),
		Logger:     c.log,
		Manager:    manager.Config{Unsealed: c.unsealed},
	}
}

// add takes a started manager into the cluster.
func (c *cluster) add(n *node.Node) error {
	m := n.Manager()
	if m == nil {
		n.Stop()
		return errors.New("the node runs no manager")
	}
	conn, err := grpc.NewClient("unix://"+n.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		n.Stop()
		return err
	}
	c.nodes = append(c.nodes, n)
	c.managers = append(c.managers, m)
	c.control = append(c.control, conn)
	return nil
}

func (c *cluster) token(ctx context.Context, role string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := api.NewControlClient(c.control[0]).JoinToken(ctx, &api.JoinTokenRequest{Role: role})
	if err != nil {
		return "", fmt.Errorf("%s join token: %w", role, err)
	}
	return resp.GetToken(), nil
}

// waitVoters waits until every manager counts size voters and knows the
// leader.
func (c *cluster) waitVoters(ctx context.Context, size int) error {
	return poll(ctx, time.Minute, func() error {
		for i, conn := range c.control {
			ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
			st, err := api.NewControlClient(conn).Status(ctx, &api.StatusRequest{})
			cancel()
			if err != nil {
				return fmt.Errorf("manager %d: %w", i, err)
			}
			voters := 0
			for _, m := range st.GetManagers() {
				if m.GetVoter() {
					voters++
				}
			}
			if voters != size || st.GetLeaderAddr() == "" {
				return fmt.Errorf("manager %d sees %d voters and leader %q", i, voters, st.GetLeaderAddr())
			}
		}
		return nil
	})
}

// leader returns the index of the leader.
func (c *cluster) leader() int {
	for i, m := range c.managers {
		if m.IsLeader() {
			return i
		}
	}
	return -1
}

// addrs are the managers' API addresses.
func (c *cluster) addrs() []string {
	var out []string
	for _, m := range c.managers {
		out = append(out, m.Addr())
	}
	return out
}

func (c *cluster) stop() {
	for _, conn := range c.control {
		conn.Close()
	}
	for _, n := range c.nodes {
		if err := n.Stop(); err != nil {
			c.log.Warn("stop manager", "err", err)
		}
	}
}

// poll calls cond every 20ms until it returns nil, ctx ends or bound
// passes; it returns cond's last error then.
func poll(ctx context.Context, bound time.Duration, cond func() error) error {
	deadline := time.Now().Add(bound)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s: %w", bound, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rpcTimeout bounds each call the benchmarks make outside the timed
// operations' own.
const rpcTimeout = 10 * time.Second

// tmpfsMagic is Linux's file system type of tmpfs (statfs(2)).
const tmpfsMagic = 0x01021994

// workDir makes the directory a run keeps its data in, under parent (the
// system's temp dir by default). It refuses a tmpfs, where fsync costs
// nothing: the Raft stores must pay for it as on a manager's disk.
func workDir(parent string) (string, error) {
	if parent == "" {
		parent = os.TempDir()
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(parent, &fs); err != nil {
		return "", fmt.Errorf("--dir %s: %w", parent, err)
	}
	if fs.Type == tmpfsMagic {
		return "", fmt.Errorf("--dir %s is on tmpfs, where fsync is free and the Raft figures would be too good: give --dir on a disk", parent)
	}
	return os.MkdirTemp(parent, "qcbench-")
}
