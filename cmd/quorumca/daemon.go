package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/manager"
)

// daemonFlags are the flags of the commands that run the daemon.
type daemonFlags struct {
	listenAddr, advertiseAddr, raftAddr, raftAdvertiseAddr string
	gossipAddr, gossipAdvertiseAddr                        string
	publishTokens                                          string
}

func (d *daemonFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&d.listenAddr, "listen-addr", manager.DefaultListenAddr, "API listen address (host:port)")
	f.StringVar(&d.advertiseAddr, "advertise-addr", "", "API address other nodes reach this manager at (default: the listen address)")
	f.StringVar(&d.raftAddr, "raft-addr", manager.DefaultRaftAddr, "Raft listen address (host:port)")
	f.StringVar(&d.raftAdvertiseAddr, "raft-advertise-addr", "", "Raft address other managers reach this one at (default: the Raft listen address)")
	f.StringVar(&d.gossipAddr, "gossip-addr", agent.DefaultGossipAddr, "gossip listen address, TCP and UDP (host:port)")
	f.StringVar(&d.gossipAdvertiseAddr, "gossip-advertise-addr", "", "gossip address other nodes reach this one at (default: picked from the host's addresses)")
	f.StringVar(&d.publishTokens, "publish-tokens", "", "as a manager, keep the current join tokens in DIR/worker.token and DIR/manager.token (0600), for nodes that join unattended")
}

func (g *globals) managerConfig(d *daemonFlags) (manager.Config, error) {
	log, err := g.logger()
	if err != nil {
		return manager.Config{}, err
	}
	cfg := manager.DefaultConfig()
	cfg.DataDir = g.dataDir
	cfg.ListenAddr = d.listenAddr
	cfg.AdvertiseAddr = d.advertiseAddr
	cfg.RaftListenAddr = d.raftAddr
	cfg.RaftAdvertiseAddr = d.raftAdvertiseAddr
	cfg.GossipAddr = d.gossipAddr
	cfg.GossipAdvertiseAddr = d.gossipAdvertiseAddr
	cfg.PublishTokens = d.publishTokens
	cfg.Logger = log
	return cfg, cfg.Validate()
}

func newInitCmd(g *globals) *cobra.Command {
	var (
		d             daemonFlags
		certExpiry    time.Duration
		caCert, caKey string
		externalCAs   []string
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new cluster with this machine as its first manager, and run it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := agent.CheckDataDir(g.dataDir); err != nil {
				return err
			}
			cfg, err := g.managerConfig(&d)
			if err != nil {
				return err
			}
			if certExpiry < ca.MinCertExpiry {
				return fmt.Errorf("--cert-expiry %s is under the minimum of %s", certExpiry, ca.MinCertExpiry)
			}
			opts := manager.InitOptions{CertExpiry: certExpiry}
			if opts.External, err = parseExternalCAs(externalCAs); err != nil {
				return err
			}
			switch {
			case len(opts.External) > 0 && caKey != "":
				return fmt.Errorf("--ca-key does not go with --external-ca: the external CA holds its key; give --ca-cert alone (its certificate and chain), or neither to ask the CA")
			case len(opts.External) > 0:
				if caCert != "" {
					if opts.ExternalCert, err = readExternalCert(caCert); err != nil {
						return err
					}
				}
			case (caCert == "") != (caKey == ""):
				return fmt.Errorf("--ca-cert and --ca-key go together: give both, or neither to generate a root")
			case caCert != "":
				m, err := importCA(caCert, caKey)
				if err != nil {
					return err
				}
				opts.CA = &m
			}
			return initAndRun(cmd, g, &d, cfg, opts)
		},
	}
	d.register(cmd)
	cmd.Flags().DurationVar(&certExpiry, "cert-expiry", ca.DefaultCertExpiry, "validity of node certificates (minimum 1h)")
	cmd.Flags().StringVar(&caCert, "ca-cert", "", "PEM CA certificate (and its chain up to a root) to sign with instead of a generated root")
	cmd.Flags().StringVar(&caKey, "ca-key", "", "PEM private key of --ca-cert")
	cmd.Flags().StringArrayVar(&externalCAs, "external-ca", nil, externalCAUsage)
	return cmd
}

