package fsm

import (
	"fmt"
	"slices"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// Result is what applying one command returns.
type Result struct {
	// State is the state after the command (the unchanged state, with its
	// Index advanced, when Err is set; the state as it was, Index and all,
	// when a Machine halted: Err is then a *NewerError).
	State *State
	// Err says why the command was refused, wrapping an error of this
	// package.
	Err error
}

// Apply returns the state after applying cmd at Raft index to s. It never
// changes s; a refused command returns s with only its Index advanced, and
// the reason. It is deterministic: the same state and command always give
// the same result.
func Apply(s *State, index uint64, cmd Command) (*State, error) {
	if s == nil {
		s = &State{}
	}
	next, err := apply(s, index, cmd)
	if err != nil {
		refused := *s
		refused.Index = index
		return &refused, err
	}
	next.Index = index
	return next, nil
}

func apply(s *State, index uint64, cmd Command) (*State, error) {
	if cmd.Init != nil {
		return applyInit(s, cmd.At, index, cmd.Init)
	}
	if !s.Initialized() {
		return nil, ErrNotInitialized
	}
	switch {
	case cmd.Issue != nil:
		return applyIssue(s, cmd.At, index, cmd.Issue)
	case cmd.RotateSecret != nil:
		return applyRotateSecret(s, cmd.RotateSecret)
	case cmd.SetRole != nil:
		return applySetRole(s, cmd.SetRole)
	case cmd.RemoveNode != nil:
		return applyRemoveNode(s, cmd.At, cmd.RemoveNode)
	case cmd.Prune != nil:
		return applyPrune(s, cmd.At), nil
	case cmd.UpdateConfig != nil:
		return applyUpdateConfig(s, cmd.UpdateConfig)
	case cmd.CreateToken != nil:
		return applyCreateToken(s, cmd.At, cmd.CreateToken)
	case cmd.RevokeToken != nil:
		return applyRevokeToken(s, cmd.RevokeToken)
	case cmd.SetAddrs != nil:
		return applySetAddrs(s, cmd.SetAddrs)
	case cmd.StartRotation != nil:
		return applyStartRotation(s, cmd.At, cmd.StartRotation)
	case cmd.CompleteRotation != nil:
		return applyCompleteRotation(s, cmd.At, cmd.CompleteRotation)
	case cmd.SetGossipKey != nil:
		return applySetGossipKey(s, cmd.SetGossipKey)
	case cmd.IssueAdmin != nil:
		return applyIssueAdmin(s, cmd.At, cmd.IssueAdmin)
	case cmd.RevokeAdmin != nil:
		return applyRevokeAdmin(s, cmd.At, cmd.RevokeAdmin)
	case cmd.SetAutolock != nil:
		return applySetAutolock(s, cmd.SetAutolock)
	case cmd.RevokeCert != nil:
		return applyRevokeCert(s, cmd.At, cmd.RevokeCert)
	case cmd.SetCRLs != nil:
		return applySetCRLs(s, cmd.SetCRLs)
	case cmd.Recover != nil:
		return applyRecover(s, cmd.At, index, cmd.Recover)
	case cmd.ConfirmNodes != nil:
		return applyConfirmNodes(s, cmd.ConfirmNodes)
	case cmd.RotateUnlockKey != nil:
		return applyRotateUnlockKey(s, cmd.RotateUnlockKey)
	}
	return nil, fmt.Errorf("%w: no operation", ErrBadCommand)
}

func applyInit(s *State, at time.Time, index uint64, in *Init) (*State, error) {
	if s.Initialized() {
		return nil, fmt.Errorf("%w: cluster %s", ErrInitialized, s.ClusterID)
	}
	switch {
	case in.ClusterID == "":
		return nil, fmt.Errorf("%w: init without a cluster ID", ErrBadCommand)
	case in.CertExpiry < ca.MinCertExpiry:
		return nil, fmt.Errorf("%w: cert expiry %s is under %s", ErrBadCommand, in.CertExpiry, ca.MinCertExpiry)
	case len(in.CA.Bundle) == 0 || len(in.CA.Cert) == 0:
		return nil, fmt.Errorf("%w: init without a CA", ErrBadCommand)
	case in.WorkerSecret == "" || in.ManagerSecret == "" || in.WorkerSecret == in.ManagerSecret:
		return nil, fmt.Errorf("%w: init needs two distinct join secrets", ErrBadCommand)
	case in.Manager.ID == "" || in.Manager.Role != ca.RoleManager:
		return nil, fmt.Errorf("%w: init needs its first manager", ErrBadCommand)
	case in.Manager.Hostname != "" && !ValidHostname(in.Manager.Hostname):
		return nil, fmt.Errorf("%w: host name %q", ErrBadCommand, in.Manager.Hostname)
	case len(in.GossipKey) != GossipKeySize:
		return nil, fmt.Errorf("%w: init needs a gossip key of %d bytes", ErrBadCommand, GossipKeySize)
	}
	if err := checkSigner(in.CA, in.External); err != nil {
		return nil, err
	}
	if in.UnlockKey != "" {
		if _, err := ca.ParseUnlockKey(in.UnlockKey); err != nil {
			return nil, fmt.Errorf("%w: init: %w", ErrBadCommand, err)
		}
	}
	certs, err := ca.ParseCertificates(in.CA.Cert)
	if err != nil {
		return nil, fmt.Errorf("%w: init CA: %w", ErrBadCommand, err)
	}
	// The first manager's certificate is recorded as Issue records any
	// other: its NotAfter bounds how long a removal must be remembered.
	m := in.Manager
	m.JoinedAt = at
	m.Cert.IssuedAt, m.Cert.Index = at, index
	if m.Cert.NotAfter.After(m.CertsValidUntil) {
		m.CertsValidUntil = m.Cert.NotAfter
	}
	return &State{
		ClusterID:     in.ClusterID,
		CertExpiry:    in.CertExpiry,
		CA:            in.CA,
		CAStatus:      ca.StatusOf(certs[0]),
		WorkerSecret:  in.WorkerSecret,
		ManagerSecret: in.ManagerSecret,
		GossipKey:     in.GossipKey,
		Autolock:      in.UnlockKey != "",
		UnlockKey:     in.UnlockKey,
		External:      in.External,
		Nodes:         NewNodeMap(m),
	}, nil
}

// checkSigner checks that exactly one of the CA's key and a list of
// external CAs is there to sign.
func checkSigner(m ca.Material, external []ExternalCA) error {
	switch {
	case len(m.Key) == 0 && len(external) == 0:
		return fmt.Errorf("%w: the CA needs its key or an external CA to sign", ErrBadCommand)
	case len(m.Key) > 0 && len(external) > 0:
		return fmt.Errorf("%w: a CA with its key does not use an external CA", ErrBadCommand)
	}
	return CheckExternal(external)
}

func applyIssue(s *State, at time.Time, index uint64, in *Issue) (*State, error) {
	n := in.Node
	if n.ID == "" || (n.Role != ca.RoleManager && n.Role != ca.RoleWorker) || n.Cert.Serial == "" {
		return nil, fmt.Errorf("%w: issue needs a node ID, a role and a serial", ErrBadCommand)
	}
	if n.Hostname != "" && !ValidHostname(n.Hostname) {
		return nil, fmt.Errorf("%w: host name %q", ErrBadCommand, n.Hostname)
	}
	if !n.Cert.Issuer.Equal(s.CAStatus) {
		return nil, fmt.Errorf("%w: certificate for %s was signed by %s, not the current CA %s", ErrStale, n.ID, n.Cert.Issuer, s.CAStatus)
	}
	if s.IsRemoved(n.ID) {
		return nil, fmt.Errorf("%w: %s", ErrRemoved, n.ID)
	}
	old, exists := s.Nodes.Get(n.ID)
	next := s.clone()
	if in.Join {
		if exists {
			return nil, fmt.Errorf("%w: %s", ErrNodeExists, n.ID)
		}
		if in.TokenID != "" {
			t, ok := s.Tokens[in.TokenID]
			if !ok || !t.Usable(at) || t.Role != n.Role || t.SecretHash != in.SecretHash {
				return nil, fmt.Errorf("%w: token %s", ErrTokenUnusable, in.TokenID)
			}
			if t.UsesLeft > 0 {
				t.UsesLeft--
			}
			next.cloneTokens()
			next.Tokens[t.ID] = t
		} else if HashSecret(s.Secret(n.Role)) != in.SecretHash {
			return nil, fmt.Errorf("%w: the %s join token was rotated while the join was in flight; join again with the new token", ErrStale, n.Role.Short())
		}
		n.JoinedAt = at
	} else {
		if !exists {
			return nil, fmt.Errorf("%w: %s", ErrUnknownNode, n.ID)
		}
		if n.Role != old.Role {
			return nil, fmt.Errorf("%w: node %s is a %s now, not a %s", ErrStale, n.ID, old.Role.Short(), n.Role.Short())
		}
		n.JoinedAt = old.JoinedAt
		n.Hostname = old.Hostname
		if n.Addr == "" {
			n.Addr = old.Addr
		}
		if n.RaftAddr == "" {
			n.RaftAddr = old.RaftAddr
		}
	}
	n.Cert.IssuedAt, n.Cert.Index = at, index
	n.Unconfirmed = false
	if exists {
		n.Prev = prevCerts(old, at)
	}
	n.CertsValidUntil = old.CertsValidUntil
	if n.Cert.NotAfter.After(n.CertsValidUntil) {
		n.CertsValidUntil = n.Cert.NotAfter
	}
	next.Nodes = next.Nodes.With(n)
	return next, nil
}

// prevCerts is what a node's record keeps of its certificates once it
// renews: those of old still valid at at, the latest MaxPrevCerts.
func prevCerts(old Node, at time.Time) []CertInfo {
	prev := slices.DeleteFunc(append(slices.Clone(old.Prev), old.Cert), func(c CertInfo) bool { return !at.Before(c.NotAfter) })
	if len(prev) > MaxPrevCerts {
		prev = prev[len(prev)-MaxPrevCerts:]
	}
	if len(prev) == 0 {
		return nil
	}
	return prev
}

func applySetRole(s *State, in *SetRole) (*State, error) {
	n, ok := s.Nodes.Get(in.NodeID)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownNode, in.NodeID)
	}
	if in.Role != ca.RoleManager && in.Role != ca.RoleWorker {
		return nil, fmt.Errorf("%w: unknown role %q", ErrBadCommand, in.Role)
	}
	if n.Role == in.Role {
		return nil, fmt.Errorf("%w: node %s is already a %s", ErrBadCommand, n.ID, n.Role.Short())
	}
	if n.Role == ca.RoleManager && len(s.Managers()) <= 1 {
		return nil, fmt.Errorf("%w: %s", ErrLastManager, n.ID)
	}
	n.Role = in.Role
	if n.Role == ca.RoleWorker {
		n.RaftAddr = ""
	}
	next := s.clone()
	next.Nodes = next.Nodes.With(n)
	return next, nil
}

