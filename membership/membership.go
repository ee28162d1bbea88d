// Package membership is quorumca's gossip layer, and the only importer of
// hashicorp/memberlist. Every node of a cluster, managers and workers, is a
// member; its metadata says which certificate it serves (serial and TLS
// status) and which root bundle it trusts, so that the leader can tell when
// a root rotation has reached every node (DESIGN.md flow 5).
//
// Gossip is encrypted and authenticated with the cluster's gossip key, which
// nodes receive over mutual TLS. A member may also refuse the alive messages
// of node IDs it does not know (managers refuse unknown and removed nodes).
package membership

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// KeySize is the size of a gossip key: AES-256.
const KeySize = 32

// Errors of this package.
var (
	// ErrBadKey is returned for a gossip key of the wrong size.
	ErrBadKey = errors.New("membership: the gossip key must be 32 bytes")
	// ErrMetaTooLarge is returned when metadata does not fit memberlist's
	// limit.
	ErrMetaTooLarge = errors.New("membership: node metadata too large")
)

// Timing picks memberlist's failure-detection speed.
type Timing int

const (
	// LAN is memberlist's default for a local network: a failed node is
	// declared dead after a few seconds.
	LAN Timing = iota
	// Fast probes and gossips more often, for tests and loopback clusters.
	Fast
)

// Config configures a Member.
type Config struct {
	// NodeID is this node's name in gossip.
	NodeID string
	// BindAddr is the host:port to listen on (TCP and UDP); port 0 picks a
	// free one.
	BindAddr string
	// AdvertiseAddr is the host:port others reach this node at; empty
	// advertises the bound address.
	AdvertiseAddr string
	// Key encrypts and authenticates all gossip (KeySize bytes).
	Key []byte
	// Meta is this node's first metadata.
	Meta Meta
	// Accept decides whether alive messages about a node ID are believed;
	// nil believes all. It is called from memberlist's goroutines.
	Accept func(nodeID string) error
	// OnChange is called, from memberlist's goroutines, after a member
	// joins, leaves or changes its metadata. It must not block.
	OnChange func()
	Timing   Timing
	Logger   *slog.Logger
}

// Member is this node's place in the cluster's gossip.
type Member struct {
	cfg  Config
	list *memberlist.Memberlist
	addr string
	// keys holds the gossip keys: the one in use, and the one before it
	// while the others move to the new one (UseKey, DropOldKeys).
	keys *memberlist.Keyring

	mu   sync.Mutex // guards the fields below
	meta []byte
	// peers is this member's own copy of the others: memberlist's Members
	// hands out pointers to nodes it rewrites in place when their
	// metadata changes, so the copy is taken in its event callbacks,
	// which run under its lock.
	peers map[string]Peer
	left  bool
}

// Peer is another member as this one sees it.
type Peer struct {
	NodeID string
	// Addr is its gossip address.
	Addr string
	// Meta is its metadata; MetaErr says why it could not be read.
	Meta    Meta
	MetaErr error
}

