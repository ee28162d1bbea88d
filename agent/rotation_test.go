package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/wait"
	"github.com/quorumca/quorumca/membership"
)

// rotation is one cluster's CA in the three stages of a root rotation.
type rotation struct {
	// old signs with the old root; nodes trust the old root.
	old *testkit.CA
	// next signs with the new key, its leaves carrying the new root
	// cross-signed by the old key; nodes still trust the old root.
	next *testkit.CA
	// fresh signs with the new root, trusted alone: after the rotation.
	fresh                   *testkit.CA
	oldRoot, newRoot, cross *x509.Certificate
}

func newRotation(t testing.TB) *rotation {
	t.Helper()
	clusterID, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatalf("ca.NewID() = %v", err)
	}
	now := time.Now()
	oldM, err := ca.GenerateRoot(rand.Reader, now, clusterID)
	if err != nil {
		t.Fatalf("ca.GenerateRoot(old) = %v", err)
	}
	newM, err := ca.GenerateRoot(rand.Reader, now, clusterID)
	if err != nil {
		t.Fatalf("ca.GenerateRoot(new) = %v", err)
	}
	rotM, err := ca.Rotation(rand.Reader, now, oldM, newM)
	if err != nil {
		t.Fatalf("ca.Rotation() = %v", err)
	}
	signing := func(m ca.Material) *testkit.CA { return testkit.CAFrom(t, clusterID, m) }
	only := func(what string, p []byte) *x509.Certificate {
		certs, err := ca.ParseCertificates(p)
		if err != nil || len(certs) != 1 {
			t.Fatalf("%s: %d certificates, %v; want exactly one", what, len(certs), err)
		}
		return certs[0]
	}
	return &rotation{
		old:     signing(oldM),
		next:    signing(rotM),
		fresh:   signing(newM),
		oldRoot: only("old root", oldM.Bundle),
		newRoot: only("new root", newM.Bundle),
		cross:   only("rotation chain", rotM.Chain),
	}
}

// bothRoots is a bundle of the old and the new root.
func (r *rotation) bothRoots() []byte { return slices.Concat(r.old.Bundle(), r.fresh.Bundle()) }

// managerCreds are a manager's credentials in the middle of the rotation:
// a certificate of the new key that verifies under either root, and trust
// in both, so that any node of the cluster can reach it.
func (r *rotation) managerCreds(t *testing.T) *Credentials {
	t.Helper()
	p := r.next.Issue(t, ca.RoleManager)
	creds, err := NewCredentials(t.TempDir(), p.KeyPEM, p.CertPEM, r.bothRoots())
	if err != nil {
		t.Fatalf("NewCredentials(manager) = %v", err)
	}
	return creds
}

// TestRotationLeafChain pins what the rest of this file builds on: a leaf
// of the rotation's signer carries the cross-signed new root, which has the
// new root's subject and key.
func TestRotationLeafChain(t *testing.T) {
	r := newRotation(t)
	certs := chain(t, r.next.Issue(t, ca.RoleWorker).CertPEM)
	if len(certs) != 2 || !certs[1].Equal(r.cross) {
		t.Fatalf("rotation leaf chain has %d certificates, want the leaf and the cross-signed root", len(certs))
	}
	if !bytes.Equal(r.cross.RawSubject, r.newRoot.RawSubject) || !bytes.Equal(r.cross.RawSubjectPublicKeyInfo, r.newRoot.RawSubjectPublicKeyInfo) {
		t.Errorf("cross-signed certificate does not carry the new root's subject and key")
	}
	if r.cross.CheckSignatureFrom(r.oldRoot) != nil {
		t.Errorf("cross-signed certificate is not signed by the old root")
	}
}

func TestUpdateBundleToNewRoot(t *testing.T) {
	r := newRotation(t)
	p := r.next.Issue(t, ca.RoleWorker)
	creds, dataDir := newCreds(t, r.next, p)
	dir := CertDir(dataDir)
	var first, second int
	creds.OnUpdate(func() { first++ })
	creds.OnUpdate(func() { second++ })

	if err := creds.UpdateBundle(r.fresh.Bundle(), time.Now()); err != nil {
		t.Fatalf("UpdateBundle(new root) for a rotation leaf = %v, want nil", err)
	}
	if first != 1 || second != 1 {
		t.Errorf("OnUpdate hooks called %d and %d times, want once each", first, second)
	}
	files := readDir(t, dir)
	if got, want := names(files), []string{CertFile, KeyFile, BundleFile}; !slices.Equal(got, want) {
		t.Errorf("files after UpdateBundle = %v, want %v", got, want)
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, BundleFile))
	if err != nil {
		t.Fatalf("read %s: %v", BundleFile, err)
	}
	if !bytes.Equal(onDisk, r.fresh.Bundle()) {
		t.Errorf("%s after UpdateBundle is not the new root", BundleFile)
	}
	if !bytes.Equal(files[KeyFile], p.KeyPEM) || !bytes.Equal(files[CertFile], p.CertPEM) {
		t.Errorf("UpdateBundle changed %s or %s, want them byte-identical", KeyFile, CertFile)
	}
	if got := mode(t, filepath.Join(dir, BundleFile)); got != 0o644 {
		t.Errorf("mode of %s = %v, want 0644", BundleFile, got)
	}

	if !bytes.Equal(creds.Bundle(), r.fresh.Bundle()) {
		t.Errorf("Bundle() after UpdateBundle is not the new root")
	}
	if got := creds.Leaf().SerialNumber; got.Cmp(p.Serial) != 0 {
		t.Errorf("Leaf() after UpdateBundle = %x, want %x kept", got, p.Serial)
	}
	checkKeyMatches(t, creds)
	// The pool follows: a leaf of the old root is no longer trusted, one of
	// the new root is.
	verifies := func(p testkit.Leaf) bool {
		_, _, err := ca.Verify(chain(t, p.CertPEM), creds.Roots(), time.Now())
		return err == nil
	}
	if verifies(r.old.Issue(t, ca.RoleWorker)) {
		t.Errorf("Roots() after UpdateBundle still trusts the old root")
	}
	if !verifies(r.fresh.Issue(t, ca.RoleWorker)) {
		t.Errorf("Roots() after UpdateBundle does not trust the new root")
	}

	loaded, err := LoadCredentials(dataDir)
	if err != nil {
		t.Fatalf("LoadCredentials() after UpdateBundle = %v", err)
	}
	if !bytes.Equal(loaded.Bundle(), r.fresh.Bundle()) || loaded.Leaf().SerialNumber.Cmp(p.Serial) != 0 {
		t.Errorf("LoadCredentials() after UpdateBundle: serial %x and a bundle of %d bytes, want %x and the new root", loaded.Leaf().SerialNumber, len(loaded.Bundle()), p.Serial)
	}
}

