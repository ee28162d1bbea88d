package raft

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// Config says how to open a Node. Start from DefaultConfig. Zero durations
// and counts take DefaultConfig's values.
type Config struct {
	// NodeID is this manager's node ID, used as its Raft server ID.
	NodeID string

	// DataDir holds the stores: raft.db (the log and the stable store, in
	// one bolt file, fsynced on every write) and snapshots/. The caller
	// passes <data-dir>/raft; Open creates it if missing and makes it 0700,
	// since snapshots hold the whole state, CA keys included.
	DataDir string

	// Listener is a plain TCP listener the caller opened for Raft traffic.
	// The Node wraps it in TLS and owns it from Open on: Shutdown closes it.
	// Anyone who reaches the port can connect, so a connection that has not
	// yet shown a manager's certificate gets little: 2s to send its
	// ClientHello, 5s for the whole handshake, and one of 128 handshake
	// slots, which a newer connection takes from it if it is the oldest
	// that has not sent a ClientHello yet. A flood of silent connections
	// thus cannot keep the managers from reaching each other.
	Listener net.Listener

	// AdvertiseAddr is the host:port other managers dial to reach this one.
	// Empty means Listener.Addr(), which must then not be an unspecified
	// address such as 0.0.0.0.
	AdvertiseAddr string

	// TLS holds this manager's certificate and the cluster's roots, used on
	// both sides of every Raft connection: as a server (Certificates or
	// GetCertificate, ClientCAs) and as a client (Certificates or
	// GetClientCertificate, RootCAs). The Node works on a clone: it applies
	// quorumca's TLS policy (ca.HardenTLS: TLS 1.3 preferred, TLS 1.2 at
	// least, and under TLS 1.2 only ECDHE suites with an AEAD, whatever
	// MinVersion and CipherSuites say) on both sides and to every config
	// GetConfigForClient returns, forces ClientAuth to
	// RequireAndVerifyClientCert, ServerName to "swarm-manager" (the DNS
	// name every manager certificate carries) when dialling, and turns off
	// session resumption, so every connection is verified afresh.
	TLS *tls.Config

	// ClusterID is the cluster's ID. A peer must present a certificate that
	// verifies against the roots and names OU swarm-manager and
	// O = ClusterID, or its connection is closed.
	ClusterID string

	// Authorize, if not nil, is asked about every peer that passed the
	// checks above, with its certificate's serial (hex), on both accepted
	// and dialled connections; an error refuses the peer (the caller
	// refuses removed nodes and revoked certificates this way). It is
	// called from the transport's goroutines and must not block for long.
	Authorize func(id ca.Identity, serial string) error

	// Dial, when set, opens the TCP connections to other managers instead
	// of a net.Dialer: tests put network faults there (a partitioned
	// leader). TLS runs on top, as ever.
	Dial func(ctx context.Context, address string) (net.Conn, error)

	// StateMachine is what the Node replicates.
	StateMachine StateMachine

	// Keys are this manager's data keys: every log entry's data and every
	// snapshot the Node writes is sealed under Keys.Current (AES-256-GCM,
	// a fresh nonce per record; index, term and type stay readable), and
	// opened with Current or Previous. Open first seals again, in new
	// files, whatever is not sealed under Current (a store written before
	// sealing, or under a previous key): when Open returns, Previous are
	// no longer needed. Nil leaves the stores unsealed (benchmarks
	// comparing the cost only); a store once sealed then refuses to open.
	Keys *Keys

	// Logger receives this package's logs and hashicorp/raft's. Nil
	// discards them.
	Logger *slog.Logger

	// Bootstrap makes Open bootstrap a one-voter cluster of this node if the
	// stores hold no state yet. With existing state it has no effect, so it
	// is safe to pass on every start of the first manager.
	Bootstrap bool

	// ForceNewCluster makes Open make this node the only voter of the
	// cluster, keeping its state (see recover.go): for a manager that
	// survived the loss of the majority. It fails with ErrNoState on a
	// data directory that holds no Raft state.
	ForceNewCluster bool

	// HeartbeatTimeout is how long a follower waits without hearing from a
	// leader before it starts an election. At least 5ms.
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a candidate waits for votes before it
	// starts over. At least HeartbeatTimeout.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader stays leader without hearing
	// from a majority. Between 5ms and HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout bounds how long a follower may go without learning the
	// commit index when there is nothing new to replicate. At least 1ms.
	CommitTimeout time.Duration

	// SnapshotThreshold is how many new log entries make a snapshot due.
	SnapshotThreshold uint64
	// SnapshotInterval is how often the node checks whether a snapshot is
	// due (jittered up to twice this). At least 5ms.
	SnapshotInterval time.Duration
	// TrailingLogs is how many log entries are kept after a snapshot, so
	// that a follower only a little behind catches up from the log rather
	// than from a whole snapshot.
	TrailingLogs uint64

	// ApplyTimeout bounds Apply, AddVoter, RemoveServer, Barrier and
	// VerifyLeader when their context has no deadline.
	ApplyTimeout time.Duration

	// wrapStore, if not nil, wraps the bolt store before the Node watches
	// its writes: tests inject a store whose writes fail with ENOSPC where
	// they cannot fill a real disk.
	wrapStore func(logStableStore) logStableStore
}