func applyRemoveNode(s *State, at time.Time, in *RemoveNode) (*State, error) {
	n, ok := s.Nodes.Get(in.NodeID)
	if !ok {
		if s.IsRemoved(in.NodeID) {
			return nil, fmt.Errorf("%w: %s", ErrRemoved, in.NodeID)
		}
		return nil, fmt.Errorf("%w: %s", ErrUnknownNode, in.NodeID)
	}
	if n.Role == ca.RoleManager && len(s.Managers()) <= 1 {
		return nil, fmt.Errorf("%w: %s", ErrLastManager, n.ID)
	}
	if err := checkNewGossipKey(s, in.GossipKey); err != nil {
		return nil, err
	}
	next := s.clone()
	if len(in.GossipKey) > 0 {
		next.GossipKey = in.GossipKey
	}
	next.cloneRemoved()
	next.cloneRevoked()
	next.remove(n, at)
	return next, nil
}

// remove moves n from Nodes to Removed, until its last certificate
// expires, and revokes its valid certificates. The caller has cloned
// Removed and Revoked.
func (s *State) remove(n Node, at time.Time) {
	s.revokeAll(n, at, ca.ReasonCessationOfOperation)
	s.Nodes = s.Nodes.Without(n.ID)
	until := n.CertsValidUntil
	if n.Cert.NotAfter.After(until) {
		until = n.Cert.NotAfter
	}
	s.Removed[n.ID] = until
}

