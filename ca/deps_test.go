package ca_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestImportsOnlyStandardLibrary keeps ca pure: it must build from the
// standard library alone.
func TestImportsOnlyStandardLibrary(t *testing.T) {
	const self = "github.com/quorumca/quorumca/ca"
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list ca's dependencies and is not on PATH: %v", err)
	}
	cmd := exec.CommandContext(t.Context(), goCmd, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".")
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps . = %v\n%s", err, stderr)
	}
	var sawSelf bool
	for _, path := range strings.Fields(string(out)) {
		if path == self {
			sawSelf = true
			continue
		}
		t.Errorf("package ca depends on %s, outside the standard library; ca may import only the standard library", path)
	}
	if !sawSelf {
		t.Errorf("go list -deps . = %q, want it to list %s itself", out, self)
	}
}
