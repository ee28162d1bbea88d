package main

import (
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
	"github.com/quorumca/quorumca/node"
)

// daemonEnvHelp is what the daemon commands' --help says of the
// environment.
const daemonEnvHelp = `Every flag may also be set with QUORUMCA_<FLAG> (--listen-addr:
QUORUMCA_LISTEN_ADDR), except --force-new-cluster and --token; a flag on
the command line wins. See quorumca --help.`

// daemonFlags are the flags of the commands that run the daemon.
type daemonFlags struct {
	listenAddr, advertiseAddr, raftAddr, raftAdvertiseAddr       string
	gossipAddr, gossipAdvertiseAddr                              string
	publishTokens, auditLog                                      string
	unlockKeyFile                                                string
	onRenew, reloadSignal, reloadPIDFile, certGroup, metricsAddr string
	onRenewTimeout, onRenewSplay                                 time.Duration
	maxHeartbeats, maxSigns                                      int
}

func (d *daemonFlags) register(cmd *cobra.Command) {
	d.registerAddrs(cmd)
	f := cmd.Flags()
	f.StringVar(&d.unlockKeyFile, "unlock-key-file", "", "with autolock, a file holding the unlock key (one per line: the keys before and after a rotation may both be there): a locked manager reads it, and waits for it, to unlock unattended")
	f.StringVar(&d.publishTokens, "publish-tokens", "", "as a manager, keep the current join tokens in DIR/worker.token and DIR/manager.token (0600), for nodes that join unattended")
	f.StringVar(&d.auditLog, "audit-log", "", "as a manager, append an audit log to FILE (0600): one JSON line, fsynced before the answer, per call that changes the cluster or hands out a secret, per refused call, and per change the leader makes by itself; no secret is ever written")
	f.StringVar(&d.onRenew, "on-renew", "", "command to run (sh -c) after the certificate files change: renewal, rotation, CRL; their paths are in $QUORUMCA_CERT_FILE, $QUORUMCA_KEY_FILE, $QUORUMCA_CA_FILE, $QUORUMCA_CRL_FILE")
	f.DurationVar(&d.onRenewTimeout, "on-renew-timeout", agent.DefaultHookTimeout, "how long --on-renew may run before it is killed")
	f.DurationVar(&d.onRenewSplay, "on-renew-splay", agent.DefaultHookSplay, "the most a change waits, at random, before the hooks run, so that a fleet does not reload at once (0: the default; negative: none)")
	f.StringVar(&d.reloadSignal, "reload-signal", "", "signal (HUP, USR1, ...) to send to the process in --reload-pidfile after the certificate files change")
	f.StringVar(&d.reloadPIDFile, "reload-pidfile", "", "file holding the process ID --reload-signal goes to (nginx's pid file, for one)")
	f.StringVar(&d.certGroup, "cert-group", "", "group (name or ID) that may read the certificate files (and a worker's node.key), for services on this machine")
	f.StringVar(&d.metricsAddr, "metrics-addr", "", "HOST:PORT to serve Prometheus metrics (/metrics) and probes (/healthz, /readyz) on; off when empty")
	f.IntVar(&d.maxHeartbeats, "max-heartbeats-per-second", manager.DefaultMaxHeartbeatsPerSecond, "as the leader, answer at most this many heartbeats a second: a larger cluster is told a longer heartbeat period (and down-detection follows it)")
	f.IntVar(&d.maxSigns, "max-concurrent-signs", manager.DefaultMaxConcurrentSigns, "as a manager, sign and commit at most this many renewals at once; more are answered busy, and nodes retry after a jittered wait")
}

// registerAddrs registers the address flags alone.
func (d *daemonFlags) registerAddrs(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&d.listenAddr, "listen-addr", manager.DefaultListenAddr, "API listen address (host:port)")
	f.StringVar(&d.advertiseAddr, "advertise-addr", "", "API address other nodes reach this manager at (default: the listen address)")
	f.StringVar(&d.raftAddr, "raft-addr", manager.DefaultRaftAddr, "Raft listen address (host:port)")
	f.StringVar(&d.raftAdvertiseAddr, "raft-advertise-addr", "", "Raft address other managers reach this one at (default: the Raft listen address)")
	f.StringVar(&d.gossipAddr, "gossip-addr", agent.DefaultGossipAddr, "gossip listen address, TCP and UDP (host:port)")
	f.StringVar(&d.gossipAdvertiseAddr, "gossip-advertise-addr", "", "gossip address other nodes reach this one at (default: picked from the host's addresses)")
}

