package membership

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

func TestThreeMembersSeeEachOther(t *testing.T) {
	key := newKey(t)
	metas := map[string]Meta{
		"m1": testMeta(ca.RoleManager, "01aa"),
		"w1": testMeta(ca.RoleWorker, "02bb"),
		"w2": testMeta(ca.RoleWorker, "03cc"),
	}
	members := map[string]*Member{}
	for _, id := range []string{"m1", "w1", "w2"} {
		members[id] = start(t, id, key, metas[id])
	}

	for id, m := range members {
		host, port, err := net.SplitHostPort(m.Addr())
		if err != nil {
			t.Fatalf("%s: Addr() %q: %v", id, m.Addr(), err)
		}
		if host != "127.0.0.1" {
			t.Errorf("%s: Addr() host %q, want 127.0.0.1", id, host)
		}
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			t.Errorf("%s: Addr() port %q is not a bound port", id, port)
		}
		if n := m.NumPeers(); n != 0 {
			t.Errorf("%s: NumPeers() before joining = %d, want 0", id, n)
		}
		if ps := m.Peers(); len(ps) != 0 {
			t.Errorf("%s: Peers() before joining = %v, want none", id, ps)
		}
	}

	// Both workers join through the manager only.
	join(t, members["w1"], members["m1"].Addr())
	join(t, members["w2"], members["m1"].Addr())

	for id, m := range members {
		want := map[string]Meta{}
		for other, meta := range metas {
			if other != id {
				want[other] = meta
			}
		}
		testkit.Eventually(t, id+" does not see the other two members with their metadata", func() error {
			if err := checkPeers(m, want); err != nil {
				return err
			}
			if n := m.NumPeers(); n != 2 {
				return fmt.Errorf("NumPeers() = %d, want 2", n)
			}
			return nil
		})

		for _, p := range m.Peers() {
			if p.Addr != members[p.NodeID].Addr() {
				t.Errorf("%s sees %s at %q, but it is at %q", id, p.NodeID, p.Addr, members[p.NodeID].Addr())
			}
		}
	}
}

func TestSetMetaPropagates(t *testing.T) {
	key := newKey(t)
	var changes atomic.Int64
	a := start(t, "a", key, testMeta(ca.RoleManager, "aa01"), func(c *Config) {
		c.OnChange = func() { changes.Add(1) }
	})
	bMeta := testMeta(ca.RoleWorker, "bb01")
	b := start(t, "b", key, bMeta)
	c := start(t, "c", key, testMeta(ca.RoleWorker, "cc01"))
	join(t, b, a.Addr())
	join(t, c, a.Addr())

	testkit.Eventually(t, "a does not see b and c", func() error {
		return checkPeers(a, map[string]Meta{"b": bMeta, "c": testMeta(ca.RoleWorker, "cc01")})
	})
	testkit.Eventually(t, "c does not see a and b", func() error {
		return checkPeers(c, map[string]Meta{"a": testMeta(ca.RoleManager, "aa01"), "b": bMeta})
	})
	if changes.Load() < 2 {
		t.Fatalf("OnChange called %d times after two members joined, want at least 2", changes.Load())
	}

	// A new certificate: every field changes.
	before := changes.Load()
	newMeta := testMeta(ca.RoleManager, "bb02")
	if err := b.SetMeta(newMeta); err != nil {
		t.Fatalf("SetMeta: %v", err)
	}
	for name, m := range map[string]*Member{"a": a, "c": c} {
		testkit.Eventually(t, name+" never sees b's new metadata", func() error {
			p, ok := findPeer(m, "b")
			if !ok {
				return errors.New("b is not listed")
			}
			if p.Meta != newMeta {
				return fmt.Errorf("b's meta is %+v", p.Meta)
			}
			return nil
		})
	}
	testkit.Eventually(t, "OnChange was not called on a after b changed its metadata", testkit.True(func() bool { return changes.Load() > before }))

	// The largest metadata Encode allows travels too.
	big := testMeta(ca.RoleWorker, "")
	big.Serial = strings.Repeat("f", maxSerialLen(t, big))
	if err := b.SetMeta(big); err != nil {
		t.Fatalf("SetMeta(largest meta): %v", err)
	}
	testkit.Eventually(t, "a never sees b's largest metadata", testkit.True(func() bool {
		p, ok := findPeer(a, "b")
		return ok && p.MetaErr == nil && p.Meta == big
	}))
}

