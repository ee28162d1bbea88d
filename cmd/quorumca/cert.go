package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

func newCertCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Manage the certificates the cluster issued",
	}
	cmd.AddCommand(newCertRevokeCmd(g))
	return cmd
}

// certRevokedJSON is the stable --format json shape of cert revoke.
type certRevokedJSON struct {
	// Serial is the serial as given.
	Serial string `json:"serial"`
	// Kind is "node" or "admin"; ID the node's ID, or the admin
	// certificate's.
	Kind string `json:"kind"`
	ID   string `json:"id"`
	// Current: the node's current certificate (it renews with a fresh
	// key at its next heartbeat).
	Current bool   `json:"current"`
	Reason  string `json:"reason"`
}

func newCertRevokeCmd(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke SERIAL [--reason R]",
		Short: "Revoke a node or admin certificate by serial (hex, as node ls or openssl show it)",
		Long: `Revoke a node or admin certificate by its serial number: every manager
refuses it from the moment the revocation commits, and the CRLs every node
keeps in certificates/crl.pem list it within a heartbeat.

An earlier certificate of a live node (a leaked old key) is revoked alone.
Revoking a node's current certificate makes the node renew with a fresh key
at its next heartbeat; it does not remove the node: to shut a node out, use
quorumca node rm.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			code, err := ca.ParseReason(reason)
			if err != nil {
				return err
			}
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.RevokeCertificate(ctx, &api.RevokeCertificateRequest{Serial: args[0], Reason: int32(code)})
			if err != nil {
				return rpcError(err)
			}
			w := cmd.OutOrStdout()
			if g.format == "json" {
				return writeJSON(w, certRevokedJSON{Serial: args[0], Kind: resp.GetKind(), ID: resp.GetId(), Current: resp.GetCurrent(), Reason: reason})
			}
			switch {
			case resp.GetKind() == "admin":
				fmt.Fprintf(w, "Revoked admin certificate %s (%s).\n", args[0], resp.GetId())
			case resp.GetCurrent():
				fmt.Fprintf(w, "Revoked the current certificate of node %s: it renews with a fresh key at its next heartbeat.\n", resp.GetId())
			default:
				fmt.Fprintf(w, "Revoked an earlier certificate of node %s.\n", resp.GetId())
			}
			return nil
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 reason: unspecified, keyCompromise, affiliationChanged, superseded or cessationOfOperation")
	return cmd
}
