// Package raft replicates the cluster state among the managers. It is the
// only importer of hashicorp/raft and raft-boltdb: it owns the stores on
// disk (one fsynced bolt file for the log and the stable store, and a
// directory of snapshots), a mutual-TLS transport that admits only this
// cluster's managers, apply-and-wait with errors that say what to do (a
// full disk is told apart from a lost quorum: see Node.DiskError), and
// leadership notifications.
//
// What is replicated is a StateMachine, declared here so that this package
// does not depend on the package that implements it.
package raft
