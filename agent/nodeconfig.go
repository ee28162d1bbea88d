package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/quorumca/quorumca/ca"
)

// NodeFile is the file under the data directory that records what this node
// is; it is written last when a node inits or joins, so its presence marks a
// data directory that holds a cluster member.
const NodeFile = "node.json"

// ErrNotMember is returned by LoadNodeConfig for a data directory that holds
// no cluster member.
var ErrNotMember = errors.New("agent: data directory holds no cluster member")

// NodeConfig is what a node remembers across restarts.
type NodeConfig struct {
	NodeID    string  `json:"node_id"`
	ClusterID string  `json:"cluster_id"`
	Role      ca.Role `json:"role"`
	// Managers are API addresses of managers to reach the cluster through.
	Managers []string `json:"managers"`
	// Manager-only listen and advertise addresses.
	ListenAddr        string `json:"listen_addr,omitempty"`
	AdvertiseAddr     string `json:"advertise_addr,omitempty"`
	RaftAddr          string `json:"raft_addr,omitempty"`
	RaftAdvertiseAddr string `json:"raft_advertise_addr,omitempty"`
	// Gossip listen and advertise addresses (every node).
	GossipAddr          string `json:"gossip_addr,omitempty"`
	GossipAdvertiseAddr string `json:"gossip_advertise_addr,omitempty"`
}

// SaveNodeConfig writes <dataDir>/node.json atomically.
func SaveNodeConfig(dataDir string, nc NodeConfig) error {
	b, err := json.MarshalIndent(nc, "", "  ")
	if err != nil {
		return fmt.Errorf("agent: encode node config: %w", err)
	}
	return WriteFileAtomic(filepath.Join(dataDir, NodeFile), append(b, '\n'), 0o600)
}

// LoadNodeConfig reads <dataDir>/node.json.
func LoadNodeConfig(dataDir string) (NodeConfig, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, NodeFile))
	if errors.Is(err, os.ErrNotExist) {
		return NodeConfig{}, fmt.Errorf("%w: %s has no %s; run `quorumca init` or `quorumca join` first", ErrNotMember, dataDir, NodeFile)
	}
	if err != nil {
		return NodeConfig{}, fmt.Errorf("agent: %w", err)
	}
	var nc NodeConfig
	if err := json.Unmarshal(b, &nc); err != nil {
		return NodeConfig{}, fmt.Errorf("agent: %s: %w", filepath.Join(dataDir, NodeFile), err)
	}
	return nc, nil
}

// ErrDataDirInUse is returned when init or join is pointed at a data
// directory that already holds a cluster member.
var ErrDataDirInUse = errors.New("data directory already holds a cluster member")

// CheckFresh returns ErrDataDirInUse (naming the node and cluster) if
// dataDir already holds a member, or credentials or Raft state from one.
func CheckFresh(dataDir string) error {
	nc, err := LoadNodeConfig(dataDir)
	if err == nil {
		return fmt.Errorf("%w: %s is node %s of cluster %s; restart it with `quorumca run --data-dir %s`, or remove the directory to start over", ErrDataDirInUse, dataDir, nc.NodeID, nc.ClusterID, dataDir)
	}
	if !errors.Is(err, ErrNotMember) {
		// A node.json that is there but cannot be read still marks a member.
		return fmt.Errorf("%w: %v; remove %s to start over", ErrDataDirInUse, err, filepath.Join(dataDir, NodeFile))
	}
	for _, p := range []string{CertDir(dataDir), filepath.Join(dataDir, "raft")} {
		if exists(p) {
			return fmt.Errorf("%w: %s exists; remove it to start over", ErrDataDirInUse, p)
		}
	}
	return nil
}

// NodeStore is a node's node.json, in memory and on disk: the one place
// that changes it. A role daemon records the managers and gossip address
// it learns; the node records its role. Safe for concurrent use.
type NodeStore struct {
	dir string

	mu sync.Mutex // guards nc and the file
	nc NodeConfig
}

// OpenNodeStore reads <dataDir>/node.json.
func OpenNodeStore(dataDir string) (*NodeStore, error) {
	nc, err := LoadNodeConfig(dataDir)
	if err != nil {
		return nil, err
	}
	return &NodeStore{dir: dataDir, nc: nc}, nil
}

// NewNodeStore writes nc as <dataDir>/node.json and returns it.
func NewNodeStore(dataDir string, nc NodeConfig) (*NodeStore, error) {
	if err := SaveNodeConfig(dataDir, nc); err != nil {
		return nil, err
	}
	return &NodeStore{dir: dataDir, nc: nc}, nil
}

// Get returns a copy of what node.json holds.
func (s *NodeStore) Get() NodeConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	nc := s.nc
	nc.Managers = slices.Clone(nc.Managers)
	return nc
}

// Update changes node.json with change, atomically on disk; on a failed
// write, memory keeps what the disk has.
func (s *NodeStore) Update(change func(*NodeConfig)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.nc
	next.Managers = slices.Clone(next.Managers)
	change(&next)
	if err := SaveNodeConfig(s.dir, next); err != nil {
		return err
	}
	s.nc = next
	return nil
}
