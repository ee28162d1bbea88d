package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/backup"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/manager"
)

// minPassphrase is the shortest passphrase a backup takes.
const minPassphrase = 12

// readPassphrase reads a passphrase from a file: its first line, without
// the line ending.
func readPassphrase(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--passphrase-file: %w", err)
	}
	defer f.Close()
	line, err := bufio.NewReader(io.LimitReader(f, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("--passphrase-file: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if len(line) < minPassphrase {
		return nil, fmt.Errorf("--passphrase-file %s: the passphrase (its first line) must be at least %d characters", path, minPassphrase)
	}
	return []byte(line), nil
}

func newBackupCmd(g *globals) *cobra.Command {
	var (
		out, passFile string
		stale         bool
	)
	cmd := &cobra.Command{
		Use:   "backup --out FILE [--passphrase-file F] [--stale]",
		Short: "Write an encrypted backup of the cluster's state, from any manager, while it runs",
		Long: `Write an encrypted backup of the cluster's state: a consistent copy at a
committed index, read through the leader. It holds the CA's keys, so it is
always encrypted: with the passphrase in --passphrase-file, else, with
autolock on, with the cluster's unlock key. Without either it refuses.

With no leader (the majority lost), --stale backs up what the manager has
applied, and says so in the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			if out == "" {
				return errors.New("--out FILE is required: where to write the backup")
			}
			var secret backup.Secret
			if passFile != "" {
				p, err := readPassphrase(passFile)
				if err != nil {
					return err
				}
				secret.Passphrase = p
			}
			client, ctx, done, err := g.control(cmd, 5*time.Minute)
			if err != nil {
				return err
			}
			defer done()
			info, st, err := fetchState(ctx, client, stale)
			if err != nil {
				return err
			}
			if secret.Passphrase == nil {
				if !st.Autolock {
					return errors.New("autolock is off: give --passphrase-file F, a passphrase to encrypt the backup with (it holds the CA's keys)")
				}
				secret.UnlockKey = st.UnlockKey
			}
			var file bytes.Buffer
			h, err := backup.Write(&file, rand.Reader, backup.Header{
				Term: info.GetTerm(), TakenAt: time.Unix(0, info.GetTakenAt()).UTC(), TakenFrom: info.GetTakenFrom(), Stale: info.GetStale(),
			}, secret, st)
			if err != nil {
				return err
			}
			if err := agent.WriteFileAtomic(out, file.Bytes(), 0o600); err != nil {
				return err
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), toBackupJSON(out, h))
			}
			printBackup(cmd.OutOrStdout(), out, h)
			return nil
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().StringVarP(&out, "out", "o", "", "file to write the backup to (0600; replaced atomically)")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "file whose first line is the passphrase to encrypt with (at least 12 characters); default with autolock on: the unlock key")
	cmd.Flags().BoolVar(&stale, "stale", false, "with no leader: back up what this manager has applied")
	return cmd
}

// fetchState reads the state a Backup stream carries.
func fetchState(ctx context.Context, client api.ControlClient, stale bool) (*api.BackupInfo, *fsm.State, error) {
	stream, err := client.Backup(ctx, &api.BackupRequest{Stale: stale})
	if err != nil {
		return nil, nil, rpcError(err)
	}
	info, data, err := api.ReceiveBackup(stream)
	if err != nil {
		return nil, nil, rpcError(err)
	}
	st, err := fsm.ReadState(bytes.NewReader(data))
	if err != nil {
		return nil, nil, err
	}
	if st.Index != info.GetIndex() || !st.Initialized() {
		return nil, nil, fmt.Errorf("the manager sent a state at index %d, not the %d it named", st.Index, info.GetIndex())
	}
	return info, st, nil
}

// backupJSON is the stable --format json shape of backup: what the file
// holds and how it is keyed, never the key.
type backupJSON struct {
	File            string    `json:"file"`
	ClusterID       string    `json:"cluster_id"`
	Index           uint64    `json:"index"`
	Term            uint64    `json:"term"`
	TakenAt         time.Time `json:"taken_at"`
	TakenFrom       string    `json:"taken_from"`
	Stale           bool      `json:"stale"`
	Nodes           int       `json:"nodes"`
	Managers        int       `json:"managers"`
	RootFingerprint string    `json:"root_fingerprint"`
	// EncryptedWith is "passphrase" or "unlock-key" (then UnlockKeyID
	// names the key).
	EncryptedWith string `json:"encrypted_with"`
	UnlockKeyID   string `json:"unlock_key_id,omitempty"`
}

func toBackupJSON(path string, h backup.Header) backupJSON {
	return backupJSON{
		File: path, ClusterID: h.ClusterID, Index: h.Index, Term: h.Term, TakenAt: h.TakenAt.UTC(), TakenFrom: h.TakenFrom,
		Stale: h.Stale, Nodes: h.Nodes, Managers: h.Managers, RootFingerprint: h.RootFingerprint,
		EncryptedWith: h.Key.Kind, UnlockKeyID: h.Key.UnlockKeyID,
	}
}

func printBackup(w io.Writer, path string, h backup.Header) {
	keyed := "the passphrase"
	if h.Key.Kind == backup.KeyUnlockKey {
		keyed = "the unlock key " + h.Key.UnlockKeyID
	}
	fmt.Fprintf(w, "Backup of cluster %s written to %s, encrypted with %s.\n", h.ClusterID, path, keyed)
	fmt.Fprintf(w, "  index %d (term %d), taken %s from manager %s\n", h.Index, h.Term, h.TakenAt.Format(time.RFC3339), h.TakenFrom)
	fmt.Fprintf(w, "  %d nodes (%d managers), root sha256:%s\n", h.Nodes, h.Managers, h.RootFingerprint)
	if h.Stale {
		fmt.Fprintln(w, "  stale: no leader confirmed this manager's state was current")
	}
}

func newRestoreCmd(g *globals) *cobra.Command {
	var (
		d                       daemonFlags
		passFile, unlockKeyFile string
	)
	cmd := &cobra.Command{
		Use:   "restore FILE --data-dir DIR [--passphrase-file F | --unlock-key-file F]",
		Short: "Make, from a backup, the data directory of a manager that restarts the cluster with the same identity",
		Long: `Make, in an empty --data-dir, a manager that restarts the cluster from a
backup: the same cluster ID, CA, nodes, tokens and settings; start it with
quorumca run. The managers of the backup are removed (each joins again with
a manager token, from an empty data directory); workers keep their IDs and
certificates, and reconnect: through this manager's address if it is one
they know, else run each once with --join-addr ADDR.

The backup opens with the passphrase it was written with
(--passphrase-file), or with the unlock key in force when it was taken
(--unlock-key-file, else standard input).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			if err := agent.CheckDataDir(g.dataDir); err != nil {
				return err
			}
			if err := agent.CheckFresh(g.dataDir); err != nil {
				return err
			}
			if entries, err := os.ReadDir(g.dataDir); err == nil && len(entries) > 0 {
				return fmt.Errorf("--data-dir %s is not empty: restore into an empty or new directory", g.dataDir)
			}
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			h, _, err := backup.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
			if err != nil {
				return err
			}
			var secret backup.Secret
			switch h.Key.Kind {
			case backup.KeyPassphrase:
				if passFile == "" {
					return errors.New("this backup is encrypted with a passphrase: give --passphrase-file F")
				}
				if secret.Passphrase, err = readPassphrase(passFile); err != nil {
					return err
				}
			case backup.KeyUnlockKey:
				key, err := readUnlockKey(cmd, unlockKeyFile, "--unlock-key-file")
				if err != nil {
					return err
				}
				if _, err := ca.ParseUnlockKey(key); err != nil {
					return err
				}
				secret.UnlockKey = key
			}
			h, st, err := backup.Read(bytes.NewReader(raw), secret)
			if err != nil {
				return err
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			mc := manager.DefaultConfig()
			mc.DataDir, mc.Logger = g.dataDir, log
			mc.ListenAddr, mc.AdvertiseAddr = d.listenAddr, d.advertiseAddr
			mc.RaftListenAddr, mc.RaftAdvertiseAddr = d.raftAddr, d.raftAdvertiseAddr
			mc.GossipAddr, mc.GossipAdvertiseAddr = d.gossipAddr, d.gossipAdvertiseAddr
			if err := mc.Validate(); err != nil {
				return err
			}
			r, err := manager.Restore(cmd.Context(), mc, st, h.Term)
			if err != nil {
				return err
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), toRestoreJSON(g.dataDir, h, r))
			}
			printRestore(cmd.OutOrStdout(), g.dataDir, h, r)
			return nil
		},
	}
	addFormatFlag(cmd, g)
	d.registerAddrs(cmd)
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "file whose first line is the backup's passphrase")
	cmd.Flags().StringVar(&unlockKeyFile, "unlock-key-file", "", "file holding the unlock key the backup was taken under (default: read standard input)")
	return cmd
}

