package agent

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// otherUID is another local user's uid (nobody) in these tests.
const otherUID = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
}

// mkdir makes dir with exactly mode (whatever the umask), owned by uid.
func mkdir(t *testing.T, dir string, mode fs.FileMode, uid int) string {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
	return dir
}

// symlink makes link, pointing at target, owned by uid.
func symlink(t *testing.T, target, link string, uid int) string {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, uid, uid); err != nil {
		t.Fatal(err)
	}
	return link
}

// testBase is a fresh directory only root may change, whatever the umask.
func testBase(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	return base
}

// TestCheckDataDir: a data dir that another local user could change, or
// reach through something they could change, is refused with an error
// that names the offending path, its owner and mode, and the fix; one
// that only root and the current user can change is accepted.
func TestCheckDataDir(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name string
		// setup makes the fixture under base and returns the data dir to
		// check, and for a refusal the path the error must name.
		setup func(t *testing.T, base string) (dataDir, offender string)
		// want are the further parts of the refusal, where {offender} and
		// {base} stand for those paths; nil: accepted.
		want []string
	}{
		{
			name: "symlink to a world-writable dir of another user",
			setup: func(t *testing.T, base string) (string, string) {
				evil := mkdir(t, filepath.Join(base, "evil"), 0o777, otherUID)
				return symlink(t, evil, filepath.Join(base, "data"), 0), evil
			},
			want: []string{"owner uid 65534", "mode drwxrwxrwx", "belongs to another user", "use a data dir other users cannot change"},
		},
		{
			name: "relative symlink to a world-writable dir of root",
			setup: func(t *testing.T, base string) (string, string) {
				ww := mkdir(t, filepath.Join(base, "ww"), 0o777, 0)
				return symlink(t, "ww", filepath.Join(base, "data"), 0), ww
			},
			want: []string{"owner uid 0", "mode drwxrwxrwx", "writable by group and others", "chmod 700 {offender}"},
		},
		{
			name: "group-writable data dir",
			setup: func(t *testing.T, base string) (string, string) {
				d := mkdir(t, filepath.Join(base, "data"), 0o770, 0)
				return d, d
			},
			want: []string{"owner uid 0", "mode drwxrwx---", "is a data directory writable by group", "chmod 700 {offender}"},
		},
		{
			name: "world-writable sticky data dir",
			setup: func(t *testing.T, base string) (string, string) {
				d := mkdir(t, filepath.Join(base, "data"), 0o777|fs.ModeSticky, 0)
				return d, d
			},
			want: []string{"writable by group and others", "chmod 700"},
		},
		{
			name: "data dir of another user",
			setup: func(t *testing.T, base string) (string, string) {
				d := mkdir(t, filepath.Join(base, "data"), 0o700, otherUID)
				return d, d
			},
			want: []string{"owner uid 65534", "mode drwx------", "belongs to another user"},
		},
		{
			name: "parent world-writable without sticky",
			setup: func(t *testing.T, base string) (string, string) {
				p := mkdir(t, filepath.Join(base, "p"), 0o777, 0)
				return mkdir(t, filepath.Join(p, "data"), 0o700, 0), p
			},
			want: []string{"mode drwxrwxrwx", "writable by group and others and has no sticky bit", "chmod go-w {offender}"},
		},
		{
			name: "parent group-writable without sticky, data dir missing",
			setup: func(t *testing.T, base string) (string, string) {
				p := mkdir(t, filepath.Join(base, "p"), 0o775, 0)
				return filepath.Join(p, "a", "data"), p
			},
			want: []string{"mode drwxrwxr-x", "writable by group and has no sticky bit"},
		},
		{
			name: "parent of another user",
			setup: func(t *testing.T, base string) (string, string) {
				p := mkdir(t, filepath.Join(base, "p"), 0o755, otherUID)
				return mkdir(t, filepath.Join(p, "data"), 0o700, 0), p
			},
			want: []string{"owner uid 65534", "belongs to another user, who can replace what it holds"},
		},
		{
			name: "symlink of another user to a safe dir",
			setup: func(t *testing.T, base string) (string, string) {
				safe := mkdir(t, filepath.Join(base, "safe"), 0o700, 0)
				l := symlink(t, safe, filepath.Join(base, "data"), otherUID)
				return l, l
			},
			want: []string{"owner uid 65534", `is a symlink (to "{base}/safe") that belongs to another user`},
		},
		{
			name: "symlink to a safe dir, in a world-writable dir",
			setup: func(t *testing.T, base string) (string, string) {
				safe := mkdir(t, filepath.Join(base, "safe"), 0o700, 0)
				ww := mkdir(t, filepath.Join(base, "ww"), 0o777, 0)
				return symlink(t, safe, filepath.Join(ww, "data"), 0), ww
			},
			want: []string{"has no sticky bit"},
		},
		{
			name: "symlink chain ending at another user's dir",
			setup: func(t *testing.T, base string) (string, string) {
				evil := mkdir(t, filepath.Join(base, "evil"), 0o700, otherUID)
				l2 := symlink(t, evil, filepath.Join(base, "l2"), 0)
				return symlink(t, filepath.Base(l2), filepath.Join(base, "l1"), 0), evil
			},
			want: []string{"belongs to another user"},
		},
		{
			name:  "0700 dir under /tmp",
			setup: func(t *testing.T, _ string) (string, string) { return mkdirTemp(t), "" },
		},
		{
			name: "missing dir under /tmp",
			setup: func(t *testing.T, _ string) (string, string) {
				return filepath.Join(mkdirTemp(t)+"-missing", "data"), ""
			},
		},
		{
			name: "symlink to a safe dir",
			setup: func(t *testing.T, base string) (string, string) {
				mkdir(t, filepath.Join(base, "safe"), 0o700, 0)
				return symlink(t, "safe", filepath.Join(base, "data"), 0), ""
			},
		},
		{
			name: "0700 dir in a sticky world-writable dir",
			setup: func(t *testing.T, base string) (string, string) {
				sticky := mkdir(t, filepath.Join(base, "sticky"), 0o777|fs.ModeSticky, 0)
				return mkdir(t, filepath.Join(sticky, "data"), 0o700, 0), ""
			},
		},
		{
			name: "0750 data dir, missing dirs under a safe one",
			setup: func(t *testing.T, base string) (string, string) {
				mkdir(t, filepath.Join(base, "d"), 0o750, 0)
				return filepath.Join(base, "d", "..", "x", "y"), ""
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := testBase(t)
			dataDir, offender := tt.setup(t, base)
			err := CheckDataDir(dataDir)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("CheckDataDir(%s) = %v, want nil", dataDir, err)
				}
				return
			}
			if !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("CheckDataDir(%s) = %v, want ErrUnsafePath", dataDir, err)
			}
			t.Logf("CheckDataDir(%s) = %v", dataDir, err)
			var ue *UnsafePathError
			if !errors.As(err, &ue) || ue.Path != offender {
				t.Errorf("CheckDataDir(%s) = %#v, want an *UnsafePathError for %s", dataDir, err, offender)
			}
			for _, want := range append([]string{offender + " ("}, tt.want...) {
				want = strings.NewReplacer("{offender}", offender, "{base}", base).Replace(want)
				if !strings.Contains(err.Error(), want) {
					t.Errorf("CheckDataDir(%s) = %q, want it to contain %q", dataDir, err, want)
				}
			}
		})
	}
}

