package agent

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/quorumca/quorumca/internal/wait"
	"github.com/quorumca/quorumca/membership"
)

// DefaultGossipAddr is where nodes gossip unless told otherwise.
const DefaultGossipAddr = "0.0.0.0:7946"

// GossipConfig configures a node's gossip.
type GossipConfig struct {
	// BindAddr and AdvertiseAddr are the gossip addresses (host:port); see
	// membership.Config.
	BindAddr, AdvertiseAddr string
	Credentials             *Credentials
	// Fetch obtains the cluster's gossip key and addresses to join
	// through; it is retried until it succeeds.
	Fetch func(ctx context.Context) (key []byte, peers []string, err error)
	// Accept, OnChange and Timing go to membership.Config.
	Accept   func(nodeID string) error
	OnChange func()
	Timing   membership.Timing
	// OnAddr is called once gossip listens, with the bind address to
	// record for a restart (the port it got, when asked for port 0).
	OnAddr func(bind string)
	// RejoinPeriod is how often a node that sees no other member asks the
	// managers for peers again; default 10s.
	RejoinPeriod time.Duration
	// KeyGrace is how long the previous gossip key is still read after
	// the cluster moved to a new one, so that members moving at different
	// moments keep hearing one another; default 30s.
	KeyGrace time.Duration
	Logger   *slog.Logger
}

// Gossip keeps a node in the cluster's gossip: it fetches the key over
// mutual TLS, starts a member, advertises the certificate the node serves
// (and follows every credential update), and rejoins when it finds itself
// alone.
type Gossip struct {
	cfg GossipConfig
	// metaKick asks run to advertise the credentials anew.
	metaKick chan struct{}
	// keys hands run the key to move to (UseKey), wantKey the ID of the
	// cluster's key when it must fetch it (WantKey).
	keys    chan []byte
	wantKey chan string

	mu     sync.Mutex // guards the fields below
	member *membership.Member
}

// NewGossip returns a node's gossip; Run runs it.
func NewGossip(cfg GossipConfig) *Gossip {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RejoinPeriod <= 0 {
		cfg.RejoinPeriod = 10 * time.Second
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = DefaultGossipAddr
	}
	if cfg.KeyGrace <= 0 {
		cfg.KeyGrace = 30 * time.Second
	}
	g := &Gossip{
		cfg: cfg, metaKick: make(chan struct{}, 1),
		keys: make(chan []byte, 1), wantKey: make(chan string, 1),
	}
	// The hook runs inside the credentials' update, on the renewer's
	// goroutine: only signal, never wait on the network there.
	cfg.Credentials.OnUpdate(func() {
		select {
		case g.metaKick <- struct{}{}:
		default:
		}
	})
	return g
}

// Member returns the running member, or nil before it started.
func (g *Gossip) Member() *membership.Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.member
}

// Run fetches the gossip key, starts the member and keeps it current
// until ctx is done; then it leaves the gossip (others see this node leave
// rather than fail).
func (g *Gossip) Run(ctx context.Context) error {
	g.run(ctx)
	g.mu.Lock()
	m := g.member
	g.member = nil
	g.mu.Unlock()
	if m != nil {
		if err := m.Leave(time.Second); err != nil {
			g.cfg.Logger.Debug("leave gossip", "err", err)
		}
	}
	return nil
}

// UseKey moves this node's gossip to key (a manager follows the state's
// key this way). It does not wait.
func (g *Gossip) UseKey(key []byte) { replaceIn(g.keys, slices.Clone(key)) }

// WantKey tells the gossip that the cluster's key is the one named id (a
// heartbeat says so); if it is not the key in use, the gossip fetches it
// from the managers and moves to it. It does not wait.
func (g *Gossip) WantKey(id string) {
	if m := g.Member(); m != nil && m.KeyID() == id {
		return
	}
	replaceIn(g.wantKey, id)
}