// TestUpdateBundleRefuses: a bundle the node's own chain does not verify
// under, or that does not parse, is refused; nothing changes on disk or in
// memory and no hook runs.
func TestUpdateBundleRefuses(t *testing.T) {
	r := newRotation(t)
	other := testkit.NewCA(t)
	tests := []struct {
		name     string
		signer   *testkit.CA // issues the node's certificate, trusting the old root
		bundle   []byte
		at       time.Time
		mismatch bool // want ErrBundleMismatch
	}{
		{"old-root leaf, new root", r.old, r.fresh.Bundle(), time.Now(), true},
		{"another cluster's root", r.next, other.Bundle(), time.Now(), true},
		{"rotation leaf checked after it expired", r.next, r.fresh.Bundle(), time.Now().Add(48 * time.Hour), true},
		{"garbage", r.next, []byte("not a bundle"), time.Now(), false},
		{"empty", r.next, nil, time.Now(), false},
		{"a node certificate as bundle", r.next, r.fresh.Issue(t, ca.RoleWorker).CertPEM, time.Now(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.signer.Issue(t, ca.RoleWorker)
			creds, dataDir := newCreds(t, tt.signer, p)
			dir := CertDir(dataDir)
			hooks := 0
			creds.OnUpdate(func() { hooks++ })
			before := readDir(t, dir)
			issuer := creds.Issuer()

			err := creds.UpdateBundle(tt.bundle, tt.at)
			if err == nil {
				t.Fatalf("UpdateBundle(%s) = nil, want an error", tt.name)
			}
			if errors.Is(err, ErrBundleMismatch) != tt.mismatch {
				t.Errorf("UpdateBundle(%s) = %v; errors.Is(ErrBundleMismatch) = %v, want %v", tt.name, err, !tt.mismatch, tt.mismatch)
			}
			if after := readDir(t, dir); !sameFiles(before, after) {
				t.Errorf("UpdateBundle(%s) refused but changed the files: %v", tt.name, names(after))
			}
			if !bytes.Equal(creds.Bundle(), tt.signer.Bundle()) {
				t.Errorf("UpdateBundle(%s) refused but Bundle() changed", tt.name)
			}
			if got := creds.Leaf().SerialNumber; got.Cmp(p.Serial) != 0 {
				t.Errorf("UpdateBundle(%s) refused but Leaf() is now %x, want %x", tt.name, got, p.Serial)
			}
			if !creds.Issuer().Equal(issuer) {
				t.Errorf("UpdateBundle(%s) refused but Issuer() changed", tt.name)
			}
			if hooks != 0 {
				t.Errorf("UpdateBundle(%s) refused but ran the OnUpdate hook %d times", tt.name, hooks)
			}
		})
	}
}

// TestIssuer: Issuer() names the key that signed the node's certificate,
// through ca.IssuerOf: the chain's intermediate when there is one, else the
// root of the bundle that signed the leaf.
func TestIssuer(t *testing.T) {
	r := newRotation(t)
	oldStatus, newStatus := ca.StatusOf(r.oldRoot), ca.StatusOf(r.newRoot)
	if oldStatus.Equal(newStatus) {
		t.Fatalf("the old and new roots have the same status")
	}
	if !ca.StatusOf(r.cross).Equal(newStatus) {
		t.Fatalf("StatusOf(cross-signed root) = %v, want StatusOf(new root) = %v (same subject and key)", ca.StatusOf(r.cross), newStatus)
	}

	t.Run("leaf of a root", func(t *testing.T) {
		creds, _ := newCreds(t, r.old, r.old.Issue(t, ca.RoleWorker))
		if got := creds.Issuer(); !got.Equal(oldStatus) {
			t.Errorf("Issuer() = %v, want the old root %v", got, oldStatus)
		}
	})
	t.Run("rotation leaf", func(t *testing.T) {
		creds, _ := newCreds(t, r.next, r.next.Issue(t, ca.RoleWorker))
		if got := creds.Issuer(); !got.Equal(ca.StatusOf(r.cross)) || !got.Equal(newStatus) {
			t.Errorf("Issuer() = %v, want the cross-signed new root %v", got, newStatus)
		}
		if err := creds.UpdateBundle(r.fresh.Bundle(), time.Now()); err != nil {
			t.Fatalf("UpdateBundle(new root) = %v", err)
		}
		if got := creds.Issuer(); !got.Equal(newStatus) {
			t.Errorf("Issuer() after UpdateBundle = %v, want still %v", got, newStatus)
		}
	})
	// Both roots of one cluster have the same subject: the issuer is found
	// by signature, not by name.
	t.Run("leaf of the second root of a two-root bundle", func(t *testing.T) {
		p := r.fresh.Issue(t, ca.RoleWorker)
		creds, err := NewCredentials(t.TempDir(), p.KeyPEM, p.CertPEM, r.bothRoots())
		if err != nil {
			t.Fatalf("NewCredentials() = %v", err)
		}
		if got := creds.Issuer(); !got.Equal(newStatus) {
			t.Errorf("Issuer() = %v, want the new root %v, not the old one of the same name", got, newStatus)
		}
	})
	t.Run("renewed from a rotation leaf to a leaf of the new root", func(t *testing.T) {
		p := r.next.Issue(t, ca.RoleManager)
		creds, _ := newCreds(t, r.next, p)
		renewed := r.fresh.IssueFor(t, p.ID)
		if err := creds.Update(renewed.KeyPEM, renewed.CertPEM, r.fresh.Bundle()); err != nil {
			t.Fatalf("Update() = %v", err)
		}
		if got := creds.Issuer(); !got.Equal(newStatus) {
			t.Errorf("Issuer() = %v, want %v unchanged by the end of the rotation", got, newStatus)
		}
	})
}

