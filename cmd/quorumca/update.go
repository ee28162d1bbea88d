package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

func newUpdateCmd(g *globals) *cobra.Command {
	var (
		certExpiry, grace time.Duration
		externalCAs       []string
		autolock          bool
	)
	cmd := &cobra.Command{
		Use:   "update [--cert-expiry D] [--rotation-grace D] [--external-ca SPEC]... [--autolock=true|false]",
		Short: "Change cluster settings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			fl := cmd.Flags()
			if !fl.Changed("cert-expiry") && !fl.Changed("rotation-grace") && !fl.Changed("external-ca") && !fl.Changed("autolock") {
				return fmt.Errorf("nothing to update: give --cert-expiry, --rotation-grace, --external-ca or --autolock")
			}
			external, err := parseExternalCAs(externalCAs)
			if err != nil {
				return err
			}
			req := &api.UpdateRequest{ExternalCa: externalToAPI(external)}
			if fl.Changed("cert-expiry") {
				if certExpiry < ca.MinCertExpiry {
					return fmt.Errorf("--cert-expiry %s is under the minimum of %s", certExpiry, ca.MinCertExpiry)
				}
				req.CertExpirySeconds = int64(certExpiry / time.Second)
			}
			if fl.Changed("rotation-grace") {
				if grace < fsm.MinRotationGrace {
					return fmt.Errorf("--rotation-grace %s is under the minimum of %s", grace, fsm.MinRotationGrace)
				}
				req.RotationGraceSeconds = int64(grace / time.Second)
			}
			if fl.Changed("autolock") {
				req.Autolock = &autolock
			}
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.Update(ctx, req)
			if err != nil {
				return rpcError(err)
			}
			w := cmd.OutOrStdout()
			if g.format == "json" {
				out := updateJSON{
					CertExpirySeconds: resp.GetCertExpirySeconds(), RotationGraceSeconds: resp.GetRotationGraceSeconds(),
					ExternalCAs: externalJSON(resp.GetExternalCa()), Autolock: resp.GetAutolock(),
				}
				// The unlock key, made when --autolock turned it on, as the
				// table form prints it.
				if fl.Changed("autolock") {
					out.UnlockKey = resp.GetUnlockKey()
				}
				return writeJSON(w, out)
			}
			if fl.Changed("cert-expiry") {
				fmt.Fprintf(w, "Cert expiry: %s. Nodes whose certificates outlive it renew now.\n", time.Duration(resp.GetCertExpirySeconds())*time.Second)
			}
			if fl.Changed("rotation-grace") {
				fmt.Fprintf(w, "Rotation grace: %s. A root rotation stops waiting for a node unreachable for longer.\n", time.Duration(resp.GetRotationGraceSeconds())*time.Second)
			}
			if fl.Changed("external-ca") {
				fmt.Fprintln(w, "External CAs, tried in order:")
				for _, e := range resp.GetExternalCa() {
					fmt.Fprintf(w, "  %s\n", describeExternal(e))
				}
			}
			if fl.Changed("autolock") {
				printAutolock(w, resp.GetAutolock(), resp.GetUnlockKey())
			}
			return nil
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().DurationVar(&certExpiry, "cert-expiry", 0, "validity of node certificates issued from now on (minimum 1h)")
	cmd.Flags().DurationVar(&grace, "rotation-grace", fsm.DefaultRotationGrace, "how long a root rotation waits for an unreachable node (minimum 1s)")
	cmd.Flags().BoolVar(&autolock, "autolock", false, "seal every manager's keys under an unlock key (a manager that restarts is locked until it is given it)")
	cmd.Flags().StringArrayVar(&externalCAs, "external-ca", nil, "replace the cluster's external CAs (each must answer and sign with the cluster's CA): "+externalCAUsage)
	return cmd
}

// updateJSON is the stable --format json shape of update: the cluster's
// settings after the change, every one of them.
type updateJSON struct {
	CertExpirySeconds    int64            `json:"cert_expiry_seconds"`
	RotationGraceSeconds int64            `json:"rotation_grace_seconds"`
	ExternalCAs          []externalCAJSON `json:"external_cas"`
	Autolock             bool             `json:"autolock"`
	// UnlockKey is the key made when this update turned autolock on.
	UnlockKey string `json:"unlock_key,omitempty"`
}

// externalCAJSON is an external CA in --format json: never its auth key,
// only whether one is set.
type externalCAJSON struct {
	Protocol   string `json:"protocol"`
	URL        string `json:"url"`
	AuthKeySet bool   `json:"auth_key_set"`
}

func externalJSON(cas []*api.ExternalCA) []externalCAJSON {
	out := []externalCAJSON{}
	for _, e := range cas {
		out = append(out, externalCAJSON{Protocol: e.GetProtocol(), URL: e.GetUrl(), AuthKeySet: len(e.GetAuthKey()) > 0})
	}
	return out
}

func newJoinTokenCreateCmd(g *globals) *cobra.Command {
	var (
		ttl   time.Duration
		uses  int
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "create worker|manager [--ttl D] [--uses N] [-q]",
		Short: "Add a join token that expires after --ttl or runs out after --uses joins",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			if args[0] != "worker" && args[0] != "manager" {
				return fmt.Errorf("role %q: use worker or manager", args[0])
			}
			if ttl < 0 || (ttl > 0 && ttl < time.Second) {
				return fmt.Errorf("--ttl %s: give a duration of at least 1s, or 0 for none", ttl)
			}
			if uses < 0 {
				return fmt.Errorf("--uses %d: give a positive number, or 0 for unlimited", uses)
			}
			if ttl == 0 && uses == 0 {
				return fmt.Errorf("give --ttl or --uses (or both): a token that never expires nor runs out is what `join-token` already shows")
			}
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.CreateToken(ctx, &api.CreateTokenRequest{
				Role: args[0], TtlSeconds: int64(ttl / time.Second), Uses: int32(uses),
			})
			if err != nil {
				return rpcError(err)
			}
			w := cmd.OutOrStdout()
			if quiet {
				fmt.Fprintln(w, resp.GetToken())
				return nil
			}
			addr := g.askedAddr(ctx, client, resp.GetManagers())
			if g.format == "json" {
				return writeJSON(w, joinTokenJSON{ID: resp.GetId(), Role: args[0], Token: resp.GetToken(), JoinAddr: addr})
			}
			fmt.Fprintf(w, "Created join token %s.\n", resp.GetId())
			printJoinCommand(w, args[0], resp.GetToken(), addr)
			return nil
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the token admits nodes (0: no expiry)")
	cmd.Flags().IntVar(&uses, "uses", 0, "how many nodes the token admits (0: unlimited)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the token only (wins over --format)")
	return cmd
}

func newJoinTokenLsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the extra join tokens (never their secrets)",
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
			resp, err := client.ListTokens(ctx, &api.ListTokensRequest{})
			if err != nil {
				return rpcError(err)
			}
			type tokenJSON struct {
				ID        string     `json:"id"`
				Role      string     `json:"role"`
				ExpiresAt *time.Time `json:"expires_at,omitempty"`
				UsesLeft  int32      `json:"uses_left"`
				CreatedAt time.Time  `json:"created_at"`
			}
			out := []tokenJSON{}
			for _, t := range resp.GetTokens() {
				tj := tokenJSON{ID: t.GetId(), Role: t.GetRole(), UsesLeft: t.GetUsesLeft(), CreatedAt: time.Unix(t.GetCreatedAt(), 0).UTC()}
				if e := t.GetExpiresAt(); e > 0 {
					at := time.Unix(e, 0).UTC()
					tj.ExpiresAt = &at
				}
				out = append(out, tj)
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tROLE\tEXPIRES\tUSES LEFT")
			for _, t := range out {
				exp, uses := "never", "unlimited"
				if t.ExpiresAt != nil {
					exp = t.ExpiresAt.Format(time.RFC3339)
				}
				if t.UsesLeft >= 0 {
					uses = fmt.Sprint(t.UsesLeft)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.Role, exp, uses)
			}
			return tw.Flush()
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

// tokenRevokedJSON is the stable --format json shape of join-token revoke.
type tokenRevokedJSON struct {
	ID string `json:"id"`
}

func newJoinTokenRevokeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke TOKEN_ID",
		Short: "Revoke an extra join token at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			if _, err := client.RevokeToken(ctx, &api.RevokeTokenRequest{Id: args[0]}); err != nil {
				return rpcError(err)
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), tokenRevokedJSON{ID: args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked join token %s.\n", args[0])
			return nil
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

// validity says until when a PEM certificate is valid.
func validity(certPEM []byte) string {
	certs, err := ca.ParseCertificates(certPEM)
	if err != nil {
		return "?"
	}
	return "until " + certs[0].NotAfter.UTC().Format(time.RFC3339)
}
