// Package ca is quorumca's pure public key infrastructure: root generation and
// import, node certificates from CSRs, cross-signing for root rotation, join
// tokens, node IDs, chain checks and the renewal schedule.
//
// The package never touches the network, the disk, the clock or global
// randomness: every function that needs the time or random bytes takes them
// as arguments (a time.Time and an io.Reader), in the manner of crypto/tls's
// Config.Time and Config.Rand. It imports nothing outside the standard library.
package ca
