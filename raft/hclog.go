package raft

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// slogLevelTrace is where hclog's Trace lands in slog: below Debug.
const slogLevelTrace = slog.LevelDebug - 4

// hclogger adapts a *slog.Logger to the hclog.Logger hashicorp/raft logs to.
// Levels map to slog's (Trace a step below Debug); key/value pairs become
// slog attributes; the name (Named, ResetNamed) is the attribute "logger".
type hclogger struct {
	base    *slog.Logger // the logger given, without name or implied args
	l       *slog.Logger // base with the name and implied args
	name    string
	implied []any
	// level is an extra minimum level, shared with the loggers derived from
	// this one as hclog's are; hclog.NoLevel leaves it to the slog handler.
	level *atomic.Int32
}

var _ hclog.Logger = (*hclogger)(nil)

// newHCLogger returns an hclog.Logger that writes to l under name.
func newHCLogger(l *slog.Logger, name string) hclog.Logger {
	return (&hclogger{base: l, level: new(atomic.Int32)}).derive(name, nil)
}

// derive returns a logger sharing h's base and level, named name, with the
// implied args implied.
func (h *hclogger) derive(name string, implied []any) *hclogger {
	l := h.base
	if name != "" {
		l = l.With(slog.String("logger", name))
	}
	if len(implied) > 0 {
		l = l.With(attrsToAny(kvAttrs(implied))...)
	}
	return &hclogger{base: h.base, l: l, name: name, implied: implied, level: h.level}
}

// The methods below implement hclog.Logger; see its documentation.

func (h *hclogger) Log(level hclog.Level, msg string, args ...any) { h.log(level, msg, args) }
func (h *hclogger) Trace(msg string, args ...any)                  { h.log(hclog.Trace, msg, args) }
func (h *hclogger) Debug(msg string, args ...any)                  { h.log(hclog.Debug, msg, args) }
func (h *hclogger) Info(msg string, args ...any)                   { h.log(hclog.Info, msg, args) }
func (h *hclogger) Warn(msg string, args ...any)                   { h.log(hclog.Warn, msg, args) }
func (h *hclogger) Error(msg string, args ...any)                  { h.log(hclog.Error, msg, args) }

// log writes one record, attributed to the caller of the exported method
// that called it.
func (h *hclogger) log(level hclog.Level, msg string, args []any) {
	if !h.enabled(level) {
		return
	}
	var pcs [1]uintptr
	runtime.Callers(3, pcs[:]) // skip Callers, log and the exported method
	r := slog.NewRecord(time.Now(), slogLevel(level), msg, pcs[0])
	r.AddAttrs(kvAttrs(args)...)
	_ = h.l.Handler().Handle(context.Background(), r)
}

func (h *hclogger) enabled(level hclog.Level) bool {
	if level == hclog.Off {
		return false
	}
	if lvl := hclog.Level(h.level.Load()); lvl != hclog.NoLevel && level != hclog.NoLevel && level < lvl {
		return false
	}
	return h.l.Enabled(context.Background(), slogLevel(level))
}

func (h *hclogger) IsTrace() bool { return h.enabled(hclog.Trace) }
func (h *hclogger) IsDebug() bool { return h.enabled(hclog.Debug) }
func (h *hclogger) IsInfo() bool  { return h.enabled(hclog.Info) }
func (h *hclogger) IsWarn() bool  { return h.enabled(hclog.Warn) }
func (h *hclogger) IsError() bool { return h.enabled(hclog.Error) }

func (h *hclogger) ImpliedArgs() []any { return append([]any(nil), h.implied...) }

func (h *hclogger) With(args ...any) hclog.Logger {
	implied := append(append([]any(nil), h.implied...), args...)
	return h.derive(h.name, implied)
}

func (h *hclogger) Name() string { return h.name }

func (h *hclogger) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return h.derive(name, h.implied)
}

func (h *hclogger) ResetNamed(name string) hclog.Logger { return h.derive(name, h.implied) }

func (h *hclogger) SetLevel(level hclog.Level) { h.level.Store(int32(level)) }

func (h *hclogger) GetLevel() hclog.Level { return hclog.Level(h.level.Load()) }

func (h *hclogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	level := slog.LevelInfo
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = slogLevel(opts.ForceLevel)
	}
	return slog.NewLogLogger(h.l.Handler(), level)
}

func (h *hclogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return h.StandardLogger(opts).Writer()
}

// slogLevel maps an hclog level to slog's.
func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return slogLevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

// kvAttrs turns hclog's alternating keys and values into slog attributes. A
// value without a key gets the key hclog gives it, EXTRA_VALUE_AT_END.
func kvAttrs(args []any) []slog.Attr {
	attrs := make([]slog.Attr, 0, (len(args)+1)/2)
	for i := 0; i < len(args); i += 2 {
		if i+1 == len(args) {
			attrs = append(attrs, slog.Any(hclog.MissingKey, hclogValue(args[i])))
			break
		}
		key, ok := args[i].(string)
		if !ok {
			key = fmt.Sprint(args[i])
		}
		attrs = append(attrs, slog.Any(key, hclogValue(args[i+1])))
	}
	return attrs
}

// hclogValue renders hclog's formatting wrappers as hclog would.
func hclogValue(v any) any {
	switch v := v.(type) {
	case hclog.Format:
		if len(v) > 0 {
			if f, ok := v[0].(string); ok {
				return fmt.Sprintf(f, v[1:]...)
			}
		}
		return fmt.Sprint(v...)
	case hclog.Hex:
		return fmt.Sprintf("0x%x", int(v))
	case hclog.Octal:
		return fmt.Sprintf("0%o", int(v))
	case hclog.Binary:
		return fmt.Sprintf("0b%b", int(v))
	case hclog.Quote:
		return fmt.Sprintf("%q", string(v))
	}
	return v
}

func attrsToAny(attrs []slog.Attr) []any {
	out := make([]any, len(attrs))
	for i, a := range attrs {
		out[i] = a
	}
	return out
}