// Defaults and limits of Config.
const (
	// DefaultApplyTimeout is the default ApplyTimeout.
	DefaultApplyTimeout = 10 * time.Second
	// minTimeout is the least HeartbeatTimeout, ElectionTimeout,
	// LeaderLeaseTimeout and SnapshotInterval hashicorp/raft accepts.
	minTimeout = 5 * time.Millisecond
	// minCommitTimeout is the least CommitTimeout hashicorp/raft accepts.
	minCommitTimeout = time.Millisecond
)

// DefaultConfig returns a Config with the default timings and no
// identity, stores or listener: the caller fills those in.
//
// The timings are three times hashicorp/raft's LAN defaults (1 s, 1 s,
// 500 ms): a crashed leader is replaced within 3 to 6 seconds, and a
// leader whose goroutines wait for a CPU does not step down as soon. In a
// rotation's renewal storm on 2 cores, 10,000 nodes and three managers,
// goroutines waited up to 940 ms to run; with a 500 ms lease the leader
// stepped down in most runs, and every step-down sent the whole fleet to
// reconnect, with a TLS handshake each, to the next leader. For the same
// reason Consul runs Raft at five times these defaults unless tuned, and
// Docker Swarm elects after ten one-second ticks.
func DefaultConfig() Config {
	return Config{
		HeartbeatTimeout:   3 * time.Second,
		ElectionTimeout:    3 * time.Second,
		LeaderLeaseTimeout: 1500 * time.Millisecond,
		CommitTimeout:      50 * time.Millisecond,
		SnapshotThreshold:  8192,
		SnapshotInterval:   2 * time.Minute,
		TrailingLogs:       10240,
		ApplyTimeout:       DefaultApplyTimeout,
	}
}

// withDefaults returns c with its zero durations and counts replaced by
// DefaultConfig's.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	setDefault(&c.HeartbeatTimeout, d.HeartbeatTimeout)
	setDefault(&c.ElectionTimeout, d.ElectionTimeout)
	setDefault(&c.LeaderLeaseTimeout, d.LeaderLeaseTimeout)
	setDefault(&c.CommitTimeout, d.CommitTimeout)
	setDefault(&c.SnapshotThreshold, d.SnapshotThreshold)
	setDefault(&c.SnapshotInterval, d.SnapshotInterval)
	setDefault(&c.TrailingLogs, d.TrailingLogs)
	setDefault(&c.ApplyTimeout, d.ApplyTimeout)
	return c
}

