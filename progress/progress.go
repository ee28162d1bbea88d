// Package progress computes how far a root CA rotation (DESIGN.md flow 5)
// has come, as the leader sees it: which nodes serve a certificate of the
// new CA, which were issued one but still present the old, which have yet
// to renew, which are down and since when, which are skipped for being
// down longer than the grace, and whether the rotation can complete.
//
// It is pure, like fsm beside it: Rotation is a deterministic function of
// the replicated state, of what the leader heard in authenticated
// heartbeats, of the tracker it keeps between looks, and of the time,
// which comes in as an argument. It reads no clock, starts no goroutine,
// touches no network or disk, and changes none of its inputs. The manager
// turns its result into the API's form and keeps the tracker.
package progress

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// NodeState is a node's state in a rotation.
type NodeState string

// The states of a node in a rotation in progress. After it completes, a
// node is Converged, or Skipped if the rotation went on without it.
const (
	// Converged: the state records a certificate of the new CA for the
	// node, and the node presented that very certificate in its last
	// heartbeat.
	Converged NodeState = "converged"
	// Renewed: the state records a certificate of the new CA for the
	// node, which has not presented it yet.
	Renewed NodeState = "renewed"
	// Pending: the node has no certificate of the new CA yet.
	Pending NodeState = "pending"
	// Down: the node is unreachable, for less than the grace (or for how
	// long, untracked).
	Down NodeState = "down"
	// Skipped: the node has been unreachable for longer than the grace;
	// the rotation goes on without it, and it must rejoin.
	Skipped NodeState = "skipped"
)

// LiveWindow is how many heartbeat periods a node may be silent before it
// is taken for down; and how long after a manager became the leader it
// takes no node for down, as not all of them have reached it yet.
const LiveWindow = 3

// Observation is what the leader learnt of a node from its last
// authenticated heartbeat (mutual TLS: what gossip says about a node
// proves nothing).
type Observation struct {
	// At is when the node was last heard from (a heartbeat, a renewal,
	// its join). Zero if never.
	At time.Time
	// Serial (hex) and Issuer name the certificate the node presented in
	// its last heartbeat; zero until it heartbeats.
	Serial string
	Issuer ca.TLSStatus
	// Bundle is the digest of the trust bundle the node holds, as it said
	// in its last heartbeat: BundleDigest of it.
	Bundle string
}

// Tracker is what the leader remembers of the rotation in progress
// between looks: since when each node is unreachable. A new term starts
// from the zero Tracker, which follows no rotation.
type Tracker struct {
	// Rotation is the start of the rotation DownSince belongs to.
	Rotation time.Time
	// DownSince holds, by node ID, when the node was first seen down
	// (and not seen alive since). Nil when the tracker follows no
	// rotation. Never changed in place: Rotation returns a new map.
	DownSince map[string]time.Time
}

// Input is everything a rotation's progress is computed from.
type Input struct {
	// State is the replicated state.
	State *fsm.State
	// Observations holds what the leader heard of each node, by node ID;
	// a node missing was never heard from.
	Observations map[string]Observation
	// Self is the node ID of the manager that looks: it is alive, and its
	// observation is of its own credentials.
	Self string
	// Tracker is the tracker as the last look that tracked left it.
	Tracker Tracker
	// Track is set for the leader's rotation step, which records who is
	// down since when (the Tracker returned); looks that do not track
	// (status calls) show the tracker as it is, and return it unchanged.
	Track bool
	// Now is the time of the look.
	Now time.Time
	// HeartbeatPeriod is how often nodes heartbeat to the leader.
	HeartbeatPeriod time.Duration
	// LeaderSince is when this manager's leadership began; zero when it
	// does not lead.
	LeaderSince time.Time
	// Brief leaves Progress.Nodes out: the leader's rotation step needs
	// only the counts, Done and Skipped, and looks often in a large
	// cluster.
	Brief bool
	// Only, when set, limits the look to the nodes it names (a page of
	// node ls): the Progress then covers those alone, counts and Done
	// included.
	Only map[string]bool
}

// Node is one node's part in a rotation.
type Node struct {
	ID    string
	Role  ca.Role
	State NodeState
	// DownSince is when the node was first seen down, for a node Down or
	// Skipped in a tracked rotation; zero otherwise.
	DownSince time.Time
	// TrustsNewRoot is set when the node said, in its last heartbeat, it
	// holds the bundle the rotation goes to.
	TrustsNewRoot bool
}

// Counts sums a rotation's nodes up.
type Counts struct {
	// Total is the number of nodes in the cluster.
	Total int
	// Converged counts the Converged nodes of a rotation in progress
	// (zero once it completed).
	Converged int
	// Trusting counts the nodes that hold the new bundle.
	Trusting int
	// Skipped counts the Skipped nodes.
	Skipped int
}

// Progress is a rotation's progress as one manager sees it.
type Progress struct {
	// InProgress is set for the rotation in progress, clear for the last
	// completed one.
	InProgress bool
	// StartedAt and CompletedAt (zero while in progress) are the
	// leader's times in the state.
	StartedAt, CompletedAt time.Time
	// Grace is how long a node may be down before it is skipped.
	Grace time.Duration
	// NewBundle is the bundle the rotation goes to.
	NewBundle []byte
	// Nodes lists every node of the state, managers first, then by ID.
	Nodes  []Node
	Counts Counts
	// Skipped names the nodes a completion must name: those Skipped in
	// the rotation in progress, in the order of Nodes.
	Skipped []string
	// Done is set when the rotation is in progress and no node holds it
	// back: every node is Converged or Skipped.
	Done bool
}

