package integration

import (
	"fmt"
	"slices"
	"strings"

	"github.com/anishathalye/porcupine"
)

// The operations of the models, and what they answered.
type histInput struct {
	// Op is one of the op* constants.
	Op     string
	ID     string // rm, inspect, renew, revoke: the node; admin ops: the admin serial
	Token  string // join: the token used
	Serial string // revoke: the serial revoked
}

type histOutput struct {
	Unknown bool // the call failed in a way that says nothing of its effect
	// OK: join, rm, renew, revoke, rotate, admin ops: done; inspect: the
	// node is a member; admin-inspect: recorded and not revoked; ca: a
	// rotation is in progress.
	OK bool
	// Refused: the call was refused, and changed nothing. join: bad token;
	// rm: no such node; renew: not a member; revoke: revoked already or
	// not a member; admin-inspect: revoked; ca: the last rotation has
	// completed.
	Refused bool
	// Lenient marks a refusal the model cannot judge (a renewal refused
	// once a root rotation may have left the node behind, or one whose
	// commit found a new CA): it changed nothing, and it is not checked.
	Lenient bool
	ID      string // join: the node ID
	Serial  string // join, renew, admin-issue: the serial issued; inspect: the node's current one
	Token   string // rotate, token: the worker token
	Err     string // what a failed call said, for the reader of a failure
}

// The kinds of operation.
const (
	opJoin         = "join"
	opRm           = "rm"
	opInspect      = "inspect"
	opRotate       = "rotate" // worker join-token rotation
	opToken        = "token"  // worker join-token read
	opRenew        = "renew"  // a node renews its certificate
	opRevoke       = "revoke" // cert revoke of a node's or admin's serial
	opAdminIssue   = "admin-issue"
	opAdminRm      = "admin-rm"
	opAdminInspect = "admin-inspect"
	opCARotate     = "ca-rotate"   // root rotation started
	opCAComplete   = "ca-complete" // root rotation completed (seen, from its start)
	opCA           = "ca"          // GetCA: the rotation's progress
	opStatus       = "status"      // Status: this manager's local view (not linearizable)
)

// The models check a history in three parts, each small enough for
// porcupine to stay fast:
//   - tokenModel: the worker join token, over joins (with the standing
//     worker token), its rotations and reads, and the root rotation's
//     completion, which replaces it;
//   - entityModel: each node and each admin certificate on its own
//     (porcupine partitions), over what names it;
//   - rotationModel: the root rotation's progress as GetCA tells it.

// tokenModel's state is the worker token, "" once an operation of unknown
// outcome may have changed it to one nobody has seen yet.
func tokenModel(initial string) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return initial },
		Step: func(st, in, out any) (bool, any) {
			tok, i, o := st.(string), in.(histInput), out.(histOutput)
			switch i.Op {
			case opJoin:
				switch {
				case o.Unknown:
					return true, tok
				case o.OK:
					return tok == "" || i.Token == tok, tok
				default:
					return tok == "" || i.Token != tok, tok
				}
			case opRotate:
				if o.Unknown {
					return true, ""
				}
				return o.Token != tok, o.Token
			case opToken:
				// A read pins an unknown token again.
				return tok == "" || o.Token == tok, o.Token
			case opCAComplete:
				// Completion replaces both join secrets, and the digest.
				return true, ""
			}
			return false, tok
		},
		DescribeOperation: describeOp,
	}
}

// Membership states of one node; an admin certificate uses the first
// three (none, issued, revoked).
const (
	notJoined = iota
	member
	removed
)

// entState is the state of one node or admin certificate.
type entState struct {
	Status int
	// Cur is a node's current serial, "?" once a renewal of unknown
	// outcome may have replaced it.
	Cur string
	// Revoked lists the node's revoked serials, sorted, comma-separated.
	Revoked string
}

func (s entState) isRevoked(serial string) bool {
	return s.Revoked != "" && slices.Contains(strings.Split(s.Revoked, ","), serial)
}

func (s entState) revoke(serial string) entState {
	var all []string
	if s.Revoked != "" {
		all = strings.Split(s.Revoked, ",")
	}
	all = append(all, serial)
	slices.Sort(all)
	s.Revoked = strings.Join(slices.Compact(all), ",")
	return s
}

// entityKey is the partition of an operation: the node it names (or
// joined), or "admin:" and the admin certificate's serial.
func entityKey(op porcupine.Operation) string {
	i, o := op.Input.(histInput), op.Output.(histOutput)
	switch i.Op {
	case opJoin:
		return o.ID
	case opAdminIssue:
		return "admin:" + o.Serial
	case opAdminRm, opAdminInspect:
		return "admin:" + i.ID
	case opRevoke:
		if strings.HasPrefix(i.ID, "admin:") {
			return i.ID
		}
	}
	return i.ID
}

