package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// leaveJSON is the stable --format json shape of leave.
type leaveJSON struct {
	NodeID    string `json:"node_id"`
	ClusterID string `json:"cluster_id"`
}

func newLeaveCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "leave",
		Short: "Take this worker out of the cluster: a manager removes it, then it deletes its credentials and stops",
		Long: `Take this worker out of the cluster. The worker asks a manager, with its
own certificate, to remove it (its certificates are refused from then on),
then deletes its credentials and node.json, and its daemon stops: the data
directory may then join a cluster again.

A manager does not leave by itself: demote it first (quorumca node demote
ID, on a manager), then run leave on it once it is a worker.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			if strings.HasPrefix(g.host, "tcp://") {
				return errors.New("leave runs on the node's own control socket: give its --data-dir (or --host unix://SOCKET), not --host tcp://")
			}
			client, ctx, done, err := g.control(cmd, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			st, err := client.Status(ctx, &api.StatusRequest{})
			if err != nil {
				return rpcError(err)
			}
			if st.GetRole() == string(ca.RoleManager) {
				return fmt.Errorf("this node (%s) is a manager: demote this manager first (`quorumca node demote %s`, on a manager), then run leave once it is a worker", st.GetNodeId(), st.GetNodeId())
			}
			if _, err := client.RemoveNode(ctx, &api.RemoveNodeRequest{NodeId: st.GetNodeId()}); err != nil {
				return rpcError(err)
			}
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), leaveJSON{NodeID: st.GetNodeId(), ClusterID: st.GetClusterId()})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Node %s left cluster %s: the managers no longer admit it; its credentials are deleted and its daemon stops.\n", st.GetNodeId(), st.GetClusterId())
			return nil
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}