// mkdirTemp makes a 0700 directory right under the system temp dir
// (sticky /tmp), removed when the test ends.
func mkdirTemp(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qdata")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d); os.RemoveAll(d + "-missing") })
	return d
}

func TestCheckDataDirNotADirectory(t *testing.T) {
	file := filepath.Join(testBase(t), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, filepath.Join(file, "data")} {
		if err := CheckDataDir(p); err == nil || !strings.Contains(err.Error(), file+" is not a directory") {
			t.Errorf("CheckDataDir(%s) = %v, want %s named not a directory", p, err, file)
		}
	}
}

// TestCheckDataDirRelative: a relative data dir is judged where it
// resolves, with the directories above the working one.
func TestCheckDataDirRelative(t *testing.T) {
	needRoot(t)
	base := testBase(t)
	mkdir(t, filepath.Join(base, "safe"), 0o700, 0)
	mkdir(t, filepath.Join(base, "open"), 0o777, 0)
	t.Chdir(base)
	if err := CheckDataDir("safe"); err != nil {
		t.Errorf("CheckDataDir(safe) in %s = %v, want nil", base, err)
	}
	if err := CheckDataDir("open"); !errors.Is(err, ErrUnsafePath) || !strings.Contains(err.Error(), filepath.Join(base, "open")) {
		t.Errorf("CheckDataDir(open) in %s = %v, want ErrUnsafePath naming the absolute path", base, err)
	}
}

