package raft

import (
	"log/slog"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLogAdapter(t *testing.T) {
	rec := &recorder{}
	h := newHCLogger(slog.New(rec), "raft")

	h.Trace("t")
	h.Debug("d")
	h.Info("i", "term", 3, "id", "abc")
	h.Warn("w")
	h.Error("e", "error", "boom", "odd")
	h.Named("net").With("peer", "p1").Info("named", "k", hclog.Fmt("%d-%s", 7, "x"))
	h.ResetNamed("snap").Log(hclog.Warn, "reset")

	want := []struct {
		level slog.Level
		msg   string
		attrs map[string]string
	}{
		{slogLevelTrace, "t", map[string]string{"logger": "raft"}},
		{slog.LevelDebug, "d", nil},
		{slog.LevelInfo, "i", map[string]string{"term": "3", "id": "abc"}},
		{slog.LevelWarn, "w", nil},
		{slog.LevelError, "e", map[string]string{"error": "boom", hclog.MissingKey: "odd"}},
		{slog.LevelInfo, "named", map[string]string{"logger": "raft.net", "peer": "p1", "k": "7-x"}},
		{slog.LevelWarn, "reset", map[string]string{"logger": "snap"}},
	}
	got := rec.records()
	if len(got) != len(want) {
		t.Fatalf("logged %d records, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Level != w.level || got[i].Message != w.msg {
			t.Errorf("record %d = %v %q, want %v %q", i, got[i].Level, got[i].Message, w.level, w.msg)
		}
		for k, v := range w.attrs {
			if got[i].attrs[k] != v {
				t.Errorf("record %d %q: attr %s = %q, want %q", i, w.msg, k, got[i].attrs[k], v)
			}
		}
	}

	if n := h.Named("x").Name(); n != "raft.x" {
		t.Errorf("Named(x).Name() = %q, want raft.x", n)
	}
	if args := h.With("a", 1).ImpliedArgs(); len(args) != 2 {
		t.Errorf("With(a, 1).ImpliedArgs() = %v, want [a 1]", args)
	}

	// SetLevel is shared with derived loggers, as hclog's is.
	sub := h.Named("sub")
	h.SetLevel(hclog.Warn)
	if sub.IsInfo() || !sub.IsWarn() {
		t.Errorf("after SetLevel(Warn): IsInfo() = %v, IsWarn() = %v; want false, true", sub.IsInfo(), sub.IsWarn())
	}
	before := len(rec.records())
	sub.Info("dropped")
	if len(rec.records()) != before {
		t.Errorf("Info() below the set level was logged")
	}

	h.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Print("std")
	last := rec.records()[len(rec.records())-1]
	if last.Level != slog.LevelError || last.Message != "std" {
		t.Errorf("StandardLogger(ForceLevel Error).Print(std) logged %v %q, want ERROR std", last.Level, last.Message)
	}
}

func TestHCLogAdapterRespectsHandlerLevel(t *testing.T) {
	h := newHCLogger(slog.New(slog.DiscardHandler), "raft")
	if h.IsError() {
		t.Errorf("IsError() on a discarding logger = true, want false")
	}
}
