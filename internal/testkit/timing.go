package testkit

import "time"

// The timings of the tests, in one place.
const (
	// Raft timings of the in-process clusters and of raft's own tests:
	// hashicorp/raft's defaults (the product's too). Shorter ones made
	// leaders step down spuriously when `go test ./...` runs other
	// packages' tests beside a cluster on two cores, under -race.
	RaftHeartbeat = time.Second
	RaftElection  = time.Second
	RaftLease     = 500 * time.Millisecond
	// ApplyTimeout bounds one Raft commit.
	ApplyTimeout = 3 * time.Second

	// HeartbeatPeriod is how often the nodes of a test cluster heartbeat
	// to the leader; ReconcilePeriod how often the leader reconciles the
	// voters and prunes; RotationJitter bounds the wait of a node before
	// it renews for a root rotation.
	HeartbeatPeriod = 300 * time.Millisecond
	ReconcilePeriod = 200 * time.Millisecond
	RotationJitter  = 200 * time.Millisecond

	// ExternalTimeout bounds one request to an external CA in the unit
	// tests of its client: short, so that a CA that does not answer costs
	// half a second, and long enough for a TLS handshake on 127.0.0.1
	// under -race. A cluster, which signs through a real cfssl while its
	// nodes heartbeat, takes ClusterExternalTimeout. ExternalSkip is how
	// long a CA that failed is tried last; ExternalBound how long a call
	// that should fail fast may take.
	ExternalTimeout        = 500 * time.Millisecond
	ClusterExternalTimeout = 2 * time.Second
	ExternalSkip           = 30 * time.Second
	ExternalBound          = 3 * time.Second

	// Wait bounds every poll for something to happen, and every call a
	// test makes that should answer; PollEvery is the pause between two
	// looks at a polled condition.
	Wait      = 20 * time.Second
	PollEvery = 20 * time.Millisecond
)
