package ca_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/ca"
)

func isBase36(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

func TestNewID(t *testing.T) {
	r := detRand(1)
	seen := map[string]bool{}
	for i := range 1000 {
		id, err := ca.NewID(r)
		if err != nil {
			t.Fatalf("NewID #%d = %v", i, err)
		}
		if len(id) != 25 {
			t.Fatalf("NewID #%d = %q, %d characters, want 25", i, id, len(id))
		}
		if !isBase36(id) {
			t.Fatalf("NewID #%d = %q, want base-36 (0-9, a-z)", i, id)
		}
		if seen[id] {
			t.Fatalf("NewID #%d = %q, drawn before", i, id)
		}
		seen[id] = true
		// Every ID NewID makes is one Identity accepts.
		if err := (ca.Identity{NodeID: id, Role: ca.RoleWorker, ClusterID: id}).Validate(); err != nil {
			t.Fatalf("Identity{%q}.Validate() = %v, want nil", id, err)
		}
	}
}

func TestNewIDEncoding(t *testing.T) {
	max := strings.Repeat("f", 32)
	wantMax, _ := new(big.Int).SetString(max, 16)
	tests := []struct {
		name string
		r    constReader
		want string
	}{
		{"zero bytes pad with zeros", 0x00, strings.Repeat("0", 25)},
		{"0x01 bytes", 0x01, pad25(new(big.Int).SetBytes([]byte{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}).Text(36))},
		{"all ones", 0xff, pad25(wantMax.Text(36))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.NewID(tt.r)
			if err != nil || got != tt.want {
				t.Errorf("NewID(0x%02x...) = %q, %v, want %q, nil", byte(tt.r), got, err, tt.want)
			}
		})
	}
	// The largest 128-bit value fills the width exactly.
	if got, _ := ca.NewID(constReader(0xff)); len(got) != 25 || got[0] == '0' {
		t.Errorf("NewID(0xff...) = %q, want 25 significant characters", got)
	}
}

func pad25(s string) string { return strings.Repeat("0", 25-len(s)) + s }

func TestNewIDFailingReader(t *testing.T) {
	id, err := ca.NewID(errReader{})
	if !errors.Is(err, errRead) || id != "" {
		t.Errorf("NewID(failing reader) = %q, %v, want \"\", %v", id, err, errRead)
	}
	// A short read is a failure too, not a short ID.
	id, err = ca.NewID(strings.NewReader("only ten b"))
	if err == nil || id != "" {
		t.Errorf("NewID(10 bytes) = %q, %v, want an error", id, err)
	}
}

