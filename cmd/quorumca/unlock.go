package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// printAutolock says what autolock is now, with the unlock key when one
// was just made.
func printAutolock(w io.Writer, on bool, key string) {
	switch {
	case on && key != "":
		fmt.Fprintf(w, "Autolock is on. Keep this unlock key safe, away from the managers: a manager that restarts needs it (`quorumca unlock`, or `quorumca run --unlock-key-file F`).\n\n    %s\n\n", key)
	case on:
		fmt.Fprintln(w, "Autolock is on.")
	default:
		fmt.Fprintln(w, "Autolock is off: the managers' keys are kept in clear on their disks.")
	}
}

// unlockKeyJSON is the stable --format json shape of unlock-key: the key,
// which the table form prints too.
type unlockKeyJSON struct {
	UnlockKey string `json:"unlock_key"`
	Rotated   bool   `json:"rotated,omitempty"`
}

// unlockJSON is the stable --format json shape of unlock.
type unlockJSON struct {
	Unlocked bool `json:"unlocked"`
}

func newUnlockKeyCmd(g *globals) *cobra.Command {
	var quiet, rotate bool
	cmd := &cobra.Command{
		Use:   "unlock-key [-q] [--rotate]",
		Short: "Show (or rotate) the unlock key of a cluster with autolock on",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.UnlockKey(ctx, &api.UnlockKeyRequest{Rotate: rotate})
			if err != nil {
				return rpcError(err)
			}
			w := cmd.OutOrStdout()
			if quiet {
				fmt.Fprintln(w, resp.GetUnlockKey())
				return nil
			}
			if g.format == "json" {
				return writeJSON(w, unlockKeyJSON{UnlockKey: resp.GetUnlockKey(), Rotated: rotate})
			}
			if rotate {
				fmt.Fprintln(w, "Rotated the unlock key. A manager that was down meanwhile unlocks with the key before, then moves to this one: an --unlock-key-file may hold both, one per line.")
			}
			fmt.Fprintf(w, "To unlock a manager, run `quorumca unlock` on it and give:\n\n    %s\n\n", resp.GetUnlockKey())
			return nil
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the key only (wins over --format)")
	cmd.Flags().BoolVar(&rotate, "rotate", false, "replace the unlock key")
	return cmd
}

func newUnlockCmd(g *globals) *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "unlock [--key-file F]",
		Short: "Give a locked manager the unlock key (read from the terminal, or --key-file)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			key, err := readUnlockKey(cmd, keyFile, "--key-file")
			if err != nil {
				return err
			}
			if _, err := ca.ParseUnlockKey(key); err != nil {
				return err
			}
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			if _, err := client.Unlock(ctx, &api.UnlockRequest{UnlockKey: key}); err != nil {
				return rpcError(err)
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), unlockJSON{Unlocked: true})
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Unlocked: the manager starts.")
			return nil
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().StringVar(&keyFile, "key-file", "", "file whose first line is the unlock key (default: read it from standard input)")
	return cmd
}

// readUnlockKey reads the key from file, or from standard input (a prompt
// on the terminal); never from the command line, where ps shows it.
func readUnlockKey(cmd *cobra.Command, file, flag string) (string, error) {
	if file != "" {
		key, err := agent.ReadTokenFile(file)
		if err != nil {
			return "", fmt.Errorf("%s: %w", flag, err)
		}
		return key, nil
	}
	if f, ok := cmd.InOrStdin().(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			fmt.Fprint(cmd.ErrOrStderr(), "Unlock key: ")
		}
	}
	line, err := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), 4096)).ReadString('\n')
	if key := strings.TrimSpace(line); key != "" {
		return key, nil
	}
	if err != nil && err != io.EOF {
		return "", err
	}
	return "", fmt.Errorf("no unlock key on standard input: give it there, or with %s; `quorumca unlock-key` on an unlocked manager shows it", flag)
}
