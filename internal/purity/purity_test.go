// Package purity holds the tests that keep quorumca's functional core
// pure and its packages documented (STYLE.md): ca, fsm, authz, progress,
// backup and internal/sealstream
// import nothing that reaches the network, the disk, the process or global
// randomness, read no clock, start no goroutine and take randomness only
// as an argument; and every package of the module has a package comment.
// It has no code of its own.
package purity

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// pure are the packages of the functional core, relative to the module.
var pure = []string{"ca", "fsm", "authz", "progress", "backup", "internal/sealstream"}

// forbiddenImports reach the network, the disk or the process, or draw
// global randomness; log and log/slog are forbidden too, as the core does
// not log (STYLE.md). net/url and net/netip only parse, and are allowed.
var forbiddenImports = []string{
	"os", "os/exec", "os/signal", "os/user", "syscall",
	"net", "net/http", "net/rpc", "net/smtp",
	"math/rand", "math/rand/v2",
	"log", "log/slog",
}

// forbiddenRefs are the names of allowed packages that read the clock,
// wait on it, or draw from the global random source; time and randomness
// come in as arguments.
var forbiddenRefs = map[string][]string{
	"time":        {"Now", "Since", "Until", "Sleep", "After", "AfterFunc", "Tick", "NewTimer", "NewTicker"},
	"crypto/rand": {"Reader", "Read", "Text"},
}

// pkg is what go list says of a package.
type pkg struct {
	ImportPath, Dir, Name     string
	GoFiles, CgoFiles         []string
	TestGoFiles, XTestGoFiles []string
	Imports                   []string
	Standard                  bool
	Module                    *struct{ Path, Dir string }
	Error                     *struct{ Err string }
}

// goList runs go list -json with args in the module's root and returns
// the module's path and the packages it lists.
func goList(t *testing.T, args ...string) (module string, pkgs []pkg) {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list packages and is not on PATH: %v", err)
	}
	var root string // "" until known: the test's directory, in the module
	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), goCmd, args...)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("go %s = %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	var mod struct{ Path, Dir string }
	if err := json.Unmarshal(run("list", "-m", "-json"), &mod); err != nil || mod.Path == "" {
		t.Fatalf("go list -m -json: %+v, %v", mod, err)
	}
	root = mod.Dir
	dec := json.NewDecoder(bytes.NewReader(run(append([]string{"list", "-json"}, args...)...)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("go list -json %s: %v", strings.Join(args, " "), err)
		}
		if p.Error != nil {
			t.Fatalf("go list: %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs = append(pkgs, p)
	}
	return mod.Path, pkgs
}

// TestPurePackages: the packages of the functional core, and the
// packages of the module they depend on, import nothing forbidden, and
// their code (tests aside) reads no clock, starts no goroutine and draws
// no global randomness.
func TestPurePackages(t *testing.T) {
	args := []string{"-deps"}
	for _, p := range pure {
		args = append(args, "./"+p)
	}
	module, pkgs := goList(t, args...)
	isPure := map[string]bool{}
	for _, p := range pure {
		isPure[module+"/"+p] = true
	}
	checked := 0
	for _, p := range pkgs {
		if p.Standard || p.Module == nil || p.Module.Path != module {
			continue
		}
		if !isPure[p.ImportPath] {
			t.Errorf("a pure package depends on %s, which is not one of %v", p.ImportPath, pure)
			continue
		}
		checked++
		fset := token.NewFileSet()
		for _, name := range slices.Concat(p.GoFiles, p.CgoFiles) {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, 0)
			if err != nil {
				t.Fatalf("parse %s: %v", name, err)
			}
			for _, v := range violations(fset, f) {
				t.Errorf("%s: %s", p.ImportPath, v)
			}
		}
	}
	if checked != len(pure) {
		t.Errorf("checked %d pure packages, want %d (%v)", checked, len(pure), pure)
	}
}

// violations lists what in f a pure package must not do: import a
// forbidden package, refer to a forbidden name, start a goroutine.
func violations(fset *token.FileSet, f *ast.File) []string {
	var out []string
	names := map[string]string{} // local name → import path
	for _, imp := range f.Imports {
		p, err := strconv.Unquote(imp.Path.Value)
		if err != nil {
			continue
		}
		if slices.Contains(forbiddenImports, p) {
			out = append(out, fmt.Sprintf("%s: imports %s", fset.Position(imp.Pos()), p))
		}
		name := path.Base(p)
		if strings.HasPrefix(name, "v") && strings.Contains(p, "/") {
			if _, err := strconv.Atoi(name[1:]); err == nil {
				name = path.Base(path.Dir(p)) // math/rand/v2 is rand
			}
		}
		if imp.Name != nil {
			name = imp.Name.Name
		}
		names[name] = p
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.GoStmt:
			out = append(out, fmt.Sprintf("%s: starts a goroutine", fset.Position(n.Pos())))
		case *ast.SelectorExpr:
			id, ok := n.X.(*ast.Ident)
			// A name declared in the file (a variable called time) has
			// an Obj; a package name has none.
			if !ok || id.Obj != nil {
				return true
			}
			if p, ok := names[id.Name]; ok && slices.Contains(forbiddenRefs[p], n.Sel.Name) {
				out = append(out, fmt.Sprintf("%s: refers to %s.%s", fset.Position(n.Pos()), p, n.Sel.Name))
			}
		}
		return true
	})
	return out
}

