package manager

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/wait"
)

// ErrRoleChanged is the reason Run returns when the cluster demoted this
// manager: the node must go on as a worker.
var ErrRoleChanged = errors.New("manager: node role changed")

// Run serves the API and runs the manager's loops (renewal of its own
// certificate, gossip, the leader's work when it leads, the state's
// followers) until ctx is done, or the cluster demotes this manager
// (ErrRoleChanged), or it cannot become a Raft voter. Everything it
// started has stopped when it returns, and Raft is shut down: a Manager
// runs once.
func (m *Manager) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	m.mu.Lock()
	m.quit = cancel
	m.mu.Unlock()
	defer m.Close()

	var wg sync.WaitGroup
	ln := newQuietListener(m.apiLn, maxQuietConns)
	ln.evicted = m.metrics.silentClosed.Inc
	wg.Go(func() { m.server.Serve(ln) })
	wg.Go(func() { m.renewer.Run(ctx) })
	wg.Go(func() { m.gossip.Run(ctx) })
	wg.Go(func() { m.followLeadership(ctx) })
	wg.Go(func() { m.followState(ctx) })
	if dir := m.cfg.PublishTokens; dir != "" {
		wg.Go(func() { m.publishTokens(ctx, dir) })
	}
	wg.Go(func() {
		if m.fresh {
			if err := m.becomeVoter(ctx, m.node.Managers); err != nil {
				cancel(err)
				return
			}
		}
		close(m.ready)
		m.log.Info("manager started", "node_id", m.node.NodeID, "cluster_id", m.node.ClusterID, "api", m.apiAddr, "raft", m.raftAddr)
	})
	<-ctx.Done()
	// The API first: no call starts on a manager that is stopping.
	stopGRPC(m.server)
	wg.Wait()
	cause := context.Cause(ctx)
	if ctx.Err() != nil && errors.Is(cause, context.Canceled) && !errors.Is(cause, ErrRoleChanged) {
		return nil // asked to stop
	}
	return cause
}

// roleChanged is called by the renewer once this node holds a certificate
// for a new role: Run ends with ErrRoleChanged, and the node goes on as a
// worker.
func (m *Manager) roleChanged(role ca.Role) {
	m.log.Info("demoted: stopping the manager side to run as a worker", "role", role)
	// A worker's node.key is its private key alone, in clear: the data
	// keys go with the Raft state, and autolock seals managers only.
	if err := m.creds.SetNodeKey(func(nk *agent.NodeKey) { *nk = agent.NodeKey{Key: nk.Key} }); err != nil {
		m.log.Error("write a worker's node.key", "err", err)
	}
	m.mu.Lock()
	quit := m.quit
	m.mu.Unlock()
	if quit != nil {
		quit(ErrRoleChanged)
	}
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
		if !wait.Sleep(ctx, backoff(attempt)) {
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

func (m *Manager) saveManagers(addrs []string) {
	if err := m.store.Update(func(n *agent.NodeConfig) { n.Managers = addrs }); err != nil {
		m.log.Warn("record managers", "err", err)
	}
}

func (m *Manager) saveGossipAddr(bind string) {
	if err := m.store.Update(func(n *agent.NodeConfig) { n.GossipAddr = bind }); err != nil {
		m.log.Warn("record gossip address", "err", err)
	}
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

// StopServer stops a gRPC server as a manager stops its own: gracefully,
// for a few seconds at most. The node stops the control socket's server
// with it.
func StopServer(s *grpc.Server) { stopGRPC(s) }

// diskProblem says, when this manager's last write to its Raft stores
// failed for lack of space, which manager and file; nil otherwise.
func (m *Manager) diskProblem() error {
	if err := m.raft.DiskError(); err != nil {
		return fmt.Errorf("on manager %s (%s): %w", m.node.NodeID, m.apiAddr, err)
	}
	return nil
}
