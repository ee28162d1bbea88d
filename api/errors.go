package api

import "strings"

// ExternalCADown begins the message of the Unavailable error a manager
// returns when none of the cluster's external CAs answered. Unlike a lost
// quorum, which needs an operator, it is often brief (a CA restarting), so
// a joining node asks again until its join times out.
const ExternalCADown = "no external CA answered"

// IsExternalCADown reports whether a status message says the external CAs
// did not answer.
func IsExternalCADown(msg string) bool { return strings.Contains(msg, ExternalCADown) }
