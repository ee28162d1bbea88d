package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"
)

// The operations of the models, and what they answered.
type histInput struct {
	// Op is one of the op* constants.
	Op     string
	ID     string // rm, inspect, renew, revoke: the node; admin ops: the admin serial
	Token  string // join, join-extra: the token used
	Serial string // revoke: the serial revoked
	// TokenID: join-extra, token-revoke, token-ls: the extra token's ID.
	TokenID string
}

type histOutput struct {
	Unknown bool // the call failed in a way that says nothing of its effect
	// OK: join, rm, renew, revoke, rotate, admin ops, token-create,
	// token-revoke: done; inspect: the node is a member; admin-inspect:
	// recorded and not revoked; token-ls: the token is listed; ca: a
	// rotation is in progress.
	OK bool
	// Refused: the call was refused, and changed nothing. join,
	// join-extra: bad token; rm: no such node; renew: not a member;
	// revoke: revoked already or not a member; admin-inspect: revoked;
	// token-revoke: no such token (revoked already, or never created);
	// ca: the last rotation has completed.
	Refused bool
	// Lenient marks a refusal the model cannot judge (a renewal refused
	// once a root rotation may have left the node behind, or a renewal or
	// join-extra whose commit found a new CA): it changed nothing, and it
	// is not checked.
	Lenient bool
	ID      string // join, join-extra: the node ID; token-create: the token's ID
	Serial  string // join, renew, admin-issue: the serial issued; inspect: the node's current one
	Token   string // rotate, token: the worker token; token-create: the extra token
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
	opCARotate     = "ca-rotate"    // root rotation started
	opCAComplete   = "ca-complete"  // root rotation completed (seen, from its start)
	opCA           = "ca"           // GetCA: the rotation's progress
	opStatus       = "status"       // Status: this manager's local view (not linearizable)
	opJoinExtra    = "join-extra"   // a join with an extra token
	opTokenCreate  = "token-create" // an extra worker token created
	opTokenRevoke  = "token-revoke" // an extra token revoked, by ID
	opTokenList    = "token-ls"     // ListTokens: is one extra token listed
)

// The models check a history in four parts, each small enough for
// porcupine to stay fast:
//   - tokenModel: the worker join token, over joins (with the standing
//     worker token), its rotations and reads, and the root rotation's
//     completion, which replaces it;
//   - extraTokenModel: each extra join token on its own (porcupine
//     partitions), over its creation, revocations, the joins with it,
//     its listings, and the root rotation's completion, which drops it;
//   - entityModel: each node and each admin certificate on its own
//     (porcupine partitions), over what names it (joins with an extra
//     token too);
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
	case opJoin, opJoinExtra:
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

// partitionBy splits a history by key, in the order keys first appear;
// the operations everywhere reports (nil: none) stand in every part.
func partitionBy(history []porcupine.Operation, key func(porcupine.Operation) string, everywhere func(porcupine.Operation) bool) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	var order []string
	var all []porcupine.Operation
	for _, op := range history {
		if everywhere != nil && everywhere(op) {
			all = append(all, op)
			continue
		}
		k := key(op)
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], op)
	}
	out := make([][]porcupine.Operation, 0, len(order))
	for _, k := range order {
		out = append(out, append(byKey[k], all...))
	}
	return out
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
		return partitionBy(history, entityKey, nil)
	},
	Init: func() any { return entState{} },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(entState), in.(histInput), out.(histOutput)
		switch i.Op {
		case opJoin, opJoinExtra: // acknowledged joins only
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

// States of one extra join token.
const (
	extraNone   = iota // not created (as far as the history says)
	extraUsable        // created: it admits
	extraGone          // revoked, or dropped by a root rotation: it never admits again
)

// extraKey is the partition of an operation on extra tokens: the
// token's ID.
func extraKey(op porcupine.Operation) string {
	if op.Input.(histInput).Op == opTokenCreate {
		return op.Output.(histOutput).ID
	}
	return op.Input.(histInput).TokenID
}

// extraTokenModel checks each extra join token's operations: created
// (acknowledged creations only) it is usable; a join with it succeeds
// only while it is usable, and is refused only once it is not; a
// revocation succeeds only while it is usable and makes it gone for
// good, and is refused (NotFound) only when it is not usable; ListTokens
// lists it only while it is usable. The root rotation's completion drops
// every extra token: it stands in each partition.
var extraTokenModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		return partitionBy(history, extraKey, func(op porcupine.Operation) bool {
			return op.Input.(histInput).Op == opCAComplete
		})
	},
	Init: func() any { return extraNone },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(int), in.(histInput), out.(histOutput)
		switch i.Op {
		case opTokenCreate: // acknowledged creations only
			return s == extraNone, extraUsable
		case opTokenRevoke:
			switch {
			case o.Unknown:
				if s == extraUsable {
					return true, extraGone
				}
				return true, s
			case o.OK:
				return s == extraUsable, extraGone
			default:
				return s != extraUsable, s
			}
		case opJoinExtra: // joins of known outcome only
			switch {
			case o.OK:
				return s == extraUsable, s
			case o.Lenient:
				return true, s
			default:
				return s != extraUsable, s
			}
		case opTokenList:
			return o.OK == (s == extraUsable), s
		case opCAComplete:
			if s == extraUsable {
				return true, extraGone
			}
			return true, s
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
	if i.TokenID != "" || i.Op == opTokenCreate {
		// An extra token goes by its ID.
		i.Token, o.Token = "", ""
	}
	res := "ok"
	switch {
	case o.Unknown:
		res = "?"
	case o.Lenient:
		res = "refused (not judged)"
	case (i.Op == opInspect || i.Op == opAdminInspect || i.Op == opTokenList) && !o.OK && !o.Refused:
		res = "absent"
	case o.Refused:
		res = "refused"
	}
	return fmt.Sprintf("%s(%s%s%s%s) -> %s %s", i.Op, tail(i.ID), tail(i.TokenID), tail(i.Token), tail(i.Serial), res, tail(o.ID+o.Token+o.Serial))
}

