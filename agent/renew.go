package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// RenewerConfig configures a Renewer.
type RenewerConfig struct {
	Credentials *Credentials
	// Managers are the API addresses to reach the cluster through; the
	// Renewer keeps the list current from heartbeat answers.
	Managers []string
	// OnManagers is called (from the Renewer's goroutine) when the list of
	// managers changes; may be nil.
	OnManagers func([]string)
	// OnRole is called (from the Renewer's goroutine) after the node
	// renewed into a new role: the daemon must switch between manager and
	// worker. May be nil.
	OnRole func(ca.Role)
	// OnGossipKey is called (from the Renewer's goroutine) with the ID of
	// the cluster's gossip key each heartbeat names; may be nil.
	OnGossipKey func(id string)
	// HeartbeatPeriod is used until a manager says otherwise; default 5s.
	HeartbeatPeriod time.Duration
	// MaxBackoff caps the wait between failed attempts; default 1 minute.
	MaxBackoff time.Duration
	// Rand supplies keys, CSRs and jitter; default crypto/rand.
	Rand io.Reader
	// Now is the clock the renewal schedule follows; default time.Now.
	Now func() time.Time
	// Self is this node's own API address, if it is a manager: a node
	// does not ask itself whether it was left behind.
	Self string
	// Reloads says whether the node's consumers have taken its current
	// files (Hooks.Settled: its renewal hooks ran since the files
	// changed); nil when it has no hooks. After a renewal the Renewer
	// heartbeats as soon as they have, so that the leader sees the new
	// certificate without waiting a period (a rotation waits for it), and
	// each heartbeat says whether they are still reloading: the leader
	// does not count a node converged while its servers may present the
	// old certificate.
	Reloads Reloads
	Logger  *slog.Logger
}

// Reloads is what a Renewer asks of a node's renewal hooks (Hooks).
type Reloads interface {
	Settled() (settled bool, wake <-chan struct{})
}

// Renewer keeps a node's certificate current (DESIGN.md flow 4): it
// heartbeats to the leader, renews at a random instant in 50-80 % of the
// certificate's validity, at once when the cluster says the role, cert
// expiry or CA changed, and backs off with jitter when managers do not
// answer. Each renewal uses a fresh key.
type Renewer struct {
	cfg RenewerConfig

	mu       sync.Mutex // guards the fields below
	managers []string
	// leader is the API address of the manager that answered last: the
	// leader, which takes heartbeats and renewals itself (others redirect
	// there). It is tried first.
	leader string
	conns  map[string]*grpc.ClientConn
	// stopped is set once Run has returned: no connection is opened
	// after it closed them (the gossip's Fetch may call last).
	stopped bool
	renewAt time.Time
	renewed int
	// answered counts the heartbeats the leader answered, each with the
	// renewal it called for done or failed.
	answered int
	// failed counts the renewals that failed, by reason (renewalReason);
	// lastHeartbeat is when a heartbeat was last answered.
	failed        map[string]int
	lastHeartbeat time.Time
	problem       error
	// bundleSince is the age of the newest bundle a heartbeat gave.
	bundleSince int64
	// period is the heartbeat period the leader told last (0 before).
	period time.Duration
	// kick asks Run to renew now.
	kick chan struct{}
}

// ErrLeftBehind is the problem of a node whose certificate chains to a
// root the cluster no longer trusts: it was unreachable while the root was
// rotated, and must rejoin.
var ErrLeftBehind = errors.New("agent: this node was left behind by a root CA rotation")

// Problem returns what keeps the node from its cluster, as far as the
// Renewer could tell (ErrLeftBehind), or nil.
func (r *Renewer) Problem() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.problem
}

// NewRenewer returns a Renewer; call Run to start it.
func NewRenewer(cfg RenewerConfig) *Renewer {
	if cfg.HeartbeatPeriod <= 0 {
		cfg.HeartbeatPeriod = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Renewer{cfg: cfg, managers: slices.Clone(cfg.Managers), conns: map[string]*grpc.ClientConn{}, kick: make(chan struct{}, 1)}
}

// Renewals returns how many certificates the Renewer has obtained.
func (r *Renewer) Renewals() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.renewed
}

