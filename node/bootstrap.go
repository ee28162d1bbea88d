package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/wait"
	"github.com/quorumca/quorumca/manager"
)

// bootstrap returns the node's first daemon: created by init or join if
// the data directory holds no node, else the one its role calls for.
func (n *Node) bootstrap(ctx context.Context) (daemon, error) {
	if _, err := os.Stat(filepath.Join(n.cfg.DataDir, agent.NodeFile)); err == nil || (n.cfg.Init == nil && n.cfg.Join == nil) {
		store, err := agent.OpenNodeStore(n.cfg.DataDir)
		if err != nil {
			return nil, err
		}
		n.store = store
		if err := n.addManagers(); err != nil {
			return nil, err
		}
		return n.open(ctx)
	}
	if err := agent.MakeDataDir(n.cfg.DataDir); err != nil {
		return nil, err
	}
	if n.cfg.Init != nil {
		return n.init(ctx)
	}
	return n.joinWhenReady(ctx)
}

// init creates a cluster with this node as its first manager.
func (n *Node) init(ctx context.Context) (daemon, error) {
	m, err := manager.Init(ctx, n.managerConfig(agent.NodeConfig{}), *n.cfg.Init)
	if err != nil {
		return nil, err
	}
	n.store = m.Store()
	fmt.Fprintf(n.cfg.Out, "Cluster initialized: node %s is the first manager of cluster %s.\n", m.NodeID(), m.ClusterID())
	if key := m.State().UnlockKey; key != "" {
		n.setUnlockKey(key)
		fmt.Fprintf(n.cfg.Out, "Autolock is on. Keep this unlock key safe, away from the managers: a manager that restarts needs it (`quorumca unlock`).\n\n    %s\n\n", key)
	}
	fmt.Fprintf(n.cfg.Out, "To add a node, get a token with `quorumca join-token worker --data-dir %s`.\n", n.cfg.DataDir)
	return m, nil
}

// joinWhenReady joins the cluster; with Join.Retry it waits for the token
// file and asks again, after a wait of up to 5s and reading the file anew,
// until the join succeeds or ctx ends. A failed join writes nothing, so
// asking again is safe.
func (n *Node) joinWhenReady(ctx context.Context) (daemon, error) {
	j := n.cfg.Join
	for pause, attempt := time.Second, 1; ; attempt++ {
		token, err := j.Token, error(nil)
		if token == "" {
			token, err = agent.ReadTokenFile(j.TokenFile)
		}
		if err == nil {
			d, jerr := n.join(ctx, token)
			if jerr == nil || !j.Retry {
				return d, jerr
			}
			n.log.Warn("join failed; trying again", "via", j.Addr, "in", pause, "err", jerr)
			pause = min(2*pause, 5*time.Second)
		} else {
			if !j.Retry {
				return nil, err
			}
			if attempt == 1 || attempt%10 == 0 {
				n.log.Info("waiting for a join token", "file", j.TokenFile)
			}
			pause = time.Second
		}
		if !wait.Sleep(ctx, pause) {
			return nil, ctx.Err()
		}
	}
}

// join admits this node to a cluster with token through Join.Addr. The
// API and Raft listeners are opened first, so that a manager token can
// make a manager that advertises them; a worker does not need them, so a
// port already taken only matters for a manager token.
func (n *Node) join(ctx context.Context, token string) (daemon, error) {
	mc := n.managerConfig(agent.NodeConfig{})
	jc := agent.JoinConfig{
		DataDir: n.cfg.DataDir, Token: token, Remote: n.cfg.Join.Addr, Rand: mc.Rand, Logger: n.log,
		Node: agent.NodeConfig{GossipAddr: mc.GossipAddr, GossipAdvertiseAddr: mc.GossipAdvertiseAddr},
	}
	apiLn, raftLn, listenErr := listenBoth(mc)
	closeLns := func() {
		for _, ln := range []net.Listener{apiLn, raftLn} {
			if ln != nil {
				ln.Close()
			}
		}
	}
	if listenErr == nil {
		jc.Addr, jc.RaftAddr = manager.Advertise(mc.AdvertiseAddr, apiLn), manager.Advertise(mc.RaftAdvertiseAddr, raftLn)
		jc.Node.ListenAddr, jc.Node.AdvertiseAddr = manager.Bound(mc.ListenAddr, apiLn), jc.Addr
		jc.Node.RaftAddr, jc.Node.RaftAdvertiseAddr = manager.Bound(mc.RaftListenAddr, raftLn), jc.RaftAddr
	}
	res, err := agent.Join(ctx, jc)
	if err != nil {
		closeLns()
		if listenErr != nil {
			return nil, fmt.Errorf("%w (a manager token also needs: %v)", err, listenErr)
		}
		return nil, err
	}
	if n.store, err = agent.OpenNodeStore(n.cfg.DataDir); err != nil {
		closeLns()
		return nil, err
	}
	fmt.Fprintf(n.cfg.Out, "This node joined cluster %s as %s %s.\n", res.Node.ClusterID, res.Node.Role.Short(), res.Node.NodeID)
	if res.Node.Role != ca.RoleManager {
		closeLns()
		return n.open(ctx)
	}
	mc = n.managerConfig(n.store.Get())
	mc.APIListener, mc.RaftListener = apiLn, raftLn
	return manager.Open(ctx, mc, n.store)
}

// recordedFor returns the advertise address node.json recorded, unless the
// node now listens on any free port (port 0, as a promoted worker may):
// the port it gets is not the recorded one, and what to advertise is its
// listener's own address.
func recordedFor(listen, advertised string) string {
	if _, port, err := net.SplitHostPort(listen); err == nil && port == "0" {
		return ""
	}
	return advertised
}

// listenBoth opens a manager's API and Raft listeners.
func listenBoth(mc manager.Config) (api, raft net.Listener, err error) {
	if api, err = net.Listen("tcp", mc.ListenAddr); err != nil {
		return nil, nil, fmt.Errorf("listen on --listen-addr %s: %w", mc.ListenAddr, err)
	}
	if raft, err = net.Listen("tcp", mc.RaftListenAddr); err != nil {
		api.Close()
		return nil, nil, fmt.Errorf("listen on --raft-addr %s: %w", mc.RaftListenAddr, err)
	}
	return api, raft, nil
}

// first returns the first of values that is not "".
func first(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// addManagers puts the manager addresses the configuration gives first in
// node.json's list (those already there move up).
func (n *Node) addManagers() error {
	addrs := slices.Clone(n.cfg.ManagerAddrs)
	if j := n.cfg.Join; j != nil && j.Addr != "" {
		addrs = append(addrs, j.Addr)
	}
	if len(addrs) == 0 {
		return nil
	}
	nc := n.store.Get()
	var want []string
	for _, a := range append(addrs, nc.Managers...) {
		if !slices.Contains(want, a) {
			want = append(want, a)
		}
	}
	if slices.Equal(want, nc.Managers) {
		return nil
	}
	n.log.Info("managers to reach the cluster through", "managers", want)
	return n.store.Update(func(c *agent.NodeConfig) { c.Managers = want })
}
