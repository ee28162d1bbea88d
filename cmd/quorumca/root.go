package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quorumca/quorumca/agent"
)

// globals are the flags every command shares.
type globals struct {
	dataDir  string
	host     string
	format   string
	logLevel string
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "quorumca",
		Short:         "A clustered certificate authority with Docker Swarm mode's PKI",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data-dir", envOr("QUORUMCA_DATA_DIR", "/var/lib/quorumca"), "data directory")
	pf.StringVarP(&g.host, "host", "H", os.Getenv("QUORUMCA_HOST"), "daemon to talk to: unix://PATH (default: the control socket under --data-dir)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(
		newInitCmd(g), newJoinCmd(g), newRunCmd(g),
		newStatusCmd(g), newJoinTokenCmd(g),
	)
	return root
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func (g *globals) logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// dial connects to the daemon named by --host, by default the control
// socket under --data-dir.
func (g *globals) dial() (*grpc.ClientConn, error) {
	host := g.host
	if host == "" {
		host = "unix://" + filepath.Join(g.dataDir, agent.SocketFile)
	}
	path, ok := strings.CutPrefix(host, "unix://")
	if !ok {
		return nil, fmt.Errorf("--host %q: use unix://PATH", host)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no daemon control socket at %s (is `quorumca run --data-dir %s` running?): %w", path, filepath.Dir(path), err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
}