// Rotation computes the progress of the rotation in progress in
// in.State, or of the last one that completed, and the tracker's next
// value (in.Tracker itself unless in.Track). It returns a nil Progress
// when the state holds neither.
func Rotation(in Input) (*Progress, Tracker) {
	st := in.State
	tracker := in.Tracker
	if st == nil || (st.Rotation == nil && st.LastRotation == nil) {
		return nil, tracker
	}
	p := &Progress{Grace: st.Grace(), NewBundle: st.CA.Bundle}
	r := st.Rotation
	if r != nil {
		p.InProgress, p.StartedAt, p.NewBundle = true, r.StartedAt, r.Bundle
	} else {
		p.StartedAt, p.CompletedAt = st.LastRotation.StartedAt, st.LastRotation.CompletedAt
	}
	wantBundle := BundleDigest(p.NewBundle)

	if r != nil && in.Track {
		if tracker.DownSince == nil || !tracker.Rotation.Equal(r.StartedAt) {
			tracker = Tracker{Rotation: r.StartedAt, DownSince: map[string]time.Time{}}
		} else {
			tracker = Tracker{Rotation: tracker.Rotation, DownSince: maps.Clone(tracker.DownSince)}
		}
	}
	ours := r != nil && tracker.DownSince != nil && tracker.Rotation.Equal(r.StartedAt)
	p.Done = r != nil
	// The nodes are visited in the state's order (no sort of them all at
	// every look); what is returned is sorted as SortedNodes sorts.
	var skipped []Node
	for _, n := range st.Nodes.All() {
		if in.Only != nil && !in.Only[n.ID] {
			continue
		}
		ob := in.Observations[n.ID]
		issued := n.Cert.Issuer.Equal(st.CAStatus)
		serves := issued && ob.Serial == n.Cert.Serial && ob.Issuer.Equal(st.CAStatus)
		pn := Node{ID: n.ID, Role: n.Role, TrustsNewRoot: ob.Bundle == wantBundle}
		if pn.TrustsNewRoot {
			p.Counts.Trusting++
		}
		p.Counts.Total++
		if r == nil {
			// After completion only the new root's spread is left to see.
			pn.State = Converged
			if st.WasSkipped(n.ID) {
				pn.State = Skipped
				p.Counts.Skipped++
			}
			if !in.Brief {
				p.Nodes = append(p.Nodes, pn)
			}
			continue
		}
		reachable := n.ID == in.Self || Live(ob.At, in.Now, in.HeartbeatPeriod, in.LeaderSince)
		if in.Track {
			if reachable {
				delete(tracker.DownSince, n.ID)
			} else if _, ok := tracker.DownSince[n.ID]; !ok {
				tracker.DownSince[n.ID] = in.Now
			}
		}
		since, seenDown := tracker.DownSince[n.ID]
		seenDown = seenDown && ours
		switch {
		case serves:
			pn.State = Converged
			p.Counts.Converged++
		case !reachable:
			pn.State = Down
			if seenDown {
				pn.DownSince = since
				if in.Now.Sub(since) >= st.Grace() {
					pn.State = Skipped
					p.Counts.Skipped++
					skipped = append(skipped, pn)
					break
				}
			}
			p.Done = false
		case issued:
			pn.State = Renewed
			p.Done = false
		default:
			pn.State = Pending
			p.Done = false
		}
		if !in.Brief {
			p.Nodes = append(p.Nodes, pn)
		}
	}
	slices.SortFunc(p.Nodes, byRoleAndID)
	slices.SortFunc(skipped, byRoleAndID)
	for _, n := range skipped {
		p.Skipped = append(p.Skipped, n.ID)
	}
	return p, tracker
}

// byRoleAndID orders nodes as fsm.State.SortedNodes does: managers first,
// then by ID.
func byRoleAndID(a, b Node) int {
	if (a.Role == ca.RoleManager) != (b.Role == ca.RoleManager) {
		if a.Role == ca.RoleManager {
			return -1
		}
		return 1
	}
	return strings.Compare(a.ID, b.ID)
}

// Live reports whether a node last heard from at heard (zero for never) is
// alive at now: heard within LiveWindow heartbeat periods, or this manager
// became the leader (at leaderSince; zero when it does not lead) less than
// LiveWindow periods ago, when not every node has reached it yet.
func Live(heard, now time.Time, period time.Duration, leaderSince time.Time) bool {
	window := LiveWindow * period
	if !leaderSince.IsZero() && now.Sub(leaderSince) < window {
		return true
	}
	return !heard.IsZero() && now.Sub(heard) < window
}

// BundleDigest is the digest of a trust bundle nodes send in heartbeats:
// the SHA-256 of the whole bundle, in hex (agent.BundleDigest, which the
// manager's tests hold it equal to).
func BundleDigest(bundle []byte) string {
	sum := sha256.Sum256(bundle)
	return hex.EncodeToString(sum[:])
}
