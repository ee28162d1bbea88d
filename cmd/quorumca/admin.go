package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
)

func addFormatFlag(cmd *cobra.Command, g *globals) {
	cmd.Flags().StringVar(&g.format, "format", "table", "output: table or json")
}

func (g *globals) checkFormat() error {
	if g.format != "table" && g.format != "json" {
		return fmt.Errorf("--format %q: use table or json", g.format)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newStatusCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster as this node sees it",
		Long: `Show the cluster as this node sees it.

Exit codes (for health checks): 0 healthy; 1 the command failed;
2 no daemon answers on the control socket; 3 no leader (no quorum), or a
worker reaches no manager; 4 the node was removed, or left behind by a root
rotation: join it again; 5 its certificate has expired; 6 a manager waits
for ` + "`quorumca unlock`" + `; 7 it reports a problem of its own (a full disk,
a log it cannot apply).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			client, ctx, done, err := g.control(cmd, 10*time.Second)
			if errors.Is(err, fs.ErrNotExist) {
				return withCode(exitNoDaemon, "%v", err)
			} else if err != nil {
				return err
			}
			defer done()
			st, err := client.Status(ctx, &api.StatusRequest{})
			if code := status.Code(err); code == codes.Unavailable || code == codes.DeadlineExceeded {
				return withCode(exitNoDaemon, "no daemon answers on the control socket: %v", rpcError(err))
			} else if err != nil {
				return rpcError(err)
			}
			if err := printStatus(cmd.OutOrStdout(), g.format, st); err != nil {
				return err
			}
			if code, ok := healthExit[st.GetHealth()]; ok && code != exitOK {
				msg := st.GetHealth()
				if p := st.GetProblem(); p != "" {
					msg += ": " + p
				}
				return withCode(code, "unhealthy: %s", msg)
			}
			return nil
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

// statusJSON is the stable --format json shape of status.
type statusJSON struct {
	ClusterID       string        `json:"cluster_id"`
	NodeID          string        `json:"node_id"`
	Role            string        `json:"role"`
	LeaderID        string        `json:"leader_id,omitempty"`
	LeaderAddr      string        `json:"leader_addr,omitempty"`
	RootFingerprint string        `json:"root_fingerprint"`
	Nodes           uint32        `json:"nodes,omitempty"`
	CertExpiry      string        `json:"cert_expiry,omitempty"`
	Rotation        *rotationJSON `json:"rotation,omitempty"`
	Recovery        *recoveryJSON `json:"recovery,omitempty"`
	Problem         string        `json:"problem,omitempty"`
	Health          string        `json:"health,omitempty"`
	Managers        []managerJSON `json:"managers"`
}

// recoveryJSON is the last recovery from a lost majority, in status.
type recoveryJSON struct {
	Kind        string    `json:"kind"`
	At          time.Time `json:"at"`
	From        uint64    `json:"from_index"`
	Lost        []string  `json:"lost_managers,omitempty"`
	Unconfirmed []string  `json:"unconfirmed_nodes,omitempty"`
}

// rotationJSON is the progress of a root rotation in status.
type rotationJSON struct {
	StartedAt time.Time `json:"started_at"`
	NewRoot   string    `json:"new_root_fingerprint"`
	Total     uint32    `json:"total"`
	Converged uint32    `json:"converged"`
	Skipped   uint32    `json:"skipped"`
}

type managerJSON struct {
	NodeID       string `json:"node_id,omitempty"`
	Addr         string `json:"addr"`
	RaftAddr     string `json:"raft_addr,omitempty"`
	Voter        bool   `json:"voter"`
	Leader       bool   `json:"leader"`
	Reachability string `json:"reachability"`
}

func printStatus(w io.Writer, format string, st *api.StatusResponse) error {
	out := statusJSON{
		ClusterID: st.GetClusterId(), NodeID: st.GetNodeId(), Role: st.GetRole(),
		LeaderID: st.GetLeaderId(), LeaderAddr: st.GetLeaderAddr(),
		RootFingerprint: st.GetRootFingerprint(), Nodes: st.GetNodes(),
		Health:   st.GetHealth(),
		Managers: []managerJSON{},
	}
	if s := st.GetCertExpirySeconds(); s > 0 {
		out.CertExpiry = (time.Duration(s) * time.Second).String()
	}
	if r := st.GetRotation(); r != nil {
		out.Rotation = &rotationJSON{
			StartedAt: time.Unix(r.GetStartedAt(), 0).UTC(), NewRoot: r.GetNewRootFingerprint(),
			Total: r.GetTotal(), Converged: r.GetConverged(), Skipped: r.GetSkipped(),
		}
	}
	if r := st.GetRecovery(); r != nil {
		out.Recovery = &recoveryJSON{Kind: r.GetKind(), At: time.Unix(r.GetAt(), 0).UTC(), From: r.GetFrom(), Lost: r.GetLost(), Unconfirmed: r.GetUnconfirmed()}
	}
	out.Problem = st.GetProblem()
	for _, m := range st.GetManagers() {
		out.Managers = append(out.Managers, managerJSON{
			NodeID: m.GetNodeId(), Addr: m.GetAddr(), RaftAddr: m.GetRaftAddr(),
			Voter: m.GetVoter(), Leader: m.GetLeader(), Reachability: m.GetReachability(),
		})
	}
	if format == "json" {
		return writeJSON(w, out)
	}
	fmt.Fprintf(w, "Cluster ID:   %s\n", out.ClusterID)
	fmt.Fprintf(w, "Node ID:      %s\n", out.NodeID)
	fmt.Fprintf(w, "Role:         %s\n", out.Role)
	if out.LeaderID != "" {
		fmt.Fprintf(w, "Leader:       %s (%s)\n", out.LeaderID, out.LeaderAddr)
	} else if out.Role == "swarm-manager" {
		fmt.Fprintf(w, "Leader:       none (no quorum)\n")
	}
	fmt.Fprintf(w, "Root CA:      sha256:%s\n", out.RootFingerprint)
	if out.Nodes > 0 {
		fmt.Fprintf(w, "Nodes:        %d\n", out.Nodes)
	}
	if out.CertExpiry != "" {
		fmt.Fprintf(w, "Cert expiry:  %s\n", out.CertExpiry)
	}
	if r := out.Rotation; r != nil {
		fmt.Fprintf(w, "Rotation:     to sha256:%s since %s: %d/%d nodes renewed", short(r.NewRoot), r.StartedAt.Format(time.RFC3339), r.Converged, r.Total)
		if r.Skipped > 0 {
			fmt.Fprintf(w, ", %d skipped", r.Skipped)
		}
		fmt.Fprintln(w)
	}
	if r := out.Recovery; r != nil {
		fmt.Fprintf(w, "Recovered:    %s at %s, from index %d", r.Kind, r.At.Format(time.RFC3339), r.From)
		if len(r.Lost) > 0 {
			fmt.Fprintf(w, "; managers removed: %s", strings.Join(r.Lost, ", "))
		}
		if len(r.Unconfirmed) > 0 {
			fmt.Fprintf(w, "; recorded unconfirmed: %s", strings.Join(r.Unconfirmed, ", "))
		}
		fmt.Fprintln(w)
	}
	if out.Problem != "" {
		fmt.Fprintf(w, "Problem:      %s\n", out.Problem)
	}
	fmt.Fprintln(w, "Managers:")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tADDRESS\tRAFT ADDRESS\tVOTER\tLEADER\tREACHABILITY")
	for _, m := range out.Managers {
		leader := ""
		if m.Leader {
			leader = "leader"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%v\t%s\t%s\n", dash(m.NodeID), dash(m.Addr), dash(m.RaftAddr), m.Voter, leader, m.Reachability)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newJoinTokenCmd(g *globals) *cobra.Command {
	var quiet, rotate bool
	cmd := &cobra.Command{
		Use:   "join-token [-q] [--rotate] worker|manager",
		Short: "Show (or rotate) the token that admits workers or managers",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			if args[0] != "worker" && args[0] != "manager" {
				return fmt.Errorf("role %q: use worker or manager", args[0])
			}
			client, ctx, done, err := g.control(cmd, 15*time.Second)
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.JoinToken(ctx, &api.JoinTokenRequest{Role: args[0], Rotate: rotate})
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
				return writeJSON(w, joinTokenJSON{Role: args[0], Token: resp.GetToken(), JoinAddr: addr, Rotated: rotate})
			}
			if rotate {
				fmt.Fprintf(w, "Rotated the %s join token; the old one no longer admits anyone.\n", args[0])
			}
			printJoinCommand(w, args[0], resp.GetToken(), addr)
			return nil
		},
	}
	addFormatFlag(cmd, g)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the token only (wins over --format)")
	cmd.Flags().BoolVar(&rotate, "rotate", false, "replace the token's secret: the old token stops working at once")
	cmd.AddCommand(newJoinTokenCreateCmd(g), newJoinTokenLsCmd(g), newJoinTokenRevokeCmd(g))
	return cmd
}

// joinTokenJSON is the stable --format json shape of join-token and
// join-token create: the token (the secret the table form prints too) and
// the address of the manager to join through.
type joinTokenJSON struct {
	// ID is the extra token's ID (join-token create only).
	ID       string `json:"id,omitempty"`
	Role     string `json:"role"`
	Token    string `json:"token"`
	JoinAddr string `json:"join_addr"`
	// Rotated: join-token --rotate replaced the token's secret.
	Rotated bool `json:"rotated,omitempty"`
}

// askedAddr returns the API address of the manager the command asked, for
// the join command it prints: the address of --host tcp://, or else the
// advertise address the manager on the control socket has in the state;
// failing both, the first of managers (the state's), or MANAGER_ADDR.
func (g *globals) askedAddr(ctx context.Context, client api.ControlClient, managers []string) string {
	if addr, ok := strings.CutPrefix(g.host, "tcp://"); ok {
		return addr
	}
	if st, err := client.Status(ctx, &api.StatusRequest{}); err == nil {
		for _, m := range st.GetManagers() {
			if m.GetNodeId() == st.GetNodeId() && m.GetAddr() != "" {
				return m.GetAddr()
			}
		}
	}
	if len(managers) > 0 {
		return managers[0]
	}
	return "MANAGER_ADDR"
}

// printJoinCommand prints how to add a node of role with token through the
// manager at addr. The token goes into a file (umask 077, echo being a
// shell builtin): on join's command line, every local user would see it
// in ps.
func printJoinCommand(w io.Writer, role, token, addr string) {
	file := role + ".token"
	fmt.Fprintf(w, "To add a %s to this cluster, run on the new machine:\n\n", role)
	fmt.Fprintf(w, "    (umask 077; echo %s > %s)\n", token, file)
	fmt.Fprintf(w, "    quorumca join --token-file %s %s\n\n", file, addr)
}