// nodeConfig turns the daemon flags into a node configuration. An address
// flag given on the command line overrides what node.json recorded at init
// or join; one left out takes the record, else its default.
func (g *globals) nodeConfig(cmd *cobra.Command, d *daemonFlags) (node.Config, error) {
	log, err := g.logger()
	if err != nil {
		return node.Config{}, err
	}
	fl := cmd.Flags()
	given := func(name, value string) string {
		if fl.Changed(name) {
			return value
		}
		return ""
	}
	cfg := node.Config{
		DataDir:             g.dataDir,
		Logger:              log,
		Out:                 cmd.ErrOrStderr(),
		ListenAddr:          given("listen-addr", d.listenAddr),
		AdvertiseAddr:       given("advertise-addr", d.advertiseAddr),
		RaftAddr:            given("raft-addr", d.raftAddr),
		RaftAdvertiseAddr:   given("raft-advertise-addr", d.raftAdvertiseAddr),
		GossipAddr:          given("gossip-addr", d.gossipAddr),
		GossipAdvertiseAddr: given("gossip-advertise-addr", d.gossipAdvertiseAddr),
	}
	cfg.Manager.PublishTokens = d.publishTokens
	cfg.Manager.MaxHeartbeatsPerSecond = d.maxHeartbeats
	cfg.Manager.MaxConcurrentSigns = d.maxSigns
	cfg.UnlockKeyFile = d.unlockKeyFile
	cfg.CertGroup = d.certGroup
	cfg.MetricsAddr = d.metricsAddr
	cfg.AuditLog = d.auditLog
	cfg.Hooks = agent.HookConfig{Command: d.onRenew, PIDFile: d.reloadPIDFile, Timeout: d.onRenewTimeout, Splay: d.onRenewSplay}
	if d.reloadSignal != "" {
		sig, err := agent.ParseSignal(d.reloadSignal)
		if err != nil {
			return node.Config{}, err
		}
		cfg.Hooks.Signal = sig
	}
	if err := cfg.Hooks.Validate(); err != nil {
		return node.Config{}, err
	}
	// The addresses as the manager would take them, checked now: a typo
	// is refused before anything is created.
	mc := manager.DefaultConfig()
	mc.DataDir = g.dataDir
	for _, a := range []struct {
		field *string
		value string
	}{
		{&mc.ListenAddr, d.listenAddr}, {&mc.AdvertiseAddr, d.advertiseAddr},
		{&mc.RaftListenAddr, d.raftAddr}, {&mc.RaftAdvertiseAddr, d.raftAdvertiseAddr},
		{&mc.GossipAddr, d.gossipAddr}, {&mc.GossipAdvertiseAddr, d.gossipAdvertiseAddr},
	} {
		*a.field = a.value
	}
	mc.MaxHeartbeatsPerSecond, mc.MaxConcurrentSigns = d.maxHeartbeats, d.maxSigns
	return cfg, mc.Validate()
}

