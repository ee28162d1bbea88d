package manager

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/progress"
)

// A root rotation (DESIGN.md flow 5), as the leader drives it:
//
//  1. RotateCA makes the new root (or takes the given one), cross-signs it
//     with the current key (ca.Rotation) and commits StartRotation. The
//     state then signs with the new key; certificates carry the
//     cross-signed root, so they verify under the old root and the new.
//  2. Heartbeats tell every node its certificate is out of date; each
//     renews after a short random wait.
//  3. A node has converged when the state records a certificate of the new
//     CA for it and the node presented that very certificate in an
//     authenticated heartbeat to the leader (mutual TLS: what gossip says
//     about a node proves nothing, as any member holds the gossip key). A
//     node unreachable (no heartbeat for three periods) for longer than
//     the grace is skipped, and named.
//  4. When every node has converged or been skipped, the leader commits
//     CompleteRotation: the bundle becomes the new root alone, both join
//     secrets and the gossip key are replaced. Nodes take the new bundle
//     from their next heartbeat.
//
// Everything the rotation needs is in the replicated state; a new leader
// carries on from step 2 with what its own heartbeats show.

// errNotRotatable is the refusal of RotateCA while a rotation runs.
var errNotRotatable = errors.New("cannot rotate")

// rotationTracker holds the tracker of the rotation in progress
// (progress.Tracker: since when each node is unreachable) between the
// leader's looks. It starts afresh with each term, as the observations it
// is made from do.
type rotationTracker struct {
	mu  sync.Mutex // guards cur and doneSince
	cur progress.Tracker
	// doneSince is when the leader first saw no node hold the rotation
	// back, and has seen so at every look since (zero: not done).
	doneSince time.Time
}

// restart forgets everything, for a new term.
func (t *rotationTracker) restart() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cur = progress.Tracker{}
	t.doneSince = time.Time{}
}

// rotationSettle is how long a rotation must stay done before the leader
// completes it and the bundle drops the old root. A node reports its new
// certificate once its hooks have run, but a hook that signals a server
// (nginx's SIGHUP) returns before the server has reloaded, and a program
// following the files through nodetls looks at them every second by
// default: until they have, they present the certificate of the old root,
// which clients that already took the new bundle would refuse.
const rotationSettle = 2 * time.Second

// settled reports whether a look that found the rotation done (done) at
// now may complete it: once it has been done at every look for
// rotationSettle. The first look that finds it done returns false and
// asks wake to be called when the settle time has passed.
func (t *rotationTracker) settled(done bool, now time.Time, wake func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case !done:
		t.doneSince = time.Time{}
		return false
	case t.doneSince.IsZero():
		t.doneSince = now
		time.AfterFunc(rotationSettle, wake)
		return false
	}
	return now.Sub(t.doneSince) >= rotationSettle
}

// rotationView is the progress of a rotation as one manager sees it.
type rotationView struct {
	info *api.Rotation
	// done is set when no node holds the rotation back.
	done bool
	// skipped are the nodes to name in CompleteRotation.
	skipped []string
}

// viewRotation computes the progress of the rotation in progress in st, or
// of the last completed one, from what this manager heard in heartbeats
// (progress.Rotation), in the API's form. Only the leader hears them all,
// and only the leader's rotation step tracks (records who is down since
// when).
func (m *Manager) viewRotation(st *fsm.State, now time.Time, track bool) rotationView {
	return m.viewRotationOf(st, now, track, nil)
}

// viewRotationOf is viewRotation of the nodes only names (all for nil): a
// page of node ls needs its own nodes' states, not a look at every node.
func (m *Manager) viewRotationOf(st *fsm.State, now time.Time, track bool, only map[string]bool) rotationView {
	in := progress.Input{
		State: st, Observations: m.observations(now), Self: m.node.NodeID, Track: track,
		Now: now, HeartbeatPeriod: m.livePeriod(now),
		// The leader's step (track) needs no list of the nodes.
		Brief: track, Only: only,
	}
	if t, _ := m.term.get(); t != nil {
		in.LeaderSince = t.since
	}
	t := &m.rotation
	t.mu.Lock()
	in.Tracker = t.cur
	p, next := progress.Rotation(in)
	if track {
		m.metrics.markedDown.Add(float64(wentDown(t.cur, next)))
		t.cur = next
	}
	t.mu.Unlock()
	return rotationToAPI(p)
}