func TestMetaOf(t *testing.T) {
	r := newRotation(t)
	p := r.next.Issue(t, ca.RoleManager)
	creds, _ := newCreds(t, r.next, p)
	check := func(step string, serial string, bundle []byte) {
		t.Helper()
		want := membership.Meta{
			Role:   ca.RoleManager,
			Serial: serial,
			Issuer: membership.StatusDigest(ca.StatusOf(r.newRoot)),
			Bundle: membership.BundleDigest(bundle),
		}
		if got := MetaOf(creds); got != want {
			t.Errorf("%s: MetaOf() = %+v, want %+v", step, got, want)
		}
	}
	check("rotation leaf", p.Serial.Text(16), r.old.Bundle())
	if got := MetaOf(creds); got.Issuer != membership.StatusDigest(creds.Issuer()) || got.Bundle != membership.BundleDigest(creds.Bundle()) {
		t.Errorf("MetaOf() = %+v, want the digests of Issuer() and Bundle()", got)
	}
	if err := creds.UpdateBundle(r.fresh.Bundle(), time.Now()); err != nil {
		t.Fatalf("UpdateBundle() = %v", err)
	}
	check("after UpdateBundle", p.Serial.Text(16), r.fresh.Bundle())
	renewed := r.fresh.IssueFor(t, p.ID)
	if err := creds.Update(renewed.KeyPEM, renewed.CertPEM, nil); err != nil {
		t.Fatalf("Update() = %v", err)
	}
	check("renewed under the new root", renewed.Serial.Text(16), r.fresh.Bundle())
	if s := MetaOf(creds).Serial; strings.HasPrefix(s, "0x") || strings.ToLower(s) != s {
		t.Errorf("MetaOf().Serial = %q, want lower-case hex without prefix", s)
	}
}

func TestBoundGossip(t *testing.T) {
	tests := []struct {
		name, bind, advertised, want string
	}{
		{"port 0 on loopback", "127.0.0.1:0", "127.0.0.1:45678", "127.0.0.1:45678"},
		{"port 0 on all addresses keeps the host", "0.0.0.0:0", "10.0.0.5:45678", "0.0.0.0:45678"},
		{"port 0, no host", ":0", "10.0.0.5:45678", ":45678"},
		{"port 0 on IPv6", "[::1]:0", "[::1]:45678", "[::1]:45678"},
		{"fixed port", "127.0.0.1:7946", "127.0.0.1:7946", "127.0.0.1:7946"},
		{"fixed port, other advertised port", "0.0.0.0:7946", "203.0.113.1:9000", "0.0.0.0:7946"},
		{"bind not host:port", "nonsense", "127.0.0.1:45678", "nonsense"},
		{"advertised not host:port", "127.0.0.1:0", "nonsense", "127.0.0.1:0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := boundGossip(tt.bind, tt.advertised); got != tt.want {
				t.Errorf("boundGossip(%q, %q) = %q, want %q", tt.bind, tt.advertised, got, tt.want)
			}
		})
	}
}

func TestGossipBackoff(t *testing.T) {
	tests := []struct {
		attempt int
		want    time.Duration
	}{
		{0, 250 * time.Millisecond},
		{1, 500 * time.Millisecond},
		{2, time.Second},
		{6, 16 * time.Second},
		{7, 30 * time.Second},
		{8, 30 * time.Second},
		{1000, 30 * time.Second},
	}
	for _, tt := range tests {
		if got := gossipBackoff(tt.attempt); got != tt.want {
			t.Errorf("gossipBackoff(%d) = %v, want %v", tt.attempt, got, tt.want)
		}
	}
}