// entityModel checks each node's and each admin certificate's operations.
//
// A node: joined (acknowledged joins only) it is a member with the
// serial it was issued, until a removal. Inspection says whether it is a
// member, and its current serial. A renewal succeeds only for a member,
// and makes its serial current; a refused one only for a node that is
// not. A revocation succeeds only for a member's serial not revoked yet.
//
// An admin certificate: issued (acknowledged only), then revoked by
// admin-cert rm (which takes a revoked one again) or cert revoke (which
// refuses it then); inspection tells which.
var entityModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range history {
			k := entityKey(op)
			if _, ok := byKey[k]; !ok {
				order = append(order, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range order {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return entState{} },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(entState), in.(histInput), out.(histOutput)
		switch i.Op {
		case opJoin: // acknowledged joins only
			return s.Status == notJoined, entState{Status: member, Cur: o.Serial}
		case opRm:
			switch {
			case o.Unknown:
				if s.Status == member {
					s.Status = removed
				}
				return true, s
			case o.OK:
				s.Status = removed
				return st.(entState).Status == member, s
			default:
				return s.Status != member, s
			}
		case opInspect:
			if o.OK != (s.Status == member) {
				return false, s
			}
			if !o.OK {
				return true, s
			}
			if s.Cur == "?" {
				s.Cur = o.Serial // a read pins it again
				return true, s
			}
			return o.Serial == s.Cur, s
		case opRenew:
			switch {
			case o.Unknown:
				if s.Status == member {
					s.Cur = "?"
				}
				return true, s
			case o.OK:
				ok := s.Status == member
				s.Cur = o.Serial
				return ok, s
			case o.Lenient:
				return true, s
			default:
				return s.Status != member, s
			}
		case opRevoke:
			if strings.HasPrefix(i.ID, "admin:") {
				switch {
				case o.Unknown:
					if s.Status == member {
						s.Status = removed
					}
					return true, s
				case o.OK:
					ok := s.Status == member
					s.Status = removed
					return ok, s
				default:
					return s.Status == removed, s
				}
			}
			can := s.Status == member && !s.isRevoked(i.Serial)
			switch {
			case o.Unknown:
				if can {
					s = s.revoke(i.Serial)
				}
				return true, s
			case o.OK:
				return can, s.revoke(i.Serial)
			default:
				return !can, s
			}
		case opAdminIssue:
			return s.Status == notJoined, entState{Status: member}
		case opAdminRm:
			switch {
			case o.Unknown:
				if s.Status == member {
					s.Status = removed
				}
				return true, s
			case o.OK:
				ok := s.Status != notJoined
				s.Status = removed
				return ok, s
			default:
				return s.Status == notJoined, s
			}
		case opAdminInspect:
			switch {
			case o.OK:
				return s.Status == member, s
			case o.Refused:
				return s.Status == removed, s
			default:
				return s.Status == notJoined, s
			}
		}
		return false, s
	},
	DescribeOperation: describeOp,
}

// Root rotation states, as GetCA tells them.
const (
	caNever = iota
	caRotating
	caDone
)

// rotationModel checks the root rotation's progress: it starts with
// RotateCA, may complete at any time after (the leader commits it by
// itself), and never goes back. RotateCA is refused while one is in
// progress (after completion the rotator never asks again). GetCA answers
// in progress (OK), completed (Refused), or never rotated (neither).
var rotationModel = porcupine.Model{
	Init: func() any { return caNever },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(int), in.(histInput), out.(histOutput)
		switch i.Op {
		case opCARotate:
			if o.Unknown {
				if s == caNever {
					return true, caRotating
				}
				return true, s
			}
			if o.Refused {
				return s != caNever, s // one is in progress, or done
			}
			return s == caNever, caRotating
		case opCA:
			switch {
			case o.OK:
				return s == caRotating, s
			case o.Refused:
				// Completion came, now or before.
				return s != caNever, caDone
			default:
				return s == caNever, s
			}
		}
		return false, s
	},
	DescribeOperation: describeOp,
}

func describeOp(in, out any) string {
	i, o := in.(histInput), out.(histOutput)
	res := "ok"
	switch {
	case o.Unknown:
		res = "?"
	case o.Lenient:
		res = "refused (not judged)"
	case (i.Op == opInspect || i.Op == opAdminInspect) && !o.OK && !o.Refused:
		res = "absent"
	case o.Refused:
		res = "refused"
	}
	return fmt.Sprintf("%s(%s%s%s) -> %s %s", i.Op, tail(i.ID), tail(i.Token), tail(i.Serial), res, tail(o.ID+o.Token+o.Serial))
}

// tail shortens a token, ID or serial for a reader: its last 6 characters.
func tail(s string) string { return s[max(0, len(s)-6):] }