// applyPrune drops what has expired by at. It keeps s itself when nothing
// did, so that a prune with nothing to do costs nothing.
func applyPrune(s *State, at time.Time) *State {
	var removed, tokens []string
	for id, until := range s.Removed {
		if !at.Before(until) {
			removed = append(removed, id)
		}
	}
	for id, t := range s.Tokens {
		if !t.Usable(at) {
			tokens = append(tokens, id)
		}
	}
	var admins []string
	for serial, a := range s.Admins {
		if !at.Before(a.NotAfter) {
			admins = append(admins, serial)
		}
	}
	var revoked []string
	for serial, r := range s.Revoked {
		if !at.Before(r.NotAfter) {
			revoked = append(revoked, serial)
		}
	}
	if len(removed) == 0 && len(tokens) == 0 && len(admins) == 0 && len(revoked) == 0 {
		c := *s
		return &c
	}
	next := s.clone()
	if len(removed) > 0 {
		next.cloneRemoved()
		for _, id := range removed {
			delete(next.Removed, id)
		}
	}
	if len(tokens) > 0 {
		next.cloneTokens()
		for _, id := range tokens {
			delete(next.Tokens, id)
		}
	}
	if len(admins) > 0 {
		next.cloneAdmins()
		for _, serial := range admins {
			delete(next.Admins, serial)
		}
	}
	if len(revoked) > 0 {
		next.cloneRevoked()
		for _, serial := range revoked {
			delete(next.Revoked, serial)
		}
	}
	return next
}