// tail shortens a token, ID or serial for a reader: its last 6 characters.
func tail(s string) string { return s[max(0, len(s)-6):] }

// TestExtraTokenModel: the extra token model takes what quorumca must do,
// and finds a revoked or dropped token that admits, or is listed, and a
// revocation of what was never created.
func TestExtraTokenModel(t *testing.T) {
	op := func(call, ret int64, in histInput, out histOutput) porcupine.Operation {
		return porcupine.Operation{Input: in, Output: out, Call: call, Return: ret}
	}
	create := func(call, ret int64, id string) porcupine.Operation {
		return op(call, ret, histInput{Op: opTokenCreate}, histOutput{OK: true, ID: id, Token: "tok-" + id})
	}
	revoke := func(call, ret int64, id string, out histOutput) porcupine.Operation {
		return op(call, ret, histInput{Op: opTokenRevoke, TokenID: id}, out)
	}
	join := func(call, ret int64, id string, out histOutput) porcupine.Operation {
		return op(call, ret, histInput{Op: opJoinExtra, TokenID: id, Token: "tok-" + id}, out)
	}
	list := func(call, ret int64, id string, listed bool) porcupine.Operation {
		return op(call, ret, histInput{Op: opTokenList, TokenID: id}, histOutput{OK: listed})
	}
	complete := func(call, ret int64) porcupine.Operation {
		return op(call, ret, histInput{Op: opCAComplete}, histOutput{OK: true})
	}
	ok, refused, unknown := histOutput{OK: true}, histOutput{Refused: true}, histOutput{Unknown: true}
	for _, tc := range []struct {
		name  string
		ops   []porcupine.Operation
		legal bool
	}{
		{"create, join, revoke, refused join, refused revoke", []porcupine.Operation{
			create(0, 1, "a"), join(2, 3, "a", ok), revoke(4, 5, "a", ok), join(6, 7, "a", refused), revoke(8, 9, "a", refused), list(10, 11, "a", false),
		}, true},
		{"a join overlapping the revocation admits", []porcupine.Operation{
			create(0, 1, "a"), revoke(2, 5, "a", ok), join(3, 6, "a", ok), list(7, 8, "a", false),
		}, true},
		{"a revocation of unknown outcome takes effect late, or never", []porcupine.Operation{
			create(0, 1, "a"), revoke(2, never, "a", unknown), join(3, 4, "a", ok), list(5, 6, "a", true),
		}, true},
		{"a token never created: its revocation is refused", []porcupine.Operation{
			revoke(0, 1, "nosuch", refused),
		}, true},
		{"two tokens, one revoked", []porcupine.Operation{
			create(0, 1, "a"), create(0, 2, "b"), revoke(3, 4, "a", ok), join(5, 6, "b", ok), join(5, 7, "a", refused),
		}, true},
		{"the root rotation drops a token created before it", []porcupine.Operation{
			create(0, 1, "a"), complete(2, 5), join(3, 4, "a", ok), join(6, 7, "a", refused), list(8, 9, "a", false),
		}, true},
		{"a revoked token admits", []porcupine.Operation{
			create(0, 1, "a"), revoke(2, 3, "a", ok), join(4, 5, "a", ok),
		}, false},
		{"a token is refused, then admits", []porcupine.Operation{
			create(0, 1, "a"), revoke(2, never, "a", unknown), join(3, 4, "a", refused), join(5, 6, "a", ok),
		}, false},
		{"a token created and not revoked is refused", []porcupine.Operation{
			create(0, 1, "a"), join(2, 3, "a", refused),
		}, false},
		{"a revoked token is listed", []porcupine.Operation{
			create(0, 1, "a"), revoke(2, 3, "a", ok), list(4, 5, "a", true),
		}, false},
		{"a token is revoked twice", []porcupine.Operation{
			create(0, 1, "a"), revoke(2, 3, "a", ok), revoke(4, 5, "a", ok),
		}, false},
		{"a token never created is revoked", []porcupine.Operation{
			revoke(0, 1, "nosuch", ok),
		}, false},
		{"a token the root rotation dropped admits", []porcupine.Operation{
			create(0, 1, "a"), complete(2, 3), join(4, 5, "a", ok),
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(extraTokenModel, tc.ops); got != tc.legal {
				t.Errorf("CheckOperations(extraTokenModel, %s) = %v, want %v", tc.name, got, tc.legal)
			}
		})
	}
}
