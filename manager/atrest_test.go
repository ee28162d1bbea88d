package manager

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
)

// secretsOf returns every secret of the state: CA private keys (PEM, DER,
// base64 of both), join secrets, the gossip key, the unlock key.
func secretsOf(st *fsm.State) map[string][]byte {
	out := map[string][]byte{}
	add := func(name string, b []byte) {
		if len(b) > 0 {
			out[name] = b
		}
	}
	if len(st.CA.Key) > 0 {
		add("CA key PEM", st.CA.Key)
		if block, _ := pem.Decode(st.CA.Key); block != nil {
			add("CA key DER", block.Bytes)
			add("CA key DER base64", []byte(base64.StdEncoding.EncodeToString(block.Bytes)))
		}
		add("CA key PEM base64", []byte(base64.StdEncoding.EncodeToString(st.CA.Key)))
	}
	add("worker secret", []byte(st.WorkerSecret))
	add("manager secret", []byte(st.ManagerSecret))
	add("gossip key", st.GossipKey)
	add("gossip key base64", []byte(base64.StdEncoding.EncodeToString(st.GossipKey)))
	add("unlock key", []byte(st.UnlockKey))
	return out
}

// found returns "secret in file" for each secret a file under dir holds.
func found(t *testing.T, dir string, secrets map[string]map[string][]byte) []string {
	t.Helper()
	var hits []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil // a socket
		}
		for when, ss := range secrets {
			for name, s := range ss {
				if bytes.Contains(b, s) {
					hits = append(hits, fmt.Sprintf("%s (%s) in %s", name, when, path))
				}
			}
		}
		return nil
	})
	return hits
}

// rotateRoot rotates the root of a one-manager cluster and waits for the
// rotation to complete (the manager converges by itself).
func rotateRoot(t *testing.T, m *testManager) {
	t.Helper()
	if _, err := (controlService{m: m.Manager}).RotateCA(t.Context(), &api.RotateCARequest{}); err != nil {
		t.Fatalf("RotateCA() = %v", err)
	}
	testkit.Eventually(t, "the rotation completes", func() error {
		if m.State().Rotation != nil {
			m.kickRotation()
			return errors.New("in progress")
		}
		return nil
	})
}

// TestNoSecretInClearAtRest: after init, a second manager, two root
// rotations, token rotations and a restart, no file under either
// manager's data dir holds a CA private key, a join secret or the gossip
// key, in any encoding, of any moment; with autolock on, not the unlock
// key either.
func TestNoSecretInClearAtRest(t *testing.T) {
	for _, autolock := range []bool{false, true} {
		t.Run(fmt.Sprintf("autolock=%v", autolock), func(t *testing.T) {
			m := initManager(t, snapshotting)
			secrets := map[string]map[string][]byte{"init": secretsOf(m.State())}
			if autolock {
				if _, err := (controlService{m: m.Manager}).Update(t.Context(), &api.UpdateRequest{Autolock: &autolock}); err != nil {
					t.Fatal(err)
				}
			}
			j := joinManager(t, m, snapshotting)
			for i := range 2 {
				rotateRoot(t, m)
				secrets[fmt.Sprintf("rotation %d", i+1)] = secretsOf(m.State())
				rotateSecrets(t, m.Manager, 20)
				secrets[fmt.Sprintf("token rotations %d", i+1)] = secretsOf(m.State())
			}
			if autolock {
				testkit.Eventually(t, "both managers' keys sealed", func() error {
					for _, x := range []*testManager{m, j} {
						if x.Credentials().NodeKey().KEK == nil {
							return fmt.Errorf("manager %s not sealed yet", x.NodeID())
						}
					}
					return nil
				})
			}
			if autolock {
				// The key of the cluster alone opens them at the restart.
				m.cfg.UnlockKey = m.State().UnlockKey
			}
			j.stop()
			m.stop()
			r := reopen(t, m)
			testkit.Eventually(t, "the restarted manager's state", func() error {
				if !r.State().Initialized() {
					return errors.New("not yet")
				}
				return nil
			})
			r.stop()
			for _, x := range []*testManager{m, j} {
				if hits := found(t, x.cfg.DataDir, secrets); len(hits) > 0 {
					t.Errorf("secrets in clear at rest:\n%s", strings.Join(hits, "\n"))
				}
			}
		})
	}
}

