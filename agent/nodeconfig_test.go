package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/quorumca/quorumca/ca"
)

func TestNodeConfigRoundTrip(t *testing.T) {
	tests := []NodeConfig{
		{NodeID: "n1", ClusterID: "c1", Role: ca.RoleWorker, Managers: []string{"10.0.0.1:2377"}},
		{
			NodeID: "n2", ClusterID: "c1", Role: ca.RoleManager,
			Managers:   []string{"10.0.0.1:2377", "10.0.0.2:2377"},
			ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "10.0.0.2:2377",
			RaftAddr: "0.0.0.0:2378", RaftAdvertiseAddr: "10.0.0.2:2378",
		},
	}
	for _, nc := range tests {
		t.Run(nc.NodeID, func(t *testing.T) {
			dataDir := t.TempDir()
			if err := SaveNodeConfig(dataDir, nc); err != nil {
				t.Fatalf("SaveNodeConfig() = %v", err)
			}
			got, err := LoadNodeConfig(dataDir)
			if err != nil || !reflect.DeepEqual(got, nc) {
				t.Errorf("LoadNodeConfig() = %+v, %v, want %+v", got, err, nc)
			}
			if m := mode(t, filepath.Join(dataDir, NodeFile)); m != 0o600 {
				t.Errorf("mode of %s = %v, want 0600", NodeFile, m)
			}
		})
	}
}

func TestLoadNodeConfigMissing(t *testing.T) {
	if _, err := LoadNodeConfig(t.TempDir()); !errors.Is(err, ErrNotMember) {
		t.Errorf("LoadNodeConfig(empty dir) = %v, want %v", err, ErrNotMember)
	}
}

func TestLoadNodeConfigCorrupt(t *testing.T) {
	dataDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dataDir, NodeFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadNodeConfig(dataDir)
	if err == nil || errors.Is(err, ErrNotMember) {
		t.Errorf("LoadNodeConfig(corrupt) = %v, want an error other than %v", err, ErrNotMember)
	}
}

func TestCheckFresh(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dataDir string)
		inUse bool
	}{
		{name: "empty", setup: func(*testing.T, string) {}},
		{name: "does not exist yet", setup: func(t *testing.T, dataDir string) {
			if err := os.Remove(dataDir); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "unrelated file", setup: func(t *testing.T, dataDir string) {
			if err := os.WriteFile(filepath.Join(dataDir, "notes.txt"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "node.json", inUse: true, setup: func(t *testing.T, dataDir string) {
			if err := SaveNodeConfig(dataDir, NodeConfig{NodeID: "n", ClusterID: "c", Role: ca.RoleWorker}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "unreadable node.json", inUse: true, setup: func(t *testing.T, dataDir string) {
			if err := os.WriteFile(filepath.Join(dataDir, NodeFile), []byte("{not json"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "certificates", inUse: true, setup: func(t *testing.T, dataDir string) {
			if err := os.Mkdir(CertDir(dataDir), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "raft", inUse: true, setup: func(t *testing.T, dataDir string) {
			if err := os.Mkdir(filepath.Join(dataDir, "raft"), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			if err := os.Mkdir(dataDir, 0o700); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, dataDir)
			err := CheckFresh(dataDir)
			if tt.inUse && !errors.Is(err, ErrDataDirInUse) {
				t.Errorf("CheckFresh(%s) = %v, want %v", tt.name, err, ErrDataDirInUse)
			}
			if !tt.inUse && err != nil {
				t.Errorf("CheckFresh(%s) = %v, want nil", tt.name, err)
			}
		})
	}
}
