package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
)

// TestRotationRefusesOpenConnections: a connection opened before a
// rotation with a certificate of the old root stops working when the
// rotation completes, on every manager, the leader included (the
// handshake verified it against a bundle that is gone). Found by the
// chaos suite: a skipped worker came back through its connection to the
// leader and renewed.
func TestRotationRefusesOpenConnections(t *testing.T) {
	rc := newRotationCluster(t, 3, 0, 0)
	rc.setGrace(time.Second)
	held := rc.holdRotation() // never renews: skipped after the grace
	conns := map[int]*grpc.ClientConn{}
	for _, i := range rc.running() {
		conn, err := grpc.NewClient(rc.managers[i].addr, grpc.WithTransportCredentials(credentials.NewTLS(held.Credentials.ClientTLS(agent.ManagerName))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		// Gossip is answered by every manager itself (a heartbeat only
		// by the leader: the others redirect it).
		ctx, cancel := context.WithTimeout(t.Context(), waitFor)
		_, err = api.NewCAClient(conn).Gossip(ctx, &api.GossipRequest{})
		cancel()
		if err != nil {
			t.Fatalf("manager %d: Gossip before the rotation = %v", i, err)
		}
		conns[i] = conn
	}
	rc.waitRotation(rc.rotate(), false)
	// Each manager takes the new bundle as it applies the completion.
	for i, conn := range conns {
		eventually(t, waitFor, fmt.Sprintf("manager %d refuses the old connection", i), func() error {
			ctx, cancel := context.WithTimeout(t.Context(), waitFor)
			defer cancel()
			_, err := api.NewCAClient(conn).Gossip(ctx, &api.GossipRequest{})
			if code := status.Code(err); code != codes.PermissionDenied {
				return fmt.Errorf("manager %d (leader: %v): Gossip on a connection opened before the rotation = %v, want PermissionDenied", i, rc.m(i).IsLeader(), err)
			}
			_, err = api.NewCAClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{})
			if code := status.Code(err); code != codes.PermissionDenied {
				return fmt.Errorf("manager %d (leader: %v): Heartbeat on a connection opened before the rotation = %v, want PermissionDenied (not a redirect)", i, rc.m(i).IsLeader(), err)
			}
			return nil
		})
	}
}
