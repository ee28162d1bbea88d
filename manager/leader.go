package manager

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/audit"
	"github.com/quorumca/quorumca/internal/wait"
	"github.com/quorumca/quorumca/progress"
	"github.com/quorumca/quorumca/raft"
)

// term is one stretch of this manager's leadership.
type term struct {
	// since is when this manager became the leader.
	since time.Time
	// ready is closed once the leader has applied every entry committed
	// before it led (a Barrier): only then does it answer reads.
	ready chan struct{}

	mu     sync.Mutex      // guards warned
	warned map[string]bool // what the term's upkeep said once
}

// warnOnce reports whether what has not been said yet this term, and
// marks it said.
func (t *term) warnOnce(what string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.warned[what] {
		return false
	}
	if t.warned == nil {
		t.warned = map[string]bool{}
	}
	t.warned[what] = true
	return true
}

// leadership holds this manager's term while it leads, and tells waiters
// when that changes.
type leadership struct {
	mu      sync.Mutex // guards cur and changed
	cur     *term
	changed chan struct{} // closed and replaced when cur changes
}

// get returns the term in progress (nil when this manager does not lead)
// and a channel closed when that changes.
func (l *leadership) get() (*term, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	return l.cur, l.changed
}

// set starts or ends (nil) a term.
func (l *leadership) set(t *term) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cur = t
	if l.changed != nil {
		close(l.changed)
	}
	l.changed = make(chan struct{})
}

// followLeadership runs on every manager for its whole life: it starts the
// leader's loops when Raft makes this manager the leader, and stops them
// when it stops being the leader.
func (m *Manager) followLeadership(ctx context.Context) {
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case leading := <-m.raft.LeaderChanges():
			if stop != nil {
				stop()
				stop = nil
			}
			if leading {
				stop = m.lead(ctx)
			}
		}
	}
}

// lead starts a term: the leader's loop, on its own goroutine. The
// function it returns ends the term and waits for the loop.
func (m *Manager) lead(ctx context.Context) func() {
	ctx, cancel := context.WithCancel(ctx)
	t := &term{since: m.cfg.Now(), ready: make(chan struct{})}
	m.rotation.restart()
	m.term.set(t)
	m.log.Info("leading the cluster")
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.leaderLoop(ctx, t)
	}()
	return func() {
		m.term.set(nil)
		cancel()
		<-done
		m.log.Info("no longer leading the cluster")
	}
}

// leaderLoop does the leader's upkeep for one term: first a Barrier, so
// that what it reads is current; then, on every tick and every kick, Raft
// voters follow the state, expired entries are pruned, and the rotation in
// progress is driven.
func (m *Manager) leaderLoop(ctx context.Context, t *term) {
	for attempt := 0; ; attempt++ {
		err := m.raft.Barrier(ctx)
		if err == nil {
			close(t.ready)
			break
		}
		m.log.Warn("new leader: barrier", "err", err, "attempt", attempt+1)
		if !wait.Sleep(ctx, backoff(attempt)) {
			return
		}
	}
	m.recoveryUpkeep(ctx)
	tick := time.NewTicker(m.cfg.ReconcilePeriod)
	defer tick.Stop()
	var looked time.Time
	for {
		reconcile := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			reconcile = true
		case <-m.rotationKick:
			// A look at a rotation costs O(N): in a large cluster's
			// renewal storm, kicks come faster than that; the ones that
			// come while it waits are taken together.
			if pause := lookSpacing(m.machine.State().Nodes.Len()) - time.Since(looked); pause > 0 {
				if !wait.Sleep(ctx, pause) {
					return
				}
			}
		}
		looked = time.Now()
		if reconcile {
			m.reconcile(ctx)
		}
		m.driveRotation(ctx)
		m.publishCRLs(ctx, m.machine.State(), t)
	}
}

// leaderRead makes sure, before the leader answers a read from its state,
// that it has applied everything committed before its term and that a
// majority still follows it (hashicorp/raft's leader lease alone can
// answer stale reads).
func (m *Manager) leaderRead(ctx context.Context) error {
	if err := m.leaderReady(ctx); err != nil {
		return err
	}
	return m.raft.VerifyLeader(ctx)
}