// maxSerialLen is the longest Serial (of plain hex digits) that m can
// carry and still encode.
func maxSerialLen(t testing.TB, m Meta) int {
	t.Helper()
	m.Serial = ""
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return maxMeta - len(b)
}

func TestSetMetaAlone(t *testing.T) {
	// With nobody to tell, SetMeta must not wait for a broadcast.
	m := start(t, "solo", newKey(t), testMeta(ca.RoleWorker, "01"))
	done := make(chan error, 1)
	go func() { done <- m.SetMeta(testMeta(ca.RoleWorker, "02")) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("SetMeta: %v", err)
		}
	case <-time.After(testkit.Wait):
		t.Fatal("SetMeta without peers did not return")
	}
	// The member's own node carries the new metadata.
	got, err := DecodeMeta(m.list.LocalNode().Meta)
	if err != nil {
		t.Fatal(err)
	}
	if got != testMeta(ca.RoleWorker, "02") {
		t.Fatalf("local node meta %+v, want serial 02", got)
	}
}

func TestSetMetaSameTwice(t *testing.T) {
	key := newKey(t)
	meta := testMeta(ca.RoleWorker, "0101")
	a := start(t, "a", key, testMeta(ca.RoleManager, "aa"))
	b := start(t, "b", key, meta)
	join(t, b, a.Addr())
	testkit.Eventually(t, "a does not see b", func() error { return checkPeers(a, map[string]Meta{"b": meta}) })

	// The meta b started with, then a new one twice.
	if err := b.SetMeta(meta); err != nil {
		t.Fatalf("SetMeta(initial meta): %v", err)
	}
	next := testMeta(ca.RoleWorker, "0102")
	for i := 0; i < 2; i++ {
		if err := b.SetMeta(next); err != nil {
			t.Fatalf("SetMeta #%d: %v", i+1, err)
		}
	}
	testkit.Eventually(t, "a does not see b's new meta", func() error { return checkPeers(a, map[string]Meta{"b": next}) })
}

func TestSetMetaSameIsNoOp(t *testing.T) {
	// White box: a Member with no memberlist behind it. If SetMeta with
	// unchanged metadata reached memberlist, it would dereference nil.
	meta := testMeta(ca.RoleWorker, "0101")
	enc, err := meta.Encode()
	if err != nil {
		t.Fatal(err)
	}
	m := &Member{cfg: Config{NodeID: "x", Meta: meta}, meta: enc}
	for i := 0; i < 2; i++ {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("SetMeta of unchanged metadata (call %d) touched memberlist: %v", i+1, r)
				}
			}()
			if err := m.SetMeta(meta); err != nil {
				t.Fatalf("SetMeta of unchanged metadata (call %d): %v", i+1, err)
			}
		}()
	}
	if string(m.meta) != string(enc) {
		t.Fatalf("meta changed to %q", m.meta)
	}
	// Bad metadata is refused before anything changes.
	huge := meta
	huge.Serial = strings.Repeat("0", 1000)
	if err := m.SetMeta(huge); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("SetMeta(huge) = %v, want ErrMetaTooLarge", err)
	}
	if string(m.meta) != string(enc) {
		t.Fatalf("a refused SetMeta changed meta to %q", m.meta)
	}
}

