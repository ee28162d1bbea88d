// Package testkit is what the tests of every package share: bounded polls
// (Eventually, HoldsUntil), the goroutine-leak check, a fake clock, test
// certificate authorities, a counting TCP relay, the test timings and the
// test logger. It imports only the standard library and ca, so that the
// tests of any package but ca's own in-package tests can use it; the
// in-process cluster, which imports the daemons, is clustertest beneath it.
//
// QUORUMCA_TEST_LOG=1 sends the logs of what the tests start to stderr.
package testkit

import (
	"context"
	"log/slog"
	"os"
	"testing"
)

// Logger discards the logs unless QUORUMCA_TEST_LOG is set, then writes
// them, down to debug, to stderr.
func Logger() *slog.Logger {
	if os.Getenv("QUORUMCA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// ShortDir returns a fresh directory with a short path, removed when the
// test ends: Unix sockets' paths must stay under 108 bytes, which
// t.TempDir() may not.
func ShortDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "qca")
	if err != nil {
		tb.Fatalf("os.MkdirTemp() = %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Ctx returns a context for one call, bounded by Wait and canceled when
// the test ends.
func Ctx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(tb.Context(), Wait)
	tb.Cleanup(cancel)
	return ctx
}