// wentDown counts the nodes next holds down that prev did not, for the
// same rotation (a tracker of another rotation starts over).
func wentDown(prev, next progress.Tracker) int {
	n := 0
	for id := range next.DownSince {
		if _, ok := prev.DownSince[id]; !ok || !prev.Rotation.Equal(next.Rotation) {
			n++
		}
	}
	return n
}

// rotationToAPI converts a progress to the API's form, and what the
// leader's step needs of it.
func rotationToAPI(p *progress.Progress) rotationView {
	if p == nil {
		return rotationView{}
	}
	info := &api.Rotation{
		InProgress: p.InProgress, StartedAt: p.StartedAt.Unix(),
		NewRootFingerprint: fingerprint(p.NewBundle), GraceSeconds: int64(p.Grace / time.Second),
		Total: uint32(p.Counts.Total), Converged: uint32(p.Counts.Converged),
		Trusting: uint32(p.Counts.Trusting), Skipped: uint32(p.Counts.Skipped),
	}
	if !p.InProgress {
		info.CompletedAt = p.CompletedAt.Unix()
	}
	for _, n := range p.Nodes {
		rn := &api.RotationNode{Id: n.ID, Role: string(n.Role), State: string(n.State), TrustsNewRoot: n.TrustsNewRoot}
		if !n.DownSince.IsZero() {
			rn.DownSince = n.DownSince.Unix()
		}
		info.Nodes = append(info.Nodes, rn)
	}
	return rotationView{info: info, done: p.Done, skipped: p.Skipped}
}

// observations are what this manager heard of every node, and for itself
// what its own credentials are, as progress takes them.
func (m *Manager) observations(now time.Time) map[string]progress.Observation {
	out := m.obs.progress()
	out[m.node.NodeID] = progress.Observation{
		At:     now,
		Serial: m.creds.Leaf().SerialNumber.Text(16),
		Issuer: m.creds.Issuer(),
		Bundle: agent.BundleDigest(m.creds.Bundle()),
	}
	return out
}

// The leader looks at the rotation (driveRotation) on every tick of its
// loop, and when kicked: when the state's rotation or set of nodes changes
// (rotationMoved), and when a heartbeat shows something new of its node
// (heardNews). A look costs O(N) for N nodes: kicking it at every
// applied command, N renewals per rotation, would cost O(N²).

// rotationMoved reports whether the state next may show another progress
// than prev (nil for none) did, as far as the state goes: another rotation
// or none, another grace, or, while one is in progress, another set of
// nodes. A renewal alone does not: the node converges when it presents
// the new certificate, and the heartbeat that shows it kicks.
func rotationMoved(prev, next *fsm.State) bool {
	switch {
	case prev == nil || prev.Rotation != next.Rotation:
		return true
	case next.Rotation == nil:
		return false
	case prev.Grace() != next.Grace():
		return true
	}
	return !sameNodes(prev, next)
}

// sameNodes reports whether the states hold the same set of node IDs:
// fsm.NodeMap.SameIDs, which looks only at what changed between them (a
// renewal changes no ID), so that the leader's watch of a large cluster
// in a rotation does not walk every node at every applied command.
func sameNodes(prev, next *fsm.State) bool {
	return prev.Nodes.SameIDs(next.Nodes)
}

// rotationWindow is how many heartbeat periods from a rotation's start
// its renewals are spread over.
const rotationWindow = 3

// rotationJitter is the most a node told to renew for the rotation
// started at start waits, at random, before it renews: what is left of a
// window of rotationWindow heartbeat periods from the start, so that the
// last renewal is due then, yet never under half a period (a node that
// hears late: after a leader change, or back from down) nor under least.
// Every node hears within a period; those that hear early spread over
// more of the window. About ln(3/2) = 0.4 N renewals a period fall due
// at the most, half the leader's heartbeat rate: each renewal also costs
// a TLS handshake (the node reconnects with its new certificate), and a
// storm that outruns the CPU collapses into timeouts and retries.
func rotationJitter(start, now time.Time, period, least time.Duration) time.Duration {
	left := start.Add(rotationWindow * period).Sub(now)
	return max(left, period/2, least)
}

