package fsm_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/quorumca/quorumca/fsm"
)

func adminCmd(serial string, at time.Time, ttl time.Duration) fsm.Command {
	return fsm.Command{At: at, IssueAdmin: &fsm.IssueAdmin{Cert: fsm.AdminCert{
		Serial: serial, ID: "admin-" + serial, IssuedBy: "local uid 0", NotAfter: at.Add(ttl),
	}}}
}

// TestAdminCertificates records, revokes and prunes admin certificates.
func TestAdminCertificates(t *testing.T) {
	f := newFixture(t)
	s := apply(t, nil, f.initCmd(),
		adminCmd("a1", t0.Add(time.Minute), time.Hour),
		adminCmd("b2", t0.Add(2*time.Minute), 24*time.Hour),
		adminCmd("c3", t0.Add(3*time.Minute), 24*time.Hour),
	)
	if got := len(s.SortedAdmins()); got != 3 {
		t.Fatalf("after 3 IssueAdmin: %d admin certificates recorded, want 3", got)
	}
	if a, ok := s.Admin("a1"); !ok || a.IssuedAt != t0.Add(time.Minute) || a.Revoked() {
		t.Errorf("Admin(a1) = %+v, %v; want it recorded at its command's time, not revoked", a, ok)
	}
	at := t0.Add(10 * time.Minute)
	s = apply(t, s, fsm.Command{At: at, RevokeAdmin: &fsm.RevokeAdmin{Serials: []string{"b2"}}})
	if a, _ := s.Admin("b2"); !a.Revoked() || !a.RevokedAt.Equal(at) {
		t.Errorf("Admin(b2) after revocation = %+v, want revoked at %s", a, at)
	}
	if a, _ := s.Admin("c3"); a.Revoked() {
		t.Errorf("Admin(c3) = %+v, revoked by a revocation naming b2 only", a)
	}
	s = apply(t, s, fsm.Command{At: at.Add(time.Minute), RevokeAdmin: &fsm.RevokeAdmin{All: true}})
	for _, a := range s.SortedAdmins() {
		if !a.Revoked() {
			t.Errorf("after revoking all: %s is not revoked", a.Serial)
		}
	}
	if a, _ := s.Admin("b2"); !a.RevokedAt.Equal(at) {
		t.Errorf("revoking all moved b2's revocation to %s, want it kept at %s", a.RevokedAt, at)
	}
	// a1 expires after an hour: Prune drops it, and only it.
	later := t0.Add(2 * time.Hour)
	if !s.NeedsPrune(later) {
		t.Errorf("NeedsPrune(%s) = false with an expired admin certificate", later)
	}
	s = apply(t, s, fsm.Command{At: later, Prune: &fsm.Prune{}})
	if _, ok := s.Admin("a1"); ok {
		t.Errorf("Admin(a1) still recorded after it expired and Prune")
	}
	if len(s.Admins) != 2 {
		t.Errorf("after Prune: %d admin certificates, want 2", len(s.Admins))
	}
	if d := diff(snapshot(t, s), s); d != "" {
		t.Errorf("restore(snapshot) differs:\n%s", d)
	}
}

// TestAdminCertificateRefusals checks that bad admin commands are refused
// and change nothing.
func TestAdminCertificateRefusals(t *testing.T) {
	f := newFixture(t)
	s := apply(t, nil, f.initCmd(), adminCmd("a1", t0, time.Hour))
	for _, tt := range []struct {
		name string
		cmd  fsm.Command
		want error
	}{
		{"no serial", adminCmd("", t0, time.Hour), fsm.ErrBadCommand},
		{"upper-case serial", adminCmd("AB", t0, time.Hour), fsm.ErrBadCommand},
		{"already expired", adminCmd("d4", t0, -time.Second), fsm.ErrBadCommand},
		{"serial reused", adminCmd("a1", t0, time.Hour), fsm.ErrBadCommand},
		{"revoke unknown", fsm.Command{At: t0, RevokeAdmin: &fsm.RevokeAdmin{Serials: []string{"zz"}}}, fsm.ErrUnknownAdmin},
		{"revoke nothing", fsm.Command{At: t0, RevokeAdmin: &fsm.RevokeAdmin{}}, fsm.ErrBadCommand},
		{"revoke both", fsm.Command{At: t0, RevokeAdmin: &fsm.RevokeAdmin{All: true, Serials: []string{"a1"}}}, fsm.ErrBadCommand},
	} {
		got, err := fsm.Apply(s, s.Index+1, tt.cmd)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: Apply() = %v, want %v", tt.name, err, tt.want)
		}
		if d := diff(got, withIndex(s, s.Index+1)); d != "" {
			t.Errorf("%s: a refused command changed the state:\n%s", tt.name, d)
		}
	}
}

// TestGossipKeyReplaced checks that a removal and a rotation's completion
// may replace the gossip key, and that a bad key is refused.
func TestGossipKeyReplaced(t *testing.T) {
	f := newFixture(t)
	s := apply(t, nil, f.initCmd(), f.join("w1", "swarm-worker", f.workerSecret, t0), f.join("w2", "swarm-worker", f.workerSecret, t0))
	key := bytes.Repeat([]byte{7}, fsm.GossipKeySize)
	s = apply(t, s, fsm.Command{At: t0, RemoveNode: &fsm.RemoveNode{NodeID: "w1", GossipKey: key}})
	if !bytes.Equal(s.GossipKey, key) {
		t.Errorf("after RemoveNode with a new gossip key, GossipKey = %x, want %x", s.GossipKey, key)
	}
	for _, bad := range [][]byte{key, make([]byte, 16)} {
		_, err := fsm.Apply(s, s.Index+1, fsm.Command{At: t0, RemoveNode: &fsm.RemoveNode{NodeID: "w2", GossipKey: bad}})
		if !errors.Is(err, fsm.ErrBadCommand) {
			t.Errorf("RemoveNode with gossip key %x = %v, want ErrBadCommand", bad, err)
		}
	}
	// A removal without a key keeps the one there is.
	s = apply(t, s, fsm.Command{At: t0, RemoveNode: &fsm.RemoveNode{NodeID: "w2"}})
	if !bytes.Equal(s.GossipKey, key) {
		t.Errorf("RemoveNode without a key changed the gossip key")
	}
}
