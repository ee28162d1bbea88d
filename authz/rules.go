package authz

// Who is the class of callers a method admits.
type Who int

const (
	// Anyone may call, with or without a certificate: the trust bundle,
	// and joins (which the join token's proof admits).
	Anyone Who = iota + 1
	// Member is a node of the cluster acting as itself, whatever role its
	// certificate names: after a promotion or demotion it must still
	// heartbeat and renew into its new role.
	Member
	// CurrentMember is a node whose certificate names the role the state
	// holds for it.
	CurrentMember
	// Manager is a node the state holds as a manager, with a manager
	// certificate.
	Manager
	// Operator is a manager's control socket, a recorded and unrevoked
	// admin certificate, or a Manager.
	Operator
	// HostOnly is a manager's control socket only.
	HostOnly
	// Voter is a Manager that is also a Raft voter.
	Voter
	// OperatorOrSelf is an Operator, or any other node of the cluster for
	// a call about itself: the handler checks that the call names the
	// caller (a worker that leaves removes itself).
	OperatorOrSelf
)

// Route says which manager answers a method.
type Route int

const (
	// Here: any manager answers from its own state.
	Here Route = iota + 1
	// Forward: the leader answers; another manager relays the call and
	// names the caller (administration calls only).
	Forward
	// Redirect: the leader answers; another manager tells the caller where
	// the leader is, so that the leader sees the caller's own connection.
	Redirect
	// LeaderOnly: the leader answers; another manager refuses (the call is
	// itself a manager's relay).
	LeaderOnly
)

// Rule is how a method is authorized and routed.
type Rule struct {
	Who   Who
	Route Route
	// Read marks a read the leader answers from its state: it first makes
	// sure it is still the leader and has applied everything committed.
	Read bool
}

// Full gRPC method names, as api declares them (the test checks they
// agree).
const (
	caService       = "/quorumca.v1.CA/"
	controlService  = "/quorumca.v1.Control/"
	internalService = "/quorumca.v1.Internal/"
)

// rules is the whole policy, one line a method.
var rules = map[string]Rule{
	caService + "GetRootBundle":        {Who: Anyone, Route: Here},
	caService + "IssueNodeCertificate": {Who: Anyone, Route: Here}, // checks the token's proof, then Internal.Admit
	caService + "RenewNodeCertificate": {Who: Member, Route: Redirect},
	caService + "Heartbeat":            {Who: Member, Route: Redirect},
	caService + "Gossip":               {Who: CurrentMember, Route: Here},

	controlService + "Status":                  {Who: Operator, Route: Here},
	controlService + "Ping":                    {Who: Operator, Route: Here},
	controlService + "AddVoter":                {Who: Manager, Route: Redirect},
	controlService + "JoinToken":               {Who: Operator, Route: Forward, Read: true},
	controlService + "ListNodes":               {Who: Operator, Route: Forward, Read: true},
	controlService + "ListTokens":              {Who: Operator, Route: Forward, Read: true},
	controlService + "GetCA":                   {Who: Operator, Route: Forward, Read: true},
	controlService + "ListAdminCertificates":   {Who: Operator, Route: Forward, Read: true},
	controlService + "SetRole":                 {Who: Operator, Route: Forward},
	controlService + "RemoveNode":              {Who: OperatorOrSelf, Route: Forward}, // a worker leaving: itself only
	controlService + "Update":                  {Who: Operator, Route: Forward},
	controlService + "CreateToken":             {Who: Operator, Route: Forward},
	controlService + "RevokeToken":             {Who: Operator, Route: Forward},
	controlService + "RotateCA":                {Who: Operator, Route: Forward},
	controlService + "RevokeAdminCertificates": {Who: Operator, Route: Forward},
	controlService + "IssueAdminCertificate":   {Who: HostOnly, Route: Forward},
	controlService + "UnlockKey":               {Who: Operator, Route: Forward, Read: true},
	controlService + "Unlock":                  {Who: HostOnly, Route: Here}, // a locked manager's socket
	controlService + "Backup":                  {Who: Operator, Route: Here}, // a stream; current through Internal.ReadIndex
	controlService + "RevokeCertificate":       {Who: Operator, Route: Forward},

	internalService + "Admit":     {Who: Voter, Route: LeaderOnly},
	internalService + "ReadIndex": {Who: Voter, Route: LeaderOnly},
}

// RuleFor returns the rule of a method (its full gRPC name).
func RuleFor(method string) (Rule, bool) {
	r, ok := rules[method]
	return r, ok
}

// Methods returns the methods the policy knows.
func Methods() []string {
	out := make([]string, 0, len(rules))
	for m := range rules {
		out = append(out, m)
	}
	return out
}