// Heartbeats returns how many heartbeats the leader answered; each is
// counted once the Renewer has acted on the answer (renewed, if it had
// to). Tests use it to tell that the Renewer looked at its schedule.
func (r *Renewer) Heartbeats() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.answered
}

// Period returns the heartbeat period the Renewer keeps: the one the
// leader told last (it grows with the cluster), or the configured one.
func (r *Renewer) Period() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.period > 0 {
		return r.period
	}
	return r.cfg.HeartbeatPeriod
}

// RenewAt returns when the current certificate is due for renewal.
func (r *Renewer) RenewAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.renewAt
}

// Run heartbeats and renews until ctx is done.
func (r *Renewer) Run(ctx context.Context) error {
	defer r.stop()
	if err := r.schedule(); err != nil {
		return err
	}
	period := r.cfg.HeartbeatPeriod
	failures := 0
	// retry is set when a busy manager asked to renew again after it: the
	// renewal is tried again then, with jitter, before any heartbeat.
	var retry time.Duration
	// report is set after a renewal: the next heartbeat goes as soon as
	// the node's consumers have taken the new certificate. A renewal that
	// such a heartbeat called for does not set it again (a manager that
	// kept saying "renew" would otherwise be asked at full speed).
	report := false
	// renewAt is when a renewal a heartbeat asked for after a jitter is
	// due (zero: none waits). The node heartbeats at its period
	// meanwhile: a rotation's jitter may be three periods, as long as the
	// leader lets a node be silent. renewQuiet: the heartbeat that asked
	// for it reported a renewal (see report).
	var renewAt time.Time
	renewQuiet := false
	renew := func() {
		renewAt = time.Time{}
		err := r.renew(ctx)
		if err == nil {
			report = true
			return
		}
		if d, ok := api.RetryAfter(err); ok {
			retry = d
			r.cfg.Logger.Debug("manager busy; renewal postponed", "err", err, "retry_after", d)
			return
		}
		failures++
		r.cfg.Logger.Warn("renewal failed", "err", err, "attempt", failures)
	}
	for {
		next := period
		if failures > 0 {
			next = r.backoff(failures)
		}
		if retry > 0 {
			next = retry + r.jitter(retry)
		}
		deferred := !renewAt.IsZero() && retry == 0
		if deferred {
			next = min(next, time.Until(renewAt))
		}
		kicked, ok := r.await(ctx, next, report && retry == 0)
		if !ok {
			return nil
		}
		if kicked {
			renew()
			continue
		}
		if retry > 0 {
			retry = 0
			renew()
			continue
		}
		if deferred && !time.Now().Before(renewAt) {
			renew()
			if renewQuiet {
				report = false
			}
			continue
		}
		// This heartbeat reports the last renewal if the node's consumers
		// have taken it; one that goes while they reload does not.
		reported := false
		if settled, _ := r.reloaded(); report && settled {
			reported, report = true, false
		}
		hb, err := r.heartbeat(ctx)
		if err != nil {
			failures++
			r.cfg.Logger.Warn("heartbeat failed", "err", err, "attempt", failures)
			r.diagnose(ctx)
			// A due certificate still gets renewed if any manager answers.
			if !r.cfg.Now().Before(r.RenewAt()) {
				if err := r.renew(ctx); err == nil {
					failures = 0
				}
			}
			continue
		}
		failures = 0
		r.setProblem(nil)
		r.mu.Lock()
		r.lastHeartbeat = r.cfg.Now()
		r.mu.Unlock()
		if p := time.Duration(hb.GetPeriodMs()) * time.Millisecond; p > 0 {
			period = p
			r.mu.Lock()
			r.period = p
			r.mu.Unlock()
		}
		if crl := hb.GetCrl(); len(crl) > 0 {
			if err := r.cfg.Credentials.UpdateCRL(crl, hb.GetCrlNumber()); err != nil {
				r.cfg.Logger.Warn("CRLs not stored", "err", err)
			}
		}
		due := hb.GetRenew()
		fresh := r.newerBundle(hb.GetBundleSince())
		if b := hb.GetBundle(); fresh && len(b) > 0 && string(b) != string(r.cfg.Credentials.Bundle()) {
			// The cluster trusts a new bundle (a rotation completed).
			if err := r.cfg.Credentials.UpdateBundle(b, r.cfg.Now()); err != nil {
				r.cfg.Logger.Warn("new trust bundle does not cover this node's certificate; renewing", "err", err)
				due = true
			} else {
				r.cfg.Logger.Info("trust bundle updated", "root", BundleFingerprint(b))
			}
		}
		if due && hb.GetRenewJitterMs() > 0 && r.cfg.Now().Before(r.RenewAt()) {
			// Later, heartbeating meanwhile; the first jitter drawn holds.
			if renewAt.IsZero() {
				renewAt = time.Now().Add(r.jitter(time.Duration(hb.GetRenewJitterMs()) * time.Millisecond))
				renewQuiet = reported
			}
			due = false
		}
		if due || !r.cfg.Now().Before(r.RenewAt()) {
			renew()
			if reported {
				report = false
			}
		}
		r.mu.Lock()
		r.answered++
		r.mu.Unlock()
	}
}

