package membership

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

type record struct {
	level slog.Level
	msg   string
}

// recorder is a slog.Handler keeping every record.
type recorder struct {
	mu   sync.Mutex
	recs []record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, record{rec.Level, rec.Message})
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) records() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]record(nil), r.recs...)
}

func TestLogWriterLevels(t *testing.T) {
	cases := []struct {
		line    string
		level   slog.Level
		msg     string // exact, if set
		content string // the message must contain this
	}{
		{"[WARN] memberlist: x\n", slog.LevelWarn, "gossip memberlist: x", ""},
		{"[ERR] memberlist: failed to receive: boom\n", slog.LevelError, "gossip memberlist: failed to receive: boom", ""},
		{"[INFO] memberlist: Marking b as failed\n", slog.LevelInfo, "gossip memberlist: Marking b as failed", ""},
		{"  [WARN] memberlist: padded  \r\n", slog.LevelWarn, "gossip memberlist: padded", ""},
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1\n", slog.LevelDebug, "", "memberlist: Stream connection from=127.0.0.1:1"},
		{"no level at all\n", slog.LevelDebug, "", "no level at all"},
		{"[WARN", slog.LevelDebug, "", "[WARN"},
		{"warn] [WARN] late prefix", slog.LevelDebug, "", "late prefix"},
		{"[ERR]", slog.LevelError, "gossip", ""},
	}
	for _, tc := range cases {
		h := &recorder{}
		w := &logWriter{log: slog.New(h)}
		n, err := w.Write([]byte(tc.line))
		if err != nil || n != len(tc.line) {
			t.Errorf("Write(%q) = %d, %v; want %d, nil", tc.line, n, err, len(tc.line))
		}
		recs := h.records()
		if len(recs) != 1 {
			t.Errorf("Write(%q) logged %d records, want 1", tc.line, len(recs))
			continue
		}
		r := recs[0]
		if r.level != tc.level {
			t.Errorf("Write(%q): level %v, want %v", tc.line, r.level, tc.level)
		}
		if tc.msg != "" && r.msg != tc.msg {
			t.Errorf("Write(%q): message %q, want %q", tc.line, r.msg, tc.msg)
		}
		if !strings.Contains(r.msg, tc.content) {
			t.Errorf("Write(%q): message %q lacks %q", tc.line, r.msg, tc.content)
		}
		if tc.level != slog.LevelDebug && strings.Contains(r.msg, "[") {
			t.Errorf("Write(%q): message %q keeps the level prefix", tc.line, r.msg)
		}
	}
}

func TestLogWriterThroughLogLogger(t *testing.T) {
	// New hands memberlist a log.Logger with no prefix and no flags.
	h := &recorder{}
	l := log.New(&logWriter{log: slog.New(h)}, "", 0)
	l.Printf("[WARN] memberlist: Was able to connect to %s over TCP but UDP probes failed", "b")
	l.Printf("[ERR] memberlist: Failed push/pull merge: %s", "boom")
	recs := h.records()
	want := []record{
		{slog.LevelWarn, "gossip memberlist: Was able to connect to b over TCP but UDP probes failed"},
		{slog.LevelError, "gossip memberlist: Failed push/pull merge: boom"},
	}
	if len(recs) != len(want) {
		t.Fatalf("records %v, want %v", recs, want)
	}
	for i := range want {
		if recs[i] != want[i] {
			t.Errorf("record %d: %v, want %v", i, recs[i], want[i])
		}
	}
}

func TestMemberLogsThroughLogger(t *testing.T) {
	// A member's memberlist logs reach Config.Logger: a join with the
	// wrong key makes the contacted member complain.
	h := &recorder{}
	a := start(t, "a", newKey(t), Meta{}, func(c *Config) { c.Logger = slog.New(h) })
	x := start(t, "x", newKey(t), testMeta(ca.RoleWorker, "01"))
	if n, err := x.Join([]string{a.Addr()}); err == nil && n != 0 {
		t.Fatalf("join with the wrong key contacted %d nodes", n)
	}
	testkit.Eventually(t, "a logged no warning or error through its Logger about the bad join", testkit.True(func() bool {
		for _, r := range h.records() {
			if r.level >= slog.LevelWarn && strings.HasPrefix(r.msg, "gossip memberlist:") {
				return true
			}
		}
		return false
	}))
	for _, r := range h.records() {
		if !strings.HasPrefix(r.msg, "gossip") {
			t.Errorf("record %q does not come from the gossip log writer", r.msg)
		}
	}
}
