package agent

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
)

// socketMode is the only mode the control socket may ever be seen with.
const socketMode = fs.ModeSocket | 0o600

// dirNames lists the entries of dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, e := range es {
		ns = append(ns, e.Name())
	}
	return ns
}

// TestListenControlNeverWorldAccessible: under umask 000, a socket made
// by net.Listen is 0777 until it is chmodded: any local user who connects
// in that window keeps a connection to the control socket. ListenControl
// makes it in a private directory and renames it into place: a watcher
// polling the path never sees it with another mode than 0600. Not
// parallel: the umask belongs to the whole process.
func TestListenControlNeverWorldAccessible(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, SocketFile)
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })

	var (
		wg   sync.WaitGroup
		stop = make(chan struct{})
		seen int           // polls that found the socket
		bad  []fs.FileMode // other modes seen, the first few
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			info, err := os.Lstat(target)
			if err != nil {
				continue
			}
			seen++
			if info.Mode() != socketMode && len(bad) < 10 {
				bad = append(bad, info.Mode())
			}
		}
	}()
	// The window is short: open it many times, a bounded number.
	const rounds = 300
	for range rounds {
		ln, err := ListenControl(target)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("ListenControl(%s) = %v", target, err)
		}
		info, err := os.Lstat(target)
		if err != nil || info.Mode() != socketMode {
			t.Errorf("after ListenControl, %s: mode %v, %v; want %v", target, info.Mode(), err, socketMode)
		}
		if got := dirNames(t, dir); !slices.Equal(got, []string{SocketFile}) {
			t.Errorf("after ListenControl, %s holds %v, want the socket alone (no private dir left)", dir, got)
		}
		if err := ln.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	}
	close(stop)
	wg.Wait()
	if len(bad) > 0 {
		t.Errorf("during ListenControl, %s was seen with modes %v; want %v only", target, bad, socketMode)
	}
	if seen == 0 {
		t.Errorf("the watcher never saw %s in %d rounds: the test proves nothing", target, rounds)
	}
	if got := dirNames(t, dir); len(got) > 0 {
		t.Errorf("after Close, %s holds %v, want nothing", dir, got)
	}
}

// TestListenControlStale: a socket left at the path by a daemon that died
// is replaced; anything else there is refused and left as it was.
func TestListenControlStale(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, SocketFile)

	// A dead daemon's socket: closed without unlinking.
	dead, err := net.Listen("unix", target)
	if err != nil {
		t.Fatal(err)
	}
	dead.(*net.UnixListener).SetUnlinkOnClose(false)
	dead.Close()
	ln, err := ListenControl(target)
	if err != nil {
		t.Fatalf("ListenControl(stale socket) = %v, want it replaced", err)
	}
	conn, err := net.Dial("unix", target)
	if err != nil {
		t.Fatalf("dial the new control socket: %v", err)
	}
	conn.Close()
	ln.Close()

	for _, tc := range []struct {
		name string
		make func(t *testing.T)
	}{
		{"regular file", func(t *testing.T) {
			if err := os.WriteFile(target, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T) {
			if err := os.Mkdir(target, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink", func(t *testing.T) {
			if err := os.Symlink("elsewhere", target); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.make(t)
			t.Cleanup(func() { os.RemoveAll(target) })
			before, err := os.Lstat(target)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := ListenControl(target)
			if err == nil {
				ln.Close()
				t.Fatalf("ListenControl(%s) = nil error, want it refused", tc.name)
			}
			if !errors.Is(err, ErrNotSocket) {
				t.Errorf("ListenControl(%s) = %v, want ErrNotSocket", tc.name, err)
			}
			after, err := os.Lstat(target)
			if err != nil || !os.SameFile(before, after) {
				t.Errorf("ListenControl(%s) removed or replaced it (%v)", tc.name, err)
			}
			if got := dirNames(t, dir); !slices.Equal(got, []string{SocketFile}) {
				t.Errorf("after a refusal, %s holds %v, want what was there alone", dir, got)
			}
		})
	}
}

// TestListenControlClose: Close removes the socket the listener placed,
// once, and never one that has taken its place since.
func TestListenControlClose(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, SocketFile)
	ln, err := ListenControl(target)
	if err != nil {
		t.Fatal(err)
	}
	if got := ln.Addr().String(); got != target {
		t.Errorf("Addr() = %s, want %s", got, target)
	}
	if err := ln.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Close, Lstat(%s) = %v, want it removed", target, err)
	}
	ln.Close() // again: no panic, nothing removed

	// A socket that replaced ours (another daemon's) stays.
	ln, err = ListenControl(target)
	if err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := os.Rename(filepath.Join(dir, "other"), target); err != nil {
		t.Fatal(err)
	}
	before, err := os.Lstat(target)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if after, err := os.Lstat(target); err != nil || !os.SameFile(before, after) {
		t.Errorf("Close removed a socket it had not placed (%v)", err)
	}
}

// TestListenControlLiveSocketRefused: a socket a daemon answers on is not
// stale: a second daemon on the same data dir is refused, and the first
// keeps its socket.
func TestListenControlLiveSocketRefused(t *testing.T) {
	target := filepath.Join(t.TempDir(), SocketFile)
	ln, err := ListenControl(target)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if second, err := ListenControl(target); !errors.Is(err, ErrSocketInUse) {
		if err == nil {
			second.Close()
		}
		t.Fatalf("ListenControl(live socket) = %v, want ErrSocketInUse", err)
	}
	conn, err := net.Dial("unix", target)
	if err != nil {
		t.Fatalf("the first daemon's socket no longer answers: %v", err)
	}
	conn.Close()
}