// await waits d, or less when report is set and the node's consumers have
// taken its files (at once without hooks), or until a renewal is asked
// for (kicked). ok is false when ctx ended.
func (r *Renewer) await(ctx context.Context, d time.Duration, report bool) (kicked, ok bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		var wake <-chan struct{}
		if report {
			settled, w := r.reloaded()
			if settled {
				return false, true
			}
			wake = w
		}
		select {
		case <-ctx.Done():
			return false, false
		case <-r.kick:
			return true, true
		case <-timer.C:
			return false, true
		case <-wake:
			// The hooks ran: look again (another change may have come).
		}
	}
}

// reloaded reports whether the node's consumers have taken its current
// files (always, without hooks), and what wakes when they may have.
func (r *Renewer) reloaded() (bool, <-chan struct{}) {
	if r.cfg.Reloads == nil {
		return true, nil
	}
	return r.cfg.Reloads.Settled()
}

// schedule picks the next renewal instant for the current certificate.
func (r *Renewer) schedule() error {
	leaf := r.cfg.Credentials.Leaf()
	at, err := ca.RenewAt(r.cfg.Rand, leaf.NotBefore, leaf.NotAfter)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.renewAt = at
	r.mu.Unlock()
	return nil
}

// backoff is an exponential wait with full jitter, from 1s up to
// MaxBackoff.
func (r *Renewer) backoff(failures int) time.Duration {
	ceiling := time.Second << min(failures-1, 16)
	if ceiling > r.cfg.MaxBackoff || ceiling <= 0 {
		ceiling = r.cfg.MaxBackoff
	}
	var b [8]byte
	if _, err := io.ReadFull(r.cfg.Rand, b[:]); err != nil {
		return ceiling
	}
	return ceiling/2 + time.Duration(binary.BigEndian.Uint64(b[:])%uint64(ceiling/2+1))
}

// newerBundle reports whether a heartbeat's bundle, of the given age, is
// not older than one taken before, and records its age.
func (r *Renewer) newerBundle(since int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if since < r.bundleSince {
		return false
	}
	r.bundleSince = since
	return true
}

// RenewSoon asks Run to renew now, on its own goroutine, so that renewals
// never overlap.
func (r *Renewer) RenewSoon() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// jitter returns a random duration in [0, max).
func (r *Renewer) jitter(max time.Duration) time.Duration {
	var b [8]byte
	if max <= 0 {
		return 0
	}
	if _, err := io.ReadFull(r.cfg.Rand, b[:]); err != nil {
		return 0
	}
	return time.Duration(binary.BigEndian.Uint64(b[:]) % uint64(max))
}

func (r *Renewer) setProblem(err error) {
	r.mu.Lock()
	changed := (err == nil) != (r.problem == nil)
	r.problem = err
	r.mu.Unlock()
	if changed && err != nil {
		r.cfg.Logger.Error("node cannot reach its cluster", "err", err)
	}
}

