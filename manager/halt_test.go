package manager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/membership"
)

// lockedBuffer is a log sink the manager's goroutines may share.
type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestHaltedManagerSaysUpgrade: a manager whose log holds a command a
// newer quorumca wrote stops applying it, rather than skip it: it says at
// Error level, once, and in Status and Ping, to upgrade it, naming both
// versions; what it is asked to change after is refused with that reason;
// and it takes no snapshot that would claim the entries it did not apply.
func TestHaltedManagerSaysUpgrade(t *testing.T) {
	var logs lockedBuffer
	cfg := Config{
		DataDir:        t.TempDir(),
		ListenAddr:     "127.0.0.1:0",
		RaftListenAddr: "127.0.0.1:0",
		GossipAddr:     "127.0.0.1:0",
		GossipTiming:   membership.Fast,
		Logger:         slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelError})),
		ApplyTimeout:   5 * time.Second,
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	m, err := Init(ctx, cfg, InitOptions{})
	if err != nil {
		t.Fatalf("Init() = %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if p := m.problem(); p != "" {
		t.Fatalf("problem() of a fresh manager = %q, want none", p)
	}
	before := m.State()

	newer := fmt.Appendf(nil, `{"v":%d,"at":"2030-01-01T00:00:00Z","prune":{}}`, fsm.Version+1)
	out, err := m.raft.Apply(ctx, newer)
	if err != nil {
		t.Fatalf("raft.Apply(version %d) = %v", fsm.Version+1, err)
	}
	res, _ := out.(fsm.Result)
	if !errors.Is(res.Err, fsm.ErrNewer) || m.State() != before {
		t.Fatalf("raft.Apply(version %d) = %v, state at %d; want ErrNewer and the state at %d", fsm.Version+1, res.Err, m.State().Index, before.Index)
	}

	wants := []string{"upgrade this manager", fmt.Sprintf("command of version %d", fsm.Version+1), fmt.Sprintf("reads up to version %d", fsm.Version), m.NodeID()}
	st, err := controlService{m: m}.Status(ctx, &api.StatusRequest{})
	if err != nil {
		t.Fatalf("Status() = %v", err)
	}
	ping, err := controlService{m: m}.Ping(ctx, &api.PingRequest{})
	if err != nil {
		t.Fatalf("Ping() = %v", err)
	}
	for _, want := range wants {
		if !strings.Contains(st.GetProblem(), want) {
			t.Errorf("Status().Problem = %q, want it to say %q", st.GetProblem(), want)
		}
		if !strings.Contains(ping.GetProblem(), want) {
			t.Errorf("Ping().Problem = %q, want it to say %q", ping.GetProblem(), want)
		}
	}

	// Nothing is applied from there on; a change is refused, and says why.
	_, err = m.propose(ctx, fsm.Command{At: m.cfg.Now(), Prune: &fsm.Prune{}})
	if !errors.Is(err, fsm.ErrNewer) || m.State() != before {
		t.Errorf("propose(prune) on a halted manager = %v, state at %d; want ErrNewer, the state at %d", err, m.State().Index, before.Index)
	}
	if code := status.Code(toStatus(err)); code != codes.FailedPrecondition {
		t.Errorf("toStatus(%v) = %v, want %v", err, code, codes.FailedPrecondition)
	}
	if _, err := (stateMachine{m.machine, m.log}).Snapshot(); !errors.Is(err, fsm.ErrNewer) {
		t.Errorf("Snapshot() of a halted machine = %v, want ErrNewer", err)
	}

	logged := logs.String()
	if n := strings.Count(logged, "level=ERROR msg=\"this manager applies the replicated log no further\""); n != 1 || !strings.Contains(logged, "upgrade this manager") {
		t.Errorf("logged at Error level %d times, want once, saying to upgrade:\n%s", n, logged)
	}
}