// NeedsPrune reports whether a Prune at t would drop anything.
func (s *State) NeedsPrune(at time.Time) bool {
	for _, until := range s.Removed {
		if !at.Before(until) {
			return true
		}
	}
	for _, t := range s.Tokens {
		if !t.Usable(at) {
			return true
		}
	}
	for _, a := range s.Admins {
		if !at.Before(a.NotAfter) {
			return true
		}
	}
	for _, r := range s.Revoked {
		if !at.Before(r.NotAfter) {
			return true
		}
	}
	return false
}

func applyUpdateConfig(s *State, in *UpdateConfig) (*State, error) {
	if in.CertExpiry != 0 && in.CertExpiry < ca.MinCertExpiry {
		return nil, fmt.Errorf("%w: cert expiry %s is under the minimum of %s", ErrBadCommand, in.CertExpiry, ca.MinCertExpiry)
	}
	if in.RotationGrace != 0 && in.RotationGrace < MinRotationGrace {
		return nil, fmt.Errorf("%w: rotation grace %s is under the minimum of %s", ErrBadCommand, in.RotationGrace, MinRotationGrace)
	}
	if len(in.External) > 0 {
		if s.Signs() {
			return nil, fmt.Errorf("%w: this cluster signs with its own key; to move to an external CA, rotate the root to it", ErrBadCommand)
		}
		if err := CheckExternal(in.External); err != nil {
			return nil, err
		}
		if in.ForCA != nil && !in.ForCA.Equal(s.CAStatus) {
			return nil, fmt.Errorf("%w: the external CAs were checked against CA %s; the cluster now signs with %s", ErrStale, *in.ForCA, s.CAStatus)
		}
	}
	next := s.clone()
	if in.CertExpiry != 0 {
		next.CertExpiry = in.CertExpiry
	}
	if in.RotationGrace != 0 {
		next.RotationGrace = in.RotationGrace
	}
	if len(in.External) > 0 {
		next.External = in.External
	}
	return next, nil
}

