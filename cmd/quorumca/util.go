package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
)

// control connects to the daemon named by --host and returns its Control
// client, a context bounded by timeout, and a func that releases both.
func (g *globals) control(cmd *cobra.Command, timeout time.Duration) (api.ControlClient, context.Context, func(), error) {
	conn, err := g.dial()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	return api.NewControlClient(conn), ctx, func() { cancel(); conn.Close() }, nil
}

// rpcError turns a gRPC error into the daemon's own message.
func rpcError(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	if s.Code() == codes.Unimplemented {
		// A worker answers this itself (worker.ErrManagerOnly); a locked
		// manager, or a daemon of another release, does not.
		return fmt.Errorf("the daemon does not answer this command (%s): it runs on an unlocked manager; if --data-dir or --host names a worker, use a manager's, and if `quorumca status` says locked, run `quorumca unlock` first", s.Message())
	}
	return errors.New(s.Message())
}