// TestViolations: the check finds what it looks for, under any import
// name, and not what only looks like it.
func TestViolations(t *testing.T) {
	tests := []struct {
		name, src string
		want      []string
	}{
		{"clean", `package p
import ("time"; "crypto/rand"; "io")
func f(now time.Time, r io.Reader) (time.Duration, error) { _, err := rand.Int(r, nil); return now.Sub(now), err }`, nil},
		{"clock", `package p
import "time"
func f() time.Duration { return time.Since(time.Now()) }`, []string{"time.Since", "time.Now"}},
		{"renamed clock", `package p
import clock "time"
var _ = clock.Until`, []string{"time.Until"}},
		{"timer", `package p
import "time"
func f() { <-time.After(1); time.Sleep(1) }`, []string{"time.After", "time.Sleep"}},
		{"global randomness", `package p
import crand "crypto/rand"
func f(b []byte) { crand.Read(b); _ = crand.Reader }`, []string{"crypto/rand.Read", "crypto/rand.Reader"}},
		{"forbidden imports", `package p
import (_ "os"; "net/http"; mrand "math/rand/v2"; "math/rand")
var _ = mrand.N[int]`, []string{"imports os", "imports net/http", "imports math/rand/v2", "imports math/rand"}},
		{"goroutine", `package p
func f() { go func() {}() }`, []string{"starts a goroutine"}},
		{"a variable named time", `package p
type clock struct{}
func (clock) Now() int { return 0 }
func f() int { var time clock; return time.Now() }`, nil},
		{"a field named Now", `package p
import "time"
type c struct{ Now time.Time }
func f(x c) time.Time { return x.Now }`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "p.go", tt.src, 0)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			got := violations(fset, f)
			if len(got) != len(tt.want) {
				t.Fatalf("violations() = %q, want %d matching %q", got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("violations()[%d] = %q, want it to name %q", i, got[i], w)
				}
			}
		})
	}
}

// TestPackageComments: every package of the module has a package comment
// that begins "Package name" ("Command name" for a command), in its code,
// or in its tests for a package that has only tests.
func TestPackageComments(t *testing.T) {
	_, pkgs := goList(t, "./...")
	if len(pkgs) < len(pure) {
		t.Fatalf("go list ./... listed %d packages, want at least %d", len(pkgs), len(pure))
	}
	for _, p := range pkgs {
		files := slices.Concat(p.GoFiles, p.CgoFiles)
		if len(files) == 0 {
			files = slices.Concat(p.TestGoFiles, p.XTestGoFiles)
		}
		want := "Package " + p.Name + " "
		if p.Name == "main" {
			want = "Command " + path.Base(p.ImportPath) + " "
		}
		var docs []string
		fset := token.NewFileSet()
		for _, name := range files {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatalf("parse %s: %v", name, err)
			}
			if f.Doc != nil {
				docs = append(docs, f.Doc.Text())
			}
		}
		switch {
		case len(docs) == 0:
			t.Errorf("package %s has no package comment; add one (a doc.go) that begins %q", p.ImportPath, want)
		case !slices.ContainsFunc(docs, func(d string) bool { return strings.HasPrefix(d, want) }):
			t.Errorf("package %s's package comment begins %q, want %q", p.ImportPath, firstLine(docs[0]), want)
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// TestNodeTLSStandardLibraryOnly: the package programs on a node import
// brings nothing but the standard library (no Raft, gossip or gRPC).
func TestNodeTLSStandardLibraryOnly(t *testing.T) {
	module, pkgs := goList(t, "-deps", "./nodetls")
	found := false
	for _, p := range pkgs {
		switch {
		case p.ImportPath == module+"/nodetls":
			found = true
		case !p.Standard:
			t.Errorf("nodetls depends on %s, which is not the standard library", p.ImportPath)
		}
	}
	if !found {
		t.Fatalf("go list -deps ./nodetls did not list nodetls")
	}
}