func applyCreateToken(s *State, at time.Time, in *CreateToken) (*State, error) {
	t := in.Token
	switch {
	case t.ID == "":
		return nil, fmt.Errorf("%w: token without an ID", ErrBadCommand)
	case t.Role != ca.RoleManager && t.Role != ca.RoleWorker:
		return nil, fmt.Errorf("%w: token role %q", ErrBadCommand, t.Role)
	case t.UsesLeft == 0 || t.UsesLeft < -1:
		return nil, fmt.Errorf("%w: token uses %d; want a positive number, or -1 for unlimited", ErrBadCommand, t.UsesLeft)
	case t.SecretHash == [32]byte{}:
		return nil, fmt.Errorf("%w: token without a secret", ErrBadCommand)
	}
	if _, ok := s.Tokens[t.ID]; ok {
		return nil, fmt.Errorf("%w: token ID %s already in use", ErrBadCommand, t.ID)
	}
	t.CreatedAt = at
	next := s.clone()
	next.cloneTokens()
	next.Tokens[t.ID] = t
	return next, nil
}

func applyRevokeToken(s *State, in *RevokeToken) (*State, error) {
	if _, ok := s.Tokens[in.ID]; !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownToken, in.ID)
	}
	next := s.clone()
	next.cloneTokens()
	delete(next.Tokens, in.ID)
	return next, nil
}

func applyRotateSecret(s *State, in *RotateSecret) (*State, error) {
	if in.Secret == "" {
		return nil, fmt.Errorf("%w: empty secret", ErrBadCommand)
	}
	next := s.clone()
	switch in.Role {
	case ca.RoleManager:
		if in.Secret == s.WorkerSecret {
			return nil, fmt.Errorf("%w: manager and worker secrets must differ", ErrBadCommand)
		}
		next.ManagerSecret = in.Secret
	case ca.RoleWorker:
		if in.Secret == s.ManagerSecret {
			return nil, fmt.Errorf("%w: manager and worker secrets must differ", ErrBadCommand)
		}
		next.WorkerSecret = in.Secret
	default:
		return nil, fmt.Errorf("%w: unknown role %q", ErrBadCommand, in.Role)
	}
	return next, nil
}

func applySetAddrs(s *State, in *SetAddrs) (*State, error) {
	n, ok := s.Nodes.Get(in.NodeID)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownNode, in.NodeID)
	}
	if n.Role != ca.RoleManager {
		return nil, fmt.Errorf("%w: node %s is a %s; only managers advertise addresses", ErrBadCommand, n.ID, n.Role.Short())
	}
	if in.Addr == "" || in.RaftAddr == "" {
		return nil, fmt.Errorf("%w: set_addrs needs both addresses", ErrBadCommand)
	}
	n.Addr, n.RaftAddr = in.Addr, in.RaftAddr
	next := s.clone()
	next.Nodes = next.Nodes.With(n)
	return next, nil
}

func applyStartRotation(s *State, at time.Time, in *StartRotation) (*State, error) {
	if s.Rotation != nil {
		return nil, fmt.Errorf("%w: since %s", ErrRotating, s.Rotation.StartedAt.Format(time.RFC3339))
	}
	if in.CertExpiry != 0 && in.CertExpiry < ca.MinCertExpiry {
		return nil, fmt.Errorf("%w: cert expiry %s is under the minimum of %s", ErrBadCommand, in.CertExpiry, ca.MinCertExpiry)
	}
	if len(in.Bundle) == 0 {
		return nil, fmt.Errorf("%w: a rotation needs the new bundle", ErrBadCommand)
	}
	if err := checkSigner(in.CA, in.External); err != nil {
		return nil, err
	}
	// Nodes keep trusting the bundle they have until the rotation
	// completes: the rotation's certificates verify under it.
	if string(in.CA.Bundle) != string(s.CA.Bundle) {
		return nil, fmt.Errorf("%w: the rotation's signing material must keep the current bundle", ErrStale)
	}
	certs, err := ca.ParseCertificates(in.CA.Cert)
	if err != nil {
		return nil, fmt.Errorf("%w: new CA: %w", ErrBadCommand, err)
	}
	status := ca.StatusOf(certs[0])
	if status.Equal(s.CAStatus) {
		return nil, fmt.Errorf("%w: the new CA is the current one", ErrBadCommand)
	}
	next := s.clone()
	next.Rotation = &Rotation{StartedAt: at, From: s.CAStatus, Chain: in.Chain, Bundle: in.Bundle, FromCA: s.CA}
	next.CA = in.CA
	next.External = in.External
	next.CAStatus = status
	if in.CertExpiry != 0 {
		next.CertExpiry = in.CertExpiry
	}
	return next, nil
}