// TestMakeDataDir: the missing part of a safe data dir is made 0700; an
// unsafe one is refused with nothing created in it.
func TestMakeDataDir(t *testing.T) {
	needRoot(t)
	base := testBase(t)
	data := filepath.Join(base, "a", "b", "data")
	if err := MakeDataDir(data); err != nil {
		t.Fatalf("MakeDataDir(%s) = %v, want nil", data, err)
	}
	for _, d := range []string{filepath.Join(base, "a"), filepath.Join(base, "a", "b"), data} {
		if info, err := os.Stat(d); err != nil || info.Mode() != fs.ModeDir|0o700 {
			t.Errorf("after MakeDataDir, %s: %v, %v; want a 0700 directory", d, info.Mode(), err)
		}
	}
	if err := MakeDataDir(data); err != nil {
		t.Errorf("MakeDataDir(%s) again = %v, want nil", data, err)
	}

	evil := mkdir(t, filepath.Join(base, "evil"), 0o777, otherUID)
	link := symlink(t, evil, filepath.Join(base, "link"), 0)
	for _, p := range []string{filepath.Join(link, "data"), filepath.Join(evil, "x", "data"), link} {
		if err := MakeDataDir(p); !errors.Is(err, ErrUnsafePath) || !strings.Contains(err.Error(), evil) {
			t.Errorf("MakeDataDir(%s) = %v, want ErrUnsafePath naming %s", p, err, evil)
		}
	}
	if entries, _ := os.ReadDir(evil); len(entries) > 0 {
		t.Errorf("MakeDataDir created %d entries in the refused %s", len(entries), evil)
	}
}

// TestCheckSocket: the CLI connects only to a socket of root or its own
// user, in a directory no other user can change.
func TestCheckSocket(t *testing.T) {
	needRoot(t)
	listen := func(t *testing.T, path string, uid int) string {
		t.Helper()
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		if err := os.Lchown(path, uid, uid); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, base string) string
		want  string // empty: accepted
	}{
		{"own socket in a 0700 dir", func(t *testing.T, base string) string {
			return listen(t, filepath.Join(mkdir(t, filepath.Join(base, "d"), 0o700, 0), "s.sock"), 0)
		}, ""},
		{"symlink to own socket", func(t *testing.T, base string) string {
			s := listen(t, filepath.Join(mkdir(t, filepath.Join(base, "d"), 0o700, 0), "s.sock"), 0)
			return symlink(t, s, filepath.Join(base, "l.sock"), 0)
		}, ""},
		{"another user's socket", func(t *testing.T, base string) string {
			return listen(t, filepath.Join(mkdir(t, filepath.Join(base, "d"), 0o700, 0), "s.sock"), otherUID)
		}, "is a socket that belongs to another user"},
		{"group-writable dir", func(t *testing.T, base string) string {
			return listen(t, filepath.Join(mkdir(t, filepath.Join(base, "d"), 0o770, 0), "s.sock"), 0)
		}, "writable by group; chmod 700"},
		{"sticky world-writable dir", func(t *testing.T, base string) string {
			return listen(t, filepath.Join(mkdir(t, filepath.Join(base, "d"), 0o777|fs.ModeSticky, 0), "s.sock"), 0)
		}, "writable by group and others; chmod 700"},
		{"symlink into another user's dir", func(t *testing.T, base string) string {
			evil := mkdir(t, filepath.Join(base, "evil"), 0o777, otherUID)
			s := listen(t, filepath.Join(evil, "s.sock"), 0)
			return symlink(t, s, filepath.Join(base, "l.sock"), 0)
		}, "owner uid 65534"},
		{"regular file", func(t *testing.T, base string) string {
			f := filepath.Join(mkdir(t, filepath.Join(base, "d"), 0o700, 0), "s.sock")
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return f
		}, "is not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.setup(t, testBase(t))
			err := CheckSocket(path)
			if tt.want == "" && err != nil {
				t.Fatalf("CheckSocket(%s) = %v, want nil", path, err)
			}
			if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("CheckSocket(%s) = %v, want an error containing %q", path, err, tt.want)
			}
		})
	}
	if err := CheckSocket(filepath.Join(testBase(t), "missing.sock")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CheckSocket(missing) = %v, want fs.ErrNotExist", err)
	}
}
