package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrUnsafePath is returned, wrapped with the path, its owner, its mode and
// the fix, by CheckDataDir, MakeDataDir and CheckSocket when another local
// user could change what the path leads to: replace the control socket
// with their own and read what the CLI sends through it (a CA key), or
// read and replace the node's key and certificates.
var ErrUnsafePath = errors.New("agent: a path other users can change")

// maxLinks bounds the symlinks followed in one path, as the kernel does
// (ELOOP).
const maxLinks = 40

// CheckDataDir returns an error wrapping ErrUnsafePath unless no local
// user but root and the current one can change the data directory at
// path or what leads to it. path is made absolute and followed, symlink
// by symlink, as the kernel would:
//   - every directory looked up on the way, and every symlink followed,
//     must belong to root or the current user;
//   - a directory on the way may be writable by group or others only if
//     it has the sticky bit (as /tmp): then they cannot rename or remove
//     what is not theirs;
//   - the data directory itself must be a directory that neither group
//     nor others may write to.
//
// A data directory that does not exist yet is judged by its nearest
// existing ancestor; MakeDataDir creates it.
func CheckDataDir(path string) error {
	return checked(checkDataDir(path), "data directory", path)
}

func checkDataDir(path string) error {
	w, err := walk(path)
	if err != nil {
		return err
	}
	return w.checkDataDir(path)
}

func (w walked) checkDataDir(path string) error {
	if err := w.checkWay(""); err != nil {
		return err
	}
	if !w.final.info.IsDir() {
		return fmt.Errorf("agent: data directory %s: %s is not a directory", path, w.final.path)
	}
	if len(w.rest) > 0 {
		return checkAncestor(w.final)
	}
	return checkPrivateDir(w.final, "data directory")
}

// MakeDataDir checks path as CheckDataDir does and creates what is missing
// of it, one directory at a time (mode 0700), checking again after each:
// a directory that another user makes on the way in the meantime is
// refused before anything is created in it. A data directory that exists
// is only checked.
func MakeDataDir(path string) error {
	// Each turn creates one directory, or finds one made by someone else
	// meanwhile; a path has fewer missing names than this.
	for range 256 {
		w, err := walk(path)
		if err != nil {
			return err
		}
		if err := w.checkDataDir(path); err != nil {
			return checked(err, "data directory", path)
		}
		if len(w.rest) == 0 {
			return nil
		}
		next := filepath.Join(w.final.path, w.rest[0])
		if err := os.Mkdir(next, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("agent: data directory %s: %w", path, err)
		}
	}
	return fmt.Errorf("agent: data directory %s: it changed while it was being created; try again", path)
}

// CheckSocket returns an error wrapping ErrUnsafePath unless path is a
// Unix socket that belongs to root or the current user, in a directory
// that passes CheckDataDir: then no other local user can have put it
// there, nor replace it before the caller connects.
func CheckSocket(path string) error {
	return checked(checkSocket(path), "control socket", path)
}

func checkSocket(path string) error {
	w, err := walk(path)
	if err != nil {
		return err
	}
	if len(w.rest) > 0 {
		return fmt.Errorf("agent: control socket %s: %w", path, fs.ErrNotExist)
	}
	dir := filepath.Dir(w.final.path)
	if err := w.checkWay(dir); err != nil {
		return err
	}
	info, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("agent: control socket %s: %w", path, err)
	}
	if err := checkPrivateDir(entry{dir, info}, "directory of the control socket"); err != nil {
		return err
	}
	if w.final.info.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("agent: control socket %s: %s (%s) is not a socket", path, w.final.path, describe(w.final.info))
	}
	if !trustedOwner(w.final.info) {
		return unsafe(w.final, "is a socket that belongs to another user, who may be listening on it", "use a control socket of your own, or root's")
	}
	return nil
}

// entry is a path that exists and its Lstat.
type entry struct {
	path string
	info fs.FileInfo
}

// walked is a path followed from the root.
type walked struct {
	// dirs are the directories a name was looked up in, in order, each
	// once; links the symlinks followed.
	dirs, links []entry
	// final is the last entry that exists: what the path names, when rest
	// is empty; otherwise its nearest existing ancestor.
	final entry
	// rest are the names, under final, that do not exist.
	rest []string
}

// walk follows path from the root, name by name, as the kernel resolves
// it, and records what it passes through.
func walk(path string) (walked, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return walked{}, fmt.Errorf("agent: %s: %w", path, err)
	}
	var w walked
	seen := map[string]bool{}
	rootInfo, err := os.Lstat("/")
	if err != nil {
		return walked{}, fmt.Errorf("agent: %w", err)
	}
	cur := entry{"/", rootInfo}
	todo := splitPath(abs)
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == "." {
			continue
		}
		if name == ".." {
			parent := filepath.Dir(cur.path)
			info, err := os.Lstat(parent)
			if err != nil {
				return walked{}, fmt.Errorf("agent: %s: %w", path, err)
			}
			cur = entry{parent, info}
			continue
		}
		if !cur.info.IsDir() {
			return walked{}, fmt.Errorf("agent: %s: %s is not a directory", path, cur.path)
		}
		if !seen[cur.path] {
			seen[cur.path] = true
			w.dirs = append(w.dirs, cur)
		}
		next := filepath.Join(cur.path, name)
		info, err := os.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) {
			w.final, w.rest = cur, append([]string{name}, todo...)
			return w, nil
		}
		if err != nil {
			return walked{}, fmt.Errorf("agent: %s: %w", path, err)
		}
		if info.Mode().Type() == fs.ModeSymlink {
			if len(w.links) == maxLinks {
				return walked{}, fmt.Errorf("agent: %s: more than %d symlinks", path, maxLinks)
			}
			w.links = append(w.links, entry{next, info})
			target, err := os.Readlink(next)
			if err != nil {
				return walked{}, fmt.Errorf("agent: %s: %w", path, err)
			}
			if filepath.IsAbs(target) {
				cur = entry{"/", rootInfo}
			}
			todo = append(splitPath(target), todo...)
			continue
		}
		cur = entry{next, info}
	}
	w.final = cur
	return w, nil
}

