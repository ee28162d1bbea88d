package fsm_test

import (
	"errors"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

func TestExtraTokenUsable(t *testing.T) {
	expires := t0.Add(time.Hour)
	tests := []struct {
		name string
		tok  fsm.ExtraToken
		at   time.Time
		want bool
	}{
		{"unlimited, no expiry", fsm.ExtraToken{UsesLeft: -1}, t0.Add(1e6 * time.Hour), true},
		{"one use left", fsm.ExtraToken{UsesLeft: 1}, t0, true},
		{"used up", fsm.ExtraToken{UsesLeft: 0}, t0, false},
		{"before expiry", fsm.ExtraToken{UsesLeft: -1, ExpiresAt: expires}, expires.Add(-time.Nanosecond), true},
		{"at expiry", fsm.ExtraToken{UsesLeft: -1, ExpiresAt: expires}, expires, false},
		{"after expiry", fsm.ExtraToken{UsesLeft: 3, ExpiresAt: expires}, expires.Add(time.Second), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.tok.Usable(tt.at); got != tt.want {
				t.Errorf("%+v.Usable(%v) = %v, want %v", tt.tok, tt.at, got, tt.want)
			}
		})
	}
}

// newTokenCluster returns an initialized state with one extra token.
func newTokenCluster(t *testing.T, f *fixture, tok fsm.ExtraToken) *fsm.State {
	t.Helper()
	return apply(t, nil, f.initCmd(), fsm.Command{At: t0, CreateToken: &fsm.CreateToken{Token: tok}})
}

func tokenJoin(f *fixture, id, tokenID, secret string, role ca.Role, at time.Time) fsm.Command {
	c := f.join(id, role, "", at)
	c.Issue.TokenID, c.Issue.SecretHash = tokenID, fsm.HashSecret(secret)
	return c
}

// TestExtraTokenSingleUse: a token created with one use admits one join
// and refuses the next.
func TestExtraTokenSingleUse(t *testing.T) {
	f := newFixture(t)
	s := newTokenCluster(t, f, fsm.ExtraToken{ID: "once", Role: ca.RoleWorker, SecretHash: fsm.HashSecret("s"), UsesLeft: 1})

	s = apply(t, s, tokenJoin(f, "first", "once", "s", ca.RoleWorker, t0.Add(time.Minute)))
	if got := s.Tokens["once"].UsesLeft; got != 0 {
		t.Fatalf("Tokens[once].UsesLeft after one join = %d, want 0", got)
	}
	if _, ok := s.Node("first"); !ok {
		t.Fatalf("Node(first) = missing, want joined")
	}

	second := tokenJoin(f, "second", "once", "s", ca.RoleWorker, t0.Add(2*time.Minute))
	got, err := fsm.Apply(s, s.Index+1, second)
	if !errors.Is(err, fsm.ErrTokenUnusable) {
		t.Fatalf("Apply(second join with a used-up token) = %v, want %v", err, fsm.ErrTokenUnusable)
	}
	if d := diff(got, withIndex(s, s.Index+1)); d != "" {
		t.Errorf("refused join changed the state:\n%s", d)
	}

	// The spent token is pruned; a join naming it is still refused.
	s = apply(t, s, fsm.Command{At: t0.Add(3 * time.Minute), Prune: &fsm.Prune{}})
	if _, ok := s.Tokens["once"]; ok {
		t.Errorf("Tokens[once] after Prune = present, want dropped")
	}
	if _, err := fsm.Apply(s, s.Index+1, second); !errors.Is(err, fsm.ErrTokenUnusable) {
		t.Errorf("Apply(join with a pruned token) = %v, want %v", err, fsm.ErrTokenUnusable)
	}
}

// TestExtraTokenTTL: a token admits joins, without spending unlimited
// uses, until cmd.At reaches its expiry.
func TestExtraTokenTTL(t *testing.T) {
	f := newFixture(t)
	expires := t0.Add(time.Hour)
	s := newTokenCluster(t, f, fsm.ExtraToken{ID: "ttl", Role: ca.RoleManager, SecretHash: fsm.HashSecret("s"), UsesLeft: -1, ExpiresAt: expires})

	s = apply(t, s,
		tokenJoin(f, "a", "ttl", "s", ca.RoleManager, t0.Add(30*time.Minute)),
		tokenJoin(f, "b", "ttl", "s", ca.RoleManager, expires.Add(-time.Second)),
	)
	if got := s.Tokens["ttl"].UsesLeft; got != -1 {
		t.Errorf("Tokens[ttl].UsesLeft after joins = %d, want -1 (unlimited)", got)
	}
	if got := len(s.Managers()); got != 3 {
		t.Errorf("len(Managers()) = %d, want 3", got)
	}
	for _, at := range []time.Time{expires, expires.Add(time.Minute)} {
		if _, err := fsm.Apply(s, s.Index+1, tokenJoin(f, "c", "ttl", "s", ca.RoleManager, at)); !errors.Is(err, fsm.ErrTokenUnusable) {
			t.Errorf("Apply(join at %v, token expiring %v) = %v, want %v", at, expires, err, fsm.ErrTokenUnusable)
		}
	}
	if s.NeedsPrune(expires.Add(-time.Nanosecond)) {
		t.Errorf("NeedsPrune(just before expiry) = true, want false")
	}
	if !s.NeedsPrune(expires) {
		t.Errorf("NeedsPrune(at expiry) = false, want true")
	}
}
