package raft

import (
	"context"
	"fmt"

	hraft "github.com/hashicorp/raft"
)

// WaitLeader returns the node ID of the leader once one is known, waiting
// for an election in progress until ctx is done (its error then wraps
// ctx's) or the node shuts down (ErrShutdown). It is woken by Raft's
// leader observations, not by polling.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	if id, _ := n.Leader(); id != "" {
		return id, nil
	}
	ch := make(chan hraft.Observation, 1)
	obs := hraft.NewObserver(ch, false, func(o *hraft.Observation) bool {
		_, ok := o.Data.(hraft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	for {
		// Look after registering: a leader elected in between is not
		// missed.
		if id, _ := n.Leader(); id != "" {
			return id, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return "", fmt.Errorf("raft: no leader elected: %w", ctx.Err())
		case <-n.done:
			return "", fmt.Errorf("%w (waiting for a leader)", ErrShutdown)
		}
	}
}