func TestWrongKeyCannotJoin(t *testing.T) {
	key := newKey(t)
	a := start(t, "a", key, testMeta(ca.RoleManager, "aa"))
	b := start(t, "b", key, testMeta(ca.RoleWorker, "bb"))
	join(t, b, a.Addr())
	testkit.Eventually(t, "a and b do not see each other", testkit.True(func() bool { return a.NumPeers() == 1 && b.NumPeers() == 1 }))

	x := start(t, "x", newKey(t), testMeta(ca.RoleWorker, "ee"))
	n, err := x.Join([]string{a.Addr()})
	if err == nil && n != 0 {
		t.Fatalf("Join with the wrong key contacted %d nodes and returned no error", n)
	}
	t.Logf("Join with the wrong key: n=%d err=%v", n, err)

	notListed := func() {
		t.Helper()
		for name, m := range map[string]*Member{"a": a, "b": b} {
			if _, ok := findPeer(m, "x"); ok {
				t.Fatalf("%s lists x, which has the wrong key", name)
			}
			if m.NumPeers() > 2 {
				t.Fatalf("%s counts %d peers", name, m.NumPeers())
			}
		}
		if ps := x.Peers(); len(ps) != 0 {
			t.Fatalf("x, with the wrong key, lists %v", ps)
		}
	}
	notListed()

	// Let gossip go on: a new, rightful member joins and changes its
	// metadata; once everybody has seen that, x must still be unknown.
	c := start(t, "c", key, testMeta(ca.RoleWorker, "cc"))
	join(t, c, b.Addr())
	newMeta := testMeta(ca.RoleWorker, "cc02")
	if err := c.SetMeta(newMeta); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*Member{"a": a, "b": b} {
		testkit.Eventually(t, name+" never sees c's new metadata", testkit.True(func() bool {
			notListed()
			p, ok := findPeer(m, "c")
			return ok && p.Meta == newMeta
		}))
	}
	notListed()
}

// idSet is a concurrency-safe set of node IDs.
type idSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (s *idSet) set(id string, in bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]bool{}
	}
	s.ids[id] = in
}

func (s *idSet) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[id]
}

// refusing returns an Accept func refusing the IDs in s.
func refusing(s *idSet, calls *atomic.Int64) func(string) error {
	return func(id string) error {
		if calls != nil {
			calls.Add(1)
		}
		if s.has(id) {
			return fmt.Errorf("node %q is not a member", id)
		}
		return nil
	}
}

func TestAcceptRefusesIntruder(t *testing.T) {
	key := newKey(t)
	var refused idSet
	refused.set("intruder", true)
	var calls atomic.Int64
	guard := start(t, "guard", key, testMeta(ca.RoleManager, "01"), func(c *Config) {
		c.Accept = refusing(&refused, &calls)
	})
	friendMeta := testMeta(ca.RoleWorker, "02")
	friend := start(t, "friend", key, friendMeta) // accepts everybody
	join(t, friend, guard.Addr())

	// The intruder has the right key and joins through the friend.
	intruder := start(t, "intruder", key, testMeta(ca.RoleWorker, "03"))
	join(t, intruder, friend.Addr())

	checkGuard := func() {
		t.Helper()
		if _, ok := findPeer(guard, "intruder"); ok {
			t.Fatal("guard lists the intruder")
		}
		// Refused alive messages must keep it out of memberlist itself,
		// not only out of Peers.
		if n := guard.NumPeers(); n > 1 {
			t.Fatalf("guard counts %d peers; only friend is accepted", n)
		}
	}
	testkit.Eventually(t, "friend does not see guard and intruder", func() error {
		checkGuard()
		return checkPeers(friend, map[string]Meta{"guard": testMeta(ca.RoleManager, "01"), "intruder": testMeta(ca.RoleWorker, "03")})
	})

	// The intruder also knocks on the guard's door directly, and changes
	// its metadata so that its alive messages are gossiped again.
	if _, err := intruder.Join([]string{guard.Addr()}); err != nil {
		t.Logf("intruder's direct join: %v", err)
	}
	if err := intruder.SetMeta(testMeta(ca.RoleManager, "04")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "friend never sees the intruder's new metadata", testkit.True(func() bool {
		checkGuard()
		p, ok := findPeer(friend, "intruder")
		return ok && p.Meta.Serial == "04"
	}))

	// Barrier: once the guard has the friend's later news, it has been
	// offered the intruder's alive messages (and refused them).
	newFriend := testMeta(ca.RoleWorker, "05")
	if err := friend.SetMeta(newFriend); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "guard does not see the friend's new metadata (and only the friend)", func() error {
		checkGuard()
		return checkPeers(guard, map[string]Meta{"friend": newFriend})
	})
	checkGuard()
	if calls.Load() == 0 {
		t.Fatal("Accept was never called")
	}
}

