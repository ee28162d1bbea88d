package fsm_test

import (
	"crypto/rand"
	"errors"
	"testing"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// TestAutolock turns autolock on and off and rotates its key, and checks
// the refusals, which change nothing.
func TestAutolock(t *testing.T) {
	f := newFixture(t)
	key := func() string {
		k, err := ca.NewUnlockKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	s := apply(t, nil, f.initCmd())
	if s.Autolock || s.UnlockKey != "" {
		t.Fatalf("a new cluster has autolock %v, key %q; want off", s.Autolock, s.UnlockKey)
	}
	first := key()
	s = apply(t, s, fsm.Command{At: t0, SetAutolock: &fsm.SetAutolock{On: true, UnlockKey: first}})
	if !s.Autolock || s.UnlockKey != first {
		t.Fatalf("after SetAutolock(on): autolock %v with the key given %v", s.Autolock, s.UnlockKey == first)
	}
	second := key()
	s = apply(t, s, fsm.Command{At: t0, RotateUnlockKey: &fsm.RotateUnlockKey{UnlockKey: second}})
	if s.UnlockKey != second {
		t.Errorf("after RotateUnlockKey: the key was not replaced")
	}
	if d := diff(snapshot(t, s), s); d != "" {
		t.Errorf("restore(snapshot) differs:\n%s", d)
	}
	for _, tt := range []struct {
		name string
		cmd  fsm.Command
	}{
		{"on again", fsm.Command{At: t0, SetAutolock: &fsm.SetAutolock{On: true, UnlockKey: key()}}},
		{"rotate to the same key", fsm.Command{At: t0, RotateUnlockKey: &fsm.RotateUnlockKey{UnlockKey: second}}},
		{"rotate to a malformed key", fsm.Command{At: t0, RotateUnlockKey: &fsm.RotateUnlockKey{UnlockKey: "QCKEY-1-short"}}},
		{"off with a key", fsm.Command{At: t0, SetAutolock: &fsm.SetAutolock{UnlockKey: key()}}},
	} {
		got, err := fsm.Apply(s, s.Index+1, tt.cmd)
		if !errors.Is(err, fsm.ErrBadCommand) {
			t.Errorf("%s: Apply() = %v, want ErrBadCommand", tt.name, err)
		}
		if d := diff(got, withIndex(s, s.Index+1)); d != "" {
			t.Errorf("%s: a refused command changed the state:\n%s", tt.name, d)
		}
	}
	s = apply(t, s, fsm.Command{At: t0, SetAutolock: &fsm.SetAutolock{On: false}})
	if s.Autolock || s.UnlockKey != "" {
		t.Errorf("after SetAutolock(off): autolock %v, a key kept %v", s.Autolock, s.UnlockKey != "")
	}
	if _, err := fsm.Apply(s, s.Index+1, fsm.Command{At: t0, RotateUnlockKey: &fsm.RotateUnlockKey{UnlockKey: key()}}); !errors.Is(err, fsm.ErrBadCommand) {
		t.Errorf("RotateUnlockKey with autolock off = %v, want ErrBadCommand", err)
	}
}
