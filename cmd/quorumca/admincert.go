package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/manager"
)

func newAdminCertCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "admin-cert", Short: "Administrator client certificates for --host tcp://"}
	cmd.AddCommand(newAdminCertCreateCmd(g), newAdminCertLsCmd(g), newAdminCertRmCmd(g))
	return cmd
}

func newAdminCertCreateCmd(g *globals) *cobra.Command {
	var (
		out string
		ttl time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --out DIR [--ttl D]",
		Short: "Issue an admin client certificate into DIR (ca.pem, cert.pem, key.pem); on a manager's control socket only",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			if out == "" {
				return fmt.Errorf("--out DIR is required")
			}
			if ttl != 0 && (ttl < time.Minute || ttl > manager.MaxAdminCertTTL) {
				return fmt.Errorf("--ttl %s: give between 1m and %s", ttl, manager.MaxAdminCertTTL)
			}
			key, err := ca.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			keyPEM, err := ca.MarshalKey(key)
			if err != nil {
				return err
			}
			csr, err := ca.NewCSR(rand.Reader, key, "")
			if err != nil {
				return err
			}
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.IssueAdminCertificate(ctx, &api.IssueAdminCertificateRequest{Csr: csr, TtlSeconds: int64(ttl / time.Second)})
			if err != nil {
				return rpcError(err)
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			for _, f := range []struct {
				name string
				data []byte
				perm os.FileMode
			}{
				{"key.pem", keyPEM, 0o600},
				{"cert.pem", resp.GetCertificate(), 0o644},
				{"ca.pem", resp.GetBundle(), 0o644},
			} {
				if err := agent.WriteFileAtomic(filepath.Join(out, f.name), f.data, f.perm); err != nil {
					return err
				}
			}
			if g.format == "json" {
				j := adminCertCreatedJSON{
					Dir: out, CA: filepath.Join(out, "ca.pem"), Cert: filepath.Join(out, "cert.pem"), Key: filepath.Join(out, "key.pem"),
					Serial: resp.GetSerial(),
				}
				if certs, err := ca.ParseCertificates(resp.GetCertificate()); err == nil {
					j.NotAfter = certs[0].NotAfter.UTC()
				}
				return writeJSON(cmd.OutOrStdout(), j)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Wrote ca.pem, cert.pem and key.pem to %s (serial %s, valid %s). Use them with:\n\n    QUORUMCA_CERT_PATH=%s quorumca --host tcp://MANAGER:2377 status\n\nRevoke it with `quorumca admin-cert rm %s`.\n",
				out, resp.GetSerial(), validity(resp.GetCertificate()), out, resp.GetSerial())
			return nil
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().StringVar(&out, "out", "", "directory to write ca.pem, cert.pem and key.pem into")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, fmt.Sprintf("validity of the certificate (default %s, at most %s)", manager.DefaultAdminCertTTL, manager.MaxAdminCertTTL))
	return cmd
}

// adminCertCreatedJSON is the stable --format json shape of admin-cert
// create: where the files are, never what the key is.
type adminCertCreatedJSON struct {
	Dir      string    `json:"dir"`
	CA       string    `json:"ca_file"`
	Cert     string    `json:"cert_file"`
	Key      string    `json:"key_file"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

// adminCertRmJSON is the stable --format json shape of admin-cert rm: the
// serials revoked, none when none was left to revoke.
type adminCertRmJSON struct {
	Revoked []string `json:"revoked"`
}

// adminCertJSON is the stable --format json shape of admin-cert ls.
type adminCertJSON struct {
	Serial    string     `json:"serial"`
	ID        string     `json:"id"`
	IssuedBy  string     `json:"issued_by"`
	IssuedAt  time.Time  `json:"issued_at"`
	NotAfter  time.Time  `json:"not_after"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

func newAdminCertLsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the admin certificates the cluster records (revoked ones until they expire)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			client, ctx, done, err := g.control(cmd, 15*time.Second)
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.ListAdminCertificates(ctx, &api.ListAdminCertificatesRequest{})
			if err != nil {
				return rpcError(err)
			}
			out := []adminCertJSON{}
			for _, a := range resp.GetCertificates() {
				j := adminCertJSON{Serial: a.GetSerial(), ID: a.GetId(), IssuedBy: a.GetIssuedBy(),
					IssuedAt: time.Unix(a.GetIssuedAt(), 0).UTC(), NotAfter: time.Unix(a.GetNotAfter(), 0).UTC()}
				if a.GetRevokedAt() != 0 {
					r := time.Unix(a.GetRevokedAt(), 0).UTC()
					j.RevokedAt = &r
				}
				out = append(out, j)
			}
			w := cmd.OutOrStdout()
			if g.format == "json" {
				return writeJSON(w, out)
			}
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERIAL\tID\tISSUED BY\tISSUED\tEXPIRES\tSTATUS")
			for _, a := range out {
				state := "good"
				if a.RevokedAt != nil {
					state = "revoked " + a.RevokedAt.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Serial, a.ID, a.IssuedBy, a.IssuedAt.Format(time.RFC3339), a.NotAfter.Format(time.RFC3339), state)
			}
			return tw.Flush()
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

func newAdminCertRmCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rm SERIAL... | all",
		Short: "Revoke admin certificates: every manager refuses them from then on",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			req := &api.RevokeAdminCertificatesRequest{}
			if len(args) == 1 && strings.EqualFold(args[0], "all") {
				req.All = true
			} else {
				req.Serials = args
			}
			client, ctx, done, err := g.control(cmd, 15*time.Second)
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.RevokeAdminCertificates(ctx, req)
			if err != nil {
				return rpcError(err)
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), adminCertRmJSON{Revoked: append([]string{}, resp.GetSerials()...)})
			}
			if len(resp.GetSerials()) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "No admin certificate was left to revoke.")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked %s.\n", strings.Join(resp.GetSerials(), ", "))
			return nil
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}
