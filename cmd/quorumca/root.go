package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
)

// globals are the flags every command shares.
type globals struct {
	dataDir  string
	host     string
	format   string
	logLevel string
	// mTLS to a manager over tcp:// (seed 003's TLS between CLI and daemon).
	tlsCACert, tlsCert, tlsKey string
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "quorumca",
		Short: "A clustered certificate authority with Docker Swarm mode's PKI",
		Long: `A clustered certificate authority with Docker Swarm mode's PKI.

` + envHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// No flag takes its default from the environment: --help prints
	// defaults, and the environment may hold paths or tokens that are not
	// for every reader of a terminal. fromEnv applies it when a command
	// runs.
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if err := flagsFromEnv(cmd); err != nil {
			return err
		}
		g.fromEnv(cmd)
		// One meaning for "..": the lexical one of filepath.Join, which
		// the data dir checks and every file path under it use.
		g.dataDir = filepath.Clean(g.dataDir)
		return nil
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data-dir", defaultDataDir, "data directory; $QUORUMCA_DATA_DIR replaces the default")
	pf.StringVarP(&g.host, "host", "H", "", "daemon to talk to: unix://PATH or tcp://HOST:PORT (default: $QUORUMCA_HOST, else the control socket under --data-dir)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.StringVar(&g.tlsCACert, "tlscacert", "", "with --host tcp://: trust bundle to verify the manager against (default: $QUORUMCA_CERT_PATH/ca.pem)")
	pf.StringVar(&g.tlsCert, "tlscert", "", "with --host tcp://: admin (or manager) client certificate (default: $QUORUMCA_CERT_PATH/cert.pem)")
	pf.StringVar(&g.tlsKey, "tlskey", "", "with --host tcp://: key of --tlscert (default: $QUORUMCA_CERT_PATH/key.pem)")
	root.AddCommand(
		newInitCmd(g), newJoinCmd(g), newRunCmd(g),
		newStatusCmd(g), newJoinTokenCmd(g), newNodeCmd(g), newUpdateCmd(g), newCACmd(g), newAdminCertCmd(g),
		newUnlockKeyCmd(g), newUnlockCmd(g), newBackupCmd(g), newRestoreCmd(g), newCertCmd(g),
		newVersionCmd(g), newLeaveCmd(g),
	)
	refuseUnknownSubcommands(root)
	return root
}

// refuseUnknownSubcommands makes every command that only groups others
// (node, admin-cert, cert) refuse an argument that names none of them, as
// the root does: cobra would print the group's help and exit 0, and a
// script would take a typo for success. Run with no argument, such a
// command still prints its help.
func refuseUnknownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		refuseUnknownSubcommands(sub)
	}
	if c.HasParent() && c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = unknownSubcommand
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		if c.Annotations == nil {
			c.Annotations = map[string]string{}
		}
		c.Annotations[groupAnnotation] = "true"
	}
}

// groupAnnotation marks a command that only groups others: it prints its
// help, and needs no --format.
const groupAnnotation = "quorumca/group"

// unknownSubcommand is the Args of a group command: no argument, or the
// error cobra gives the root for an unknown command, with its suggestions.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default, set on the root only
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t") + "\n"
	}
	return fmt.Errorf("%s\nRun '%s --help' for usage", msg, cmd.CommandPath())
}

// defaultDataDir is --data-dir's default when QUORUMCA_DATA_DIR is unset.
const defaultDataDir = "/var/lib/quorumca"

// envHelp tells, in --help, which flags the environment sets.
const envHelp = `Environment: a flag left off the command line takes its value from
QUORUMCA_<FLAG>, the flag's name upper-cased with dashes as underscores
(QUORUMCA_DATA_DIR for --data-dir, QUORUMCA_LISTEN_ADDR for --listen-addr);
a flag given on the command line wins. This holds for the global flags on
every command, and for every flag of init, join and run (not
--force-new-cluster, nor --token: QUORUMCA_JOIN_TOKEN is join's token).
The flags of administration commands (--rotate, --ttl, ...) act once and
are not read from the environment. QUORUMCA_CERT_PATH is the directory of
ca.pem, cert.pem and key.pem for --tlscacert, --tlscert and --tlskey.`

// envCommands are the commands all of whose flags the environment may
// set: the daemon's, configured once for a service or a container.
var envCommands = []string{"init", "join", "run"}

