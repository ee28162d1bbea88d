package node

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/audit"
)

// errUnlocked is the reason a locked node's daemon ends: it was given the
// unlock key, and the node's own daemon can start.
var errUnlocked = errors.New("node: unlocked")

// lockedPoll is how often a locked node looks at --unlock-key-file.
const lockedPoll = time.Second

// locked is the daemon of a manager whose keys are sealed under an unlock
// key it was not given: it takes no part in Raft and signs nothing; its
// control socket answers status ("locked") and takes the key (Unlock).
// With --unlock-key-file it also reads the key there, unattended.
type locked struct {
	n   *Node
	err *agent.LockedError
	// keys hands Run the keys Unlock took.
	keys chan string
	// lastFileErr is what was last logged of --unlock-key-file.
	lastFileErr string
}

func newLocked(n *Node, err *agent.LockedError) *locked {
	n.log.Warn("this manager is locked: its keys are sealed under the cluster's unlock key; run `quorumca unlock`, or give --unlock-key-file", "unlock_key_id", err.KEK)
	return &locked{n: n, err: err, keys: make(chan string, 1)}
}

// Run waits for the unlock key: from Unlock, or from the key file.
func (l *locked) Run(ctx context.Context) error {
	var tick <-chan time.Time
	if l.n.cfg.UnlockKeyFile != "" {
		t := time.NewTicker(lockedPoll)
		defer t.Stop()
		tick = t.C
		if l.fromFile() {
			return errUnlocked
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case key := <-l.keys:
			l.n.setUnlockKey(key)
			l.n.log.Info("unlocked by `quorumca unlock`: starting the manager", "unlock_key_id", l.err.KEK)
			return errUnlocked
		case <-tick:
			if l.fromFile() {
				return errUnlocked
			}
		}
	}
}

// fromFile reads --unlock-key-file and takes the unlock key there that the
// keys are sealed under. The file may hold several keys, one per line: the
// current one and the one before a rotation, for a manager that was down
// while the key was rotated. What is wrong with the file is logged once
// per change of it, not at every look.
func (l *locked) fromFile() bool {
	key, err := l.keyInFile()
	if err != nil {
		if msg := err.Error(); msg != l.lastFileErr {
			l.lastFileErr = msg
			l.n.log.Warn("cannot unlock from --unlock-key-file", "file", l.n.cfg.UnlockKeyFile, "err", err)
		}
		return false
	}
	l.n.setUnlockKey(key)
	l.n.log.Info("unlocked by --unlock-key-file: starting the manager", "file", l.n.cfg.UnlockKeyFile, "unlock_key_id", l.err.KEK)
	return true
}

// unlockKeyFileMax bounds what is read of --unlock-key-file.
const unlockKeyFileMax = 4 << 10

func (l *locked) keyInFile() (string, error) {
	f, err := os.Open(l.n.cfg.UnlockKeyFile)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, unlockKeyFileMax))
	if err != nil {
		return "", err
	}
	keys := strings.Fields(string(b))
	if len(keys) == 0 {
		return "", errors.New("the file is empty: write the unlock key in it (`quorumca unlock-key -q` on a running manager prints it)")
	}
	var firstErr error
	for _, key := range keys {
		err := l.check(key)
		if err == nil {
			return key, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return "", firstErr
}

// check checks that key is the unlock key the keys are sealed under.
func (l *locked) check(key string) error {
	kek, err := ca.ParseUnlockKey(key)
	if err != nil {
		return err
	}
	if kek.ID != l.err.KEK {
		return fmt.Errorf("this manager's keys are sealed under unlock key %s, and this key is %s: give the key this manager last knew (after a rotation while it was down, the one before)", l.err.KEK, kek.ID)
	}
	return nil
}

// audit records an Unlock call that ended with err (a status, or nil) in
// the manager's audit log, as the manager's interceptor records calls: a
// wrong key is a refusal. It returns the error to answer with.
func (l *locked) audit(ctx context.Context, err error) error {
	log := l.n.cfg.Manager.Audit
	if log == nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	id := ""
	if ids := md.Get(audit.RequestIDHeader); len(ids) > 0 && audit.ValidRequestID(ids[0]) {
		id = ids[0]
	} else if id, _ = audit.NewRequestID(cmp.Or[io.Reader](l.n.cfg.Manager.Rand, rand.Reader)); id == "" {
		id = "unknown"
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(audit.RequestIDHeader, id)) // fails only once headers are sent
	rec := audit.Record{
		Time: l.now().UTC(), Manager: l.n.store.Get().NodeID, RequestID: id,
		Actor: audit.Actor{Kind: "host"}, Action: "unlock", Method: "/quorumca.v1.Control/Unlock", Arrival: "local",
		Result: audit.ResultOK,
	}
	if err != nil {
		rec.Result, rec.Code, rec.Error = audit.ResultRefused, status.Code(err).String(), status.Convert(err).Message()
	}
	if werr := log.Write(rec); werr != nil {
		l.n.log.Error("audit log", "err", werr, "action", "unlock")
		return status.Errorf(codes.Internal, "this manager could not record the unlock in its audit log: %v", werr)
	}
	return err
}

// now is the node's clock.
func (l *locked) now() time.Time {
	if now := l.n.cfg.Manager.Now; now != nil {
		return now()
	}
	return time.Now()
}

// Local serves status and Unlock.
func (l *locked) Local() *grpc.Server {
	s := grpc.NewServer()
	api.RegisterControlServer(s, lockedControl{l: l})
	return s
}

// Close releases nothing: a locked node holds nothing but its socket.
func (l *locked) Close() error { return nil }

// lockedControl is a locked manager's Control API, on its socket.
type lockedControl struct {
	api.UnimplementedControlServer
	l *locked
}

func onSocket(ctx context.Context) error {
	if p, ok := peer.FromContext(ctx); !ok || p.Addr.Network() != "unix" {
		return status.Error(codes.PermissionDenied, "a locked manager serves its control socket only")
	}
	return nil
}

// lockedProblem is what status says of a locked manager.
const lockedProblem = "locked: this manager's keys are sealed under the cluster's unlock key; run `quorumca unlock`"

func (c lockedControl) Status(ctx context.Context, _ *api.StatusRequest) (*api.StatusResponse, error) {
	if err := onSocket(ctx); err != nil {
		return nil, err
	}
	nc := c.l.n.store.Get()
	return &api.StatusResponse{
		ClusterId: nc.ClusterID, NodeId: nc.NodeID, Role: string(nc.Role),
		Problem: fmt.Sprintf("%s (unlock key %s)", lockedProblem, c.l.err.KEK),
		Health:  api.HealthLocked,
	}, nil
}

func (c lockedControl) Unlock(ctx context.Context, req *api.UnlockRequest) (*api.UnlockResponse, error) {
	if err := onSocket(ctx); err != nil {
		return nil, c.l.audit(ctx, err)
	}
	if err := c.l.check(req.GetUnlockKey()); err != nil {
		return nil, c.l.audit(ctx, status.Error(codes.InvalidArgument, err.Error()))
	}
	if err := c.l.audit(ctx, nil); err != nil {
		return nil, err
	}
	select {
	case c.l.keys <- req.GetUnlockKey():
	default: // unlocking already
	}
	return &api.UnlockResponse{}, nil
}
