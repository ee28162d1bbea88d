package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"
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
	if s, ok := status.FromError(err); ok {
		return errors.New(s.Message())
	}
	return err
}