func newInitCmd(g *globals) *cobra.Command {
	var (
		d             daemonFlags
		certExpiry    time.Duration
		caCert, caKey string
		externalCAs   []string
		autolock      bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new cluster with this machine as its first manager, and run it",
		Long: `Create a new cluster with this machine as its first manager, and run it
in the foreground (under systemd, docker, or a terminal left open).

` + daemonEnvHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := agent.CheckDataDir(g.dataDir); err != nil {
				return err
			}
			cfg, err := g.nodeConfig(cmd, &d)
			if err != nil {
				return err
			}
			if certExpiry < ca.MinCertExpiry {
				return fmt.Errorf("--cert-expiry %s is under the minimum of %s", certExpiry, ca.MinCertExpiry)
			}
			opts := manager.InitOptions{CertExpiry: certExpiry, Autolock: autolock}
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
			cfg.Init = &opts
			return node.Run(cmd.Context(), cfg)
		},
	}
	d.register(cmd)
	cmd.Flags().DurationVar(&certExpiry, "cert-expiry", ca.DefaultCertExpiry, "validity of node certificates (minimum 1h)")
	cmd.Flags().BoolVar(&autolock, "autolock", false, "seal every manager's keys under an unlock key, printed once: a manager that restarts is locked until it is given it")
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
	for _, w := range ca.Lint(m) {
		fmt.Fprintf(os.Stderr, "warning: --ca-cert: %s\n", w)
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
` + "`ps`" + `. The node then runs in the foreground.

` + daemonEnvHelp,
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
			cfg, err := g.nodeConfig(cmd, &d)
			if err != nil {
				return err
			}
			if err := agent.CheckFresh(g.dataDir); err != nil {
				return err
			}
			cfg.Join = &node.Join{Token: token, Addr: args[0]}
			return node.Run(cmd.Context(), cfg)
		},
	}
	d.register(cmd)
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file whose first line is the join token (default: $QUORUMCA_JOIN_TOKEN)")
	cmd.Flags().StringVar(&token, "token", "", "join token (SWMTKN-1-...); visible to every local user in ps: prefer --token-file")
	return cmd
}

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
		token, err := agent.ReadTokenFile(file)
		return token, "--token-file " + file, err
	}
	if token := strings.TrimSpace(os.Getenv("QUORUMCA_JOIN_TOKEN")); token != "" {
		return token, "QUORUMCA_JOIN_TOKEN", nil
	}
	return "", "", errors.New("no join token: give --token-file FILE or set QUORUMCA_JOIN_TOKEN; get one with `quorumca join-token -q worker` on a manager")
}

func newRunCmd(g *globals) *cobra.Command {
	var (
		d                   daemonFlags
		doInit, forceNew    bool
		tokenFile, joinAddr string
	)
	cmd := &cobra.Command{
		Use:   "run [--init | --join-token-file F --join-addr MANAGER_ADDR | --force-new-cluster]",
		Short: "Run the node stored in --data-dir (after init or join, or a restart)",
		Long: `Run the node stored in --data-dir.

For nodes that start unattended (a container's entrypoint), when --data-dir
holds no node yet: --init creates a cluster, as quorumca init does;
--join-token-file waits until the file exists, then joins through
--join-addr with the token it holds, asking again (and re-reading the file)
until the join succeeds. A manager started with --publish-tokens DIR keeps
the current join tokens in DIR/worker.token and DIR/manager.token for them.
When --data-dir holds a node, it runs; --join-addr is then a manager to try
first (one restored from a backup on a new address).

--force-new-cluster is for a manager that survived the loss of the
majority of managers: it becomes the only voter, keeping the cluster's
identity (cluster ID, CA, nodes, tokens); the lost managers are removed,
and must join again with a manager token from an empty data directory.

` + daemonEnvHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if doInit && tokenFile != "" {
				return errors.New("--init and --join-token-file exclude each other: one node creates the cluster, the others join it")
			}
			if tokenFile != "" && joinAddr == "" {
				return errors.New("--join-token-file needs --join-addr, the manager to join through")
			}
			if forceNew && (doInit || tokenFile != "") {
				return errors.New("--force-new-cluster recovers the manager --data-dir holds: it goes with neither --init nor --join-token-file")
			}
			if err := agent.CheckDataDir(g.dataDir); err != nil {
				return err
			}
			cfg, err := g.nodeConfig(cmd, &d)
			if err != nil {
				return err
			}
			switch {
			case doInit:
				cfg.Init = &manager.InitOptions{CertExpiry: ca.DefaultCertExpiry}
			case tokenFile != "":
				cfg.Join = &node.Join{TokenFile: tokenFile, Addr: joinAddr, Retry: true}
			case joinAddr != "":
				if _, err := os.Stat(filepath.Join(g.dataDir, agent.NodeFile)); err != nil {
					return fmt.Errorf("--join-addr without --join-token-file adds a manager to try to a node already joined, and %s holds none: give --join-token-file too, to join", g.dataDir)
				}
				cfg.ManagerAddrs = []string{joinAddr}
			}
			if forceNew {
				if _, err := os.Stat(filepath.Join(g.dataDir, agent.NodeFile)); err != nil {
					return fmt.Errorf("--force-new-cluster: %s holds no node: it recovers a manager's data directory", g.dataDir)
				}
				cfg.Manager.ForceNewCluster = true
			}
			return node.Run(cmd.Context(), cfg)
		},
	}
	d.register(cmd)
	f := cmd.Flags()
	f.BoolVar(&doInit, "init", false, "when --data-dir holds no node, create a cluster first")
	f.StringVar(&tokenFile, "join-token-file", "", "when --data-dir holds no node, join with the token in this file once it exists")
	f.StringVar(&joinAddr, "join-addr", "", "with --join-token-file: the manager to join through (host:port); on a node already joined, a manager to try first")
	f.BoolVar(&forceNew, "force-new-cluster", false, "on a manager that survived the loss of the majority: become the only voter, keeping the cluster's identity; the lost managers are removed")
	return cmd
}