func TestSleepCtx(t *testing.T) {
	if !wait.Sleep(t.Context(), time.Millisecond) {
		t.Errorf("wait.Sleep(live context, 1ms) = false, want true")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	if wait.Sleep(ctx, time.Hour) {
		t.Errorf("wait.Sleep(cancelled context, 1h) = true, want false")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("wait.Sleep(cancelled context, 1h) took %v, want an immediate return", d)
	}
}

// gossipKey returns a gossip key of b repeated: tests tell keys apart,
// and need no secret ones.
func gossipKey(b byte) []byte { return bytes.Repeat([]byte{b}, membership.KeySize) }

// startObserver starts a plain member on loopback with key: another node
// of the gossip, to see what a Gossip advertises.
func startObserver(t *testing.T, key []byte) *membership.Member {
	t.Helper()
	m, err := membership.New(membership.Config{NodeID: "observer", BindAddr: "127.0.0.1:0", Key: key, Timing: membership.Fast})
	if err != nil {
		t.Fatalf("membership.New(observer) = %v", err)
	}
	t.Cleanup(func() { m.Shutdown() })
	return m
}

// peerMeta returns the metadata m sees for nodeID.
func peerMeta(m *membership.Member, nodeID string) (membership.Meta, bool) {
	for _, p := range m.Peers() {
		if p.NodeID == nodeID && p.MetaErr == nil {
			return p.Meta, true
		}
	}
	return membership.Meta{}, false
}

// runningGossip is a Gossip that Run runs, until stop.
type runningGossip struct {
	*Gossip
	cancel context.CancelFunc
	done   chan struct{}
}

// runGossip starts a Gossip of cfg; it is stopped when the test ends, if
// not before.
func runGossip(t *testing.T, cfg GossipConfig) *runningGossip {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	g := &runningGossip{Gossip: NewGossip(cfg), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		g.Run(ctx)
	}()
	t.Cleanup(func() { stopGossip(t, g) })
	return g
}

// stopGossip ends g's Run, failing the test if that takes too long.
func stopGossip(t *testing.T, g *runningGossip) {
	t.Helper()
	g.cancel()
	select {
	case <-g.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("Gossip.Run() did not return within 10s of its context ending")
	}
}

// TestGossipRunner: the gossip key is fetched until it comes, the member
// starts on the port it got and says so, follows credential updates in its
// metadata, and leaves when Run's context ends.
func TestGossipRunner(t *testing.T) {
	r := newRotation(t)
	p := r.next.Issue(t, ca.RoleWorker)
	creds, _ := newCreds(t, r.next, p)
	nodeID := p.ID.NodeID
	key := gossipKey(1)

	var fetches atomic.Int32
	fetch := func(context.Context) ([]byte, []string, error) {
		if fetches.Add(1) <= 2 {
			return nil, nil, errors.New("test: no manager answered")
		}
		return key, nil, nil
	}
	addrs := make(chan string, 4)
	g := runGossip(t, GossipConfig{
		BindAddr:     "127.0.0.1:0",
		Credentials:  creds,
		Fetch:        fetch,
		Timing:       membership.Fast,
		OnAddr:       func(bind string) { addrs <- bind },
		RejoinPeriod: time.Hour,
	})

	testkit.Eventually(t, "the gossip member to start", testkit.True(func() bool { return g.Member() != nil }))
	if n := fetches.Load(); n != 3 {
		t.Errorf("Fetch called %d times, want 3 (two failures, then the key)", n)
	}
	m := g.Member()
	var bind string
	select {
	case bind = <-addrs:
	case <-time.After(testkit.Wait):
		t.Fatalf("OnAddr not called within %v of the member starting", testkit.Wait)
	}
	host, port, err := net.SplitHostPort(bind)
	if err != nil || host != "127.0.0.1" || port == "0" || port == "" {
		t.Errorf("OnAddr(%q), want 127.0.0.1:<the port gossip got>", bind)
	}
	if bind != m.Addr() {
		t.Errorf("OnAddr(%q), want the member's address %q", bind, m.Addr())
	}

	observer := startObserver(t, key)
	if _, err := observer.Join([]string{m.Addr()}); err != nil {
		t.Fatalf("observer.Join(%s) = %v", m.Addr(), err)
	}
	seen := func(want membership.Meta) func() bool {
		return func() bool { got, ok := peerMeta(observer, nodeID); return ok && got == want }
	}
	testkit.Eventually(t, "the observer to see the node's metadata", testkit.True(seen(MetaOf(creds))))

	renewed := r.next.IssueFor(t, p.ID)
	if err := creds.Update(renewed.KeyPEM, renewed.CertPEM, nil); err != nil {
		t.Fatalf("Update() = %v", err)
	}
	if got := MetaOf(creds).Serial; got != renewed.Serial.Text(16) {
		t.Fatalf("MetaOf() after Update: serial %s, want %s", got, renewed.Serial.Text(16))
	}
	testkit.Eventually(t, "the observer to see the renewed serial "+renewed.Serial.Text(16), testkit.True(seen(MetaOf(creds))))

	if err := creds.UpdateBundle(r.fresh.Bundle(), time.Now()); err != nil {
		t.Fatalf("UpdateBundle() = %v", err)
	}
	testkit.Eventually(t, "the observer to see the new bundle", testkit.True(seen(MetaOf(creds))))

	stopGossip(t, g)
	if g.Member() != nil {
		t.Errorf("Member() after Run returned = non-nil, want nil")
	}
	testkit.Eventually(t, "the observer to see the node leave", testkit.True(func() bool { _, ok := peerMeta(observer, nodeID); return !ok }))
	if len(addrs) != 0 {
		t.Errorf("OnAddr called %d more times, want once", len(addrs))
	}
	// An update after Stop reaches no member, and breaks nothing.
	again := r.next.IssueFor(t, p.ID)
	if err := creds.Update(again.KeyPEM, again.CertPEM, nil); err != nil {
		t.Errorf("Update() after Gossip.Stop = %v", err)
	}
}

// TestGossipStopWhileFetching: Run returns when its context ends while
// Fetch waits on it, and no member is started.
func TestGossipStopWhileFetching(t *testing.T) {
	c := testkit.NewCA(t)
	creds, _ := newCreds(t, c, c.Issue(t, ca.RoleWorker))
	fetching := make(chan struct{})
	var once sync.Once
	g := runGossip(t, GossipConfig{
		BindAddr:    "127.0.0.1:0",
		Credentials: creds,
		Fetch: func(ctx context.Context) ([]byte, []string, error) {
			once.Do(func() { close(fetching) })
			<-ctx.Done()
			return nil, nil, ctx.Err()
		},
		Timing: membership.Fast,
		OnAddr: func(string) { t.Errorf("OnAddr called, want no member started") },
	})
	select {
	case <-fetching:
	case <-time.After(testkit.Wait):
		t.Fatalf("Fetch not called within %v", testkit.Wait)
	}
	stopGossip(t, g)
	if g.Member() != nil {
		t.Errorf("Member() after Stop = non-nil, want nil")
	}
}

// TestGossipRejoinsWhenAlone: a node that sees no other member asks for
// peers again, and joins the ones it is given.
func TestGossipRejoinsWhenAlone(t *testing.T) {
	c := testkit.NewCA(t)
	p := c.Issue(t, ca.RoleWorker)
	creds, _ := newCreds(t, c, p)
	key := gossipKey(2)
	observer := startObserver(t, key)
	var fetches atomic.Int32
	g := runGossip(t, GossipConfig{
		BindAddr:    "127.0.0.1:0",
		Credentials: creds,
		Fetch: func(context.Context) ([]byte, []string, error) {
			if fetches.Add(1) == 1 {
				return key, nil, nil
			}
			return key, []string{observer.Addr()}, nil
		},
		Timing:       membership.Fast,
		RejoinPeriod: 20 * time.Millisecond,
	})
	testkit.Eventually(t, "the observer to see the node", testkit.True(func() bool { _, ok := peerMeta(observer, p.ID.NodeID); return ok }))
	if n := fetches.Load(); n < 2 {
		t.Errorf("Fetch called %d times, want a second call for peers", n)
	}
	testkit.Eventually(t, "the node to see the observer", testkit.True(func() bool { m := g.Member(); return m != nil && m.NumPeers() == 1 }))
}

// fakeManager is a manager's CA service cut down to what a Renewer calls:
// canned heartbeat, root bundle and gossip answers, and renewals signed by
// renewWith for the identity of the caller's certificate. It serves on
// 127.0.0.1 with the given credentials.
type fakeManager struct {
	api.UnimplementedCAServer
	addr      string
	renewWith *testkit.CA

	mu         sync.Mutex // guards the fields below
	heartbeat  *api.HeartbeatResponse
	hbErr      error
	rootBundle []byte
	gossip     *api.GossipResponse
	gossipErr  error
	calls      map[string]int
	// reloading is what each heartbeat said of the node's consumers.
	reloading []bool
	// refuseRenewal, when set, answers a renewal before it is signed; a
	// nil answer lets it through.
	refuseRenewal func() error
}

func startFakeManager(t *testing.T, server *Credentials, renewWith *testkit.CA) *fakeManager {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	f := &fakeManager{addr: ln.Addr().String(), renewWith: renewWith, heartbeat: &api.HeartbeatResponse{}, calls: map[string]int{}}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(server.ServerTLS(tls.VerifyClientCertIfGiven))))
	api.RegisterCAServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return f
}