func importCA(certFile, keyFile string) (ca.Material, error) {
	m, _, _, err := readCA(certFile, keyFile)
	return m, err
}

// readCA reads --ca-cert and --ca-key and checks them as the import rules
// say; it returns the checked material and the files' bytes.
func readCA(certFile, keyFile string) (m ca.Material, certPEM, keyPEM []byte, err error) {
	if certPEM, err = os.ReadFile(certFile); err != nil {
		return ca.Material{}, nil, nil, fmt.Errorf("--ca-cert: %w", err)
	}
	if keyPEM, err = os.ReadFile(keyFile); err != nil {
		return ca.Material{}, nil, nil, fmt.Errorf("--ca-key: %w", err)
	}
	if m, err = ca.Import(certPEM, keyPEM, time.Now()); err != nil {
		return ca.Material{}, nil, nil, fmt.Errorf("--ca-cert/--ca-key: %w", err)
	}
	return m, certPEM, keyPEM, nil
}

func newJoinCmd(g *globals) *cobra.Command {
	var (
		d                daemonFlags
		token, tokenFile string
	)
	cmd := &cobra.Command{
		Use:   "join --token-file FILE MANAGER_ADDR",
		Short: "Join a cluster through any of its managers, and run",
		Long: `Join a cluster through any of its managers, and run.

The join token comes from --token-file (the file's first line), or from
$QUORUMCA_JOIN_TOKEN. --token works too, but every local user sees it in
` + "`ps`" + `.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := agent.CheckDataDir(g.dataDir); err != nil {
				return err
			}
			token, source, err := joinToken(cmd.ErrOrStderr(), token, tokenFile)
			if err != nil {
				return err
			}
			if _, err := ca.ParseToken(token); err != nil {
				return fmt.Errorf("%s: %w", source, err)
			}
			cfg, err := g.managerConfig(&d)
			if err != nil {
				return err
			}
			if err := agent.MakeDataDir(g.dataDir); err != nil {
				return err
			}
			m, w, err := manager.Join(cmd.Context(), cfg, token, args[0])
			if err != nil {
				return err
			}
			return runJoined(cmd, g, &d, m, w)
		},
	}
	d.register(cmd)
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file whose first line is the join token (default: $QUORUMCA_JOIN_TOKEN)")
	cmd.Flags().StringVar(&token, "token", "", "join token (SWMTKN-1-...); visible to every local user in ps: prefer --token-file")
	return cmd
}

// tokenFileMax bounds what join reads of --token-file: a token is under
// 100 bytes, and a path like /dev/zero must not make join read forever.
const tokenFileMax = 4096

// joinToken returns join's token and where it came from, for messages:
// --token, else --token-file (its first line, trimmed), else
// $QUORUMCA_JOIN_TOKEN. --token works, with a note on stderr: every local
// user sees a command line in ps. The errors never hold the token.
func joinToken(stderr io.Writer, flag, file string) (token, source string, err error) {
	switch {
	case flag != "" && file != "":
		return "", "", errors.New("--token and --token-file exclude each other: give the token one way")
	case flag != "":
		fmt.Fprintln(stderr, "quorumca: note: --token is visible to every local user in `ps`; prefer --token-file FILE or QUORUMCA_JOIN_TOKEN")
		return flag, "--token", nil
	case file != "":
		token, err := readTokenFile(file)
		return token, "--token-file " + file, err
	}
	if token := strings.TrimSpace(os.Getenv("QUORUMCA_JOIN_TOKEN")); token != "" {
		return token, "QUORUMCA_JOIN_TOKEN", nil
	}
	return "", "", errors.New("no join token: give --token-file FILE or set QUORUMCA_JOIN_TOKEN; get one with `quorumca join-token -q worker` on a manager")
}

// readTokenFile returns the first line of path, trimmed.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("--token-file %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, tokenFileMax))
	if err != nil {
		return "", fmt.Errorf("--token-file %s: %w", path, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	token := strings.TrimSpace(line)
	if token == "" {
		return "", fmt.Errorf("--token-file %s is empty: its first line must hold the token (`quorumca join-token -q worker` on a manager prints one)", path)
	}
	return token, nil
}

// initAndRun creates a cluster and runs its first manager until
// interrupted (or until the cluster demotes it: then as a worker).
func initAndRun(cmd *cobra.Command, g *globals, d *daemonFlags, cfg manager.Config, opts manager.InitOptions) error {
	if err := agent.MakeDataDir(cfg.DataDir); err != nil {
		return err
	}
	m, err := manager.Init(cmd.Context(), cfg, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Cluster initialized: node %s is the first manager of cluster %s.\n", m.NodeID(), m.ClusterID())
	fmt.Fprintf(cmd.ErrOrStderr(), "To add a node, get a token with `quorumca join-token worker --data-dir %s`.\n", g.dataDir)
	if err := waitManager(cmd.Context(), m); err != nil {
		return err
	}
	if errors.Is(m.Reason(), manager.ErrRoleChanged) && cmd.Context().Err() == nil {
		return runNode(cmd, g, d)
	}
	return nil
}

// runJoined runs a node that just joined, manager or worker, until
// interrupted, following a promotion or demotion.
func runJoined(cmd *cobra.Command, g *globals, d *daemonFlags, m *manager.Manager, w *agent.Worker) error {
	var switched bool
	if m != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "This node joined cluster %s as manager %s.\n", m.ClusterID(), m.NodeID())
		if err := waitManager(cmd.Context(), m); err != nil {
			return err
		}
		switched = errors.Is(m.Reason(), manager.ErrRoleChanged)
	} else {
		id := w.Credentials().Identity()
		fmt.Fprintf(cmd.ErrOrStderr(), "This node joined cluster %s as worker %s.\n", id.ClusterID, id.NodeID)
		waitWorker(cmd.Context(), w)
		switched = errors.Is(w.Reason(), agent.ErrPromoted)
	}
	if switched && cmd.Context().Err() == nil {
		return runNode(cmd, g, d)
	}
	return nil
}

func newRunCmd(g *globals) *cobra.Command {
	var (
		d                   daemonFlags
		doInit              bool
		tokenFile, joinAddr string
	)
	cmd := &cobra.Command{
		Use:   "run [--init | --join-token-file F --join-addr MANAGER_ADDR]",
		Short: "Run the node stored in --data-dir (after init or join, or a restart)",
		Long: `Run the node stored in --data-dir.

For nodes that start unattended (a container's entrypoint), when --data-dir
holds no node yet: --init creates a cluster, as quorumca init does;
--join-token-file waits until the file exists, then joins through
--join-addr with the token it holds, asking again (and re-reading the file)
until the join succeeds. A manager started with --publish-tokens DIR keeps
the current join tokens in DIR/worker.token and DIR/manager.token for them.
When --data-dir holds a node, these flags are ignored and the node runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if doInit && tokenFile != "" {
				return errors.New("--init and --join-token-file exclude each other: one node creates the cluster, the others join it")
			}
			if (tokenFile == "") != (joinAddr == "") {
				return errors.New("--join-token-file and --join-addr go together")
			}
			if err := agent.CheckDataDir(g.dataDir); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(g.dataDir, agent.NodeFile)); err == nil || (!doInit && tokenFile == "") {
				return runNode(cmd, g, &d)
			}
			cfg, err := g.managerConfig(&d)
			if err != nil {
				return err
			}
			if doInit {
				return initAndRun(cmd, g, &d, cfg, manager.InitOptions{CertExpiry: ca.DefaultCertExpiry})
			}
			if err := agent.MakeDataDir(g.dataDir); err != nil {
				return err
			}
			m, w, err := joinWhenReady(cmd.Context(), cfg, tokenFile, joinAddr)
			if err != nil {
				return err
			}
			return runJoined(cmd, g, &d, m, w)
		},
	}
	d.register(cmd)
	f := cmd.Flags()
	f.BoolVar(&doInit, "init", false, "when --data-dir holds no node, create a cluster first")
	f.StringVar(&tokenFile, "join-token-file", "", "when --data-dir holds no node, join with the token in this file once it exists")
	f.StringVar(&joinAddr, "join-addr", "", "with --join-token-file: the manager to join through (host:port)")
	return cmd
}

