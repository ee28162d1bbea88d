// Package authz decides who may make which call to a manager. It is one
// pure policy: Decide is a function of the call's method, how it arrived
// (the control socket, a direct connection, or relayed by another manager),
// the peer's verified certificate chain and the replicated state, with the
// time and the manager's trust bundle passed in. It touches no network, no
// disk and no clock. The table of methods is in rules.go.
//
// A manager relays a call to the leader only for the administration calls
// (Route Forward), and names the original caller; the leader believes it
// only from a manager that the state holds as a manager and that is a Raft
// voter. Calls a node makes as itself (renew, heartbeat, becoming a voter)
// are never relayed: other managers redirect the node to the leader, which
// then sees the node's own TLS connection.
package authz

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// Arrival says how a call reached the manager.
type Arrival int

const (
	// Local is a call on the manager's control socket: its host's
	// administrator.
	Local Arrival = iota + 1
	// Direct is a call over the network, with or without a client
	// certificate.
	Direct
	// Forwarded is a call another manager relayed; Request.Chain is that
	// manager's, and the request names the original caller.
	Forwarded
)

func (a Arrival) String() string {
	switch a {
	case Local:
		return "local"
	case Direct:
		return "direct"
	case Forwarded:
		return "forwarded"
	}
	return fmt.Sprintf("Arrival(%d)", int(a))
}

// Kind is the kind of principal a Caller is.
type Kind int

const (
	// Anonymous showed no certificate.
	Anonymous Kind = iota
	// Host is the administrator of a manager's host, on its control socket.
	Host
	// Node holds a node certificate (manager or worker) of the cluster.
	Node
	// Admin holds an admin certificate the state records.
	Admin
)

func (k Kind) String() string {
	return [...]string{"anonymous", "host", "node", "admin"}[k]
}

// Caller is who made a call, as the policy established it.
type Caller struct {
	Kind Kind
	// ID is what the certificate names (a node's or an admin's ID, its
	// role and cluster); zero for Host and Anonymous.
	ID ca.Identity
	// Role is the role the state holds for a Node now, which differs from
	// ID.Role between a promotion or demotion and the renewal that
	// follows it.
	Role ca.Role
	// Serial is the certificate's serial number in lower-case hex.
	Serial string
	// Status is the TLS status of the certificate: who signed it.
	Status ca.TLSStatus
	// Chain is the certificate chain as the caller presented it, leaf
	// first.
	Chain []*x509.Certificate
	// Forwarder is the node ID of the manager that relayed the call, or ""
	// for a call made to this manager.
	Forwarder string
	// Revoked marks a node whose current certificate was revoked: it may
	// only heartbeat and renew (with a fresh key), as it is asked to.
	Revoked bool
}

// Request is a call as the manager received it.
type Request struct {
	// Method is the gRPC method's full name, /package.Service/Method.
	Method  string
	Arrival Arrival
	// Verified is the peer's chain as the TLS handshake verified it, leaf
	// first and root last, and Presented the chain the peer sent; both are
	// nil when it showed no certificate. For a Forwarded call they are the
	// forwarding manager's.
	Verified, Presented []*x509.Certificate
	// ForwardedLocal and ForwardedChain are who a forwarding manager says
	// the original caller is: its own control socket, or the holder of
	// this chain (leaf first).
	ForwardedLocal bool
	ForwardedChain []*x509.Certificate
	// Now is the manager's clock.
	Now time.Time
}

// View is what the policy reads of the manager.
type View struct {
	// State is the replicated state as this manager applied it.
	State *fsm.State
	// Roots are the roots of the trust bundle this manager holds now.
	Roots []*x509.Certificate
	// Voter reports whether a node is a Raft voter now; nil for none.
	Voter func(nodeID string) bool
}

// Errors the policy refuses calls with, wrapped in an *Error.
var (
	// ErrUnauthenticated is returned when a call that needs a certificate
	// came without one.
	ErrUnauthenticated = errors.New("this call needs a certificate of this cluster (mutual TLS)")
	// ErrDenied is returned when the caller may not make the call.
	ErrDenied = errors.New("permission denied")
	// ErrNotReady is returned when the manager has not caught up with the
	// cluster's state and cannot tell who the caller is.
	ErrNotReady = errors.New("this manager has not caught up with the cluster state yet; retry, or ask another manager")
)