func TestParseRole(t *testing.T) {
	tests := []struct {
		in        string
		want      ca.Role
		wantShort string
		wantErr   error
	}{
		{"manager", ca.RoleManager, "manager", nil},
		{"swarm-manager", ca.RoleManager, "manager", nil},
		{"worker", ca.RoleWorker, "worker", nil},
		{"swarm-worker", ca.RoleWorker, "worker", nil},
		{"Manager", "", "", ca.ErrBadIdentity},
		{"superuser", "", "", ca.ErrBadIdentity},
		{"", "", "", ca.ErrBadIdentity},
		{" worker", "", "", ca.ErrBadIdentity},
	}
	for _, tt := range tests {
		got, err := ca.ParseRole(tt.in)
		if got != tt.want || !errors.Is(err, tt.wantErr) {
			t.Errorf("ParseRole(%q) = %q, %v, want %q, %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil && got.Short() != tt.wantShort {
			t.Errorf("ParseRole(%q).Short() = %q, want %q", tt.in, got.Short(), tt.wantShort)
		}
	}
	if got := ca.Role("swarm-admin").Short(); got != "swarm-admin" {
		t.Errorf("Role(swarm-admin).Short() = %q, want it unchanged", got)
	}
}

func TestIdentityValidate(t *testing.T) {
	node, cluster := newID(t, 1), newID(t, 2)
	tests := []struct {
		name string
		id   ca.Identity
		want error
	}{
		{"manager", ca.Identity{NodeID: node, Role: ca.RoleManager, ClusterID: cluster}, nil},
		{"worker", ca.Identity{NodeID: node, Role: ca.RoleWorker, ClusterID: cluster}, nil},
		{"all zeros", ca.Identity{NodeID: strings.Repeat("0", 25), Role: ca.RoleWorker, ClusterID: strings.Repeat("0", 25)}, nil},
		{"largest 128-bit ID", ca.Identity{NodeID: "f5lxx1zz5pnorynqglhzmsp33", Role: ca.RoleWorker, ClusterID: cluster}, nil},
		{"first 129-bit ID", ca.Identity{NodeID: "f5lxx1zz5pnorynqglhzmsp34", Role: ca.RoleWorker, ClusterID: cluster}, ca.ErrBadIdentity},
		{"zero value", ca.Identity{}, ca.ErrBadIdentity},
		{"node ID 24 characters", ca.Identity{NodeID: node[:24], Role: ca.RoleWorker, ClusterID: cluster}, ca.ErrBadIdentity},
		{"node ID with a space", ca.Identity{NodeID: node[:24] + " ", Role: ca.RoleWorker, ClusterID: cluster}, ca.ErrBadIdentity},
		{"node ID upper case", ca.Identity{NodeID: strings.ToUpper(node), Role: ca.RoleWorker, ClusterID: cluster}, ca.ErrBadIdentity},
		{"node ID non-ASCII", ca.Identity{NodeID: node[:23] + "é", Role: ca.RoleWorker, ClusterID: cluster}, ca.ErrBadIdentity},
		{"role short form", ca.Identity{NodeID: node, Role: "worker", ClusterID: cluster}, ca.ErrBadIdentity},
		{"cluster ID 26 characters", ca.Identity{NodeID: node, Role: ca.RoleWorker, ClusterID: cluster + "a"}, ca.ErrBadIdentity},
		{"cluster ID with a dash", ca.Identity{NodeID: node, Role: ca.RoleWorker, ClusterID: cluster[:24] + "-"}, ca.ErrBadIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.id.Validate(); !errors.Is(err, tt.want) {
				t.Errorf("%+v.Validate() = %v, want %v", tt.id, err, tt.want)
			}
		})
	}
}

func TestIdentityOf(t *testing.T) {
	node, cluster := newID(t, 1), newID(t, 2)
	mgr := string(ca.RoleManager)
	tests := []struct {
		name    string
		subject pkix.Name
		want    ca.Identity
		wantErr error
	}{
		{"node certificate", pkix.Name{CommonName: node, OrganizationalUnit: []string{mgr}, Organization: []string{cluster}}, ca.Identity{NodeID: node, Role: ca.RoleManager, ClusterID: cluster}, nil},
		{"two OUs", pkix.Name{CommonName: node, OrganizationalUnit: []string{mgr, mgr}, Organization: []string{cluster}}, ca.Identity{}, ca.ErrBadIdentity},
		{"two Os", pkix.Name{CommonName: node, OrganizationalUnit: []string{mgr}, Organization: []string{cluster, cluster}}, ca.Identity{}, ca.ErrBadIdentity},
		{"no OU", pkix.Name{CommonName: node, Organization: []string{cluster}}, ca.Identity{}, ca.ErrBadIdentity},
		{"no O", pkix.Name{CommonName: node, OrganizationalUnit: []string{mgr}}, ca.Identity{}, ca.ErrBadIdentity},
		{"short role in OU", pkix.Name{CommonName: node, OrganizationalUnit: []string{"manager"}, Organization: []string{cluster}}, ca.Identity{}, ca.ErrBadIdentity},
		{"bad CN", pkix.Name{CommonName: "alice", OrganizationalUnit: []string{mgr}, Organization: []string{cluster}}, ca.Identity{}, ca.ErrBadIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.IdentityOf(&x509.Certificate{Subject: tt.subject})
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Errorf("IdentityOf(%s) = %+v, %v, want %+v, %v", tt.subject, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
