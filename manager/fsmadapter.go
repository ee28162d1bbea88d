package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/audit"
	"github.com/quorumca/quorumca/raft"
)

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
	start := time.Now()
	out, err := m.raft.Apply(ctx, b)
	if err == nil {
		m.metrics.applyTime.Observe(time.Since(start).Seconds())
	}
	if err != nil {
		// The entry may commit all the same (leadership lost, or the wait
		// ended, while it was in flight): the audit log says it may have.
		m.noteCommit(ctx, commandName(cmd)+"?", err)
		if errors.Is(err, raft.ErrDiskFull) {
			return nil, fmt.Errorf("on manager %s (%s): %w", m.node.NodeID, m.apiAddr, err)
		}
		return nil, err
	}
	res, ok := out.(fsm.Result)
	if !ok {
		panic(fmt.Sprintf("manager: state machine returned %T", out)) // broken invariant
	}
	if res.Err == nil {
		m.noteCommit(ctx, commandName(cmd), nil)
	}
	return res.State, res.Err
}

// noteCommit records, for the audit log, that the command name committed
// (err nil) or may have (name ends in "?"): the line of the call in ctx
// lists it or, outside any call, a line of its own records it.
func (m *Manager) noteCommit(ctx context.Context, name string, err error) {
	if c := callOf(ctx); c.commits != nil {
		c.commits.add(name)
		return
	}
	m.auditCommit(name, audit.Target{}, err)
}

// stateMachine adapts fsm.Machine to raft.StateMachine: entries are
// applied in log order, snapshots are the state's pointer persisted while
// Apply goes on, and a restore replaces the state whole. When the Machine
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
