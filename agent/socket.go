package agent

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ErrNotSocket is returned by ListenControl for a path that holds
// something else than a socket: it is left as it is.
var ErrNotSocket = errors.New("agent: not a socket")

// ErrSocketInUse is returned by ListenControl when a daemon answers on
// the path already.
var ErrSocketInUse = errors.New("agent: a daemon already listens on the control socket")

// ListenControl listens on the control socket at path, mode 0600 from the
// moment it is there: it is made in a fresh private directory (0700)
// beside path, made 0600 there, and renamed into place; the private
// directory is then removed. net.Listen then os.Chmod would leave it open
// to every local user, under umask 000, until the chmod.
//
// A socket at path that no daemon answers on (left by one that died) is
// removed first; anything else there is refused with ErrNotSocket and left
// as it is. Closing the listener removes the socket at path if it is
// still the one it placed, and never another.
func ListenControl(path string) (net.Listener, error) {
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	priv, err := mkdirPrivate(dir)
	if err != nil {
		return nil, fmt.Errorf("agent: control socket %s: %w", path, err)
	}
	defer os.RemoveAll(priv)
	// A private dir name of 10 bytes and "s": the temporary path is no
	// longer than <dir>/quorumca.sock, for the 108 bytes a socket path
	// may have.
	tmp := filepath.Join(priv, "s")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("agent: control socket %s: %w", path, err)
	}
	// It would remove tmp, which is gone once renamed; Close removes path.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	placed := false
	defer func() {
		if !placed {
			ln.Close()
		}
	}()
	if err := os.Chmod(tmp, 0o600); err != nil {
		return nil, fmt.Errorf("agent: control socket %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("agent: control socket %s: %w", path, err)
	}
	info, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("agent: control socket %s: %w", path, err)
	}
	placed = true
	return &controlListener{Listener: ln, path: path, info: info}, nil
}

// removeStaleSocket removes the socket at path, if no daemon answers on
// it.
func removeStaleSocket(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: control socket %s: %w", path, err)
	}
	if info.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s is a %s; move it away, or choose another data dir", ErrNotSocket, path, kind(info.Mode()))
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("%w: %s; stop the daemon first", ErrSocketInUse, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("agent: remove stale control socket: %w", err)
	}
	return nil
}

func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.Type() == fs.ModeSymlink:
		return "symlink"
	case m.IsRegular():
		return "regular file"
	}
	return "file of mode " + m.String()
}

// mkdirPrivate makes a new directory of mode 0700 in dir, with a short
// random name.
func mkdirPrivate(dir string) (string, error) {
	for range 100 {
		p := filepath.Join(dir, ".q"+rand.Text()[:8])
		err := os.Mkdir(p, 0o700)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		// The umask can only have taken bits away; this gives the owner
		// back what it may have taken.
		if err := os.Chmod(p, 0o700); err != nil {
			os.Remove(p)
			return "", err
		}
		return p, nil
	}
	return "", fmt.Errorf("no fresh directory name in %s after 100 tries", dir)
}

// controlListener is the control socket's listener: its Addr is the
// socket's path, and Close removes the socket it placed there.
type controlListener struct {
	net.Listener
	path string
	info fs.FileInfo // the socket as placed, to tell it from a later one

	once sync.Once
	err  error
}

func (l *controlListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close closes the listener and removes its socket, unless another has
// taken its place. Safe to call more than once (grpc.Server.Stop closes
// it, and so do its owners).
func (l *controlListener) Close() error {
	l.once.Do(func() {
		l.err = l.Listener.Close()
		if info, err := os.Lstat(l.path); err == nil && os.SameFile(info, l.info) {
			os.Remove(l.path)
		}
	})
	return l.err
}