// TestUpgradeFromPlaintextDataDir: data dirs written with the stores
// unsealed, as the release before wrote them (the test checks that they
// do hold the secrets in clear), are sealed in place at the first start:
// both managers keep the state and every node, and no secret of any
// moment remains in any file's raw bytes.
func TestUpgradeFromPlaintextDataDir(t *testing.T) {
	plain := func(c *Config) { snapshotting(c); c.Unsealed = true }
	m := initManager(t, plain)
	j := joinManager(t, m, plain)
	secrets := map[string]map[string][]byte{"init": secretsOf(m.State())}
	rotateRoot(t, m)
	rotateSecrets(t, m.Manager, 20)
	secrets["rotated"] = secretsOf(m.State())
	want := stateOf(t, m.State())
	testkit.Eventually(t, "the second manager's state", func() error {
		if stateOf(t, j.State()) != want {
			return errors.New("differs")
		}
		return nil
	})
	j.stop()
	m.stop()
	if hits := found(t, m.cfg.DataDir, secrets); len(hits) == 0 {
		t.Fatalf("the unsealed data dir holds no secret in clear: the search would find nothing")
	}

	m.cfg.Unsealed, j.cfg.Unsealed = false, false
	rm, rj := reopen(t, m), reopen(t, j)
	for _, r := range []*testManager{rm, rj} {
		testkit.Eventually(t, "the upgraded manager's state", func() error {
			if got := stateOf(t, r.State()); got != want {
				return fmt.Errorf("differs:\n%s", got)
			}
			return nil
		})
	}
	rj.stop()
	rm.stop()
	for _, x := range []*testManager{m, j} {
		if hits := found(t, x.cfg.DataDir, secrets); len(hits) > 0 {
			t.Errorf("secrets in clear after the upgrade:\n%s", strings.Join(hits, "\n"))
		}
	}
}

// TestLockedManagerOpensWithTheKeyOnly: with autolock on, a manager's
// node.key opens with the unlock key only; Open without it says locked.
func TestLockedManagerOpensWithTheKeyOnly(t *testing.T) {
	m := initManager(t, nil)
	key := autolockOn(t, m)
	m.stop()
	openLocked(t, m, "")
	other, _ := ca.NewUnlockKey(rand.Reader)
	openLocked(t, m, other)
	m.cfg.UnlockKey = key
	reopen(t, m)
}

// failpoint stops every step named name once armed, as a kill there
// would: nothing after it happens (the leader goes on committing, a CRL
// for one, and each change of the state takes the manager back to the
// step).
type failpoint struct {
	name       string
	armed, hit atomic.Bool
}

func (f *failpoint) hook(step string) error {
	if step == f.name && f.armed.Load() {
		f.hit.Store(true)
		return errCrash
	}
	return nil
}

// crashAt returns a test step hook that stops the steps named name.
func crashAt(name string) (func(string) error, *atomic.Bool) {
	f := &failpoint{name: name}
	f.armed.Store(true)
	return f.hook, &f.hit
}

// waitHit waits for the failpoint to stop its step.
func (f *failpoint) waitHit(t *testing.T) {
	t.Helper()
	testkit.Eventually(t, "the failpoint "+f.name, testkit.True(f.hit.Load))
}

// autolockOn turns autolock on through m and waits for m's keys to be
// sealed; it returns the unlock key.
func autolockOn(t *testing.T, m *testManager) string {
	t.Helper()
	on := true
	resp, err := (controlService{m: m.Manager}).Update(t.Context(), &api.UpdateRequest{Autolock: &on})
	if err != nil || resp.GetUnlockKey() == "" {
		t.Fatalf("Update(autolock on) = %v, %v; want the unlock key", resp, err)
	}
	waitSealedUnder(t, m, resp.GetUnlockKey())
	return resp.GetUnlockKey()
}

// waitSealedUnder waits for m's node.key to be sealed under key, or in
// clear for "".
func waitSealedUnder(t *testing.T, m *testManager, key string) {
	t.Helper()
	want := ""
	if key != "" {
		kek, err := ca.ParseUnlockKey(key)
		if err != nil {
			t.Fatal(err)
		}
		want = kek.ID
	}
	testkit.Eventually(t, "node.key sealed under "+cmpName(want), func() error {
		got := ""
		if kek := m.Credentials().NodeKey().KEK; kek != nil {
			got = kek.ID
		}
		if got != want {
			return fmt.Errorf("sealed under %s", cmpName(got))
		}
		return nil
	})
}

func cmpName(kekID string) string {
	if kekID == "" {
		return "no key (in clear)"
	}
	return "unlock key " + kekID
}

// openLocked checks that m's data directory does not open with key ("" for
// none): it is locked.
func openLocked(t *testing.T, m *testManager, key string) {
	t.Helper()
	cfg := m.cfg
	cfg.UnlockKey = key
	store, err := agent.OpenNodeStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	var le *agent.LockedError
	if _, err := Open(t.Context(), cfg, store); !errors.As(err, &le) {
		t.Fatalf("Open(%s) = %v, want a *agent.LockedError", cmpName(key), err)
	}
}

// TestCrashBeforeKeysSealed: autolock turned on, and the manager stopped
// before it sealed node.key: it restarts on its keys in clear, and seals
// them then.
func TestCrashBeforeKeysSealed(t *testing.T) {
	hook, hit := crashAt("protect-keys")
	m := initManager(t, func(c *Config) { c.testStep = hook })
	on := true
	resp, err := (controlService{m: m.Manager}).Update(t.Context(), &api.UpdateRequest{Autolock: &on})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the failpoint", func() error {
		if !hit.Load() {
			return errors.New("not reached")
		}
		return nil
	})
	m.stop()
	m.cfg.testStep = nil
	r := reopen(t, m) // in clear still: no key needed
	testkit.Eventually(t, "node.key sealed after the restart", func() error {
		if kek := r.Credentials().NodeKey().KEK; kek == nil {
			return errors.New("not sealed")
		}
		return nil
	})
	r.stop()
	r.cfg.UnlockKey = resp.GetUnlockKey()
	reopen(t, r)
}

