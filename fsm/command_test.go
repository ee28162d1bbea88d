package fsm_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// oneOfEach returns a command of every operation, every field set.
func oneOfEach(f *fixture) []fsm.Command {
	join := f.join(idNew, ca.RoleManager, f.managerSecret, now)
	join.Issue.TokenID = "tok"
	join.Issue.Node.RaftAddr = "10.0.1.1:2378"
	join.Issue.Node.CertsValidUntil = now.Add(time.Hour)
	join.Issue.Node.JoinedAt = now
	join.Issue.Node.Cert.IssuedAt = now
	return []fsm.Command{
		f.initCmd(),
		join,
		{At: now, RotateSecret: &fsm.RotateSecret{Role: ca.RoleWorker, Secret: newSecret}},
		{At: now, SetRole: &fsm.SetRole{NodeID: idW, Role: ca.RoleManager}},
		{At: now, RemoveNode: &fsm.RemoveNode{NodeID: idW}},
		{At: now, Prune: &fsm.Prune{}},
		{At: now, UpdateConfig: &fsm.UpdateConfig{CertExpiry: 36 * time.Hour}},
		{At: now, CreateToken: &fsm.CreateToken{Token: fsm.ExtraToken{
			ID: "tok", Role: ca.RoleManager, SecretHash: fsm.HashSecret("s"),
			ExpiresAt: now.Add(time.Hour), UsesLeft: 4, CreatedAt: now,
		}}},
		{At: now, RevokeToken: &fsm.RevokeToken{ID: "tok"}},
		{At: now, SetAddrs: &fsm.SetAddrs{NodeID: idM2, Addr: "10.0.0.2:2377", RaftAddr: "10.0.0.2:2378"}},
	}
}

func TestEncodeDecode(t *testing.T) {
	f := newFixture(t)
	for _, c := range oneOfEach(f) {
		t.Run(describe(c), func(t *testing.T) {
			b, err := fsm.Encode(c)
			if err != nil {
				t.Fatalf("Encode(%s) = %v", describe(c), err)
			}
			got, err := fsm.Decode(b)
			if err != nil {
				t.Fatalf("Decode(Encode(%s)) = %v", describe(c), err)
			}
			want := c
			want.Version = fsm.Version
			if d := diff(got, want); d != "" {
				t.Errorf("Decode(Encode(%s)) differs:\n%s", describe(c), d)
			}
		})
	}
}

// TestEncodeStampsVersion: a command encodes with the current version
// whatever its Version field said.
func TestEncodeStampsVersion(t *testing.T) {
	b, err := fsm.Encode(fsm.Command{Version: 99, At: now, Prune: &fsm.Prune{}})
	if err != nil {
		t.Fatalf("Encode() = %v", err)
	}
	c, err := fsm.Decode(b)
	if err != nil || c.Version != fsm.Version {
		t.Fatalf("Decode(Encode(version 99)) = version %d, %v, want %d, nil", c.Version, err, fsm.Version)
	}
}

func TestDecodeRefuses(t *testing.T) {
	at := `"at":"2030-01-01T00:00:00Z"`
	twoOps, err := fsm.Encode(fsm.Command{At: now, Prune: &fsm.Prune{}, RemoveNode: &fsm.RemoveNode{NodeID: "x"}})
	if err != nil {
		t.Fatalf("Encode(two operations) = %v", err)
	}
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"not JSON", "prune please"},
		{"truncated", `{"v":1,` + at + `,"prune":{`},
		{"array", `[1,2]`},
		{"string", `"prune"`},
		{"wrong field type", `{"v":1,` + at + `,"prune":[]}`},
		{"wrong version type", `{"v":"1",` + at + `,"prune":{}}`},
		{"no version", `{` + at + `,"prune":{}}`},
		{"version 0", `{"v":0,` + at + `,"prune":{}}`},
		{"negative version", `{"v":-1,` + at + `,"prune":{}}`},
		{"future version", fmt.Sprintf(`{"v":%d,%s,"prune":{}}`, fsm.Version+1, at)},
		{"no operation", `{"v":1,` + at + `}`},
		{"null operation", `{"v":1,` + at + `,"prune":null}`},
		{"two operations", string(twoOps)},
		{"three operations", `{"v":1,` + at + `,"prune":{},"revoke_token":{"id":"a"},"remove_node":{"node_id":"b"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := fsm.Decode([]byte(tt.in))
			if !errors.Is(err, fsm.ErrBadCommand) {
				t.Fatalf("Decode(%q) = %+v, %v, want %v", tt.in, c, err, fsm.ErrBadCommand)
			}
		})
	}
	// The same shapes with exactly one operation decode.
	if _, err := fsm.Decode([]byte(`{"v":1,` + at + `,"prune":{}}`)); err != nil {
		t.Errorf("Decode(one prune) = %v, want nil", err)
	}
}

func TestHashSecret(t *testing.T) {
	if fsm.HashSecret("a") == fsm.HashSecret("b") {
		t.Errorf("HashSecret(a) = HashSecret(b), want different")
	}
	if fsm.HashSecret("a") != fsm.HashSecret("a") {
		t.Errorf("HashSecret(a) differs between calls, want equal")
	}
}
