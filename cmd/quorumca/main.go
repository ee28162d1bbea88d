// Command quorumca is the quorumca daemon and its administration CLI: one
// binary, mirroring `docker swarm`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "quorumca:", err)
		os.Exit(exitCode(err))
	}
}
