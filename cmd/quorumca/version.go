package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"
)

// versionJSON is the stable --format json shape of version.
type versionJSON struct {
	// Version is the module's version: a tag or pseudo-version for a
	// binary built by `go install ...@version`, "(devel)" for one built
	// from a checkout.
	Version string `json:"version"`
	// Commit, Time and Modified come from the VCS stamp of a binary built
	// in a checkout (absent with -buildvcs=false).
	Commit   string     `json:"commit,omitempty"`
	Time     *time.Time `json:"commit_time,omitempty"`
	Modified bool       `json:"modified"`
	Go       string     `json:"go"`
	Platform string     `json:"platform"`
}

// buildVersion reads what the binary knows of its own build.
func buildVersion(info *debug.BuildInfo, ok bool) versionJSON {
	v := versionJSON{Version: "unknown", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if !ok || info == nil {
		return v
	}
	if info.GoVersion != "" {
		v.Go = info.GoVersion
	}
	if info.Main.Version != "" {
		v.Version = info.Main.Version
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
				t = t.UTC()
				v.Time = &t
			}
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func newVersionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the version, commit and Go version this binary was built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			v := buildVersion(debug.ReadBuildInfo())
			if g.format == "json" {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			printVersion(cmd.OutOrStdout(), v)
			return nil
		},
	}
	addFormatFlag(cmd, g)
	return cmd
}

func printVersion(w io.Writer, v versionJSON) {
	fmt.Fprintf(w, "Version:   %s\n", v.Version)
	commit := "unknown (built without VCS information)"
	if v.Commit != "" {
		commit = v.Commit
		if v.Modified {
			commit += " (modified)"
		}
	}
	fmt.Fprintf(w, "Commit:    %s\n", commit)
	if v.Time != nil {
		fmt.Fprintf(w, "Committed: %s\n", v.Time.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "Go:        %s\n", v.Go)
	fmt.Fprintf(w, "Platform:  %s\n", v.Platform)
}
