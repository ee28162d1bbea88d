package main

import (
	"encoding/json"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

// TestBuildVersion: version reads the module version, the VCS stamp and
// the Go version from the build information, and says "unknown" for what
// it lacks.
func TestBuildVersion(t *testing.T) {
	when := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		info *debug.BuildInfo
		ok   bool
		want versionJSON
	}{
		{"no build info", nil, false, versionJSON{Version: "unknown", Go: runtime.Version()}},
		{"go install at a tag", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v1.2.3"}}, true,
			versionJSON{Version: "v1.2.3", Go: "go1.26.1"}},
		{"checkout, modified", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: when.Format(time.RFC3339)},
			{Key: "vcs.modified", Value: "true"},
		}}, true, versionJSON{Version: "(devel)", Go: "go1.26.1", Commit: "0123456789abcdef0123456789abcdef01234567", Time: &when, Modified: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := buildVersion(tt.info, tt.ok)
			tt.want.Platform = runtime.GOOS + "/" + runtime.GOARCH
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(tt.want)
			if string(gb) != string(wb) {
				t.Errorf("buildVersion(%s) = %s, want %s", tt.name, gb, wb)
			}
		})
	}
}

// TestVersionCommand: `version` prints a table and `--format json` the
// stable shape, with the running Go version.
func TestVersionCommand(t *testing.T) {
	out, err := run(t, "version")
	if err != nil || !strings.Contains(out, "Version:") || !strings.Contains(out, "Go:        "+runtime.Version()) {
		t.Fatalf("quorumca version = %v\n%s\nwant the version and Go %s", err, out, runtime.Version())
	}
	out, err = run(t, "version", "--format", "json")
	if err != nil {
		t.Fatalf("quorumca version --format json = %v", err)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("quorumca version --format json printed %q: %v", out, err)
	}
	for _, key := range []string{"version", "modified", "go", "platform"} {
		if _, ok := v[key]; !ok {
			t.Errorf("quorumca version --format json = %s, want key %q", out, key)
		}
	}
	if _, err := run(t, "version", "--format", "yaml"); err == nil || !strings.Contains(err.Error(), "use table or json") {
		t.Errorf("quorumca version --format yaml = %v, want the format refused", err)
	}
}

// TestUnknownSubcommandFails: an unknown command, at the top or under a
// group command, is an error that names it and says where the usage is;
// a group command alone prints its help and succeeds.
func TestUnknownSubcommandFails(t *testing.T) {
	tests := []struct {
		args []string
		want string // empty: no error
	}{
		{[]string{"nosuch"}, `unknown command "nosuch" for "quorumca"`},
		{[]string{"node", "nosuch"}, `unknown command "nosuch" for "quorumca node"`},
		{[]string{"node", "lss"}, "Did you mean this?\n\tls"},
		{[]string{"admin-cert", "nosuch"}, `unknown command "nosuch" for "quorumca admin-cert"`},
		{[]string{"cert", "nosuch", "x"}, "Run 'quorumca cert --help' for usage"},
		{[]string{"node"}, ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err := run(t, tt.args...)
			if tt.want == "" {
				if err != nil || !strings.Contains(out, "Available Commands:") {
					t.Errorf("quorumca %s = %v\n%s\nwant its help", strings.Join(tt.args, " "), err, out)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("quorumca %s = %v, want an error containing %q", strings.Join(tt.args, " "), err, tt.want)
			}
		})
	}
}
