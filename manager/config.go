// Package manager is the manager daemon: it replicates the cluster state
// through Raft, serves the CA and Control gRPC APIs, signs on the leader and
// forwards leader-only calls from followers to the leader.
package manager

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/internal/audit"
	"github.com/quorumca/quorumca/membership"
)

// Default addresses.
const (
	DefaultListenAddr = ":2377"
	DefaultRaftAddr   = ":2378"
)

// Config configures a manager.
type Config struct {
	// DataDir holds certificates/, raft/, node.json and quorumca.sock.
	DataDir string
	// ListenAddr is the API address to listen on (default :2377).
	ListenAddr string
	// AdvertiseAddr is the API address other nodes use; default: the
	// listener's address, with the first non-loopback IPv4 address of this
	// host when it listens on all of them.
	AdvertiseAddr string
	// RaftListenAddr is the Raft address to listen on (default :2378).
	RaftListenAddr string
	// RaftAdvertiseAddr is the Raft address other managers dial.
	RaftAdvertiseAddr string
	// APIListener and RaftListener, when set, are listeners the caller
	// opened (the node opens them before a join, to advertise them); the
	// manager owns them from Init or Open on. Otherwise the manager listens
	// on ListenAddr and RaftListenAddr.
	APIListener, RaftListener net.Listener
	// Logger receives the daemon's logs; default discard.
	Logger *slog.Logger
	// Rand supplies all randomness; default crypto/rand.
	Rand io.Reader
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Raft timing; zero values take the raft package's defaults. Tests
	// shorten them.
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout time.Duration
	// RaftDial, when set, opens Raft's connections to the other managers
	// (raft.Config.Dial): tests put network faults there.
	RaftDial func(ctx context.Context, address string) (net.Conn, error)
	// ApplyTimeout bounds one Raft commit when the caller set no deadline.
	ApplyTimeout time.Duration
	// SnapshotThreshold (new log entries that make a snapshot due, and the
	// entries kept after it) and SnapshotInterval (how often that is
	// checked) take the raft package's defaults when zero; tests shorten
	// them.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// HeartbeatPeriod is how often nodes heartbeat to the leader (default
	// 5s) while the cluster is small enough for MaxHeartbeatsPerSecond; a
	// node silent for three periods is down.
	HeartbeatPeriod time.Duration
	// MaxHeartbeatsPerSecond bounds the heartbeats the leader answers per
	// second (default 800): with more nodes than HeartbeatPeriod allows
	// at that rate, the leader tells them a longer period, and counts a
	// node down after three of those.
	MaxHeartbeatsPerSecond int
	// MaxConcurrentSigns bounds the renewals a manager signs and commits
	// at once (default 16; Raft commits them together, so a few suffice);
	// four times as many wait up to a second for a turn, and more are
	// refused with a "busy, retry after" answer (ResourceExhausted, reason
	// BUSY, errdetails.RetryInfo) that nodes honour with jitter, so that a
	// rotation's storm of renewals never starves heartbeats.
	MaxConcurrentSigns int
	// ReconcilePeriod is how often the leader reconciles Raft voters with
	// the state and prunes expired removals (default 2s).
	ReconcilePeriod time.Duration
	// GossipAddr is the gossip address to listen on, TCP and UDP (default
	// 0.0.0.0:7946); GossipAdvertiseAddr is the one others reach this node
	// at (default: chosen by memberlist from the host's addresses).
	GossipAddr, GossipAdvertiseAddr string
	// GossipTiming is gossip's failure-detection speed (tests use Fast).
	GossipTiming membership.Timing
	// GossipKeyGrace is how long the previous gossip key is still read
	// after the cluster moved to a new one (default 30s).
	GossipKeyGrace time.Duration
	// RotationJitter is the least a rotation's renewals are spread over
	// (default 2s): the leader spreads them over three heartbeat periods
	// from the rotation's start, and never less than this.
	RotationJitter time.Duration
	// Reloads are this node's renewal hooks, nil for none: its renewer
	// tells the leader while they have not run (agent.RenewerConfig).
	Reloads agent.Reloads
	// ExternalTimeout bounds one request to an external CA (default
	// DefaultExternalTimeout); ExternalSkip is how long an external CA that
	// failed is tried only after the others (default DefaultExternalSkip).
	ExternalTimeout, ExternalSkip time.Duration
	// UnlockKey opens a node.key sealed under it (autolock); the node
	// passes the key it was unlocked with.
	UnlockKey string
	// ForceNewCluster makes this manager, which survived the loss of the
	// majority, the only voter of the cluster, keeping its state (see
	// recovery.go).
	ForceNewCluster bool
	// testStep, when set, is called at each step of a key change; an
	// error stops the change there (the crash tests).
	testStep func(step string) error
	// Unsealed leaves the Raft stores unsealed: only for benchmarks that
	// compare the cost of sealing. A sealed store then refuses to open.
	Unsealed bool
	// PublishTokens, when set, is a directory where this manager keeps the
	// current join tokens (worker.token, manager.token, 0600), for nodes
	// that bootstrap from a shared volume.
	PublishTokens string
	// Audit, when set, is the audit log (--audit-log): a line for every
	// call that changes the state or hands out a secret, every refusal,
	// and every change the leader commits by itself (see audit.go). The
	// node opens and closes it; nil records nothing.
	Audit *audit.Log
}