// set changes the fake's answers under its lock.
func (f *fakeManager) set(change func(f *fakeManager)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

// count returns how many times method was called (past the TLS handshake).
func (f *fakeManager) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeManager) called(method string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
}

// caller returns the identity of the client certificate, which the
// handshake verified.
func caller(ctx context.Context) (ca.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ca.Identity{}, status.Error(codes.Unauthenticated, "no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 {
		return ca.Identity{}, status.Error(codes.Unauthenticated, "no client certificate")
	}
	return ca.IdentityOf(info.State.VerifiedChains[0][0])
}

func (f *fakeManager) GetRootBundle(context.Context, *api.GetRootBundleRequest) (*api.GetRootBundleResponse, error) {
	f.called("GetRootBundle")
	f.mu.Lock()
	defer f.mu.Unlock()
	return &api.GetRootBundleResponse{Bundle: f.rootBundle}, nil
}

func (f *fakeManager) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	if _, err := caller(ctx); err != nil {
		return nil, err
	}
	f.called("Heartbeat")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reloading = append(f.reloading, req.GetReloading())
	return f.heartbeat, f.hbErr
}

func (f *fakeManager) RenewNodeCertificate(ctx context.Context, req *api.RenewNodeCertificateRequest) (*api.RenewNodeCertificateResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	f.called("RenewNodeCertificate")
	f.mu.Lock()
	refuse := f.refuseRenewal
	f.mu.Unlock()
	if refuse != nil {
		if err := refuse(); err != nil {
			return nil, err
		}
	}
	if f.renewWith == nil {
		return nil, status.Error(codes.FailedPrecondition, "test: this fake does not renew")
	}
	pub, err := ca.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	issued, err := f.renewWith.Signer().SignKey(rand.Reader, time.Now(), pub, id, 24*time.Hour)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &api.RenewNodeCertificateResponse{Role: string(id.Role), Certificate: issued.PEM, Bundle: f.renewWith.Bundle()}, nil
}

