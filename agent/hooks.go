package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quorumca/quorumca/internal/wait"
)

// Defaults of the renewal hooks.
const (
	DefaultHookTimeout = 30 * time.Second
	DefaultHookSplay   = 5 * time.Second
	// hookOutputMax bounds what of a hook's output reaches the log.
	hookOutputMax = 4 << 10
)

// HookConfig says what to do when a node's certificate files change
// (node.crt and node.key on a renewal, root-ca.crt on a rotation, crl.pem
// on a revocation): run a command, signal a process, or both.
type HookConfig struct {
	// Command runs with /bin/sh -c (split on spaces and run directly where
	// there is no /bin/sh, as in a FROM scratch image), with the files'
	// paths in QUORUMCA_CERT_FILE, QUORUMCA_KEY_FILE, QUORUMCA_CA_FILE,
	// QUORUMCA_CRL_FILE and QUORUMCA_CERT_DIR, and the node's IDs in
	// QUORUMCA_NODE_ID and QUORUMCA_CLUSTER_ID.
	Command string
	// Signal is sent to the process whose PID PIDFile holds.
	Signal  syscall.Signal
	PIDFile string
	// Timeout bounds Command (default DefaultHookTimeout); Splay is the
	// most a change waits, at random, before the hooks run (default
	// DefaultHookSplay; negative: none), so that a fleet does not reload
	// all at once.
	Timeout, Splay time.Duration
}

// Enabled reports whether anything is to be done on a change.
func (c HookConfig) Enabled() bool { return c.Command != "" || c.PIDFile != "" }

// Validate checks the configuration; its messages name the flags.
func (c HookConfig) Validate() error {
	if (c.Signal != 0) != (c.PIDFile != "") {
		return errors.New("--reload-signal and --reload-pidfile go together")
	}
	if c.Timeout < 0 {
		return errors.New("--on-renew-timeout must not be negative")
	}
	return nil
}

// ParseSignal reads a signal by name (HUP, SIGHUP, USR1...) or number.
func ParseSignal(s string) (syscall.Signal, error) {
	name := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), "SIG")
	names := map[string]syscall.Signal{
		"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "TERM": syscall.SIGTERM,
		"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "WINCH": syscall.SIGWINCH,
	}
	if sig, ok := names[name]; ok {
		return sig, nil
	}
	if n, err := strconv.Atoi(name); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	return 0, fmt.Errorf("--reload-signal %q: give a signal's name (HUP, USR1, ...) or number", s)
}

// Hooks runs a HookConfig on every change of a node's files. Changes that
// come while it waits or runs are taken together: the hooks run once more
// after. A failure is logged; the hooks run again at the next change.
type Hooks struct {
	cfg     HookConfig
	creds   func() *Credentials
	log     *slog.Logger
	changed chan struct{}
	// runs hears of every run (Ran).
	runs chan struct{}
	// settled hears when the hooks have run for every change (Settled).
	settled chan struct{}

	mu sync.Mutex // guards want and done
	// want counts the changes; done is want as it was when the last run
	// started: the changes that run covered.
	want, done uint64
}

// NewHooks returns the hooks of cfg; creds returns the node's credentials
// now (a node changes role, and its credentials with it), or nil.
func NewHooks(cfg HookConfig, creds func() *Credentials, log *slog.Logger) *Hooks {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultHookTimeout
	}
	if cfg.Splay == 0 {
		cfg.Splay = DefaultHookSplay
	}
	return &Hooks{
		cfg: cfg, creds: creds, log: log.With("component", "hooks"),
		changed: make(chan struct{}, 1), runs: make(chan struct{}, 64), settled: make(chan struct{}, 1),
	}
}

// Changed says the files changed. It never blocks.
func (h *Hooks) Changed() {
	h.mu.Lock()
	h.want++
	h.mu.Unlock()
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// Ran returns a channel that receives once after every run of the hooks
// (for tests: a full buffer drops the news).
func (h *Hooks) Ran() <-chan struct{} { return h.runs }

// Settled reports whether the hooks have run since the last change of the
// files, whether they succeeded or not (a failure is logged, and the node
// does not wait for ever on a broken command): the node's consumers have
// been told of its current files. wake receives when that may have
// become true; it has one reader, the node's renewer.
func (h *Hooks) Settled() (settled bool, wake <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.done == h.want, h.settled
}

// Run runs the hooks on every change until ctx ends.
func (h *Hooks) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.changed:
		}
		if h.cfg.Splay > 0 && !wait.Sleep(ctx, rand.N(h.cfg.Splay)) {
			return nil
		}
		h.mu.Lock()
		covers := h.want
		h.mu.Unlock()
		h.run(ctx)
		h.mu.Lock()
		h.done = covers
		h.mu.Unlock()
		for _, c := range []chan struct{}{h.runs, h.settled} {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
}

// run runs the command and sends the signal, once.
func (h *Hooks) run(ctx context.Context) {
	creds := h.creds()
	if creds == nil {
		return
	}
	if h.cfg.Command != "" {
		start := time.Now()
		out, err := h.command(ctx, creds)
		attrs := []any{"command", h.cfg.Command, "took", time.Since(start).Round(time.Millisecond)}
		if len(out) > 0 {
			attrs = append(attrs, "output", string(out))
		}
		if err != nil {
			h.log.Warn("on-renew command failed; it runs again at the next change", append(attrs, "err", err)...)
		} else {
			h.log.Info("on-renew command ran", attrs...)
		}
	}
	if h.cfg.PIDFile != "" {
		if err := h.signal(); err != nil {
			h.log.Warn("reload signal not sent; it is sent again at the next change", "pidfile", h.cfg.PIDFile, "err", err)
		} else {
			h.log.Info("reload signal sent", "pidfile", h.cfg.PIDFile, "signal", h.cfg.Signal.String())
		}
	}
}

func (h *Hooks) command(ctx context.Context, creds *Credentials) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	var cmd *exec.Cmd
	if _, err := os.Stat("/bin/sh"); err == nil {
		cmd = exec.CommandContext(ctx, "/bin/sh", "-c", h.cfg.Command)
	} else {
		args := strings.Fields(h.cfg.Command)
		cmd = exec.CommandContext(ctx, args[0], args[1:]...)
	}
	id := creds.Identity()
	dir := creds.Dir()
	cmd.Env = append(os.Environ(),
		"QUORUMCA_CERT_DIR="+dir,
		"QUORUMCA_CERT_FILE="+filepath.Join(dir, CertFile),
		"QUORUMCA_KEY_FILE="+filepath.Join(dir, KeyFile),
		"QUORUMCA_CA_FILE="+filepath.Join(dir, BundleFile),
		"QUORUMCA_CRL_FILE="+filepath.Join(dir, CRLFile),
		"QUORUMCA_NODE_ID="+id.NodeID,
		"QUORUMCA_CLUSTER_ID="+id.ClusterID,
	)
	var out bytes.Buffer
	// One writer for both: exec then writes from one goroutine at a time.
	w := &limited{w: &out, n: hookOutputMax}
	cmd.Stdout, cmd.Stderr = w, w
	// The command's children are killed with it at the timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %s", h.cfg.Timeout)
	}
	return bytes.TrimSpace(out.Bytes()), err
}

func (h *Hooks) signal() error {
	b, err := os.ReadFile(h.cfg.PIDFile)
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("%s holds no process ID", h.cfg.PIDFile)
	}
	return syscall.Kill(pid, h.cfg.Signal)
}

// limited writes at most n bytes to w, and drops the rest.
type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
