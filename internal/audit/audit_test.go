package audit

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestOpenCreatesPrivateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatalf("Open(%s) = %v", path, err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("Open(%s) made mode %04o, want 0600", path, got)
	}
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared.log")
	if err := os.WriteFile(shared, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"empty path", "", "empty"},
		{"missing directory", filepath.Join(dir, "no", "audit.log"), "no such file"},
		{"directory", dir, "--audit-log"},
		{"group-readable file", shared, "chmod 600"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Open(tc.path)
			if err == nil {
				l.Close()
				t.Fatalf("Open(%q) = nil error", tc.path)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open(%q) = %v, want it to say %q", tc.path, err, tc.want)
			}
		})
	}
}

// TestWriteAppends writes through two opens of one file: every line is
// kept, in order, and reads back as written.
func TestWriteAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	uid := 1000
	want := []Record{
		{Time: at, Manager: "m1", RequestID: "r1", Actor: Actor{Kind: "host", UID: &uid}, Action: "node.rm", Target: Target{NodeID: "n1"}, Result: ResultOK, Commits: []string{"remove_node"}},
		{Time: at.Add(time.Second), Manager: "m1", RequestID: "r2", Actor: Actor{Kind: "anonymous", Addr: "10.0.0.1:5000"}, Action: "join", Result: ResultRefused, Code: "PermissionDenied", Reason: "BAD_TOKEN"},
	}
	for _, r := range want {
		l, err := Open(path)
		if err != nil {
			t.Fatalf("Open() = %v", err)
		}
		if err := l.Write(r); err != nil {
			t.Fatalf("Write(%+v) = %v", r, err)
		}
		if err := l.Close(); err != nil {
			t.Fatalf("Close() = %v", err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(b, []byte("\n")); n != len(want) {
		t.Fatalf("file holds %d lines, want %d:\n%s", n, len(want), b)
	}
	// A torn last line, as a crash may leave, is skipped.
	b = append(b, `{"time":"2026-12-03T10:00:02Z","manag`...)
	got, err := Read(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("Read() = %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Read() = %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].RequestID != want[i].RequestID || got[i].Action != want[i].Action || !got[i].Time.Equal(want[i].Time) || got[i].Result != want[i].Result {
			t.Errorf("Read()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	if got[0].Actor.UID == nil || *got[0].Actor.UID != uid {
		t.Errorf("Read()[0].Actor.UID = %v, want %d", got[0].Actor.UID, uid)
	}
}

// TestWriteFailureSticks: after a failed write the log takes nothing more,
// and says so on every Write and through Err.
func TestWriteFailureSticks(t *testing.T) {
	l, err := Open(filepath.Join(t.TempDir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Err(); err != nil {
		t.Fatalf("Err() of a fresh log = %v", err)
	}
	l.f.Close() // the disk goes away under the log
	first := l.Write(Record{Action: "a"})
	if first == nil {
		t.Fatalf("Write() on a closed file = nil error")
	}
	if err := l.Write(Record{Action: "b"}); !errors.Is(err, first) && err != first {
		t.Errorf("second Write() = %v, want the first failure %v", err, first)
	}
	if err := l.Err(); err != first {
		t.Errorf("Err() = %v, want %v", err, first)
	}
}

func TestNilLog(t *testing.T) {
	var l *Log
	if err := l.Write(Record{}); err != nil {
		t.Errorf("nil Log.Write() = %v", err)
	}
	if err := l.Err(); err != nil {
		t.Errorf("nil Log.Err() = %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("nil Log.Close() = %v", err)
	}
}

func TestErrorBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Write(Record{Error: strings.Repeat("x", 10*maxError)}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if len(b) > 2*maxError {
		t.Errorf("a record with a long error takes %d bytes, want it cut near %d", len(b), maxError)
	}
}

func TestRequestID(t *testing.T) {
	id, err := NewRequestID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 32 || !ValidRequestID(id) {
		t.Errorf("NewRequestID() = %q, want 32 hex digits that ValidRequestID accepts", id)
	}
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"abc-123_X.y:z", true},
		{"", false},
		{strings.Repeat("a", 129), false},
		{"with space", false},
		{"quote\"", false},
		{"new\nline", false},
	} {
		if got := ValidRequestID(tc.id); got != tc.want {
			t.Errorf("ValidRequestID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

// TestConcurrentWrites: writers that share fsyncs still each get their
// whole line on disk, none torn or lost, before Write returns.
func TestConcurrentWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := l.Write(Record{RequestID: fmt.Sprintf("w%d-%d", w, i), Action: "join", Result: ResultOK}); err != nil {
					t.Errorf("Write() = %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := Read(f)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range recs {
		seen[r.RequestID] = true
	}
	if len(recs) != writers*each || len(seen) != writers*each {
		t.Errorf("the log holds %d lines (%d distinct), want %d", len(recs), len(seen), writers*each)
	}
	if err := l.Write(Record{}); err == nil || l.Err() == nil {
		t.Errorf("Write() after Close = %v, Err() = %v; want both to say it is closed", err, l.Err())
	}
}
