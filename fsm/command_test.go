package fsm_test

import (
	"errors"
	"fmt"
	"strings"
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
		{"data after the command", `{"v":1,` + at + `,"prune":{}} x`},
		{"two commands", `{"v":1,` + at + `,"prune":{}}{"v":1,` + at + `,"prune":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := fsm.Decode([]byte(tt.in))
			if !errors.Is(err, fsm.ErrBadCommand) {
				t.Fatalf("Decode(%q) = %+v, %v, want %v", tt.in, c, err, fsm.ErrBadCommand)
			}
		})
	}
	// The same shapes with exactly one operation decode, with white space
	// around them or not.
	for _, in := range []string{`{"v":1,` + at + `,"prune":{}}`, " {\"v\":1,\n" + at + `,"prune":{}}` + "\n"} {
		if _, err := fsm.Decode([]byte(in)); err != nil {
			t.Errorf("Decode(%q) = %v, want nil", in, err)
		}
	}
	// None of them was written by a newer quorumca: a Machine skips them
	// rather than halt.
	for _, tt := range tests {
		_, err := fsm.Decode([]byte(tt.in))
		if got, want := errors.Is(err, fsm.ErrNewer), tt.name == "future version"; got != want {
			t.Errorf("Decode(%q) = %v; errors.Is(ErrNewer) = %t, want %t", tt.in, err, got, want)
		}
	}
}

// TestDecodeNewer: a command a newer quorumca wrote, of a later version or
// with a field this one does not know, at any depth, is refused with a
// NewerError that names both versions and says to upgrade, whatever else
// it holds; so that a Machine can halt at it instead of skipping it.
func TestDecodeNewer(t *testing.T) {
	at := `"at":"2030-01-01T00:00:00Z"`
	next := fsm.Version + 1
	tests := []struct {
		name    string
		in      string
		version int
		unknown bool
	}{
		{"later version", fmt.Sprintf(`{"v":%d,%s,"prune":{}}`, next, at), next, false},
		{"later version, new operation", fmt.Sprintf(`{"v":%d,%s,"rename_cluster":{"name":"x"}}`, next, at), next, false},
		{"later version, field of another type", fmt.Sprintf(`{"v":%d,%s,"prune":[]}`, next, at), next, false},
		{"later version, no operation", fmt.Sprintf(`{"v":%d,%s}`, next, at), next, false},
		{"unknown operation", `{"v":1,` + at + `,"rename_cluster":{"name":"x"}}`, 1, true},
		{"unknown field", `{"v":1,` + at + `,"prune":{},"priority":3}`, 1, true},
		{"unknown field in an operation", `{"v":1,` + at + `,"remove_node":{"node_id":"b","drain":true}}`, 1, true},
		{"unknown field deep down", `{"v":1,` + at + `,"issue":{"node":{"id":"n","role":"swarm-worker","cert":{"serial":"1","hsm":"yes"}}}}`, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := fsm.Decode([]byte(tt.in))
			var ne *fsm.NewerError
			if !errors.As(err, &ne) {
				t.Fatalf("Decode(%q) = %+v, %v, want a *fsm.NewerError", tt.in, c, err)
			}
			if !errors.Is(err, fsm.ErrNewer) || !errors.Is(err, fsm.ErrBadCommand) {
				t.Errorf("Decode(%q) error %v does not match both ErrNewer and ErrBadCommand", tt.in, err)
			}
			if ne.Version != tt.version || ne.Max != fsm.Version || (ne.Unknown != "") != tt.unknown || ne.Snapshot {
				t.Errorf("Decode(%q) = %+v, want version %d, max %d, unknown field %t", tt.in, *ne, tt.version, fsm.Version, tt.unknown)
			}
			msg := err.Error()
			for _, want := range []string{"upgrade this manager", fmt.Sprintf("command of version %d", tt.version), fmt.Sprintf("reads up to version %d", fsm.Version)} {
				if !strings.Contains(msg, want) {
					t.Errorf("Decode(%q) error %q does not say %q", tt.in, msg, want)
				}
			}
		})
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