// TestCrashBeforePreviousDataKeyDropped: autolock on replaced the data
// key; the restart seals the stores again under the new one, and stops
// before it drops the old: the next start opens with both, and drops it.
func TestCrashBeforePreviousDataKeyDropped(t *testing.T) {
	m := initManager(t, snapshotting)
	rotateSecrets(t, m.Manager, 20)
	on := true
	resp, err := (controlService{m: m.Manager}).Update(t.Context(), &api.UpdateRequest{Autolock: &on})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "node.key sealed with a new data key", func() error {
		if len(m.Credentials().NodeKey().PrevDataKey) == 0 {
			return errors.New("no rotation of the data key yet")
		}
		return nil
	})
	want := stateOf(t, m.State())
	m.stop()
	hook, _ := crashAt("drop-previous-data-key")
	cfg := m.cfg
	cfg.UnlockKey, cfg.testStep = resp.GetUnlockKey(), hook
	store, _ := agent.OpenNodeStore(cfg.DataDir)
	if _, err := Open(t.Context(), cfg, store); !errors.Is(err, errCrash) {
		t.Fatalf("Open() at the failpoint = %v, want the crash", err)
	}
	m.cfg = cfg
	m.cfg.testStep = nil
	r := reopen(t, m)
	if len(r.Credentials().NodeKey().PrevDataKey) != 0 {
		t.Errorf("the previous data key was not dropped")
	}
	testkit.Eventually(t, "the state after the crash", func() error {
		if got := stateOf(t, r.State()); got != want {
			return errors.New("differs")
		}
		return nil
	})
}

// TestUnlockKeyRotatedWhileDown: a manager down while the unlock key was
// rotated unlocks with the key it last knew, then moves to the new one.
func TestUnlockKeyRotatedWhileDown(t *testing.T) {
	m := initManager(t, nil)
	oldKey := autolockOn(t, m)
	// The joining managers seal their keys once they apply the state.
	// Three managers, so that one down leaves a majority.
	j := joinManager(t, m, nil)
	waitSealedUnder(t, j, oldKey)
	third := joinManager(t, m, nil)
	waitSealedUnder(t, third, oldKey)
	third.stop()
	rot, err := (controlService{m: m.Manager}).UnlockKey(t.Context(), &api.UnlockKeyRequest{Rotate: true})
	if err != nil {
		t.Fatal(err)
	}
	openLocked(t, third, rot.GetUnlockKey())
	third.cfg.UnlockKey = oldKey
	r := reopen(t, third)
	waitSealedUnder(t, r, rot.GetUnlockKey())
}

// TestCrashBeforeKeysUnsealed: autolock turned off, and the manager
// stopped before it wrote node.key in clear: it is still locked under the
// unlock key, opens with it, and then writes its keys in clear.
func TestCrashBeforeKeysUnsealed(t *testing.T) {
	fp := &failpoint{name: "protect-keys"}
	m := initManager(t, func(c *Config) { c.testStep = fp.hook })
	key := autolockOn(t, m)
	fp.armed.Store(true)
	off := false
	if _, err := (controlService{m: m.Manager}).Update(t.Context(), &api.UpdateRequest{Autolock: &off}); err != nil {
		t.Fatalf("Update(autolock off) = %v", err)
	}
	fp.waitHit(t)
	m.stop()
	m.cfg.testStep = nil
	openLocked(t, m, "")
	m.cfg.UnlockKey = key
	r := reopen(t, m)
	waitSealedUnder(t, r, "")
	r.stop()
	r.cfg.UnlockKey = ""
	reopen(t, r)
}

// TestCrashBeforeKeysResealed: the unlock key rotated, and the manager
// stopped before it sealed node.key under the new one: it opens with the
// old key only, and then moves to the new.
func TestCrashBeforeKeysResealed(t *testing.T) {
	fp := &failpoint{name: "protect-keys"}
	m := initManager(t, func(c *Config) { c.testStep = fp.hook })
	oldKey := autolockOn(t, m)
	fp.armed.Store(true)
	rot, err := (controlService{m: m.Manager}).UnlockKey(t.Context(), &api.UnlockKeyRequest{Rotate: true})
	if err != nil {
		t.Fatalf("UnlockKey(rotate) = %v", err)
	}
	newKey := rot.GetUnlockKey()
	fp.waitHit(t)
	m.stop()
	m.cfg.testStep = nil
	openLocked(t, m, newKey)
	m.cfg.UnlockKey = oldKey
	r := reopen(t, m)
	waitSealedUnder(t, r, newKey)
	r.stop()
	openLocked(t, r, oldKey)
	r.cfg.UnlockKey = newKey
	reopen(t, r)
}
