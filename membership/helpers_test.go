package membership

import (
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/ca"
)

func newKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// start starts a member on loopback with Fast timing and shuts it down at
// the end of the test. opts may adjust the config before New.
func start(t testing.TB, id string, key []byte, meta Meta, opts ...func(*Config)) *Member {
	t.Helper()
	cfg := Config{
		NodeID:   id,
		BindAddr: "127.0.0.1:0",
		Key:      key,
		Meta:     meta,
		Timing:   Fast,
	}
	for _, o := range opts {
		o(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	t.Cleanup(func() {
		if err := m.Shutdown(); err != nil {
			t.Errorf("Shutdown(%s): %v", id, err)
		}
	})
	return m
}

// join makes m join through the members at addrs and requires success.
func join(t testing.TB, m *Member, addrs ...string) {
	t.Helper()
	n, err := m.Join(addrs)
	if err != nil {
		t.Fatalf("Join(%v): %v", addrs, err)
	}
	if n != len(addrs) {
		t.Fatalf("Join(%v) contacted %d nodes, want %d", addrs, n, len(addrs))
	}
}

func peerIDs(m *Member) []string {
	var ids []string
	for _, p := range m.Peers() {
		ids = append(ids, p.NodeID)
	}
	sort.Strings(ids)
	return ids
}

func findPeer(m *Member, id string) (Peer, bool) {
	for _, p := range m.Peers() {
		if p.NodeID == id {
			return p, true
		}
	}
	return Peer{}, false
}

// checkPeers says how m's peers differ from want (node ID to Meta).
func checkPeers(m *Member, want map[string]Meta) error {
	peers := m.Peers()
	got := make(map[string]Peer, len(peers))
	for _, p := range peers {
		if _, dup := got[p.NodeID]; dup {
			return fmt.Errorf("peer %s listed twice", p.NodeID)
		}
		got[p.NodeID] = p
	}
	var problems []string
	for id, meta := range want {
		p, ok := got[id]
		switch {
		case !ok:
			problems = append(problems, id+" missing")
		case p.MetaErr != nil:
			problems = append(problems, fmt.Sprintf("%s: MetaErr %v", id, p.MetaErr))
		case p.Meta != meta:
			problems = append(problems, fmt.Sprintf("%s: meta %+v, want %+v", id, p.Meta, meta))
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			problems = append(problems, id+" listed but not expected")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// testMeta returns a distinct, fully populated Meta.
func testMeta(role ca.Role, serial string) Meta {
	var keyHash [32]byte
	copy(keyHash[:], "key hash of "+serial)
	return Meta{
		Role:   role,
		Serial: serial,
		Issuer: StatusDigest(ca.TLSStatus{IssuerSubject: []byte("CN=issuer of " + serial), IssuerKeyHash: keyHash}),
		Bundle: BundleDigest([]byte("-----BEGIN CERTIFICATE-----\nbundle " + serial + "\n")),
	}
}