// splitPath returns the names of path, without empty ones.
func splitPath(path string) []string {
	return strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
}

// checkWay checks the symlinks followed and the directories passed
// through, but private, which the caller checks by a stricter rule.
func (w walked) checkWay(private string) error {
	for _, l := range w.links {
		if !trustedOwner(l.info) {
			target, _ := os.Readlink(l.path)
			return unsafe(l, "is a symlink (to "+strconv.Quote(target)+") that belongs to another user, who can point it elsewhere", "use a data dir other users cannot change")
		}
	}
	for _, d := range w.dirs {
		if d.path == private {
			continue
		}
		if err := checkAncestor(d); err != nil {
			return err
		}
	}
	return nil
}

// checkAncestor checks a directory on the way to the data directory.
func checkAncestor(d entry) error {
	if !trustedOwner(d.info) {
		return unsafe(d, "belongs to another user, who can replace what it holds", "use a data dir other users cannot change")
	}
	if who := writers(d.info); who != "" && d.info.Mode()&fs.ModeSticky == 0 {
		return unsafe(d, "is writable by "+who+" and has no sticky bit, so they can replace what it holds",
			"chmod go-w "+d.path+", or use a data dir other users cannot change")
	}
	return nil
}

// checkPrivateDir checks the data directory itself, or the one that holds
// a control socket.
func checkPrivateDir(d entry, what string) error {
	if !d.info.IsDir() {
		return fmt.Errorf("agent: %s %s is not a directory", what, d.path)
	}
	if !trustedOwner(d.info) {
		return unsafe(d, "is a "+what+" that belongs to another user", "use a data dir other users cannot change")
	}
	if who := writers(d.info); who != "" {
		return unsafe(d, "is a "+what+" writable by "+who, "chmod 700 "+d.path)
	}
	return nil
}

// writers names who besides the owner may write to a directory: "group",
// "others", "group and others", or "".
func writers(info fs.FileInfo) string {
	var who []string
	if info.Mode().Perm()&0o020 != 0 {
		who = append(who, "group")
	}
	if info.Mode().Perm()&0o002 != 0 {
		who = append(who, "others")
	}
	return strings.Join(who, " and ")
}

// trustedOwner reports whether info belongs to root or the current user.
func trustedOwner(info fs.FileInfo) bool {
	uid, ok := owner(info)
	return ok && (uid == 0 || uid == os.Geteuid())
}

func owner(info fs.FileInfo) (int, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}

// describe says who owns info, and its mode.
func describe(info fs.FileInfo) string {
	uid, ok := owner(info)
	if !ok {
		return "owner unknown, mode " + info.Mode().String()
	}
	return fmt.Sprintf("owner uid %d, mode %s", uid, info.Mode())
}

// UnsafePathError is the error of CheckDataDir, MakeDataDir and
// CheckSocket for a path that another local user could change.
type UnsafePathError struct {
	// Path is what other users can change: a directory, a symlink or a
	// socket.
	Path string
	// UID is Path's owner, Mode its mode.
	UID  int
	Mode fs.FileMode
	// Problem says what is wrong with Path, Fix what to do about it.
	Problem, Fix string
	// Checked is the path that was checked, when it is not Path: a data
	// directory that leads through Path or to it.
	Checked string

	owner string // the owner for the message: uid and name
}

func (e *UnsafePathError) Error() string {
	via := ""
	if e.Checked != "" {
		via = ", reached from " + e.Checked + ","
	}
	return fmt.Sprintf("%v: %s (owner %s, mode %s)%s %s; %s", ErrUnsafePath, e.Path, e.owner, e.Mode, via, e.Problem, e.Fix)
}

// Unwrap returns ErrUnsafePath.
func (e *UnsafePathError) Unwrap() error { return ErrUnsafePath }

// unsafe is the error for e: what is wrong with it, and the fix.
func unsafe(e entry, problem, fix string) error {
	uid, ok := owner(e.info)
	who := "unknown"
	if ok {
		who = "uid " + strconv.Itoa(uid)
		if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
			who += " (" + u.Username + ")"
		}
	} else {
		uid = -1
	}
	return &UnsafePathError{Path: e.path, UID: uid, Mode: e.info.Mode(), Problem: problem, Fix: fix, owner: who}
}

// checked notes in an UnsafePathError which path was checked, when it is
// not the one at fault.
func checked(err error, what, path string) error {
	var ue *UnsafePathError
	if errors.As(err, &ue) {
		if abs, _ := filepath.Abs(path); ue.Path != abs {
			ue.Checked = what + " " + path
		}
	}
	return err
}