// Reasons say, for programs, why a call was refused (gRPC error details,
// audit logs). They never change meaning.
const (
	ReasonNoCertificate     = "NO_CERTIFICATE"
	ReasonUnknownMethod     = "UNKNOWN_METHOD"
	ReasonWrongCluster      = "WRONG_CLUSTER"
	ReasonUntrusted         = "UNTRUSTED"
	ReasonRemoved           = "REMOVED"
	ReasonUnknownNode       = "UNKNOWN_NODE"
	ReasonRoleChanged       = "ROLE_CHANGED"
	ReasonNotManager        = "NOT_MANAGER"
	ReasonNotNode           = "NOT_NODE"
	ReasonNotHost           = "NOT_HOST"
	ReasonNotVoter          = "NOT_VOTER"
	ReasonAdminUnknown      = "ADMIN_UNKNOWN"
	ReasonAdminRevoked      = "ADMIN_REVOKED"
	ReasonNotForwardable    = "NOT_FORWARDABLE"
	ReasonForwarderUntrusty = "FORWARDER_NOT_TRUSTED"
	ReasonNotReady          = "NOT_READY"
	ReasonRevoked           = "REVOKED"
)

// Error is a refusal: one of the errors above, a reason for programs and a
// message for people that says what to do.
type Error struct {
	Err    error
	Reason string
	Msg    string
}

func (e *Error) Error() string { return e.Err.Error() + ": " + e.Msg }
func (e *Error) Unwrap() error { return e.Err }

