package integration

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
)

// TestRotationRefusesOpenConnections: a connection opened before a
// rotation with a certificate of the old root stops working when the
// rotation completes, on every manager, the leader included (the
// handshake verified it against a bundle that is gone). Found by the
// chaos suite: a skipped worker came back through its connection to the
// leader and renewed.
func TestRotationRefusesOpenConnections(t *testing.T) {
	rc := clustertest.New(t, clustertest.Options{Managers: 3, Workers: 0})
	rc.SetGrace(time.Second)
	held := rc.HoldRotation() // never renews: skipped after the grace
	conns := map[*clustertest.Node]*grpc.ClientConn{}
	for _, mg := range rc.RunningManagers() {
		conn := rc.Dial(mg.Addr(), held.Credentials.ClientTLS(agent.ManagerName))
		// Gossip is answered by every manager itself (a heartbeat only
		// by the leader: the others redirect it).
		if _, err := api.NewCAClient(conn).Gossip(testkit.Ctx(t), &api.GossipRequest{}); err != nil {
			t.Fatalf("manager %s: Gossip before the rotation = %v", mg.Name, err)
		}
		conns[mg] = conn
	}
	rc.WaitRotation(rc.Rotate(), false)
	// Each manager takes the new bundle as it applies the completion.
	for mg, conn := range conns {
		testkit.Eventually(t, fmt.Sprintf("manager %s refuses the old connection", mg.Name), func() error {
			ctx := testkit.Ctx(t)
			_, err := api.NewCAClient(conn).Gossip(ctx, &api.GossipRequest{})
			if code := status.Code(err); code != codes.PermissionDenied {
				return fmt.Errorf("manager %s (leader: %v): Gossip on a connection opened before the rotation = %v, want PermissionDenied", mg.Name, mg.Manager().IsLeader(), err)
			}
			_, err = api.NewCAClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{})
			if code := status.Code(err); code != codes.PermissionDenied {
				return fmt.Errorf("manager %s (leader: %v): Heartbeat on a connection opened before the rotation = %v, want PermissionDenied (not a redirect)", mg.Name, mg.Manager().IsLeader(), err)
			}
			return nil
		})
	}
}