func applyCompleteRotation(s *State, at time.Time, in *CompleteRotation) (*State, error) {
	r := s.Rotation
	if r == nil {
		return nil, fmt.Errorf("%w: no rotation in progress", ErrStale)
	}
	switch {
	case in.WorkerSecret == "" || in.ManagerSecret == "" || in.WorkerSecret == in.ManagerSecret:
		return nil, fmt.Errorf("%w: completing a rotation needs two distinct new join secrets", ErrBadCommand)
	case in.WorkerSecret == s.WorkerSecret || in.ManagerSecret == s.ManagerSecret ||
		in.WorkerSecret == s.ManagerSecret || in.ManagerSecret == s.WorkerSecret:
		return nil, fmt.Errorf("%w: completing a rotation must replace both join secrets", ErrBadCommand)
	}
	if err := checkNewGossipKey(s, in.GossipKey); err != nil {
		return nil, err
	}
	skipped := make([]string, 0, len(in.Skipped))
	for _, id := range in.Skipped {
		if _, ok := s.Nodes.Get(id); ok && !slices.Contains(skipped, id) {
			skipped = append(skipped, id)
		}
	}
	slices.Sort(skipped)
	for _, n := range s.SortedNodes() {
		if !n.Cert.Issuer.Equal(s.CAStatus) && !slices.Contains(skipped, n.ID) {
			return nil, fmt.Errorf("%w: node %s has no certificate of the new CA yet", ErrStale, n.ID)
		}
	}
	next := s.clone()
	next.CA = ca.Material{Cert: s.CA.Cert, Key: s.CA.Key, Chain: r.Chain, Bundle: r.Bundle}
	next.Rotation = nil
	next.LastRotation = &RotationRecord{StartedAt: r.StartedAt, CompletedAt: at}
	if len(skipped) > 0 {
		next.LastRotation.Skipped = skipped
	}
	next.WorkerSecret, next.ManagerSecret = in.WorkerSecret, in.ManagerSecret
	next.Tokens = nil
	if len(in.GossipKey) > 0 {
		next.GossipKey = in.GossipKey
	}
	return next, nil
}

// checkNewGossipKey checks a replacement gossip key a command carries:
// none, or a new key of the right size.
func checkNewGossipKey(s *State, key []byte) error {
	switch {
	case len(key) == 0:
		return nil
	case len(key) != GossipKeySize:
		return fmt.Errorf("%w: a gossip key is %d bytes, not %d", ErrBadCommand, GossipKeySize, len(key))
	case string(key) == string(s.GossipKey):
		return fmt.Errorf("%w: the new gossip key is the current one", ErrBadCommand)
	}
	return nil
}

func applySetGossipKey(s *State, in *SetGossipKey) (*State, error) {
	if len(s.GossipKey) != 0 {
		return nil, fmt.Errorf("%w: the cluster has a gossip key already", ErrStale)
	}
	if len(in.Key) != GossipKeySize {
		return nil, fmt.Errorf("%w: a gossip key is %d bytes, not %d", ErrBadCommand, GossipKeySize, len(in.Key))
	}
	next := s.clone()
	next.GossipKey = in.Key
	return next, nil
}