// restoreJSON is the stable --format json shape of restore.
type restoreJSON struct {
	ClusterID       string    `json:"cluster_id"`
	DataDir         string    `json:"data_dir"`
	NodeID          string    `json:"node_id"`
	Nodes           int       `json:"nodes"`
	RootFingerprint string    `json:"root_fingerprint"`
	BackupIndex     uint64    `json:"backup_index"`
	BackupTakenAt   time.Time `json:"backup_taken_at"`
	// RemovedManagers are the backup's managers, removed: each joins
	// again with a manager token.
	RemovedManagers []string `json:"removed_managers"`
	// Autolock: the manager starts locked, and takes the unlock key.
	Autolock bool `json:"autolock"`
	// StartCommand is how to start the manager.
	StartCommand string `json:"start_command"`
}

func toRestoreJSON(dir string, h backup.Header, r manager.Restored) restoreJSON {
	st := r.State
	out := restoreJSON{
		ClusterID: st.ClusterID, DataDir: dir, NodeID: r.NodeID, Nodes: st.Nodes.Len(), RootFingerprint: h.RootFingerprint,
		BackupIndex: h.Index, BackupTakenAt: h.TakenAt.UTC(), RemovedManagers: []string{}, Autolock: st.Autolock,
		StartCommand: restoreStart(dir, st.Autolock),
	}
	if st.Recovery != nil {
		out.RemovedManagers = append(out.RemovedManagers, st.Recovery.Lost...)
	}
	return out
}

