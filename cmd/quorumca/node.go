package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/api"
)

func newNodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Manage the cluster's nodes",
	}
	cmd.AddCommand(newNodeLsCmd(g), newNodeInspectCmd(g), newNodeRoleCmd(g, "promote", "manager"),
		newNodeRoleCmd(g, "demote", "worker"), newNodeRmCmd(g))
	return cmd
}

// nodeJSON is the stable --format json shape of a node.
type nodeJSON struct {
	ID           string     `json:"id"`
	Role         string     `json:"role"`
	Addr         string     `json:"addr,omitempty"`
	RaftAddr     string     `json:"raft_addr,omitempty"`
	Status       string     `json:"status"`
	Reachability string     `json:"reachability,omitempty"`
	Leader       bool       `json:"leader"`
	CertSerial   string     `json:"cert_serial"`
	CertNotAfter time.Time  `json:"cert_not_after"`
	TLSStatus    string     `json:"tls_status"`
	JoinedAt     time.Time  `json:"joined_at"`
	LastSeen     *time.Time `json:"last_seen,omitempty"`
	// Unconfirmed: recorded by an entry a forced new cluster committed,
	// and not shown by the node since.
	Unconfirmed bool `json:"unconfirmed,omitempty"`
}

func toNodeJSON(n *api.Node) nodeJSON {
	out := nodeJSON{
		ID: n.GetId(), Role: n.GetRole(), Addr: n.GetAddr(), RaftAddr: n.GetRaftAddr(),
		Status: n.GetStatus(), Reachability: n.GetReachability(), Leader: n.GetLeader(),
		CertSerial: n.GetCertSerial(), CertNotAfter: time.Unix(n.GetCertNotAfter(), 0).UTC(),
		TLSStatus: n.GetTlsStatus(), JoinedAt: time.Unix(n.GetJoinedAt(), 0).UTC(),
		Unconfirmed: n.GetUnconfirmed(),
	}
	if s := n.GetLastSeen(); s > 0 {
		t := time.Unix(s, 0).UTC()
		out.LastSeen = &t
	}
	return out
}

func listNodes(cmd *cobra.Command, g *globals, id string) ([]nodeJSON, error) {
	client, ctx, done, err := g.control(cmd, 15*time.Second)
	if err != nil {
		return nil, err
	}
	defer done()
	resp, err := client.ListNodes(ctx, &api.ListNodesRequest{NodeId: id})
	if err != nil {
		return nil, rpcError(err)
	}
	out := make([]nodeJSON, 0, len(resp.GetNodes()))
	for _, n := range resp.GetNodes() {
		out = append(out, toNodeJSON(n))
	}
	return out, nil
}

func newNodeLsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			nodes, err := listNodes(cmd, g, "")
			if err != nil {
				return err
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), nodes)
			}
			return printNodes(cmd.OutOrStdout(), nodes)
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

func printNodes(w io.Writer, nodes []nodeJSON) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tROLE\tSTATUS\tMANAGER STATUS\tCERT EXPIRES\tTLS STATUS")
	for _, n := range nodes {
		mgr := n.Reachability
		if n.Leader {
			mgr = "leader"
		}
		role := "worker"
		if n.Role == "swarm-manager" {
			role = "manager"
		}
		status := n.Status
		if n.Unconfirmed {
			status += " (unconfirmed)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.ID, dash(n.Addr), role, status, dash(mgr),
			n.CertNotAfter.Format(time.RFC3339), n.TLSStatus)
	}
	return tw.Flush()
}

func newNodeInspectCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect NODE_ID",
		Short: "Show one node in detail",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			nodes, err := listNodes(cmd, g, args[0])
			if err != nil {
				return err
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), nodes[0])
			}
			n := nodes[0]
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "ID:              %s\n", n.ID)
			fmt.Fprintf(w, "Role:            %s\n", n.Role)
			fmt.Fprintf(w, "Address:         %s\n", dash(n.Addr))
			if n.RaftAddr != "" {
				fmt.Fprintf(w, "Raft address:    %s\n", n.RaftAddr)
				fmt.Fprintf(w, "Reachability:    %s\n", n.Reachability)
				fmt.Fprintf(w, "Leader:          %v\n", n.Leader)
			}
			fmt.Fprintf(w, "Status:          %s\n", n.Status)
			fmt.Fprintf(w, "Joined:          %s\n", n.JoinedAt.Format(time.RFC3339))
			if n.LastSeen != nil {
				fmt.Fprintf(w, "Last seen:       %s\n", n.LastSeen.Format(time.RFC3339))
			}
			fmt.Fprintf(w, "Cert serial:     %s\n", n.CertSerial)
			fmt.Fprintf(w, "Cert expires:    %s\n", n.CertNotAfter.Format(time.RFC3339))
			fmt.Fprintf(w, "TLS status:      %s\n", n.TLSStatus)
			return nil
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

func newNodeRoleCmd(g *globals, verb, role string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " NODE_ID",
		Short: fmt.Sprintf("Make a node a %s (it renews its certificate with the new role)", role),
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			if _, err := client.SetRole(ctx, &api.SetRoleRequest{NodeId: args[0], Role: role}); err != nil {
				return rpcError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Node %s is now a %s.\n", args[0], role)
			return nil
		},
	}
}

func newNodeRmCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [--force] NODE_ID",
		Short: "Remove a node: its certificates are refused from then on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			if _, err := client.RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: args[0], Force: force}); err != nil {
				return rpcError(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), args[0])
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove the node even if it is live")
	return cmd
}
