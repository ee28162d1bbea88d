package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
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
	// Hostname is the host name the node gave when it joined.
	Hostname string `json:"hostname,omitempty"`
	// Self marks the manager that answered (the node whose control
	// socket was asked, or the one --host names).
	Self bool `json:"self,omitempty"`
}

func toNodeJSON(n *api.Node) nodeJSON {
	out := nodeJSON{
		ID: n.GetId(), Role: n.GetRole(), Addr: n.GetAddr(), RaftAddr: n.GetRaftAddr(),
		Status: n.GetStatus(), Reachability: n.GetReachability(), Leader: n.GetLeader(),
		CertSerial: n.GetCertSerial(), CertNotAfter: time.Unix(n.GetCertNotAfter(), 0).UTC(),
		TLSStatus: n.GetTlsStatus(), JoinedAt: time.Unix(n.GetJoinedAt(), 0).UTC(),
		Unconfirmed: n.GetUnconfirmed(), Hostname: n.GetHostname(),
	}
	if s := n.GetLastSeen(); s > 0 {
		t := time.Unix(s, 0).UTC()
		out.LastSeen = &t
	}
	return out
}

func listNodes(cmd *cobra.Command, g *globals) ([]nodeJSON, error) {
	client, ctx, done, err := g.control(cmd, 15*time.Second)
	if err != nil {
		return nil, err
	}
	defer done()
	nodes, err := allNodes(ctx, client)
	if err != nil {
		return nil, err
	}
	// The node asked is marked, as docker node ls marks it.
	var self string
	if ping, err := client.Ping(ctx, &api.PingRequest{}); err == nil {
		self = ping.GetNodeId()
	}
	out := make([]nodeJSON, 0, len(nodes))
	for _, n := range nodes {
		nj := toNodeJSON(n)
		nj.Self = nj.ID == self
		out = append(out, nj)
	}
	return out, nil
}

// allNodes lists every node, a page at a time (a manager answers at most
// manager.MaxNodesPage nodes per call).
func allNodes(ctx context.Context, client api.ControlClient) ([]*api.Node, error) {
	var out []*api.Node
	req := &api.ListNodesRequest{}
	for page := 0; ; page++ {
		resp, err := client.ListNodes(ctx, req)
		if err != nil {
			return nil, rpcError(err)
		}
		out = append(out, resp.GetNodes()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return out, nil
		}
		if next == req.GetPageToken() || len(resp.GetNodes()) == 0 {
			return nil, fmt.Errorf("the manager gave page %d without going on (token %q); upgrade the managers to this version of quorumca", page+1, next)
		}
		req.PageToken = next
	}
}

func newNodeLsCmd(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "ls [-q]",
		Short: "List nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			nodes, err := listNodes(cmd, g)
			if err != nil {
				return err
			}
			if quiet {
				for _, n := range nodes {
					fmt.Fprintln(cmd.OutOrStdout(), n.ID)
				}
				return nil
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), nodes)
			}
			return printNodes(cmd.OutOrStdout(), nodes)
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the node IDs only, one a line")
	return cmd
}

// resolveNodes names the node of each of args: the node whose ID it is, or
// else the only one whose ID starts with it. A prefix that starts no ID,
// or several, is an error that lists the candidates. A node named twice
// counts once.
func resolveNodes(nodes []nodeJSON, args []string) ([]nodeJSON, error) {
	var out []nodeJSON
	var errs []error
	for _, arg := range args {
		n, err := resolveNode(nodes, arg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !slices.ContainsFunc(out, func(o nodeJSON) bool { return o.ID == n.ID }) {
			out = append(out, n)
		}
	}
	return out, errors.Join(errs...)
}

func resolveNode(nodes []nodeJSON, arg string) (nodeJSON, error) {
	if arg == "" {
		return nodeJSON{}, errors.New("an empty node ID: give a node's ID, or the start of it (see `quorumca node ls`)")
	}
	var matches, byHost []nodeJSON
	for _, n := range nodes {
		if n.ID == arg {
			return n, nil
		}
		if n.Hostname == arg {
			byHost = append(byHost, n)
		}
		if strings.HasPrefix(n.ID, arg) {
			matches = append(matches, n)
		}
	}
	// A host name names its node when one node alone has it; several
	// nodes on one machine (data dirs of their own) need their IDs.
	switch {
	case len(byHost) == 1:
		return byHost[0], nil
	case len(byHost) > 1:
		matches = byHost
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return nodeJSON{}, fmt.Errorf("no node has the host name %q or an ID starting with it: see `quorumca node ls`", arg)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%q names %d nodes; give more of the ID:", arg, len(matches))
	for _, n := range matches {
		fmt.Fprintf(&b, "\n\t%s  %s  %s", n.ID, strings.TrimPrefix(n.Role, "swarm-"), dash(n.Addr))
	}
	return nodeJSON{}, errors.New(b.String())
}

// forNodes resolves args against the cluster's nodes and, when every one
// names a node, calls do for each node, going on after a failure; it
// returns every failure, each naming its node.
func forNodes(cmd *cobra.Command, g *globals, args []string, timeout time.Duration, do func(context.Context, api.ControlClient, nodeJSON) error) error {
	client, ctx, done, err := g.control(cmd, timeout)
	if err != nil {
		return err
	}
	defer done()
	listed, err := allNodes(ctx, client)
	if err != nil {
		return err
	}
	all := make([]nodeJSON, 0, len(listed))
	for _, n := range listed {
		all = append(all, toNodeJSON(n))
	}
	// Every name resolves, or nothing is done: a typo among several IDs
	// does not leave the command half done.
	nodes, err := resolveNodes(all, args)
	if err != nil {
		return fmt.Errorf("%w\nnothing was changed", err)
	}
	var errs []error
	for _, n := range nodes {
		if err := do(ctx, client, n); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.ID, rpcError(err)))
		}
	}
	return errors.Join(errs...)
}

