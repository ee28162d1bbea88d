package api

// The health a node reports in StatusResponse.Health: "ok", or the worst
// thing wrong with it, worst first below. `quorumca status` exits with a
// code of its own for each (see cmd/quorumca).
const (
	// HealthLocked: a manager whose keys are sealed under the unlock key
	// waits for `quorumca unlock`.
	HealthLocked = "locked"
	// HealthRemoved: the cluster removed this node (the managers refuse
	// its certificate); it must join again.
	HealthRemoved = "removed"
	// HealthLeftBehind: a root rotation completed without this node; it
	// must join again.
	HealthLeftBehind = "left_behind"
	// HealthCertExpired: the node's certificate has expired or cannot be
	// read.
	HealthCertExpired = "cert_expired"
	// HealthProblem: the node reports a problem of its own (a full disk,
	// a log it cannot apply): see StatusResponse.Problem.
	HealthProblem = "problem"
	// HealthNoLeader: a manager knows no leader (no quorum); a worker
	// reaches no manager.
	HealthNoLeader = "no_leader"
	// HealthOK: nothing wrong.
	HealthOK = "ok"
)
