// Package agent is quorumca's node side (DESIGN.md flows 2 and 4): it
// joins a cluster with a join token, keeps the node's key, certificate and
// trust bundle on disk (Credentials), heartbeats to the leader and renews
// the certificate by itself (Renewer), follows gossip, and gives other
// programs on the node TLS configurations made from those credentials.
// StartWorker runs it all as the worker daemon; a manager runs the same
// parts beside its own.
package agent