func TestAcceptRefusingLaterHidesPeer(t *testing.T) {
	key := newKey(t)
	var refused idSet
	a := start(t, "a", key, testMeta(ca.RoleManager, "01"), func(c *Config) {
		c.Accept = refusing(&refused, nil)
	})
	bMeta, cMeta := testMeta(ca.RoleWorker, "02"), testMeta(ca.RoleWorker, "03")
	b := start(t, "b", key, bMeta)
	c := start(t, "c", key, cMeta)
	join(t, b, a.Addr())
	join(t, c, a.Addr())
	testkit.Eventually(t, "a does not see b and c", func() error { return checkPeers(a, map[string]Meta{"b": bMeta, "c": cMeta}) })
	testkit.Eventually(t, "b does not see a and c", func() error {
		return checkPeers(b, map[string]Meta{"a": testMeta(ca.RoleManager, "01"), "c": cMeta})
	})

	// c is removed from the cluster: a stops listing it at once.
	refused.set("c", true)
	if err := checkPeers(a, map[string]Meta{"b": bMeta}); err != nil {
		t.Fatalf("after refusing c: %v", err)
	}
	// Others are unaffected by a's filter.
	if err := checkPeers(b, map[string]Meta{"a": testMeta(ca.RoleManager, "01"), "c": cMeta}); err != nil {
		t.Fatalf("b: %v", err)
	}

	// Accepted again, it is listed again.
	refused.set("c", false)
	testkit.Eventually(t, "a does not list c again once accepted", func() error { return checkPeers(a, map[string]Meta{"b": bMeta, "c": cMeta}) })
}

func TestShutdownMemberDisappears(t *testing.T) {
	key := newKey(t)
	a := start(t, "a", key, testMeta(ca.RoleManager, "01"))
	b := start(t, "b", key, testMeta(ca.RoleWorker, "02"))
	c := start(t, "c", key, testMeta(ca.RoleWorker, "03"))
	join(t, b, a.Addr())
	join(t, c, a.Addr())
	for _, m := range []*Member{a, b, c} {
		testkit.Eventually(t, "the three members do not see each other", testkit.True(func() bool { return m.NumPeers() == 2 && len(m.Peers()) == 2 }))
	}

	if err := c.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for name, m := range map[string]*Member{"a": a, "b": b} {
		testkit.Eventually(t, name+" still lists c after it shut down", testkit.True(func() bool {
			_, listed := findPeer(m, "c")
			return !listed && m.NumPeers() == 1
		}))
		if _, ok := findPeer(m, name2other(name)); !ok {
			t.Errorf("%s no longer lists %s, which is still up", name, name2other(name))
		}
	}
}

func name2other(n string) string {
	if n == "a" {
		return "b"
	}
	return "a"
}