// DefaultConfig returns a Config with the default ports and data directory.
func DefaultConfig() Config {
	return Config{
		DataDir:        "/var/lib/quorumca",
		ListenAddr:     DefaultListenAddr,
		RaftListenAddr: DefaultRaftAddr,
	}
}

func (c *Config) setDefaults() {
	if c.ListenAddr == "" {
		c.ListenAddr = DefaultListenAddr
	}
	if c.RaftListenAddr == "" {
		c.RaftListenAddr = DefaultRaftAddr
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = 10 * time.Second
	}
	if c.HeartbeatPeriod == 0 {
		c.HeartbeatPeriod = 5 * time.Second
	}
	if c.MaxHeartbeatsPerSecond == 0 {
		c.MaxHeartbeatsPerSecond = DefaultMaxHeartbeatsPerSecond
	}
	if c.MaxConcurrentSigns == 0 {
		c.MaxConcurrentSigns = DefaultMaxConcurrentSigns
	}
	if c.ReconcilePeriod == 0 {
		c.ReconcilePeriod = 2 * time.Second
	}
	if c.GossipAddr == "" {
		c.GossipAddr = agent.DefaultGossipAddr
	}
	if c.RotationJitter == 0 {
		c.RotationJitter = 2 * time.Second
	}
	if c.ExternalTimeout == 0 {
		c.ExternalTimeout = DefaultExternalTimeout
	}
	if c.ExternalSkip == 0 {
		c.ExternalSkip = DefaultExternalSkip
	}
}

// Defaults of the scale bounds (Config.MaxHeartbeatsPerSecond and
// Config.MaxConcurrentSigns).
const (
	DefaultMaxHeartbeatsPerSecond = 800
	DefaultMaxConcurrentSigns     = 16
)

// Validate checks the configuration; its messages name the field.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("manager: DataDir (--data-dir) is empty")
	}
	if c.MaxHeartbeatsPerSecond < 0 {
		return fmt.Errorf("manager: MaxHeartbeatsPerSecond (--max-heartbeats-per-second) is %d; give a positive rate, or 0 for the default (%d)", c.MaxHeartbeatsPerSecond, DefaultMaxHeartbeatsPerSecond)
	}
	if c.MaxConcurrentSigns < 0 {
		return fmt.Errorf("manager: MaxConcurrentSigns (--max-concurrent-signs) is %d; give a positive bound, or 0 for the default (%d)", c.MaxConcurrentSigns, DefaultMaxConcurrentSigns)
	}
	for _, a := range []struct{ name, addr string }{
		{"ListenAddr (--listen-addr)", c.ListenAddr},
		{"RaftListenAddr (--raft-addr)", c.RaftListenAddr},
		{"GossipAddr (--gossip-addr)", c.GossipAddr},
	} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("manager: %s %q is not host:port: %v", a.name, a.addr, err)
		}
	}
	for _, a := range []struct{ name, addr string }{
		{"AdvertiseAddr (--advertise-addr)", c.AdvertiseAddr},
		{"RaftAdvertiseAddr", c.RaftAdvertiseAddr},
		{"GossipAdvertiseAddr (--gossip-advertise-addr)", c.GossipAdvertiseAddr},
	} {
		if a.addr == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a.addr)
		if err != nil || host == "" || port == "" || port == "0" {
			return fmt.Errorf("manager: %s %q must be host:port with a fixed port", a.name, a.addr)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("manager: %s %q must name an address others can dial, not %s", a.name, a.addr, host)
		}
	}
	return nil
}

// advertise returns the address to advertise for a listener: the explicit
// one if set, else the listener's, with an unspecified host replaced by
// this machine's first non-loopback IPv4 address.
func advertise(explicit string, ln net.Listener) string {
	if explicit != "" {
		return explicit
	}
	addr := ln.Addr().(*net.TCPAddr)
	if !addr.IP.IsUnspecified() {
		return addr.String()
	}
	return net.JoinHostPort(hostIP(), fmt.Sprint(addr.Port))
}

// Bound is the listen address to record for a restart: the configured
// one, or, when it asked for any free port (":0"), the port it got, so that
// a restarted node listens where it advertised.
func Bound(configured string, ln net.Listener) string {
	if _, port, err := net.SplitHostPort(configured); err == nil && port != "0" {
		return configured
	}
	host, _, _ := net.SplitHostPort(configured)
	return net.JoinHostPort(host, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
}

// Advertise is the address a node advertises for a listener: the explicit
// one if set, else the listener's, with an unspecified host replaced by
// this machine's first non-loopback IPv4 address.
func Advertise(explicit string, ln net.Listener) string { return advertise(explicit, ln) }

func hostIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}