// New starts gossiping as cfg.NodeID. Call Join to meet the others.
func New(cfg Config) (*Member, error) {
	if len(cfg.Key) != KeySize {
		return nil, ErrBadKey
	}
	if cfg.NodeID == "" {
		return nil, errors.New("membership: no node ID")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	meta, err := cfg.Meta.Encode()
	if err != nil {
		return nil, err
	}
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("membership: --gossip-addr %q: %w", cfg.BindAddr, err)
	}
	mc := memberlist.DefaultLANConfig()
	// A metadata change is gossiped a few times only (RetransmitMult
	// times the log of the cluster's size); a member that missed it learns
	// it at the next full state exchange. Make those frequent enough that
	// a rotation's last confirmations do not wait half a minute.
	mc.PushPullInterval = 15 * time.Second
	if cfg.Timing == Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 500 * time.Millisecond
		mc.GossipInterval = 50 * time.Millisecond
		mc.RetransmitMult = 4
		mc.PushPullInterval = 2 * time.Second
	}
	// Gossip messages are small (a node's metadata is well under 1 KiB);
	// compressing each packet with LZW costs more CPU than anything else
	// gossip does (a quarter of a 500-agent run's) and saves little.
	mc.EnableCompression = false
	mc.Name = cfg.NodeID
	mc.Logger = log.New(&logWriter{log: cfg.Logger}, "", 0)
	if cfg.AdvertiseAddr != "" {
		ahost, aport, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("membership: --gossip-advertise-addr %q: %w", cfg.AdvertiseAddr, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ahost, aport
	}
	t, err := newTransport(host, port, mc.Logger)
	if err != nil {
		return nil, fmt.Errorf("membership: start gossip on %s: %w", cfg.BindAddr, err)
	}
	mc.Transport = t
	// As memberlist does for a transport it makes itself: a port-0 bind
	// advertises the port it got.
	if port == 0 {
		port = t.port()
		mc.AdvertisePort = port
	}
	mc.BindAddr, mc.BindPort = host, port
	keys, err := memberlist.NewKeyring(nil, slices.Clone(cfg.Key))
	if err != nil {
		t.Shutdown()
		return nil, fmt.Errorf("membership: %w", err)
	}
	mc.Keyring = keys
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	m := &Member{cfg: cfg, keys: keys, meta: meta, peers: map[string]Peer{}}
	d := delegate{m}
	mc.Delegate = d
	mc.Events = d
	mc.Alive = d
	list, err := memberlist.Create(mc)
	if err != nil {
		t.Shutdown()
		return nil, fmt.Errorf("membership: start gossip on %s: %w", cfg.BindAddr, err)
	}
	m.list = list
	local := list.LocalNode()
	m.addr = net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port)))
	return m, nil
}

// Join contacts the given members (host:port) and returns how many
// answered.
func (m *Member) Join(addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	n, err := m.list.Join(addrs)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("membership: join %v: %w", addrs, err)
	}
	return n, nil
}

// SetMeta changes this node's metadata and tells the others.
func (m *Member) SetMeta(meta Meta) error {
	b, err := meta.Encode()
	if err != nil {
		return err
	}
	m.mu.Lock()
	same := bytes.Equal(b, m.meta)
	m.meta = b
	m.mu.Unlock()
	if same {
		return nil
	}
	return m.list.UpdateNode(time.Second)
}

// KeyID names a gossip key without revealing it: the first 8 bytes of its
// SHA-256, hex. "" for no key.
func KeyID(key []byte) string {
	if len(key) == 0 {
		return ""
	}
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:8])
}

// KeyID names the key this member encrypts with.
func (m *Member) KeyID() string { return KeyID(m.keys.GetPrimaryKey()) }

// UseKey makes key the one this member encrypts with, and keeps only the
// key it used before beside it, to read the members that have not moved
// yet; DropOldKeys drops that one too. Using the key in use already does
// nothing.
func (m *Member) UseKey(key []byte) error {
	if len(key) != KeySize {
		return ErrBadKey
	}
	old := m.keys.GetPrimaryKey()
	if bytes.Equal(old, key) {
		return nil
	}
	if err := m.keys.AddKey(slices.Clone(key)); err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	if err := m.keys.UseKey(key); err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	for _, k := range m.keys.GetKeys() {
		if !bytes.Equal(k, key) && !bytes.Equal(k, old) {
			if err := m.keys.RemoveKey(k); err != nil {
				return fmt.Errorf("membership: %w", err)
			}
		}
	}
	return nil
}

// DropOldKeys stops reading gossip encrypted with any key but the one in
// use: a node removed from the cluster, which cannot fetch the new key,
// is no longer heard.
func (m *Member) DropOldKeys() error {
	primary := m.keys.GetPrimaryKey()
	for _, k := range m.keys.GetKeys() {
		if !bytes.Equal(k, primary) {
			if err := m.keys.RemoveKey(k); err != nil {
				return fmt.Errorf("membership: %w", err)
			}
		}
	}
	return nil
}