// restoreStart is the command that starts the manager restore made in dir.
func restoreStart(dir string, autolock bool) string {
	start := "quorumca run --data-dir " + dir
	if autolock {
		start += " --unlock-key-file F"
	}
	return start
}

func printRestore(w io.Writer, dir string, h backup.Header, r manager.Restored) {
	st := r.State
	fmt.Fprintf(w, "Restored cluster %s into %s: %d nodes, root sha256:%s, from the backup at index %d taken %s.\n",
		st.ClusterID, dir, st.Nodes.Len(), h.RootFingerprint, h.Index, h.TakenAt.Format(time.RFC3339))
	fmt.Fprintf(w, "This manager is %s, the cluster's only one.\n", r.NodeID)
	if lost := st.Recovery.Lost; len(lost) > 0 {
		fmt.Fprintf(w, "The backup's managers are removed: %s. To bring one back, empty its data directory and join it with a manager token.\n", strings.Join(lost, ", "))
	}
	if st.Autolock {
		fmt.Fprintln(w, "Autolock is on: it starts locked, and takes the cluster's unlock key.")
	}
	fmt.Fprintf(w, "Start it with: %s\n", restoreStart(dir, st.Autolock))
	fmt.Fprintln(w, "Workers reconnect by themselves if it listens where a manager of the backup did; otherwise run each once with --join-addr and this manager's address.")
}