func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// Validate reports the first setting that is missing or out of its limits.
// Zero durations and counts are checked as their defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.NodeID == "":
		return errors.New("raft: Config.NodeID is empty; set it to this manager's node ID")
	case c.DataDir == "":
		return errors.New("raft: Config.DataDir is empty; set it to <data-dir>/raft")
	case c.Listener == nil:
		return errors.New("raft: Config.Listener is nil; open a TCP listener for Raft traffic")
	case c.ClusterID == "":
		return errors.New("raft: Config.ClusterID is empty; set it to the cluster's ID")
	case c.StateMachine == nil:
		return errors.New("raft: Config.StateMachine is nil")
	}
	if _, err := c.advertiseAddr(); err != nil {
		return err
	}
	if err := validateTLS(c.TLS); err != nil {
		return err
	}
	if c.HeartbeatTimeout < minTimeout {
		return fmt.Errorf("raft: Config.HeartbeatTimeout is %s; it must be at least %s", c.HeartbeatTimeout, minTimeout)
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		return fmt.Errorf("raft: Config.ElectionTimeout is %s; it must be at least HeartbeatTimeout (%s)", c.ElectionTimeout, c.HeartbeatTimeout)
	}
	if c.LeaderLeaseTimeout < minTimeout || c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		return fmt.Errorf("raft: Config.LeaderLeaseTimeout is %s; it must be between %s and HeartbeatTimeout (%s)", c.LeaderLeaseTimeout, minTimeout, c.HeartbeatTimeout)
	}
	if c.CommitTimeout < minCommitTimeout {
		return fmt.Errorf("raft: Config.CommitTimeout is %s; it must be at least %s", c.CommitTimeout, minCommitTimeout)
	}
	if c.SnapshotInterval < minTimeout {
		return fmt.Errorf("raft: Config.SnapshotInterval is %s; it must be at least %s", c.SnapshotInterval, minTimeout)
	}
	if c.ApplyTimeout < 0 {
		return fmt.Errorf("raft: Config.ApplyTimeout is %s; it must be positive", c.ApplyTimeout)
	}
	return nil
}

// advertiseAddr returns the address other managers dial: AdvertiseAddr, or
// the listener's address.
func (c Config) advertiseAddr() (string, error) {
	addr, field := c.AdvertiseAddr, "AdvertiseAddr"
	if addr == "" && c.Listener != nil {
		addr, field = c.Listener.Addr().String(), "Listener.Addr()"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" || port == "0" {
		return "", fmt.Errorf("raft: Config.%s %q is not a host:port other managers can dial", field, addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return "", fmt.Errorf("raft: Config.%s %q is an unspecified address other managers cannot dial; set Config.AdvertiseAddr", field, addr)
	}
	return addr, nil
}

// validateTLS checks that cfg can serve, dial and verify both sides.
func validateTLS(cfg *tls.Config) error {
	switch {
	case cfg == nil:
		return errors.New("raft: Config.TLS is nil; Raft traffic is always mutual TLS")
	case len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil:
		return errors.New("raft: Config.TLS has no server certificate; set Certificates or GetCertificate")
	case len(cfg.Certificates) == 0 && cfg.GetClientCertificate == nil:
		return errors.New("raft: Config.TLS has no client certificate; set Certificates or GetClientCertificate")
	case cfg.RootCAs == nil:
		return errors.New("raft: Config.TLS.RootCAs is nil; set it to the cluster's trust bundle")
	case cfg.ClientCAs == nil && cfg.GetConfigForClient == nil:
		return errors.New("raft: Config.TLS.ClientCAs is nil; set it to the cluster's trust bundle")
	case cfg.MaxVersion != 0 && cfg.MaxVersion < tls.VersionTLS12:
		return fmt.Errorf("raft: Config.TLS.MaxVersion is %s; it must be at least TLS 1.2", tls.VersionName(cfg.MaxVersion))
	case cfg.InsecureSkipVerify:
		return errors.New("raft: Config.TLS.InsecureSkipVerify is set; Raft peers must always be verified")
	}
	return nil
}
