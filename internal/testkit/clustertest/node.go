package clustertest

import (
	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
	"github.com/quorumca/quorumca/worker"
)

// Node is one node of a test cluster, running or stopped. It may switch
// between manager and worker while it runs, as the cluster promotes or
// demotes it.
type Node struct {
	c *Cluster
	// Name names the node in the cluster ("m0", "w1"); Dir is its data
	// directory and Socket its control socket.
	Name, Dir, Socket string
	cfg               node.Config // as first started
	id                string
	n                 *node.Node // nil while stopped
}

// run starts the node with cfg.
func (n *Node) run(cfg node.Config) error {
	nn, err := node.Start(n.c.tb.Context(), cfg)
	if err != nil {
		return err
	}
	n.n = nn
	n.id = nn.Store().Get().NodeID
	return nil
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.id }

// Node returns the running node, or nil while it is stopped.
func (n *Node) Node() *node.Node { return n.n }

// Manager returns the manager the node runs, and fails the test when it
// runs none.
func (n *Node) Manager() *manager.Manager {
	n.c.tb.Helper()
	if n.n == nil {
		n.c.tb.Fatalf("node %s is stopped", n.Name)
	}
	m := n.n.Manager()
	if m == nil {
		n.c.tb.Fatalf("node %s runs no manager", n.Name)
	}
	return m
}

// Worker returns the worker daemon the node runs, and fails the test when
// it runs none.
func (n *Node) Worker() *worker.Worker {
	n.c.tb.Helper()
	if n.n == nil {
		n.c.tb.Fatalf("node %s is stopped", n.Name)
	}
	w := n.n.Worker()
	if w == nil {
		n.c.tb.Fatalf("node %s runs no worker", n.Name)
	}
	return w
}

// creds returns the credentials of the daemon the node runs, or nil.
func (n *Node) creds() *agent.Credentials {
	if n.n == nil {
		return nil
	}
	if m := n.n.Manager(); m != nil {
		return m.Credentials()
	}
	if w := n.n.Worker(); w != nil {
		return w.Credentials()
	}
	return nil
}

// Credentials returns the credentials of the daemon the node runs, and
// fails the test when it runs none.
func (n *Node) Credentials() *agent.Credentials {
	n.c.tb.Helper()
	creds := n.creds()
	if creds == nil {
		n.c.tb.Fatalf("node %s runs no daemon", n.Name)
	}
	return creds
}

// Renewer returns the renewer of the daemon the node runs.
func (n *Node) Renewer() *agent.Renewer {
	n.c.tb.Helper()
	if m := n.Node().Manager(); m != nil {
		return m.Renewer()
	}
	return n.Worker().Renewer()
}

// NodeConfig returns what the node's node.json records.
func (n *Node) NodeConfig() agent.NodeConfig {
	n.c.tb.Helper()
	nc, err := agent.LoadNodeConfig(n.Dir)
	if err != nil {
		n.c.tb.Fatalf("agent.LoadNodeConfig(%s) = %v", n.Dir, err)
	}
	return nc
}

// Addr returns the API address the node advertises as a manager, as its
// node.json records it.
func (n *Node) Addr() string { return n.NodeConfig().AdvertiseAddr }

// RaftAddr returns the Raft address the node advertises as a manager, as
// its node.json records it.
func (n *Node) RaftAddr() string { return n.NodeConfig().RaftAdvertiseAddr }

// Control returns a client of the node's control socket: admin access on a
// manager, the node's status on a worker.
func (n *Node) Control() api.ControlClient {
	n.c.tb.Helper()
	return n.c.control(n.Socket)
}

// Status returns Control.Status from the node's control socket.
func (n *Node) Status() (*api.StatusResponse, error) {
	return n.Control().Status(testkit.Ctx(n.c.tb), &api.StatusRequest{})
}

// Stop stops the node if it runs, and fails the test if it had stopped by
// itself with an error.
func (n *Node) Stop() {
	if n.n == nil {
		return
	}
	if err := n.n.Stop(); err != nil {
		n.c.tb.Errorf("node %s: Stop() = %v", n.Name, err)
	}
	n.n = nil
}

// Restart starts the stopped node again from its data directory, on the
// addresses its node.json records.
func (n *Node) Restart() { n.c.tb.Helper(); n.RestartWith(nil) }

// RestartWith restarts the stopped node as Restart does, with its
// configuration changed by change (when not nil): --force-new-cluster,
// another manager to try first.
func (n *Node) RestartWith(change func(*node.Config)) {
	n.c.tb.Helper()
	if err := n.TryRestart(change); err != nil {
		n.c.tb.Fatalf("node.Start(%s from its data directory) = %v", n.Name, err)
	}
}

// TryRestart is RestartWith, returning node.Start's error.
func (n *Node) TryRestart(change func(*node.Config)) error {
	n.c.tb.Helper()
	if n.n != nil {
		n.c.tb.Fatalf("node %s runs: stop it first", n.Name)
	}
	cfg := n.cfg
	cfg.Init, cfg.Join = nil, nil
	cfg.ListenAddr, cfg.RaftAddr, cfg.GossipAddr = "", "", ""
	if change != nil {
		change(&cfg)
	}
	return n.run(cfg)
}