func TestLeaveMemberDisappears(t *testing.T) {
	key := newKey(t)
	a := start(t, "a", key, testMeta(ca.RoleManager, "01"))
	b := start(t, "b", key, testMeta(ca.RoleWorker, "02"))
	c := start(t, "c", key, testMeta(ca.RoleWorker, "03"))
	join(t, b, a.Addr())
	join(t, c, a.Addr())
	for _, m := range []*Member{a, b, c} {
		testkit.Eventually(t, "the three members do not see each other", testkit.True(func() bool { return m.NumPeers() == 2 }))
	}

	if err := c.Leave(5 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	for name, m := range map[string]*Member{"a": a, "b": b} {
		testkit.Eventually(t, name+" still lists c after it left", testkit.True(func() bool {
			_, listed := findPeer(m, "c")
			return !listed && m.NumPeers() == 1
		}))
		if _, ok := findPeer(m, name2other(name)); !ok {
			t.Errorf("%s no longer lists %s, which is still up", name, name2other(name))
		}
	}
}

func TestLeaveAlone(t *testing.T) {
	m := start(t, "solo", newKey(t), Meta{})
	done := make(chan error, 1)
	go func() { done <- m.Leave(time.Second) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Leave: %v", err)
		}
	case <-time.After(testkit.Wait):
		t.Fatal("Leave did not return")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	key := newKey(t)
	// A port in use (TCP) cannot be bound.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	tooBig := Meta{Role: ca.RoleWorker, Serial: strings.Repeat("a", 1000)}
	cases := []struct {
		name   string
		mutate func(*Config)
		is     error // if set, errors.Is must hold
	}{
		{"nil key", func(c *Config) { c.Key = nil }, ErrBadKey},
		{"empty key", func(c *Config) { c.Key = []byte{} }, ErrBadKey},
		{"16-byte key", func(c *Config) { c.Key = key[:16] }, ErrBadKey},
		{"31-byte key", func(c *Config) { c.Key = key[:31] }, ErrBadKey},
		{"33-byte key", func(c *Config) { c.Key = append(append([]byte{}, key...), 0) }, ErrBadKey},
		{"64-byte key", func(c *Config) { c.Key = append(append([]byte{}, key...), key...) }, ErrBadKey},
		{"empty node ID", func(c *Config) { c.NodeID = "" }, nil},
		{"bind addr without port", func(c *Config) { c.BindAddr = "nope" }, nil},
		{"bind port too large", func(c *Config) { c.BindAddr = "127.0.0.1:99999" }, nil},
		{"negative bind port", func(c *Config) { c.BindAddr = "127.0.0.1:-1" }, nil},
		{"non-numeric bind port", func(c *Config) { c.BindAddr = "127.0.0.1:http" }, nil},
		{"empty bind addr", func(c *Config) { c.BindAddr = "" }, nil},
		{"bind addr in use", func(c *Config) { c.BindAddr = busy.Addr().String() }, nil},
		{"bad advertise addr", func(c *Config) { c.AdvertiseAddr = "nope" }, nil},
		{"advertise port too large", func(c *Config) { c.AdvertiseAddr = "127.0.0.1:70000" }, nil},
		{"meta too large", func(c *Config) { c.Meta = tooBig }, ErrMetaTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{NodeID: "n", BindAddr: "127.0.0.1:0", Key: key, Timing: Fast}
			tc.mutate(&cfg)
			var (
				m   *Member
				err error
			)
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("New panicked: %v", r)
					}
				}()
				m, err = New(cfg)
			}()
			if m != nil {
				t.Cleanup(func() { m.Shutdown() })
			}
			if err == nil {
				t.Fatalf("New(%+v) succeeded", cfg)
			}
			if m != nil {
				t.Errorf("New returned a member along with error %v", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("New: %v, want errors.Is %v", err, tc.is)
			}
			t.Logf("New: %v", err)
		})
	}
}

func TestNewDefaults(t *testing.T) {
	// No logger, no Accept, no OnChange, LAN timing: still a working member.
	key := newKey(t)
	a := start(t, "a", key, Meta{}, func(c *Config) { c.Timing = LAN })
	b := start(t, "b", key, testMeta(ca.RoleWorker, "01"), func(c *Config) { c.Timing = LAN })
	join(t, b, a.Addr())
	testkit.Eventually(t, "b does not see a and its zero metadata", func() error { return checkPeers(b, map[string]Meta{"a": {}}) })
	testkit.Eventually(t, "a does not see b", func() error { return checkPeers(a, map[string]Meta{"b": testMeta(ca.RoleWorker, "01")}) })
}

func TestJoinNobody(t *testing.T) {
	m := start(t, "solo", newKey(t), Meta{})
	n, err := m.Join(nil)
	if n != 0 || err != nil {
		t.Fatalf("Join(nil) = %d, %v; want 0, nil", n, err)
	}
	// Nobody listens on a freshly closed port.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	n, err = m.Join([]string{dead})
	if err == nil || n != 0 {
		t.Fatalf("Join(%s) = %d, %v; want 0 and an error", dead, n, err)
	}
}