func printNodes(w io.Writer, nodes []nodeJSON) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOSTNAME\tADDRESS\tROLE\tSTATUS\tMANAGER STATUS\tCERT EXPIRES\tTLS STATUS")
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
		id := n.ID
		if n.Self {
			id += " *" // this node, as docker node ls marks it
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, dash(n.Hostname), dash(n.Addr), role, status, dash(mgr),
			n.CertNotAfter.Format(time.RFC3339), n.TLSStatus)
	}
	return tw.Flush()
}

func newNodeInspectCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect NODE_ID...",
		Short: "Show nodes in detail (by ID, or a unique start of one)",
		Long: `Show nodes in detail. Each NODE_ID is a node's ID, or the start of one
that no other node's ID starts with.

With --format json, one node is an object, and several an array.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			all, err := listNodes(cmd, g)
			if err != nil {
				return err
			}
			nodes, err := resolveNodes(all, args)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if g.format == "json" {
				if len(args) == 1 {
					return writeJSON(w, nodes[0])
				}
				return writeJSON(w, nodes)
			}
			for i, n := range nodes {
				if i > 0 {
					fmt.Fprintln(w)
				}
				printNode(w, n)
			}
			return nil
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

func printNode(w io.Writer, n nodeJSON) {
	fmt.Fprintf(w, "ID:              %s\n", n.ID)
	fmt.Fprintf(w, "Role:            %s\n", n.Role)
	fmt.Fprintf(w, "Hostname:        %s\n", dash(n.Hostname))
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
}

// nodeRoleJSON is the stable --format json shape of node promote and
// node demote: the nodes that now have role.
type nodeRoleJSON struct {
	Role  string   `json:"role"`
	Nodes []string `json:"nodes"`
}

// nodeRmJSON is the stable --format json shape of node rm.
type nodeRmJSON struct {
	Removed []string `json:"removed"`
}

// writeChanged writes, with --format json, v, which names the nodes
// changed: when err is nil, or when some nodes were changed before others
// failed (as the table form prints those), so that stdout says what was
// done; err is returned either way.
func writeChanged(w io.Writer, changed int, v any, err error) error {
	if err == nil || changed > 0 {
		if werr := writeJSON(w, v); werr != nil {
			return errors.Join(err, werr)
		}
	}
	return err
}

func newNodeRoleCmd(g *globals, verb, role string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   verb + " NODE_ID...",
		Short: fmt.Sprintf("Make nodes %ss (each renews its certificate with the new role)", role),
		Long: fmt.Sprintf(`Make nodes %ss: each renews its certificate with the new role. Each
NODE_ID is a node's ID, or the start of one that no other node's ID starts
with; if one names no node, or several, nothing is done. A node that fails
does not stop the others; the command then fails, naming it. With
--format json, the nodes changed are printed as {"role": ROLE, "nodes":
[ID...]}, also when others failed.`, role),
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			out := nodeRoleJSON{Role: role, Nodes: []string{}}
			err := forNodes(cmd, g, args, 30*time.Second, func(ctx context.Context, client api.ControlClient, n nodeJSON) error {
				if _, err := client.SetRole(ctx, &api.SetRoleRequest{NodeId: n.ID, Role: role}); err != nil {
					return err
				}
				out.Nodes = append(out.Nodes, n.ID)
				if g.format != "json" {
					fmt.Fprintf(cmd.OutOrStdout(), "Node %s is now a %s.\n", n.ID, role)
				}
				return nil
			})
			if g.format == "json" {
				return writeChanged(cmd.OutOrStdout(), len(out.Nodes), out, err)
			}
			return err
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

func newNodeRmCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [--force] NODE_ID...",
		Short: "Remove nodes: their certificates are refused from then on",
		Long: `Remove nodes: their certificates are refused from then on. Each NODE_ID
is a node's ID, or the start of one that no other node's ID starts with;
if one names no node, or several, nothing is removed. Each node removed is
printed; a node that fails does not stop the others, and the command then
fails, naming it. With --format json, the nodes removed are printed as
{"removed": [ID...]}, also when others failed.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			out := nodeRmJSON{Removed: []string{}}
			err := forNodes(cmd, g, args, 30*time.Second, func(ctx context.Context, client api.ControlClient, n nodeJSON) error {
				if _, err := client.RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: n.ID, Force: force}); err != nil {
					return err
				}
				out.Removed = append(out.Removed, n.ID)
				if g.format != "json" {
					fmt.Fprintln(cmd.OutOrStdout(), n.ID)
				}
				return nil
			})
			if g.format == "json" {
				return writeChanged(cmd.OutOrStdout(), len(out.Removed), out, err)
			}
			return err
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove the node even if it is live")
	return cmd
}