// notFromEnv are flags of envCommands that the environment never sets:
// --force-new-cluster acts once, and a service that kept it set would
// throw away its peers at every restart; --token has
// QUORUMCA_JOIN_TOKEN, without the note that --token prints.
var notFromEnv = []string{"help", "force-new-cluster", "token"}

// EnvName returns the variable that sets the flag named flag:
// QUORUMCA_ and the name upper-cased, dashes as underscores.
func EnvName(flag string) string {
	return "QUORUMCA_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// flagsFromEnv sets each flag of cmd that the command line left out, and
// that the environment may set, from its QUORUMCA_ variable (an empty one
// counts as unset). A value the flag refuses is an error that names the
// variable.
func flagsFromEnv(cmd *cobra.Command) error {
	daemon := cmd.HasParent() && !cmd.Parent().HasParent() && slices.Contains(envCommands, cmd.Name())
	own := cmd.LocalNonPersistentFlags()
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || slices.Contains(notFromEnv, f.Name) {
			return
		}
		if !daemon && own.Lookup(f.Name) != nil {
			return
		}
		name := EnvName(f.Name)
		v := os.Getenv(name)
		if v == "" {
			return
		}
		if e := cmd.Flags().Set(f.Name, v); e != nil {
			err = fmt.Errorf("$%s (for --%s): %w", name, f.Name, e)
		}
	})
	return err
}

// fromEnv gives the TLS flags that neither the command line nor their own
// variables set their values from QUORUMCA_CERT_PATH (the directory of
// ca.pem, cert.pem and key.pem).
func (g *globals) fromEnv(cmd *cobra.Command) {
	fl := cmd.Flags()
	if dir := os.Getenv("QUORUMCA_CERT_PATH"); dir != "" {
		for _, f := range []struct {
			flag, file string
			value      *string
		}{
			{"tlscacert", "ca.pem", &g.tlsCACert},
			{"tlscert", "cert.pem", &g.tlsCert},
			{"tlskey", "key.pem", &g.tlsKey},
		} {
			if !fl.Changed(f.flag) {
				*f.value = filepath.Join(dir, f.file)
			}
		}
	}
}

func (g *globals) logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// dial connects to the daemon named by --host: by default the control
// socket under --data-dir; tcp://HOST:PORT with mutual TLS (--tlscacert,
// --tlscert, --tlskey, or the files of QUORUMCA_CERT_PATH).
func (g *globals) dial() (*grpc.ClientConn, error) {
	host := g.host
	if host == "" {
		host = "unix://" + filepath.Join(g.dataDir, agent.SocketFile)
	}
	if addr, ok := strings.CutPrefix(host, "tcp://"); ok {
		return g.dialTCP(addr)
	}
	path, ok := strings.CutPrefix(host, "unix://")
	if !ok {
		return nil, fmt.Errorf("--host %q: use unix://PATH or tcp://HOST:PORT", host)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no daemon control socket at %s (is `quorumca run --data-dir %s` running?): %w", path, filepath.Dir(path), err)
	}
	// What goes through the socket (a CA key, with ca --rotate) goes to
	// whoever listens on it: refuse one that another user could have put
	// there, or could replace before we connect.
	if err := agent.CheckSocket(path); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func (g *globals) dialTCP(addr string) (*grpc.ClientConn, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("--host tcp://%s: want tcp://HOST:PORT", addr)
	}
	if g.tlsCACert == "" || g.tlsCert == "" || g.tlsKey == "" {
		return nil, fmt.Errorf("--host tcp:// needs --tlscacert, --tlscert and --tlskey (or QUORUMCA_CERT_PATH holding ca.pem, cert.pem, key.pem); make them with `quorumca admin-cert create --out DIR` on a manager")
	}
	bundle, err := os.ReadFile(g.tlsCACert)
	if err != nil {
		return nil, fmt.Errorf("--tlscacert: %w", err)
	}
	roots, _, err := ca.ParseBundle(bundle)
	if err != nil {
		return nil, fmt.Errorf("--tlscacert: %w", err)
	}
	pair, err := tls.LoadX509KeyPair(g.tlsCert, g.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("--tlscert/--tlskey: %w", err)
	}
	cfg := agent.BundleClientTLS(roots, agent.ManagerName)
	cfg.Certificates = []tls.Certificate{pair}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
}