// joinWhenReady waits for a join token in tokenFile, then joins through
// addr; it asks again, after a wait of up to 5s and reading the file anew,
// until the join succeeds or ctx ends. A failed join writes nothing, so
// asking again is safe.
func joinWhenReady(ctx context.Context, cfg manager.Config, tokenFile, addr string) (*manager.Manager, *agent.Worker, error) {
	log := cfg.Logger
	for wait, attempt := time.Second, 1; ; attempt++ {
		// As join --token-file reads it: missing or empty, wait for it.
		token, err := readTokenFile(tokenFile)
		switch {
		case err != nil:
			if attempt == 1 || attempt%10 == 0 {
				log.Info("waiting for a join token", "file", tokenFile)
			}
			wait = time.Second
		default:
			m, w, err := manager.Join(ctx, cfg, token, addr)
			if err == nil {
				return m, w, nil
			}
			log.Warn("join failed; trying again", "via", addr, "in", wait, "err", err)
			wait = min(2*wait, 5*time.Second)
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// runNode runs the node stored in --data-dir until interrupted, switching
// between manager and worker when the cluster promotes or demotes it.
func runNode(cmd *cobra.Command, g *globals, d *daemonFlags) error {
	ctx := cmd.Context()
	for {
		nc, err := agent.LoadNodeConfig(g.dataDir)
		if err != nil {
			return err
		}
		// The gossip addresses recorded at init or join stand, unless a
		// flag overrides them.
		if fl := cmd.Flags(); fl.Changed("gossip-addr") || fl.Changed("gossip-advertise-addr") {
			if fl.Changed("gossip-addr") {
				nc.GossipAddr = d.gossipAddr
			}
			if fl.Changed("gossip-advertise-addr") {
				nc.GossipAdvertiseAddr = d.gossipAdvertiseAddr
			}
			if err := agent.SaveNodeConfig(g.dataDir, nc); err != nil {
				return err
			}
		}
		started := time.Now()
		var switched bool
		if nc.Role == ca.RoleManager {
			switched, err = runManager(cmd, g, *d, nc)
		} else {
			switched, err = runWorker(ctx, g)
		}
		if err != nil || !switched || ctx.Err() != nil {
			return err
		}
		// Never spin: a role switch takes at least a second.
		if wait := time.Second - time.Since(started); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
	}
}

func runManager(cmd *cobra.Command, g *globals, d daemonFlags, nc agent.NodeConfig) (switched bool, err error) {
	// The addresses recorded at init or join stand, unless a flag
	// overrides them.
	fl := cmd.Flags()
	if !fl.Changed("listen-addr") && nc.ListenAddr != "" {
		d.listenAddr = nc.ListenAddr
	}
	if !fl.Changed("raft-addr") && nc.RaftAddr != "" {
		d.raftAddr = nc.RaftAddr
	}
	if !fl.Changed("advertise-addr") {
		d.advertiseAddr = nc.AdvertiseAddr
	}
	if !fl.Changed("raft-advertise-addr") {
		d.raftAdvertiseAddr = nc.RaftAdvertiseAddr
	}
	cfg, err := g.managerConfig(&d)
	if err != nil {
		return false, err
	}
	m, err := manager.Start(cmd.Context(), cfg)
	if err != nil {
		return false, err
	}
	if err := waitManager(cmd.Context(), m); err != nil {
		return false, err
	}
	return errors.Is(m.Reason(), manager.ErrRoleChanged), nil
}

func runWorker(ctx context.Context, g *globals) (switched bool, err error) {
	log, err := g.logger()
	if err != nil {
		return false, err
	}
	w, err := agent.StartWorker(agent.WorkerConfig{DataDir: g.dataDir, Logger: log})
	if err != nil {
		return false, err
	}
	waitWorker(ctx, w)
	return errors.Is(w.Reason(), agent.ErrPromoted), nil
}

func waitManager(ctx context.Context, m *manager.Manager) error {
	select {
	case <-ctx.Done():
	case <-m.Done():
	}
	return m.Stop()
}

func waitWorker(ctx context.Context, w *agent.Worker) error {
	select {
	case <-ctx.Done():
	case <-w.Done():
	}
	w.Stop()
	return nil
}
