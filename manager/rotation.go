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
	"github.com/quorumca/quorumca/membership"
)

// A root rotation (DESIGN.md flow 5), as the leader drives it:
//
//  1. RotateCA makes the new root (or takes the given one), cross-signs it
//     with the current key (ca.Rotation) and commits StartRotation. The
//     state then signs with the new key; certificates carry the
//     cross-signed root, so they verify under the old root and the new.
//  2. Heartbeats tell every node its certificate is out of date; each
//     renews after a short random wait.
//  3. Nodes advertise in gossip the serial and issuer of the certificate
//     they serve. A node has converged when the state records a
//     certificate of the new CA for it and its gossip says it serves that
//     very certificate. A node unreachable (neither in gossip nor
//     heartbeating) for longer than the grace is skipped, and named.
//  4. When every node has converged or been skipped, the leader commits
//     CompleteRotation: the bundle becomes the new root alone, and both join
//     secrets are replaced. Nodes take the new bundle from their next
//     heartbeat.
//
// Everything the rotation needs is in the replicated state, so a new leader
// simply carries on from step 2.

// errNotRotatable is the refusal of RotateCA while a rotation runs.
var errNotRotatable = errors.New("cannot rotate")

// rotationTracker is what the leader remembers between checks, for the
// rotation in progress: since when each node is unreachable, and which
// nodes gossip has confirmed.
type rotationTracker struct {
	mu        sync.Mutex // guards the fields below
	started   time.Time  // the rotation these belong to
	downSince map[string]time.Time
	confirmed map[string]string // node ID -> serial confirmed
	// observed is when the leader last looked: a gap means this manager
	// was not leading meanwhile, and its down times are stale.
	observed time.Time
}

// reset forgets what belongs to another rotation.
func (t *rotationTracker) reset(started time.Time) {
	if t.started.Equal(started) && t.downSince != nil {
		return
	}
	t.started = started
	t.downSince = map[string]time.Time{}
	t.confirmed = map[string]string{}
}

// rotationView is the progress of a rotation as one manager sees it.
type rotationView struct {
	info *api.Rotation
	// done is set when no node holds the rotation back.
	done bool
	// skipped are the nodes to name in CompleteRotation.
	skipped []string
}

// Node states in a rotation.
const (
	rotConverged = "converged"
	rotRenewed   = "renewed"
	rotPending   = "pending"
	rotDown      = "down"
	rotSkipped   = "skipped"
)

// viewRotation computes the progress of the rotation in progress in st, or
// of the last completed one, from this manager's gossip view. Only the
// leader's rotation step tracks (records who is down since when, and who
// confirmed); other views only read what it recorded.
func (m *Manager) viewRotation(st *fsm.State, now time.Time, track bool) rotationView {
	if st.Rotation == nil && st.LastRotation == nil {
		return rotationView{}
	}
	peers := map[string]membership.Peer{}
	gossipUp := false
	if g := m.gossip.Load(); g != nil {
		if mem := g.Member(); mem != nil {
			gossipUp = true
			for _, p := range mem.Peers() {
				peers[p.NodeID] = p
			}
		}
	}
	grace := st.Grace()
	info := &api.Rotation{GraceSeconds: int64(grace / time.Second)}
	var newBundle []byte
	if r := st.Rotation; r != nil {
		info.InProgress = true
		info.StartedAt = r.StartedAt.Unix()
		newBundle = r.Bundle
	} else {
		info.StartedAt = st.LastRotation.StartedAt.Unix()
		info.CompletedAt = st.LastRotation.CompletedAt.Unix()
		newBundle = st.CA.Bundle
	}
	info.NewRootFingerprint = fingerprint(newBundle)
	wantIssuer := membership.StatusDigest(st.CAStatus)
	wantBundle := membership.BundleDigest(newBundle)

	t := &m.rotation
	t.mu.Lock()
	defer t.mu.Unlock()
	if st.Rotation != nil && track {
		t.reset(st.Rotation.StartedAt)
		if !t.observed.IsZero() && now.Sub(t.observed) > 3*m.cfg.ReconcilePeriod {
			clear(t.downSince)
		}
		t.observed = now
	}
	view := rotationView{info: info, done: st.Rotation != nil && gossipUp}
	for _, n := range st.SortedNodes() {
		rn := &api.RotationNode{Id: n.ID, Role: string(n.Role)}
		var meta membership.Meta
		alive := false
		if n.ID == m.node.NodeID {
			meta, alive = agent.MetaOf(m.creds), true
		} else if p, ok := peers[n.ID]; ok && p.MetaErr == nil {
			meta, alive = p.Meta, true
		}
		issued := n.Cert.Issuer.Equal(st.CAStatus)
		serves := alive && issued && meta.Serial == n.Cert.Serial && meta.Issuer == wantIssuer
		rn.TrustsNewRoot = alive && meta.Bundle == wantBundle
		if st.Rotation == nil {
			// After completion only the new root's spread is left to see.
			rn.State = rotConverged
			if st.WasSkipped(n.ID) {
				rn.State = rotSkipped
				info.Skipped++
			}
			if rn.TrustsNewRoot {
				info.Trusting++
			}
			info.Total++
			info.Nodes = append(info.Nodes, rn)
			continue
		}
		reachable := alive || m.live(n.ID, now)
		if track {
			if serves {
				t.confirmed[n.ID] = n.Cert.Serial
			}
			if reachable {
				delete(t.downSince, n.ID)
			} else if _, ok := t.downSince[n.ID]; !ok && gossipUp {
				t.downSince[n.ID] = now
			}
		}
		since, seenDown := t.downSince[n.ID]
		confirmed := t.confirmed[n.ID] == n.Cert.Serial
		if st.Rotation != nil && !t.started.Equal(st.Rotation.StartedAt) {
			// What the tracker holds is another rotation's.
			since, seenDown, confirmed = time.Time{}, false, false
		}
		switch {
		case issued && (serves || confirmed):
			rn.State = rotConverged
			info.Converged++
		case !reachable:
			rn.State = rotDown
			if seenDown {
				rn.DownSince = since.Unix()
				if now.Sub(since) >= grace {
					rn.State = rotSkipped
					info.Skipped++
					view.skipped = append(view.skipped, n.ID)
					break
				}
			}
			view.done = false
		case issued:
			rn.State = rotRenewed
			view.done = false
		default:
			rn.State = rotPending
			view.done = false
		}
		if rn.TrustsNewRoot {
			info.Trusting++
		}
		info.Total++
		info.Nodes = append(info.Nodes, rn)
	}
	return view
}