func (f *fakeManager) Gossip(ctx context.Context, _ *api.GossipRequest) (*api.GossipResponse, error) {
	if _, err := caller(ctx); err != nil {
		return nil, err
	}
	f.called("Gossip")
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gossip, f.gossipErr
}

// startRenewer runs a Renewer with fast heartbeats and backoff against
// managers until the test ends, and returns it.
func startRenewer(t *testing.T, creds *Credentials, managers ...string) *Renewer {
	t.Helper()
	return startRenewerWith(t, RenewerConfig{Credentials: creds, Managers: managers})
}

// startRenewerWith is startRenewer of cfg (its period and backoff fast).
func startRenewerWith(t *testing.T, cfg RenewerConfig) *Renewer {
	t.Helper()
	cfg.HeartbeatPeriod, cfg.MaxBackoff = 10*time.Millisecond, 40*time.Millisecond
	r := NewRenewer(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v, want nil after cancel", err)
			}
		case <-time.After(testkit.Wait):
			t.Errorf("Run() did not return within %v of cancel", testkit.Wait)
		}
	})
	return r
}

// moreCalls waits until f has answered n more calls of method.
func moreCalls(t *testing.T, f *fakeManager, method string, n int) {
	t.Helper()
	base := f.count(method)
	testkit.Eventually(t, "more "+method+" calls", testkit.True(func() bool { return f.count(method) >= base+n }))
}

// TestRenewerTakesCoveringBundle: a heartbeat answer with a new bundle that
// the node's chain verifies under replaces the bundle, without a renewal.
func TestRenewerTakesCoveringBundle(t *testing.T) {
	r := newRotation(t)
	f := startFakeManager(t, r.managerCreds(t), r.fresh)
	f.set(func(f *fakeManager) { f.heartbeat = &api.HeartbeatResponse{Bundle: r.fresh.Bundle()} })
	p := r.next.Issue(t, ca.RoleWorker)
	creds, dataDir := newCreds(t, r.next, p)
	rn := startRenewer(t, creds, f.addr)

	testkit.Eventually(t, "the new bundle", testkit.True(func() bool { return bytes.Equal(creds.Bundle(), r.fresh.Bundle()) }))
	moreCalls(t, f, "Heartbeat", 3)
	if n, m := rn.Renewals(), f.count("RenewNodeCertificate"); n != 0 || m != 0 {
		t.Errorf("Renewals() = %d, RenewNodeCertificate called %d times, want no renewal", n, m)
	}
	files := readDir(t, CertDir(dataDir))
	if !bytes.Equal(files[BundleFile], r.fresh.Bundle()) {
		t.Errorf("%s on disk is not the new bundle", BundleFile)
	}
	if !bytes.Equal(files[CertFile], p.CertPEM) || !bytes.Equal(files[KeyFile], p.KeyPEM) {
		t.Errorf("the key or certificate on disk changed, want them kept")
	}
	if err := rn.Problem(); err != nil {
		t.Errorf("Problem() = %v, want nil", err)
	}
}

// TestRenewerRenewsForNonCoveringBundle: a heartbeat answer with a bundle
// that does not cover the node's chain makes it renew (after the jitter
// the answer asks for), once, into a certificate of the new root.
func TestRenewerRenewsForNonCoveringBundle(t *testing.T) {
	r := newRotation(t)
	f := startFakeManager(t, r.managerCreds(t), r.fresh)
	f.set(func(f *fakeManager) {
		f.heartbeat = &api.HeartbeatResponse{Bundle: r.fresh.Bundle(), RenewJitterMs: 20}
	})
	p := r.old.Issue(t, ca.RoleWorker)
	creds, dataDir := newCreds(t, r.old, p)
	rn := startRenewer(t, creds, f.addr)

	testkit.Eventually(t, "a renewal", testkit.True(func() bool { return rn.Renewals() > 0 }))
	moreCalls(t, f, "Heartbeat", 3)
	if n, m := rn.Renewals(), f.count("RenewNodeCertificate"); n != 1 || m != 1 {
		t.Errorf("Renewals() = %d, RenewNodeCertificate called %d times, want 1 and 1", n, m)
	}
	if !bytes.Equal(creds.Bundle(), r.fresh.Bundle()) {
		t.Errorf("Bundle() after the renewal is not the new root")
	}
	if got := creds.Issuer(); !got.Equal(ca.StatusOf(r.newRoot)) {
		t.Errorf("Issuer() after the renewal = %v, want the new root", got)
	}
	if got := creds.Identity(); got != p.ID {
		t.Errorf("Identity() after the renewal = %v, want %v", got, p.ID)
	}
	if creds.Leaf().SerialNumber.Cmp(p.Serial) == 0 {
		t.Errorf("Leaf() after the renewal is the old certificate")
	}
	files := readDir(t, CertDir(dataDir))
	if !bytes.Equal(files[BundleFile], r.fresh.Bundle()) || bytes.Equal(files[CertFile], p.CertPEM) || bytes.Equal(files[KeyFile], p.KeyPEM) {
		t.Errorf("files on disk after the renewal: want a new key, a new certificate and the new bundle")
	}
	checkKeyMatches(t, creds)
}