// replaceIn puts v in the one-slot channel ch, replacing what waits there.
func replaceIn[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

// MetaOf is the gossip metadata of a node holding creds: its role, the
// serial and issuer of the certificate it serves, and its trust bundle.
func MetaOf(creds *Credentials) membership.Meta {
	return membership.Meta{
		Role:   creds.Identity().Role,
		Serial: creds.Leaf().SerialNumber.Text(16),
		Issuer: membership.StatusDigest(creds.Issuer()),
		Bundle: membership.BundleDigest(creds.Bundle()),
	}
}

// updateMeta advertises the credentials anew. Gossip spreads the change
// by its broadcasts and periodic exchanges: nothing waits on it (a
// rotation's leader learns of a renewal from the node's heartbeats), so a
// renewal costs no full state exchange with every manager, which in a
// large cluster's rotation would be N of them at once.
func (g *Gossip) updateMeta() {
	g.mu.Lock()
	m := g.member
	g.mu.Unlock()
	if m == nil {
		return
	}
	if err := m.SetMeta(MetaOf(g.cfg.Credentials)); err != nil {
		// The change is queued even when the wait for its first
		// broadcast times out.
		g.cfg.Logger.Debug("advertise new certificate in gossip", "err", err)
	}
}

func (g *Gossip) run(ctx context.Context) {
	var m *membership.Member
	var peers []string
	for attempt := 0; ; attempt++ {
		var key []byte
		var err error
		key, peers, err = g.cfg.Fetch(ctx)
		if err != nil {
			g.cfg.Logger.Warn("gossip: fetch the cluster's gossip key", "err", err, "attempt", attempt+1)
			if !wait.Sleep(ctx, gossipBackoff(attempt)) {
				return
			}
			continue
		}
		m, err = membership.New(membership.Config{
			NodeID:        g.cfg.Credentials.Identity().NodeID,
			BindAddr:      g.cfg.BindAddr,
			AdvertiseAddr: g.cfg.AdvertiseAddr,
			Key:           key,
			Meta:          MetaOf(g.cfg.Credentials),
			Accept:        g.cfg.Accept,
			OnChange:      g.cfg.OnChange,
			Timing:        g.cfg.Timing,
			Logger:        g.cfg.Logger,
		})
		if err == nil {
			break
		}
		g.cfg.Logger.Error("gossip: cannot start; rotations will wait for this node", "err", err, "attempt", attempt+1)
		if !wait.Sleep(ctx, gossipBackoff(attempt)) {
			return
		}
	}
	g.mu.Lock()
	g.member = m
	g.mu.Unlock()
	// Credentials may have changed between MetaOf above and now.
	if err := m.SetMeta(MetaOf(g.cfg.Credentials)); err != nil {
		g.cfg.Logger.Debug("advertise certificate in gossip", "err", err)
	}
	if g.cfg.OnAddr != nil {
		g.cfg.OnAddr(boundGossip(g.cfg.BindAddr, m.Addr()))
	}
	g.cfg.Logger.Info("gossip started", "addr", m.Addr())
	g.join(m, peers)
	tick := time.NewTicker(g.cfg.RejoinPeriod)
	defer tick.Stop()
	drop := time.NewTimer(g.cfg.KeyGrace)
	drop.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.metaKick:
			g.updateMeta()
			continue
		case key := <-g.keys:
			g.useKey(m, key, drop)
			continue
		case id := <-g.wantKey:
			g.fetchKey(ctx, m, id, drop)
			continue
		case <-drop.C:
			if err := m.DropOldKeys(); err != nil {
				g.cfg.Logger.Warn("gossip: drop the previous key", "err", err)
			}
			continue
		case <-tick.C:
		}
		if m.NumPeers() > 0 {
			continue
		}
		_, peers, err := g.cfg.Fetch(ctx)
		if err != nil {
			g.cfg.Logger.Debug("gossip: fetch peers", "err", err)
			continue
		}
		g.join(m, peers)
	}
}

// useKey moves m to key, and drops the previous key after the grace.
func (g *Gossip) useKey(m *membership.Member, key []byte, drop *time.Timer) {
	if m.KeyID() == membership.KeyID(key) {
		return
	}
	if err := m.UseKey(key); err != nil {
		g.cfg.Logger.Warn("gossip: move to the cluster's new key", "err", err)
		return
	}
	g.cfg.Logger.Info("gossip: moved to the cluster's new key", "key_id", membership.KeyID(key))
	drop.Reset(g.cfg.KeyGrace)
}

// fetchKey asks the managers for the cluster's key and moves to it if it
// is the one named id. A manager still on the previous key is asked again
// at the next heartbeat.
func (g *Gossip) fetchKey(ctx context.Context, m *membership.Member, id string, drop *time.Timer) {
	if m.KeyID() == id {
		return
	}
	key, _, err := g.cfg.Fetch(ctx)
	if err != nil {
		g.cfg.Logger.Warn("gossip: fetch the cluster's new key", "err", err)
		return
	}
	if membership.KeyID(key) != id {
		g.cfg.Logger.Debug("gossip: the managers asked do not have the new key yet", "want", id)
		return
	}
	g.useKey(m, key, drop)
}

func (g *Gossip) join(m *membership.Member, peers []string) {
	self := m.Addr()
	peers = slices.DeleteFunc(slices.Clone(peers), func(p string) bool { return p == self })
	if len(peers) == 0 {
		return
	}
	if n, err := m.Join(peers); err != nil {
		g.cfg.Logger.Warn("gossip: join", "peers", peers, "err", err)
	} else {
		g.cfg.Logger.Debug("gossip: joined", "contacted", n)
	}
}

// boundGossip is the bind address to record: the configured one, or with
// port 0 replaced by the port gossip got (memberlist uses the same port
// for its advertised address when asked for port 0).
func boundGossip(bind, advertised string) string {
	host, port, err := net.SplitHostPort(bind)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n != 0 {
		return bind
	}
	_, got, err := net.SplitHostPort(advertised)
	if err != nil {
		return bind
	}
	return net.JoinHostPort(host, got)
}

func gossipBackoff(attempt int) time.Duration {
	return min(250*time.Millisecond<<min(attempt, 7), 30*time.Second)
}
