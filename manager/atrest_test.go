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
			j.stop()
			m.stop()
			for _, x := range []*testManager{m, j} {
				if hits := found(t, x.cfg.DataDir, secrets); len(hits) > 0 {
					t.Errorf("secrets in clear at rest:\n%s", strings.Join(hits, "\n"))
				}
			}
			if autolock {
				// The key of the cluster alone opens them: restart with it.
				reopenKey := m.State().UnlockKey
				cfg := m.cfg
				cfg.UnlockKey = reopenKey
				m.cfg = cfg
			}
			r := reopen(t, m)
			testkit.Eventually(t, "the restarted manager's state", func() error {
				if !r.State().Initialized() {
					return errors.New("not yet")
				}
				return nil
			})
		})
	}
}

// TestLockedManagerOpensWithTheKeyOnly: with autolock on, a manager's
// node.key opens with the unlock key only; Open without it says locked.
func TestLockedManagerOpensWithTheKeyOnly(t *testing.T) {
	on := true
	m := initManager(t, nil)
	resp, err := (controlService{m: m.Manager}).Update(t.Context(), &api.UpdateRequest{Autolock: &on})
	if err != nil || resp.GetUnlockKey() == "" {
		t.Fatalf("Update(autolock on) = %v, %v; want the unlock key", resp, err)
	}
	testkit.Eventually(t, "node.key sealed", func() error {
		if m.Credentials().NodeKey().KEK == nil {
			return errors.New("not sealed")
		}
		return nil
	})
	m.stop()
	store, _ := agent.OpenNodeStore(m.cfg.DataDir)
	_, err = Open(t.Context(), m.cfg, store)
	var le *agent.LockedError
	if !errors.As(err, &le) {
		t.Fatalf("Open(no unlock key) = %v, want a *agent.LockedError", err)
	}
	other, _ := ca.NewUnlockKey(rand.Reader)
	cfg := m.cfg
	cfg.UnlockKey = other
	if _, err := Open(t.Context(), cfg, store); !errors.As(err, &le) {
		t.Fatalf("Open(another unlock key) = %v, want a *agent.LockedError", err)
	}
	m.cfg.UnlockKey = resp.GetUnlockKey()
	reopen(t, m)
}

// crashAt returns a test step hook that stops the first step named name,
// as a kill there would.
func crashAt(name string) (func(string) error, *atomic.Bool) {
	var hit atomic.Bool
	return func(step string) error {
		if step == name && !hit.Swap(true) {
			return errCrash
		}
		return nil
	}, &hit
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
	on := true
	m := initManager(t, nil)
	resp, err := (controlService{m: m.Manager}).Update(t.Context(), &api.UpdateRequest{Autolock: &on})
	if err != nil {
		t.Fatal(err)
	}
	oldKey := resp.GetUnlockKey()
	// The joining manager seals its keys once it applies the state.
	j := joinManager(t, m, nil)
	testkit.Eventually(t, "the second manager sealed", func() error {
		if j.Credentials().NodeKey().KEK == nil {
			return errors.New("not sealed")
		}
		return nil
	})
	// Three managers, so that one down leaves a majority.
	third := joinManager(t, m, nil)
	testkit.Eventually(t, "the third manager sealed", func() error {
		if third.Credentials().NodeKey().KEK == nil {
			return errors.New("not sealed")
		}
		return nil
	})
	third.stop()
	rot, err := (controlService{m: m.Manager}).UnlockKey(t.Context(), &api.UnlockKeyRequest{Rotate: true})
	if err != nil {
		t.Fatal(err)
	}
	newKEK, _ := ca.ParseUnlockKey(rot.GetUnlockKey())
	third.cfg.UnlockKey = rot.GetUnlockKey()
	store, _ := agent.OpenNodeStore(third.cfg.DataDir)
	var le *agent.LockedError
	if _, err := Open(t.Context(), third.cfg, store); !errors.As(err, &le) {
		t.Fatalf("Open(the new key) on the manager that was down = %v, want locked under the old", err)
	}
	third.cfg.UnlockKey = oldKey
	r := reopen(t, third)
	testkit.Eventually(t, "the manager that was down moves to the new key", func() error {
		if kek := r.Credentials().NodeKey().KEK; kek == nil || kek.ID != newKEK.ID {
			return errors.New("still under the old key")
		}
		return nil
	})
}