// driveRotation is the leader's step of the rotation in progress: complete
// it when no node holds it back.
func (m *Manager) driveRotation(ctx context.Context) {
	st := m.machine.State()
	if !st.Initialized() || st.Rotation == nil {
		return
	}
	view := m.viewRotation(st, m.cfg.Now(), true)
	if !view.done {
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
	next, err := m.propose(ctx, fsm.Command{At: m.cfg.Now(), CompleteRotation: &fsm.CompleteRotation{
		Skipped: view.skipped, WorkerSecret: worker, ManagerSecret: manager,
	}})
	if err != nil {
		m.log.Warn("rotation: complete", "err", err)
		return
	}
	took := next.LastRotation.CompletedAt.Sub(next.LastRotation.StartedAt)
	if len(view.skipped) > 0 {
		m.log.Warn("root rotation completed without unreachable nodes: they must rejoin", "skipped", view.skipped, "took", took)
	} else {
		m.log.Info("root rotation completed", "root", fingerprint(next.CA.Bundle), "nodes", view.info.Total, "took", took)
	}
}

// followBundle keeps this manager's own trust bundle equal to the state's:
// after a rotation completes, the old root stops being trusted here at
// once, not at the next heartbeat.
func (m *Manager) followBundle(ctx context.Context) {
	for {
		st, changed := m.machine.Watch()
		if st.Initialized() && st.Rotation == nil && string(st.CA.Bundle) != string(m.creds.Bundle()) {
			if err := m.creds.UpdateBundle(st.CA.Bundle, m.cfg.Now()); err != nil {
				m.log.Warn("this manager's certificate does not verify under the new bundle; renewing", "err", err)
				m.renewer.RenewSoon()
			} else {
				m.log.Info("trust bundle updated", "root", fingerprint(st.CA.Bundle))
			}
		}
		m.kickRotation()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// kickRotation asks the leader loop to look at the rotation now.
func (m *Manager) kickRotation() {
	select {
	case m.rotationKick <- struct{}{}:
	default:
	}
}

func (s *service) RotateCA(ctx context.Context, req *api.RotateCARequest) (*api.RotateCAResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	expiry := time.Duration(req.GetCertExpirySeconds()) * time.Second
	if req.GetCertExpirySeconds() < 0 || (expiry != 0 && expiry < ca.MinCertExpiry) {
		return nil, toStatus(fmt.Errorf("%w: --cert-expiry %s is under the minimum of %s", fsm.ErrBadCommand, expiry, ca.MinCertExpiry))
	}
	external := externalFromAPI(req.GetExternalCa())
	if err := fsm.CheckExternal(external); err != nil {
		return nil, toStatus(err)
	}
	if len(external) == 0 && (len(req.GetCaCert()) == 0) != (len(req.GetCaKey()) == 0) {
		return nil, toStatus(fmt.Errorf("%w: --ca-cert and --ca-key go together", fsm.ErrBadCommand))
	}
	return leaderOnly(ctx, s.m, c, req, func() (*api.RotateCAResponse, error) {
		m := s.m
		st := m.machine.State()
		if !st.Initialized() {
			return nil, toStatus(fsm.ErrNotInitialized)
		}
		if r := st.Rotation; r != nil {
			return nil, toStatus(fmt.Errorf("%w: a root rotation is in progress since %s; follow it with `quorumca ca`", errNotRotatable, r.StartedAt.Format(time.RFC3339)))
		}
		next, rootKey, err := m.nextCA(ctx, st, req, external)
		if err != nil {
			return nil, toStatus(err)
		}
		now := m.cfg.Now()
		newRoot, err := ca.CheckNewCA(st.CA, next)
		if err != nil {
			return nil, toStatus(err)
		}
		var rot ca.Material
		if st.Signs() {
			rot, err = ca.Rotation(m.cfg.Rand, now, st.CA, next)
		} else if rootKey == nil && len(external) == 0 {
			err = fmt.Errorf("%w: the current CA is external: it must cross-sign the new root, and that request is signed with the root's key, which the cluster does not have for an issuing CA with a chain; rotate to a generated root, or to a CA that signs with its root", errNotRotatable)
		} else if rootKey == nil {
			err = fmt.Errorf("%w: the current CA is external: it must cross-sign the new root, and that request is signed with the new root's key; give the key of the new root with --ca-key (it is used once and not stored), or rotate to a generated root", errNotRotatable)
		} else {
			var cross *x509.Certificate
			if cross, err = m.crossSignExternal(ctx, st, newRoot, rootKey); err == nil {
				rot, err = ca.RotationWith(st.CA, next, cross)
			}
		}
		if err != nil {
			return nil, toStatus(err)
		}
		after, err := m.propose(ctx, fsm.Command{At: now, StartRotation: &fsm.StartRotation{
			CA: rot, Chain: next.Chain, Bundle: next.Bundle, CertExpiry: expiry, External: external,
		}})
		if err != nil {
			return nil, toStatus(err)
		}
		m.log.Info("root rotation started", "new_root", fingerprint(next.Bundle), "nodes", after.Nodes.Len(), "external_cas", len(external), "by", c.addr)
		m.kickRotation()
		return &api.RotateCAResponse{Rotation: m.viewRotation(after, m.cfg.Now(), false).info}, nil
	})
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

func (s *service) GetCA(ctx context.Context, req *api.GetCARequest) (*api.GetCAResponse, error) {
	c, err := s.m.requireManager(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	// The leader tracks the rotation: ask it.
	return leaderOnly(ctx, s.m, c, req, func() (*api.GetCAResponse, error) {
		st := s.m.machine.State()
		if !st.Initialized() {
			return nil, toStatus(fsm.ErrNotInitialized)
		}
		return &api.GetCAResponse{
			Bundle:     st.CA.Bundle,
			Rotation:   s.m.viewRotation(st, s.m.cfg.Now(), false).info,
			ExternalCa: externalToAPI(st.External),
		}, nil
	})
}

// Gossip hands a member of the cluster the gossip key and the addresses to
// join through: this manager's own and the other managers' it sees.
func (s *service) Gossip(ctx context.Context, _ *api.GossipRequest) (*api.GossipResponse, error) {
	c, err := s.m.requireNode(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if c.id.Role != ca.RoleManager && c.id.Role != ca.RoleWorker {
		return nil, toStatus(fmt.Errorf("%w: gossip is for nodes, not %s certificates", errPermission, c.id.Role.Short()))
	}
	st := s.m.machine.State()
	if !st.Initialized() || len(st.GossipKey) == 0 {
		return nil, toStatus(fmt.Errorf("%w: this manager has not caught up with the cluster state yet", errNoLeader))
	}
	if _, ok := st.Node(c.id.NodeID); !ok {
		return nil, toStatus(fmt.Errorf("%w: node %s is not a member of this cluster (yet)", fsm.ErrUnknownNode, c.id.NodeID))
	}
	resp := &api.GossipResponse{Key: st.GossipKey}
	if g := s.m.gossip.Load(); g == nil {
	} else if mem := g.Member(); mem != nil {
		resp.Peers = append(resp.Peers, mem.Addr())
		for _, p := range mem.Peers() {
			if p.Meta.Role == ca.RoleManager && p.NodeID != c.id.NodeID {
				resp.Peers = append(resp.Peers, p.Addr)
			}
		}
	}
	return resp, nil
}

// acceptGossip believes gossip only about nodes of the cluster that were
// not removed.
func (m *Manager) acceptGossip(id string) error {
	st := m.machine.State()
	if !st.Initialized() {
		return nil // catching up: the state cannot tell yet
	}
	if st.IsRemoved(id) {
		return fmt.Errorf("node %s was removed", id)
	}
	if _, ok := st.Node(id); !ok {
		return fmt.Errorf("node %s is not a member of the cluster", id)
	}
	return nil
}