// TestPeersDuringMetaChurn reads Peers while another member keeps
// changing its metadata. Under the race detector it fails if Peers reads
// memberlist's node structures without memberlist's lock (memberlist
// rewrites Addr, Port and Meta of a known node in place on every alive
// message: hashicorp/memberlist#306).
func TestPeersDuringMetaChurn(t *testing.T) {
	key := newKey(t)
	a := start(t, "a", key, testMeta(ca.RoleManager, "00"))
	metas := make([]Meta, 20)
	valid := map[Meta]bool{}
	for i := range metas {
		// Serials of different lengths, so that a torn read shows.
		metas[i] = testMeta(ca.RoleWorker, strings.Repeat(fmt.Sprintf("%02x", i), i+1))
		valid[metas[i]] = true
	}
	b := start(t, "b", key, metas[0])
	join(t, b, a.Addr())
	testkit.Eventually(t, "a does not see b", testkit.True(func() bool { _, ok := findPeer(a, "b"); return ok }))

	stop := make(chan struct{})
	readerDone := make(chan error, 1)
	go func() {
		var seen int
		for {
			select {
			case <-stop:
				if seen == 0 {
					readerDone <- errors.New("the reader never saw b")
					return
				}
				readerDone <- nil
				return
			default:
			}
			for _, p := range a.Peers() {
				if p.NodeID != "b" {
					continue
				}
				seen++
				if p.MetaErr != nil {
					readerDone <- fmt.Errorf("b's metadata unreadable: %v", p.MetaErr)
					return
				}
				if !valid[p.Meta] {
					readerDone <- fmt.Errorf("b's metadata %+v was never set", p.Meta)
					return
				}
				if p.Addr != b.Addr() {
					readerDone <- fmt.Errorf("b's address %q, want %q", p.Addr, b.Addr())
					return
				}
			}
		}
	}()
	for _, m := range metas[1:] {
		if err := b.SetMeta(m); err != nil {
			close(stop)
			t.Fatalf("SetMeta: %v", err)
		}
	}
	last := metas[len(metas)-1]
	testkit.Eventually(t, "a never sees b's last metadata", testkit.True(func() bool {
		p, ok := findPeer(a, "b")
		return ok && p.Meta == last
	}))
	close(stop)
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
}

// TestKeyRotation moves two members to a new gossip key, one after the
// other, and checks that a member left on the old key is no longer heard
// once the old key is dropped.
func TestKeyRotation(t *testing.T) {
	oldKey, newKey := newKey(t), newKey(t)
	meta := testMeta(ca.RoleWorker, "01")
	a := start(t, "a", oldKey, meta)
	b := start(t, "b", oldKey, meta)
	left := start(t, "left", oldKey, meta)
	join(t, b, a.Addr())
	join(t, left, a.Addr())
	seesExactly := func(m *Member, want ...string) func() error {
		return func() error {
			if got := peerIDs(m); !slices.Equal(got, want) {
				return fmt.Errorf("peers %v, want %v", got, want)
			}
			return nil
		}
	}
	testkit.Eventually(t, "a sees b and left", seesExactly(a, "b", "left"))

	if err := a.UseKey(newKey); err != nil {
		t.Fatalf("a.UseKey(new) = %v", err)
	}
	if got := a.KeyID(); got != KeyID(newKey) {
		t.Errorf("a.KeyID() = %s, want %s", got, KeyID(newKey))
	}
	if a.Keys() != 2 {
		t.Errorf("a reads with %d keys after UseKey, want 2 (new and old)", a.Keys())
	}
	if err := b.UseKey(newKey); err != nil {
		t.Fatalf("b.UseKey(new) = %v", err)
	}
	// Both still read the old key: nobody is lost while they move.
	testkit.Eventually(t, "a still sees b and left", seesExactly(a, "b", "left"))

	if err := a.DropOldKeys(); err != nil {
		t.Fatalf("a.DropOldKeys() = %v", err)
	}
	if err := b.DropOldKeys(); err != nil {
		t.Fatalf("b.DropOldKeys() = %v", err)
	}
	if a.Keys() != 1 {
		t.Errorf("a reads with %d keys after DropOldKeys, want 1", a.Keys())
	}
	// The member left on the old key is no longer heard: a and b declare
	// it dead, and still see each other.
	testkit.Eventually(t, "a sees only b", seesExactly(a, "b"))
	testkit.Eventually(t, "b sees only a", seesExactly(b, "a"))
	if err := a.UseKey(make([]byte, 16)); !errors.Is(err, ErrBadKey) {
		t.Errorf("UseKey(16 bytes) = %v, want ErrBadKey", err)
	}
}