// heardNews reports whether a heartbeat's observation ob may change the
// rotation's progress from what the node's previous observation prev (ok:
// there was one) showed: the node presents another certificate or holds
// another bundle, or it is heard again after being silent (down, by the
// heartbeat period, as progress.Live counts it).
func heardNews(prev observation, ok bool, ob observation, period time.Duration) bool {
	return !ok || prev.serial != ob.serial || !prev.issuer.Equal(ob.issuer) || prev.bundle != ob.bundle ||
		!progress.Live(prev.at, ob.at, period, time.Time{})
}

// driveRotation is the leader's step of the rotation in progress: complete
// it when no node holds it back.
func (m *Manager) driveRotation(ctx context.Context) {
	st := m.machine.State()
	if !st.Initialized() || st.Rotation == nil {
		return
	}
	now := m.cfg.Now()
	view := m.viewRotation(st, now, true)
	if !m.rotation.settled(view.done, now, m.kickRotation) {
		return
	}
	worker, err := ca.NewSecret(m.cfg.Rand)
	if err != nil {
		m.log.Error("rotation: new join secret", "err", err)
		return
	}
	manager, err := ca.NewSecret(m.cfg.Rand)
	if err != nil {
		m.log.Error("rotation: new join secret", "err", err)
		return
	}
	gossipKey, err := m.newGossipKey()
	if err != nil {
		m.log.Error("rotation: new gossip key", "err", err)
		return
	}
	next, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), CompleteRotation: &fsm.CompleteRotation{
		Skipped: view.skipped, WorkerSecret: worker, ManagerSecret: manager, GossipKey: gossipKey,
	}})
	if err != nil {
		m.log.Warn("rotation: complete", "err", err)
		return
	}
	m.rotation.settled(false, now, nil) // the next rotation settles anew
	took := next.LastRotation.CompletedAt.Sub(next.LastRotation.StartedAt)
	if len(view.skipped) > 0 {
		m.log.Warn("root rotation completed without unreachable nodes: they must rejoin", "skipped", view.skipped, "took", took)
	} else {
		m.log.Info("root rotation completed", "root", fingerprint(next.CA.Bundle), "nodes", view.info.Total, "took", took)
	}
}

// RotateCA starts a root rotation on the leader.
func (s controlService) RotateCA(ctx context.Context, req *api.RotateCARequest) (*api.RotateCAResponse, error) {
	m := s.m
	expiry := time.Duration(req.GetCertExpirySeconds()) * time.Second
	if req.GetCertExpirySeconds() < 0 || (expiry != 0 && expiry < ca.MinCertExpiry) {
		return nil, fmt.Errorf("%w: --cert-expiry %s is under the minimum of %s", fsm.ErrBadCommand, expiry, ca.MinCertExpiry)
	}
	external := externalFromAPI(req.GetExternalCa())
	if err := fsm.CheckExternal(external); err != nil {
		return nil, err
	}
	if len(external) == 0 && (len(req.GetCaCert()) == 0) != (len(req.GetCaKey()) == 0) {
		return nil, fmt.Errorf("%w: --ca-cert and --ca-key go together", fsm.ErrBadCommand)
	}
	st := m.machine.State()
	if !st.Initialized() {
		return nil, fsm.ErrNotInitialized
	}
	if r := st.Rotation; r != nil {
		return nil, fmt.Errorf("%w: a root rotation is in progress since %s; follow it with `quorumca ca`", errNotRotatable, r.StartedAt.Format(time.RFC3339))
	}
	next, rootKey, err := m.nextCA(ctx, st, req, external)
	if err != nil {
		return nil, err
	}
	now := m.cfg.Now()
	newRoot, err := ca.CheckNewCA(st.CA, next)
	if err != nil {
		return nil, err
	}
	rot, err := m.crossSign(ctx, st, next, newRoot, rootKey, external, now)
	if err != nil {
		return nil, err
	}
	after, err := m.propose(ctx, fsm.Command{At: now, StartRotation: &fsm.StartRotation{
		CA: rot, Chain: next.Chain, Bundle: next.Bundle, CertExpiry: expiry, External: external,
	}})
	if err != nil {
		return nil, err
	}
	m.log.Info("root rotation started", "new_root", fingerprint(next.Bundle), "nodes", after.Nodes.Len(), "external_cas", len(external), "by", callOf(ctx).actor())
	m.kickRotation()
	return &api.RotateCAResponse{Rotation: m.viewRotation(after, m.cfg.Now(), false).info}, nil
}

