package manager

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
)

// backupChunk is the size of the state's chunks in a Backup stream, well
// under a gRPC message's limit.
const backupChunk = 256 << 10

// Backup streams the replicated state at a committed index. Unless the
// caller asks for a stale copy, the state is current: this manager leads
// and has made sure of it, or it has applied everything the leader had
// applied when asked (Internal.ReadIndex). The copy is a consistent one
// either way: the state is an immutable value, taken at one index.
func (s controlService) Backup(req *api.BackupRequest, stream api.Control_BackupServer) error {
	m := s.m
	ctx := stream.Context()
	if !req.GetStale() {
		if err := m.readIndex(ctx); err != nil {
			return fmt.Errorf("%w (give --stale to back up what this manager has applied)", err)
		}
	}
	st := m.machine.State()
	if !st.Initialized() {
		return fmt.Errorf("%w: this manager holds no cluster state yet", errNoLeader)
	}
	info := &api.BackupInfo{
		Index: st.Index, Term: m.raft.Term(), TakenFrom: m.node.NodeID,
		Stale: req.GetStale(), TakenAt: m.cfg.Now().UnixNano(),
	}
	if err := stream.Send(&api.BackupChunk{Info: info}); err != nil {
		return err
	}
	if _, err := st.WriteTo(chunkWriter{stream}); err != nil {
		return err
	}
	m.log.Info("backup taken", "index", st.Index, "stale", req.GetStale(), "by", callOf(ctx).actor())
	return nil
}

// chunkWriter sends what is written to it as Backup chunks.
type chunkWriter struct{ stream api.Control_BackupServer }

func (w chunkWriter) Write(p []byte) (int, error) {
	for sent := 0; sent < len(p); {
		n := min(len(p)-sent, backupChunk)
		if err := w.stream.Send(&api.BackupChunk{Data: p[sent : sent+n]}); err != nil {
			return sent, err
		}
		sent += n
	}
	return len(p), nil
}

// readIndex waits until this manager holds current state: on the leader,
// once it has made sure it leads; on another manager, once it has applied
// the index the leader gives.
func (m *Manager) readIndex(ctx context.Context) error {
	for {
		if m.raft.IsLeader() {
			return m.leaderRead(ctx)
		}
		id, addr, err := m.leader(ctx)
		if err != nil {
			return err
		}
		if id == m.node.NodeID {
			continue // elected meanwhile
		}
		conn, err := m.peers.get(addr)
		if err != nil {
			return err
		}
		resp, err := api.NewInternalClient(conn).ReadIndex(ctx, &api.ReadIndexRequest{})
		if err != nil {
			if _, ok := api.LeaderRedirect(err); ok {
				continue // the leader changed: ask the new one
			}
			if reason, _ := api.ErrorReason(err); reason == "" && status.Code(err) == codes.Unavailable {
				return fmt.Errorf("%w: the leader %s at %s does not answer: %s", errNoLeader, id, addr, status.Convert(err).Message())
			}
			return err
		}
		return m.waitApplied(ctx, resp.GetIndex())
	}
}

// waitApplied waits until the state machine has applied index.
func (m *Manager) waitApplied(ctx context.Context, index uint64) error {
	for {
		st, changed := m.machine.Watch()
		if st.Index >= index {
			return nil
		}
		if err := m.machine.Halted(); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting to apply index %d (at %d): %w", index, st.Index, ctx.Err())
		case <-time.After(m.cfg.ApplyTimeout):
			return fmt.Errorf("%w: this manager did not apply index %d within %s (it is at %d)", errNoLeader, index, m.cfg.ApplyTimeout, st.Index)
		}
	}
}

// ReadIndex answers another manager's readIndex: the index this leader
// has applied, once it has made sure it leads.
func (s internalService) ReadIndex(ctx context.Context, _ *api.ReadIndexRequest) (*api.ReadIndexResponse, error) {
	if err := s.m.leaderRead(ctx); err != nil {
		return nil, err
	}
	return &api.ReadIndexResponse{Index: s.m.machine.State().Index}, nil
}
