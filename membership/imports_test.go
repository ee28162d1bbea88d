package membership

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const (
	modulePath     = "github.com/quorumca/quorumca"
	memberlistPath = "github.com/hashicorp/memberlist"
)

func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(p); err != nil {
		t.Skipf("no go command: %v", err)
	}
	return p
}

// TestOnlyMembershipImportsMemberlist keeps memberlist behind this package.
func TestOnlyMembershipImportsMemberlist(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	cmd := exec.Command(goTool(t), "list", "-e", "-f", `{{.ImportPath}} {{join .Imports " "}}`, modulePath+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs, importers []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkgs = append(pkgs, fields[0])
		if slices.Contains(fields[1:], memberlistPath) {
			importers = append(importers, fields[0])
		}
	}
	self := modulePath + "/membership"
	// The listing must be real: this package is in it and imports memberlist.
	if !slices.Contains(pkgs, self) {
		t.Fatalf("go list did not list %s; got %v", self, pkgs)
	}
	if len(pkgs) < 2 {
		t.Fatalf("go list listed only %v; expected the whole module", pkgs)
	}
	if !slices.Contains(importers, self) {
		t.Fatalf("%s does not import %s according to go list", self, memberlistPath)
	}
	for _, p := range importers {
		if p != self {
			t.Errorf("%s imports %s directly; only %s may", p, memberlistPath, self)
		}
	}
}