// leaderReady waits, before the leader judges a change by its state (is
// this node a member? does this secret admit?), until it has applied
// everything committed before its term: a leader just elected may not
// have applied its predecessor's last entries yet.
func (m *Manager) leaderReady(ctx context.Context) error {
	for {
		t, changed := m.term.get()
		if t == nil {
			if !m.raft.IsLeader() {
				if err := m.redirect(ctx); !isSelf(err) {
					return err
				}
			}
			// Raft made this manager the leader; its term starts as soon
			// as followLeadership hears of it (checked again shortly, in
			// case Raft's view moves on meanwhile).
			select {
			case <-changed:
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		select {
		case <-t.ready:
		case <-changed:
			continue // the term ended before it was ready
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
}

func (m *Manager) reconcile(ctx context.Context) {
	st := m.machine.State()
	if !st.Initialized() {
		return
	}
	m.recoveryUpkeep(ctx)
	servers, err := m.raft.Servers()
	if err != nil {
		return
	}
	m.recordOwnAddrs(ctx, st, servers)
	for _, srv := range servers {
		if n, ok := st.Node(srv.ID); ok && n.Role == ca.RoleManager {
			continue
		}
		if srv.ID == m.node.NodeID {
			continue // a demoted leader steps down through SetRole
		}
		if err := m.raft.RemoveServer(ctx, srv.ID); err != nil {
			m.log.Warn("reconcile: remove voter", "node_id", srv.ID, "err", err)
		} else {
			m.log.Info("reconcile: removed voter no longer a manager", "node_id", srv.ID)
			// A change of the Raft configuration, not of the state: the
			// audit log records it all the same.
			m.auditCommit("remove_voter", audit.Target{NodeID: srv.ID}, nil)
		}
	}
	if len(st.GossipKey) == 0 {
		// A cluster made before gossip existed: give it a key.
		if key, err := m.newGossipKey(); err != nil {
			m.log.Error("gossip key", "err", err)
		} else if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), SetGossipKey: &fsm.SetGossipKey{Key: key}}); err != nil {
			m.log.Warn("set gossip key", "err", err)
		} else {
			m.log.Info("cluster gossip key created")
		}
	}
	now := m.cfg.Now()
	if st.NeedsPrune(now) {
		if _, err := m.propose(ctx, fsm.Command{At: now, Prune: &fsm.Prune{}}); err != nil {
			m.log.Warn("prune", "err", err)
		}
	}
}

// recordOwnAddrs records the leader's addresses where the state and the
// Raft configuration name others: it was restored from a backup, or
// restarted on new addresses.
func (m *Manager) recordOwnAddrs(ctx context.Context, st *fsm.State, servers []raft.Server) {
	self, ok := st.Node(m.node.NodeID)
	if !ok {
		return
	}
	if self.Addr != m.apiAddr || self.RaftAddr != m.raftAddr {
		if _, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), SetAddrs: &fsm.SetAddrs{NodeID: self.ID, Addr: m.apiAddr, RaftAddr: m.raftAddr}}); err != nil {
			m.log.Warn("record this manager's addresses", "err", err)
		} else {
			m.log.Info("this manager's addresses recorded", "addr", m.apiAddr, "raft_addr", m.raftAddr)
		}
	}
	for _, srv := range servers {
		if srv.ID == m.node.NodeID && srv.Addr != m.raftAddr {
			if err := m.raft.AddVoter(ctx, srv.ID, m.raftAddr); err != nil {
				m.log.Warn("record this manager's Raft address", "err", err)
			}
		}
	}
}

// newGossipKey draws a fresh gossip key.
func (m *Manager) newGossipKey() ([]byte, error) {
	key := make([]byte, fsm.GossipKeySize)
	_, err := io.ReadFull(m.cfg.Rand, key)
	return key, err
}

// observation is what the leader learnt of a node from its last
// authenticated heartbeat.
type observation struct {
	// at is when the node was last heard from (a heartbeat, a renewal,
	// its join).
	at time.Time
	// serial and issuer name the certificate the node presented; bundle is
	// the digest of the trust bundle it holds. Zero until it heartbeats.
	serial string
	issuer ca.TLSStatus
	bundle string
}

// observations are the leader's, by node ID.
type observations struct {
	mu sync.Mutex // guards m
	m  map[string]observation
}

// heard records a heartbeat, and returns the observation it replaces (ok:
// there was one). A node whose consumers are still reloading (its renewal
// hooks have not run since its files changed) is recorded with the
// certificate it showed before: its servers may present that one still,
// and a rotation must not count the new one yet.
func (o *observations) heard(id string, ob observation, reloading bool) (prev observation, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]observation{}
	}
	prev, ok = o.m[id]
	if reloading {
		ob.serial, ob.issuer = prev.serial, prev.issuer
	}
	o.m[id] = ob
	return prev, ok
}

// seen records that a node is alive (it joined or renewed), keeping what
// its last heartbeat showed.
func (o *observations) seen(id string, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]observation{}
	}
	ob := o.m[id]
	ob.at = at
	o.m[id] = ob
}

// progress returns every observation, by node ID, as progress takes
// them, with room for one more (the leader's own).
func (o *observations) progress() map[string]progress.Observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]progress.Observation, len(o.m)+1)
	for id, ob := range o.m {
		out[id] = progress.Observation{At: ob.at, Serial: ob.serial, Issuer: ob.issuer, Bundle: ob.bundle}
	}
	return out
}

func (o *observations) get(id string) (observation, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ob, ok := o.m[id]
	return ob, ok
}

// live reports whether node id is alive as this manager sees it: it is
// this manager, or progress.Live says so (it was heard from within three
// heartbeat periods, or this manager became the leader less than three
// periods ago: the nodes have not all reached it yet, none may be taken
// for down).
func (m *Manager) live(id string, now time.Time) bool {
	if id == m.node.NodeID {
		return true
	}
	var since time.Time
	if t, _ := m.term.get(); t != nil {
		since = t.since
	}
	ob, _ := m.obs.get(id)
	return progress.Live(ob.at, now, m.livePeriod(now), since)
}

func backoff(attempt int) time.Duration {
	return 100 * time.Millisecond << min(attempt, 4)
}

// lookSpacing is the least time between two looks at a rotation the
// leader takes when kicked, for a cluster of n nodes: 100 µs a node, at
// most a second (reached at 10,000 nodes). A look costs about 2 µs a
// node (22 ms at 10,000 in a storm's profile), so looks take at most 2 %
// of a core; the completion is seen at most a second later.
func lookSpacing(n int) time.Duration {
	return min(time.Second, time.Duration(n)*100*time.Microsecond)
}
