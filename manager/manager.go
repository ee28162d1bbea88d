package manager

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/raft"
)

// RaftDir is the Raft directory's name under the data directory.
const RaftDir = "raft"

// Manager is a manager daemon: Init or Open makes one, Run runs it.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	store   *agent.NodeStore
	node    agent.NodeConfig // as at Open: the identity and addresses do not change
	creds   *agent.Credentials
	machine *fsm.Machine
	raft    *raft.Node
	// fresh is set when the node had no Raft state at Open (it joined or
	// was promoted): Run asks the leader to make it a voter.
	fresh bool

	apiLn, raftLn     net.Listener
	apiAddr, raftAddr string
	server            *grpc.Server
	peers             *peerConns
	renewer           *agent.Renewer
	gossip            *agent.Gossip

	signers signerCache
	roots   atomic.Pointer[parsedBundle] // this manager's bundle, parsed
	extMu   sync.Mutex                   // guards ext
	ext     *externalCA                  // client of the external CAs, when the cluster uses them
	// obs is what the leader heard in heartbeats; term is this manager's
	// leadership, nil while it does not lead.
	obs  observations
	term leadership
	// anonymous holds a token per call without a certificate in progress.
	anonymous chan struct{}
	// signing holds a token per renewal being signed and committed
	// (Config.MaxConcurrentSigns); periods are the heartbeat periods told.
	signing      chan struct{}
	signWaiting  atomic.Int64
	periods      periods
	digests      atomic.Pointer[digestCache]
	rotation     rotationTracker
	rotationKick chan struct{}
	metrics      *metrics

	mu   sync.Mutex              // guards quit
	quit context.CancelCauseFunc // ends Run, with its reason
	// ready is closed once Run serves (and, for a fresh manager, is a
	// voter).
	ready     chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Ready is closed once Run serves the API and, for a manager that had no
// Raft state, the leader made it a voter.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Addr returns the advertised API address.
func (m *Manager) Addr() string { return m.apiAddr }

// RaftAddr returns the advertised Raft address.
func (m *Manager) RaftAddr() string { return m.raftAddr }

// NodeID returns this manager's node ID.
func (m *Manager) NodeID() string { return m.node.NodeID }

// ClusterID returns the cluster ID.
func (m *Manager) ClusterID() string { return m.node.ClusterID }

// IsLeader reports whether this manager is the Raft leader.
func (m *Manager) IsLeader() bool { return m.raft.IsLeader() }

// State returns the replicated state as this manager has applied it.
func (m *Manager) State() *fsm.State { return m.machine.State() }

// Credentials returns this manager's own credentials.
func (m *Manager) Credentials() *agent.Credentials { return m.creds }

// Store returns the node's node.json.
func (m *Manager) Store() *agent.NodeStore { return m.store }

// Gossip returns this manager's gossip.
func (m *Manager) Gossip() *agent.Gossip { return m.gossip }

// Renewer returns the renewer of this manager's own certificate.
func (m *Manager) Renewer() *agent.Renewer { return m.renewer }