func TestRenewerJitter(t *testing.T) {
	tests := []struct {
		name string
		rand interface{ Read([]byte) (int, error) }
		max  time.Duration
		want time.Duration
	}{
		{"no jitter asked", constReader(0xff), 0, 0},
		{"zero bytes", constReader(0), time.Hour, 0},
		{"all ones", constReader(0xff), time.Hour, time.Duration(^uint64(0) % uint64(time.Hour))},
		{"failing source", bytes.NewReader(nil), time.Hour, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRenewer(RenewerConfig{Rand: tt.rand})
			if got := r.jitter(tt.max); got != tt.want {
				t.Errorf("jitter(%v) = %v, want %v", tt.max, got, tt.want)
			}
		})
	}
	r := NewRenewer(RenewerConfig{})
	for range 200 {
		if d := r.jitter(time.Second); d < 0 || d >= time.Second {
			t.Fatalf("jitter(1s) = %v, want within [0, 1s)", d)
		}
	}
}

// TestRenewerStopsDuringJitter: a Renewer waiting out the renewal jitter
// keeps heartbeating, renews nothing before the jitter ends (the next
// heartbeats' "renew" draws no new jitter), and stops at once when its
// context ends.
func TestRenewerStopsDuringJitter(t *testing.T) {
	r := newRotation(t)
	f := startFakeManager(t, r.managerCreds(t), r.fresh)
	f.set(func(f *fakeManager) {
		f.heartbeat = &api.HeartbeatResponse{Renew: true, RenewJitterMs: time.Hour.Milliseconds()}
	})
	creds, _ := newCreds(t, r.next, r.next.Issue(t, ca.RoleWorker))
	// All-ones random bytes put the jitter at about 35 minutes.
	rn := NewRenewer(RenewerConfig{Credentials: creds, Managers: []string{f.addr}, HeartbeatPeriod: 10 * time.Millisecond, Rand: constReader(0xff)})
	if d := rn.jitter(time.Hour); d < time.Minute {
		t.Fatalf("jitter(1h) = %v with this source, want minutes", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rn.Run(ctx) }()
	testkit.Eventually(t, "heartbeats during the jitter", testkit.True(func() bool { return f.count("Heartbeat") >= 3 }))
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	case <-time.After(testkit.Wait):
		t.Fatalf("Run() did not return within %v of cancel while waiting out the jitter", testkit.Wait)
	}
	if n := f.count("RenewNodeCertificate"); n != 0 || rn.Renewals() != 0 {
		t.Errorf("renewed %d times during the jitter, want none", n)
	}
}

// TestRenewerProblem: when heartbeats fail, the Renewer asks for the
// cluster's bundle (unauthenticated) and reports ErrLeftBehind if the
// node's certificate does not chain to it, until a heartbeat succeeds.
func TestRenewerProblem(t *testing.T) {
	r := newRotation(t)
	tests := []struct {
		name       string
		node       *testkit.CA // issues the node's certificate; the node trusts the old root
		rootBundle []byte
		left       bool
	}{
		{"cluster on the new root, node on the old", r.old, r.fresh.Bundle(), true},
		{"cluster on the node's bundle", r.old, r.old.Bundle(), false},
		{"cluster trusting both roots", r.old, r.bothRoots(), false},
		{"cluster on the new root, node on a rotation certificate", r.next, r.fresh.Bundle(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFakeManager(t, r.managerCreds(t), nil)
			f.set(func(f *fakeManager) {
				f.hbErr = status.Error(codes.Unavailable, "test: no leader")
				f.rootBundle = tt.rootBundle
			})
			creds, _ := newCreds(t, tt.node, tt.node.Issue(t, ca.RoleWorker))
			rn := startRenewer(t, creds, f.addr)

			if !tt.left {
				// Each diagnosis ends before the next heartbeat: after three
				// bundle requests, two diagnoses are complete.
				moreCalls(t, f, "GetRootBundle", 3)
				if err := rn.Problem(); err != nil {
					t.Errorf("Problem() = %v, want nil", err)
				}
				return
			}
			testkit.Eventually(t, "a problem", testkit.True(func() bool { return rn.Problem() != nil }))
			err := rn.Problem()
			if !errors.Is(err, ErrLeftBehind) {
				t.Fatalf("Problem() = %v, want %v", err, ErrLeftBehind)
			}
			for _, want := range []string{f.addr, "quorumca join --token"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Problem() = %q, want it to mention %q", err, want)
				}
			}
			if !bytes.Equal(creds.Bundle(), tt.node.Bundle()) {
				t.Errorf("the unauthenticated bundle changed the node's trust")
			}

			f.set(func(f *fakeManager) { f.hbErr = nil })
			testkit.Eventually(t, "the problem to clear after a heartbeat", testkit.True(func() bool { return rn.Problem() == nil }))
		})
	}
}

// TestRenewerLeftBehindByRotation: a node that missed a rotation cannot
// even complete a TLS handshake with the managers, whose certificates and
// trust are the new root's alone; it diagnoses itself as left behind.
func TestRenewerLeftBehindByRotation(t *testing.T) {
	r := newRotation(t)
	server, _ := newCreds(t, r.fresh, r.fresh.Issue(t, ca.RoleManager))
	f := startFakeManager(t, server, nil)
	f.set(func(f *fakeManager) { f.rootBundle = r.fresh.Bundle() })
	creds, _ := newCreds(t, r.old, r.old.Issue(t, ca.RoleWorker))
	rn := startRenewer(t, creds, f.addr)

	testkit.Eventually(t, "a problem", testkit.True(func() bool { return rn.Problem() != nil }))
	if err := rn.Problem(); !errors.Is(err, ErrLeftBehind) {
		t.Errorf("Problem() = %v, want %v", err, ErrLeftBehind)
	}
	if n := f.count("Heartbeat"); n != 0 {
		t.Errorf("%d heartbeats reached the manager, want none past the handshake", n)
	}
}