// Keys returns how many keys this member reads gossip with.
func (m *Member) Keys() int { return len(m.keys.GetKeys()) }

// Addr returns the gossip address others reach this node at. (With a bind
// port of 0, memberlist advertises the port it picked, whatever
// AdvertiseAddr says.)
func (m *Member) Addr() string { return m.addr }

// NumPeers returns how many other members are alive (or suspected, not yet
// dead) and accepted.
func (m *Member) NumPeers() int { return len(m.Peers()) }

// Peers returns the other members that are alive, or suspected but not yet
// declared dead. Members that Accept refuses now are left out, even if they
// were believed before.
func (m *Member) Peers() []Peer {
	m.mu.Lock()
	out := make([]Peer, 0, len(m.peers))
	for _, p := range m.peers {
		out = append(out, p)
	}
	m.mu.Unlock()
	if m.cfg.Accept != nil {
		out = slices.DeleteFunc(out, func(p Peer) bool { return m.cfg.Accept(p.NodeID) != nil })
	}
	return out
}

// Leave tells the others this node is leaving, waiting at most timeout,
// and stops gossiping. Calling it again, or after Shutdown, does nothing.
func (m *Member) Leave(timeout time.Duration) error {
	if !m.stop() {
		return nil
	}
	err := m.list.Leave(timeout)
	if serr := m.list.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Shutdown stops gossiping without a word: the others find this node dead.
// Calling it again, or after Leave, does nothing.
func (m *Member) Shutdown() error {
	if !m.stop() {
		return nil
	}
	return m.list.Shutdown()
}

// stop marks the member stopped, and reports whether it was running.
func (m *Member) stop() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.left {
		return false
	}
	m.left = true
	return true
}

// delegate is memberlist's view of a Member.
type delegate struct{ m *Member }

func (d delegate) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	if len(d.m.meta) > limit {
		// Encode keeps metadata under the limit; this is a broken invariant.
		panic(fmt.Sprintf("membership: metadata of %d bytes over memberlist's limit of %d", len(d.m.meta), limit))
	}
	return d.m.meta
}

func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyJoin, NotifyUpdate and NotifyLeave run under memberlist's node
// lock: the node they get is consistent here, and only here.
func (d delegate) NotifyJoin(n *memberlist.Node)   { d.record(n) }
func (d delegate) NotifyUpdate(n *memberlist.Node) { d.record(n) }

func (d delegate) NotifyLeave(n *memberlist.Node) {
	d.m.mu.Lock()
	delete(d.m.peers, n.Name)
	d.m.mu.Unlock()
	d.changed()
}

func (d delegate) record(n *memberlist.Node) {
	if n.Name == d.m.cfg.NodeID {
		return
	}
	p := Peer{NodeID: n.Name, Addr: n.Address()}
	p.Meta, p.MetaErr = DecodeMeta(n.Meta) // copies what it keeps
	d.m.mu.Lock()
	d.m.peers[n.Name] = p
	d.m.mu.Unlock()
	d.changed()
}

// changed calls OnChange. It may run for the first time inside New, before
// New returns the Member.
func (d delegate) changed() {
	if f := d.m.cfg.OnChange; f != nil {
		f()
	}
}

// NotifyAlive filters alive messages through Config.Accept.
func (d delegate) NotifyAlive(n *memberlist.Node) error {
	if n.Name == d.m.cfg.NodeID || d.m.cfg.Accept == nil {
		return nil
	}
	return d.m.cfg.Accept(n.Name)
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// logWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records of the matching level.
type logWriter struct{ log *slog.Logger }

var _ io.Writer = (*logWriter)(nil)

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelDebug
	for prefix, l := range map[string]slog.Level{"[ERR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo, "[DEBUG]": slog.LevelDebug} {
		if len(line) >= len(prefix) && line[:len(prefix)] == prefix {
			level = l
			line = line[len(prefix):]
			break
		}
	}
	w.log.Log(context.Background(), level, "gossip"+line)
	return len(p), nil
}