// crossSign makes the signing material of a rotation to next: the current
// key (or external CA) cross-signs the new root.
func (m *Manager) crossSign(ctx context.Context, st *fsm.State, next ca.Material, newRoot *x509.Certificate, rootKey crypto.Signer, external []fsm.ExternalCA, now time.Time) (ca.Material, error) {
	switch {
	case st.Signs():
		return ca.Rotation(m.cfg.Rand, now, st.CA, next)
	case rootKey == nil && len(external) == 0:
		return ca.Material{}, fmt.Errorf("%w: the current CA is external: it must cross-sign the new root, and that request is signed with the root's key, which the cluster does not have for an issuing CA with a chain; rotate to a generated root, or to a CA that signs with its root", errNotRotatable)
	case rootKey == nil:
		return ca.Material{}, fmt.Errorf("%w: the current CA is external: it must cross-sign the new root, and that request is signed with the new root's key; give the key of the new root with --ca-key (it is used once and not stored), or rotate to a generated root", errNotRotatable)
	}
	cross, err := m.crossSignExternal(ctx, st, newRoot, rootKey)
	if err != nil {
		return ca.Material{}, err
	}
	return ca.RotationWith(st.CA, next, cross)
}

// nextCA is the CA a rotation goes to: the external CAs' (asked for
// their certificate), the one given, or a new root. rootKey is the new
// root's key when it is known, for an external CA to cross-sign.
func (m *Manager) nextCA(ctx context.Context, st *fsm.State, req *api.RotateCARequest, external []fsm.ExternalCA) (next ca.Material, rootKey crypto.Signer, err error) {
	now := m.cfg.Now()
	switch {
	case len(external) > 0:
		if next, err = m.externalMaterial(ctx, external, req.GetCaCert(), st.ClusterID); err != nil {
			return ca.Material{}, nil, err
		}
		if len(req.GetCaKey()) > 0 {
			if st.Signs() {
				return ca.Material{}, nil, fmt.Errorf("%w: --ca-key goes with --external-ca only when the current CA is external too (for it to cross-sign the new root); the cluster's own key cross-signs now", fsm.ErrBadCommand)
			}
			if rootKey, err = ca.ParseKey(req.GetCaKey()); err != nil {
				return ca.Material{}, nil, fmt.Errorf("--ca-key: %w", err)
			}
		}
	case len(req.GetCaCert()) > 0:
		if next, err = ca.Import(req.GetCaCert(), req.GetCaKey(), now); err != nil {
			return ca.Material{}, nil, err
		}
	default:
		if next, err = ca.GenerateRoot(m.cfg.Rand, now, st.ClusterID); err != nil {
			return ca.Material{}, nil, err
		}
	}
	if rootKey == nil && len(next.Key) > 0 && len(next.Chain) == 0 {
		// The new CA signs with its root: its key is the root's.
		if rootKey, err = ca.ParseKey(next.Key); err != nil {
			return ca.Material{}, nil, err
		}
	}
	return next, rootKey, nil
}

// GetCA returns the bundle and the rotation's progress, as the leader sees
// it.
func (s controlService) GetCA(ctx context.Context, _ *api.GetCARequest) (*api.GetCAResponse, error) {
	st := s.m.machine.State()
	if !st.Initialized() {
		return nil, fsm.ErrNotInitialized
	}
	return &api.GetCAResponse{
		Bundle:     st.CA.Bundle,
		Rotation:   s.m.viewRotation(st, s.m.cfg.Now(), false).info,
		ExternalCa: externalToAPI(st.External),
	}, nil
}