func (r *Renewer) heartbeat(ctx context.Context) (*api.HeartbeatResponse, error) {
	var resp *api.HeartbeatResponse
	err := r.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		var err error
		settled, _ := r.reloaded()
		resp, err = api.NewCAClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{
			BundleDigest: BundleDigest(r.cfg.Credentials.Bundle()), CrlNumber: r.cfg.Credentials.CRLNumber(),
			Reloading: !settled,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	r.setManagers(resp.GetManagers())
	if id := resp.GetGossipKeyId(); id != "" && r.cfg.OnGossipKey != nil {
		r.cfg.OnGossipKey(id)
	}
	return resp, nil
}

// Renew obtains a new certificate for a fresh key now, stores it and
// reschedules.
func (r *Renewer) Renew(ctx context.Context) error { return r.renew(ctx) }

func (r *Renewer) renew(ctx context.Context) error {
	err := r.renewOnce(ctx)
	if err != nil {
		r.mu.Lock()
		if r.failed == nil {
			r.failed = map[string]int{}
		}
		r.failed[renewalReason(err)]++
		r.mu.Unlock()
	}
	return err
}

// renewalReason names why a renewal failed, for metrics: the reason a
// manager gave, or the gRPC code.
func renewalReason(err error) string {
	if reason, _ := api.ErrorReason(err); reason != "" {
		return strings.ToLower(reason)
	}
	if s, ok := status.FromError(err); ok {
		return strings.ToLower(s.Code().String())
	}
	return "error"
}

// RenewalCounts returns how many renewals succeeded, and how many failed
// by reason, since the Renewer started.
func (r *Renewer) RenewalCounts() (ok int, failed map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.renewed, maps.Clone(r.failed)
}

// LastHeartbeat returns when a manager last answered a heartbeat (zero
// for never).
func (r *Renewer) LastHeartbeat() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastHeartbeat
}

func (r *Renewer) renewOnce(ctx context.Context) error {
	creds := r.cfg.Credentials
	oldRole := creds.Identity().Role
	key, err := ca.GenerateKey(r.cfg.Rand)
	if err != nil {
		return fmt.Errorf("agent: generate key: %w", err)
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		return err
	}
	csr, err := ca.NewCSR(r.cfg.Rand, key, "")
	if err != nil {
		return err
	}
	var resp *api.RenewNodeCertificateResponse
	err = r.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		var err error
		resp, err = api.NewCAClient(conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{Csr: csr})
		return err
	})
	if err != nil {
		return err
	}
	id, _, err := ca.VerifyPEM(resp.GetCertificate(), resp.GetBundle(), r.cfg.Now())
	if err != nil {
		return fmt.Errorf("agent: renewed certificate: %w", err)
	}
	if old := creds.Identity(); id.NodeID != old.NodeID || id.ClusterID != old.ClusterID {
		return fmt.Errorf("agent: renewed certificate names %s of %s, not this node", id.NodeID, id.ClusterID)
	}
	if err := creds.Update(keyPEM, resp.GetCertificate(), resp.GetBundle()); err != nil {
		return err
	}
	// A TLS connection keeps the client certificate of its handshake: on
	// the old connections, managers would go on seeing the old certificate,
	// and (after a cert-expiry change or a rotation) answer every heartbeat
	// with "renew". Reconnect with the new one.
	r.closeConns()
	r.mu.Lock()
	r.renewed++
	r.problem = nil
	r.mu.Unlock()
	r.setManagers(resp.GetManagers())
	if err := r.schedule(); err != nil {
		return err
	}
	leaf := creds.Leaf()
	r.cfg.Logger.Info("certificate renewed", "node_id", id.NodeID, "role", id.Role,
		"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter, "renew_at", r.RenewAt())
	if id.Role != oldRole && r.cfg.OnRole != nil {
		r.cfg.OnRole(id.Role)
	}
	return nil
}

// Gossip asks the managers for the cluster's gossip key and the gossip
// addresses to join through, merging their answers.
func (r *Renewer) Gossip(ctx context.Context) (key []byte, peers []string, err error) {
	r.mu.Lock()
	managers := slices.Clone(r.managers)
	r.mu.Unlock()
	var errs []error
	for _, addr := range managers {
		conn, err := r.conn(addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := api.NewCAClient(conn).Gossip(cctx, &api.GossipRequest{})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		if key == nil {
			key = resp.GetKey()
		}
		for _, p := range resp.GetPeers() {
			if !slices.Contains(peers, p) {
				peers = append(peers, p)
			}
		}
	}
	if key == nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNoManager, errors.Join(errs...))
	}
	return key, peers, nil
}