// TestRenewerGossip: the gossip key is the first answering manager's; the
// peers are the union of all answers, without repeats.
func TestRenewerGossip(t *testing.T) {
	r := newRotation(t)
	keyA, keyB := gossipKey(0xa), gossipKey(0xb)
	a := startFakeManager(t, r.managerCreds(t), nil)
	a.set(func(f *fakeManager) {
		f.gossip = &api.GossipResponse{Key: keyA, Peers: []string{"10.0.0.1:7946", "10.0.0.2:7946"}}
	})
	b := startFakeManager(t, r.managerCreds(t), nil)
	b.set(func(f *fakeManager) {
		f.gossip = &api.GossipResponse{Key: keyB, Peers: []string{"10.0.0.2:7946", "10.0.0.3:7946"}}
	})
	failing := startFakeManager(t, r.managerCreds(t), nil)
	failing.set(func(f *fakeManager) { f.gossipErr = status.Error(codes.Unavailable, "test: no state yet") })
	creds, _ := newCreds(t, r.next, r.next.Issue(t, ca.RoleWorker))
	dead := closedAddr(t)

	tests := []struct {
		name      string
		managers  []string
		wantKey   []byte
		wantPeers []string
	}{
		{"two managers", []string{a.addr, b.addr}, keyA, []string{"10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.3:7946"}},
		{"the other order", []string{b.addr, a.addr}, keyB, []string{"10.0.0.2:7946", "10.0.0.3:7946", "10.0.0.1:7946"}},
		{"first manager down", []string{dead, b.addr}, keyB, []string{"10.0.0.2:7946", "10.0.0.3:7946"}},
		{"first manager refusing", []string{failing.addr, a.addr}, keyA, []string{"10.0.0.1:7946", "10.0.0.2:7946"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rn := NewRenewer(RenewerConfig{Credentials: creds, Managers: tt.managers})
			defer rn.closeConns()
			key, peers, err := rn.Gossip(t.Context())
			if err != nil {
				t.Fatalf("Gossip() = %v", err)
			}
			if !bytes.Equal(key, tt.wantKey) {
				t.Errorf("Gossip() key = %x, want the first answering manager's %x", key, tt.wantKey)
			}
			if !slices.Equal(peers, tt.wantPeers) {
				t.Errorf("Gossip() peers = %v, want %v", peers, tt.wantPeers)
			}
		})
	}
	t.Run("no manager answers", func(t *testing.T) {
		rn := NewRenewer(RenewerConfig{Credentials: creds, Managers: []string{dead, failing.addr}})
		defer rn.closeConns()
		if _, _, err := rn.Gossip(t.Context()); !errors.Is(err, ErrNoManager) {
			t.Errorf("Gossip() = %v, want %v", err, ErrNoManager)
		}
	})
}

// TestConvergedNodeReachesNewRootManager: a node that renewed during a
// rotation but missed the heartbeat that brought the new bundle still
// trusts the old root alone. A manager renewed after completion serves a
// leaf of the new root with no intermediate: the node verifies it through
// the cross-signed new root it holds in its own chain.
func TestConvergedNodeReachesNewRootManager(t *testing.T) {
	r := newRotation(t)
	mp := r.fresh.Issue(t, ca.RoleManager)
	managerCreds, err := NewCredentials(t.TempDir(), mp.KeyPEM, mp.CertPEM, r.bothRoots())
	if err != nil {
		t.Fatalf("NewCredentials(manager) = %v", err)
	}
	f := startFakeManager(t, managerCreds, r.fresh)

	converged, _ := newCreds(t, r.next, r.next.Issue(t, ca.RoleWorker))
	if err := heartbeatOnce(t, converged, f.addr); err != nil {
		t.Errorf("a converged node on the old bundle: Heartbeat = %v, want it to verify the manager", err)
	}
	// A node that never renewed has no cross-signed root: it must not get
	// through by any other path.
	stale, _ := newCreds(t, r.old, r.old.Issue(t, ca.RoleWorker))
	if err := heartbeatOnce(t, stale, f.addr); err == nil {
		t.Errorf("a node of the old root alone verified a manager of the new root alone; want refused")
	}
}

// heartbeatOnce makes one Heartbeat call with creds' client TLS.
func heartbeatOnce(t *testing.T, creds *Credentials, addr string) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(creds.ClientTLS(ManagerName))))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s) = %v", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = api.NewCAClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{})
	return err
}

// TestRenewerIgnoresOlderBundle: once a node took the bundle of a
// completed rotation, an answer carrying an older bundle (a new leader
// that has not applied the completion yet) does not take it back.
func TestRenewerIgnoresOlderBundle(t *testing.T) {
	r := newRotation(t)
	f := startFakeManager(t, r.managerCreds(t), r.fresh)
	f.set(func(f *fakeManager) {
		f.heartbeat = &api.HeartbeatResponse{Bundle: r.fresh.Bundle(), BundleSince: 2000}
	})
	creds, _ := newCreds(t, r.next, r.next.Issue(t, ca.RoleWorker))
	startRenewer(t, creds, f.addr)
	testkit.Eventually(t, "the new bundle", testkit.True(func() bool { return bytes.Equal(creds.Bundle(), r.fresh.Bundle()) }))

	f.set(func(f *fakeManager) {
		f.heartbeat = &api.HeartbeatResponse{Bundle: r.old.Bundle(), BundleSince: 1000}
	})
	moreCalls(t, f, "Heartbeat", 3)
	if !bytes.Equal(creds.Bundle(), r.fresh.Bundle()) {
		t.Errorf("an older bundle replaced the new one; want it ignored")
	}
}
