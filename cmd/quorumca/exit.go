package main

import (
	"errors"
	"fmt"

	"github.com/quorumca/quorumca/api"
)

// Exit codes of quorumca status, for health checks (a container's
// HEALTHCHECK, a monitoring probe). Every other command exits 0 or
// exitError.
const (
	exitOK         = 0
	exitError      = 1 // the command failed (a bad flag, a refusal)
	exitNoDaemon   = 2 // no daemon answers on the control socket
	exitNoLeader   = 3 // no leader (no quorum), or a worker reaches no manager
	exitRejoin     = 4 // removed from the cluster, or left behind by a rotation: join again
	exitCertExpiry = 5 // the node's certificate has expired or cannot be read
	exitLocked     = 6 // a manager waits for `quorumca unlock`
	exitProblem    = 7 // the node reports a problem of its own (disk full, ...)
)

// healthExit maps a node's reported health to status's exit code.
var healthExit = map[string]int{
	api.HealthOK:          exitOK,
	api.HealthNoLeader:    exitNoLeader,
	api.HealthRemoved:     exitRejoin,
	api.HealthLeftBehind:  exitRejoin,
	api.HealthCertExpired: exitCertExpiry,
	api.HealthLocked:      exitLocked,
	api.HealthProblem:     exitProblem,
}

// codeError is an error that makes quorumca exit with code.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

// withCode makes err exit with code.
func withCode(code int, format string, args ...any) error {
	return &codeError{code: code, err: fmt.Errorf(format, args...)}
}

// exitCode is the code quorumca exits with for err.
func exitCode(err error) int {
	var ce *codeError
	if errors.As(err, &ce) {
		return ce.code
	}
	if err != nil {
		return exitError
	}
	return exitOK
}