func refuse(err error, reason, format string, args ...any) *Error {
	return &Error{Err: err, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// Decide returns who made the call r, or an *Error saying why it is
// refused. When the refusal may only mean that this manager lags behind
// the leader (Lagging), the Caller holds what the certificate says, so
// that a call the leader answers can still be relayed or redirected there.
func Decide(r Request, v View) (Caller, error) {
	rule, ok := rules[r.Method]
	if !ok {
		return Caller{}, refuse(ErrDenied, ReasonUnknownMethod, "no method %s", r.Method)
	}
	c, err := direct(r, v)
	if err != nil && rule.Who == Anyone && r.Arrival == Direct {
		// What needs no certificate is not refused for a bad one.
		c, err = Caller{Kind: Anonymous}, nil
	}
	if err != nil {
		return c, err
	}
	if r.Arrival == Forwarded {
		if c, err = forwarded(r, v, rule, c); err != nil {
			return Caller{}, err
		}
	}
	if err := admit(rule.Who, c, v); err != nil {
		return Caller{}, err
	}
	return c, nil
}

// direct identifies the peer of the connection the call came on.
func direct(r Request, v View) (Caller, error) {
	switch {
	case r.Arrival == Local:
		return Caller{Kind: Host}, nil
	case len(r.Verified) == 0:
		return Caller{Kind: Anonymous}, nil
	}
	// The handshake verified the chain against the bundle of its day; a
	// connection can outlive that bundle (a rotation completed) or the
	// certificate itself.
	leaf, root := r.Verified[0], r.Verified[len(r.Verified)-1]
	if !r.Now.Before(leaf.NotAfter) || !slices.ContainsFunc(v.Roots, root.Equal) {
		if _, _, err := ca.Verify(r.Presented, pool(v.Roots), r.Now); err != nil {
			return Caller{}, refuse(ErrDenied, ReasonUntrusted, "%v", err)
		}
	}
	var status ca.TLSStatus
	if len(r.Verified) > 1 {
		status = ca.StatusOf(r.Verified[1])
	}
	return identify(leaf, r.Presented, status, v)
}

// identify reads who holds the verified certificate leaf.
func identify(leaf *x509.Certificate, chain []*x509.Certificate, status ca.TLSStatus, v View) (Caller, error) {
	id, err := ca.IdentityOf(leaf)
	if err != nil {
		return Caller{}, refuse(ErrDenied, ReasonUntrusted, "%v", err)
	}
	st := v.State
	if !st.Initialized() {
		return Caller{ID: id, Chain: chain}, refuse(ErrNotReady, ReasonNotReady, "it cannot check certificates yet")
	}
	if id.ClusterID != st.ClusterID {
		return Caller{}, refuse(ErrDenied, ReasonWrongCluster, "certificate of cluster %s, not of this one (%s)", id.ClusterID, st.ClusterID)
	}
	c := Caller{ID: id, Serial: leaf.SerialNumber.Text(16), Status: status, Chain: chain}
	if id.Role == ca.RoleAdmin {
		rec, ok := st.Admin(c.Serial)
		switch {
		case !ok:
			c.Kind = Admin
			return c, refuse(ErrDenied, ReasonAdminUnknown, "admin certificate %s is not recorded by the cluster (expired, or issued before admin certificates were recorded); make a new one with `quorumca admin-cert create`", c.Serial)
		case rec.Revoked():
			return Caller{}, refuse(ErrDenied, ReasonAdminRevoked, "admin certificate %s was revoked at %s", c.Serial, rec.RevokedAt.UTC().Format(time.RFC3339))
		}
		c.Kind = Admin
		return c, nil
	}
	if st.IsRemoved(id.NodeID) {
		return Caller{}, refuse(ErrDenied, ReasonRemoved, "node %s was removed from the cluster; join it again with a new token", id.NodeID)
	}
	if err := checkRevoked(id, c.Serial, st); err != nil {
		return Caller{}, err
	}
	n, ok := st.Node(id.NodeID)
	if !ok {
		c.Kind = Node
		return c, refuse(ErrDenied, ReasonUnknownNode, "node %s is not a member of this cluster (or this manager has not caught up with its join yet)", id.NodeID)
	}
	c.Kind, c.Role = Node, n.Role
	c.Revoked = st.IsRevoked(c.Serial)
	return c, nil
}

// checkRevoked refuses a revoked node certificate, but the one the node
// holds now: that node renews, with a fresh key, as it is asked to.
func checkRevoked(id ca.Identity, serial string, st *fsm.State) error {
	if serial == "" || !st.IsRevoked(serial) {
		return nil
	}
	if n, ok := st.Node(id.NodeID); ok && n.Cert.Serial == serial {
		return nil
	}
	return refuse(ErrDenied, ReasonRevoked, "certificate %s of node %s was revoked", serial, id.NodeID)
}

// forwarded returns the original caller of a call the manager f relayed.
func forwarded(r Request, v View, rule Rule, f Caller) (Caller, error) {
	if rule.Route != Forward {
		return Caller{}, refuse(ErrDenied, ReasonNotForwardable, "%s is not relayed between managers: the caller must make it to the leader itself", r.Method)
	}
	if !isManager(f) || f.Revoked || v.Voter == nil || !v.Voter(f.ID.NodeID) {
		return Caller{}, refuse(ErrDenied, ReasonForwarderUntrusty, "only a manager that is a Raft voter relays calls; %s", describe(f))
	}
	var c Caller
	switch {
	case r.ForwardedLocal && len(r.ForwardedChain) > 0:
		return Caller{}, refuse(ErrDenied, ReasonForwarderUntrusty, "a relayed call names one caller, not two")
	case r.ForwardedLocal:
		c = Caller{Kind: Host}
	case len(r.ForwardedChain) > 0:
		_, status, err := ca.Verify(r.ForwardedChain, pool(v.Roots), r.Now)
		if err != nil {
			return Caller{}, refuse(ErrDenied, ReasonUntrusted, "relayed certificate: %v", err)
		}
		if c, err = identify(r.ForwardedChain[0], r.ForwardedChain, status, v); err != nil {
			return Caller{}, err
		}
	default:
		c = Caller{Kind: Anonymous}
	}
	c.Forwarder = f.ID.NodeID
	return c, nil
}

// admit checks that c is of the class who.
func admit(who Who, c Caller, v View) error {
	switch who {
	case Anyone:
		return nil
	case HostOnly:
		if c.Kind == Host {
			return nil
		}
		return refuse(ErrDenied, ReasonNotHost, "this call is made only on a manager's control socket (its host's administrator); %s", describe(c))
	case Operator, OperatorOrSelf:
		if c.Kind == Host || c.Kind == Admin {
			return nil
		}
	}
	if c.Kind == Anonymous {
		return refuse(ErrUnauthenticated, ReasonNoCertificate, "present a node or admin certificate")
	}
	if c.Kind != Node {
		return refuse(ErrDenied, ReasonNotNode, "this call is for nodes; %s", describe(c))
	}
	if c.Revoked && who != Member {
		return refuse(ErrDenied, ReasonRevoked, "certificate %s of node %s was revoked: the node renews with a fresh key at its next heartbeat", c.Serial, c.ID.NodeID)
	}
	switch who {
	case Member:
		return nil
	case CurrentMember:
		if c.ID.Role != c.Role {
			return refuse(ErrDenied, ReasonRoleChanged, "node %s is a %s now, but its certificate says %s; it renews at its next heartbeat", c.ID.NodeID, c.Role.Short(), c.ID.Role.Short())
		}
		return nil
	case OperatorOrSelf:
		if !isManager(c) {
			// For itself only, which the handler checks.
			return nil
		}
	}
	// Manager, Operator, OperatorOrSelf (for another node) and Voter
	// need a manager.
	if c.ID.Role != ca.RoleManager {
		return refuse(ErrDenied, ReasonNotManager, "%s; this call is for managers and administrators", describe(c))
	}
	if c.Role != ca.RoleManager {
		return refuse(ErrDenied, ReasonRoleChanged, "node %s was demoted to %s; its manager certificate no longer counts", c.ID.NodeID, c.Role.Short())
	}
	if who == Voter && (v.Voter == nil || !v.Voter(c.ID.NodeID)) {
		return refuse(ErrDenied, ReasonNotVoter, "manager %s is not a Raft voter", c.ID.NodeID)
	}
	return nil
}

// Lagging reports whether err is a refusal that may only mean that the
// manager deciding lags behind the leader: a node or admin certificate it
// does not know yet, or no state at all yet. The leader decides again.
func Lagging(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Reason {
	case ReasonUnknownNode, ReasonAdminUnknown, ReasonNotReady:
		return true
	}
	return false
}

func isManager(c Caller) bool {
	return c.Kind == Node && c.ID.Role == ca.RoleManager && c.Role == ca.RoleManager
}

// describe names a caller in a refusal.
func describe(c Caller) string {
	switch c.Kind {
	case Host:
		return "the caller is a control socket"
	case Admin:
		return fmt.Sprintf("the caller holds admin certificate %s", c.Serial)
	case Node:
		if c.ID.Role != c.Role {
			return fmt.Sprintf("node %s holds a %s certificate and is a %s now", c.ID.NodeID, c.ID.Role.Short(), c.Role.Short())
		}
		return fmt.Sprintf("node %s is a %s", c.ID.NodeID, c.Role.Short())
	}
	return "the caller showed no certificate"
}

func pool(roots []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range roots {
		p.AddCert(r)
	}
	return p
}

// CheckHandshake is the check made at every TLS handshake with a verified
// client certificate, before any call: the certificates of removed nodes,
// revoked certificates (but the one a node holds now, which it may use to
// renew) and revoked admin certificates are refused. (A node or admin
// certificate the state does not know yet passes: this manager may lag
// behind the leader that issued it; Decide refuses it per call.)
func CheckHandshake(id ca.Identity, serial string, st *fsm.State) error {
	if id.Role == ca.RoleAdmin {
		if rec, ok := st.Admin(serial); ok && rec.Revoked() {
			return refuse(ErrDenied, ReasonAdminRevoked, "admin certificate %s was revoked", serial)
		}
		return nil
	}
	if st.IsRemoved(id.NodeID) {
		return refuse(ErrDenied, ReasonRemoved, "node %s was removed from the cluster; join it again with a new token", id.NodeID)
	}
	return checkRevoked(id, serial, st)
}

// CheckRaftPeer decides whether the manager id, with the certificate
// serial, may take part in Raft: not removed, the certificate not revoked
// (a manager's current one is, until it renews, since Raft stays up while
// it does), and not demoted since its certificate was issued. A manager
// the state does not know yet passes (it joined moments ago, and this
// manager has not applied that yet).
func CheckRaftPeer(id ca.Identity, serial string, st *fsm.State) error {
	if err := CheckHandshake(id, serial, st); err != nil {
		return err
	}
	if n, ok := st.Node(id.NodeID); ok && n.Role != ca.RoleManager {
		return refuse(ErrDenied, ReasonRoleChanged, "node %s was demoted to %s; its manager certificate no longer counts", id.NodeID, n.Role.Short())
	}
	return nil
}
