package manager

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/internal/audit"
)

// intercept returns the one interceptor of a manager's gRPC servers: it
// asks the policy who the caller is and whether it may make the call, then
// routes the call as the method's rule says (answered here, relayed to the
// leader, or the caller redirected there). Handlers only do their own
// work, and return domain errors; they become gRPC status codes here.
// The audit log records the call (audit.go) once its result is known,
// before it is answered.
func (m *Manager) intercept(arrival authz.Arrival) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		r, c := m.requestOf(ctx, info.FullMethod, arrival)
		c.RequestID, c.commits = m.requestID(ctx), &commitLog{}
		sendRequestID(ctx, c.RequestID)
		decided, err := authz.Decide(r, m.view())
		if err != nil && authz.Lagging(err) && m.raft.IsLeader() {
			// A leader just elected may not have applied the caller's
			// join (or its own promotion of it) yet: it judges once it
			// has caught up, not before.
			if rerr := m.leaderReady(ctx); rerr == nil {
				// What the call is (the caller's certificate status among
				// them) is read from the state too: read it again.
				id, commits := c.RequestID, c.commits
				r, c = m.requestOf(ctx, info.FullMethod, arrival)
				c.RequestID, c.commits = id, commits
				decided, err = authz.Decide(r, m.view())
			}
		}
		rule, _ := authz.RuleFor(info.FullMethod)
		if err != nil && !(authz.Lagging(err) && r.Arrival == authz.Direct && rule.Route != authz.Here && !m.raft.IsLeader()) {
			m.log.Warn("call refused", "method", info.FullMethod, "from", c.Addr, "arrival", r.Arrival, "err", err, "request_id", c.RequestID)
			return nil, m.audit(r, c, req, nil, toStatus(err))
		}
		if err := m.auditBroken(info.FullMethod, req); err != nil {
			return nil, err
		}
		// A caller this manager does not know yet (it lags behind the
		// leader) is sent on: the leader decides again.
		c.Caller = decided
		resp, err := m.route(context.WithValue(ctx, callKey{}, c), req, info.FullMethod, rule, handler)
		if err != nil {
			resp = nil
		}
		return resp, m.audit(r, c, req, resp, err)
	}
}

// route answers an authorized call where its rule says: here, through
// the leader, or by sending the caller there. Its error is a status.
func (m *Manager) route(ctx context.Context, req any, method string, rule authz.Rule, handler grpc.UnaryHandler) (any, error) {
	switch rule.Route {
	case authz.Forward:
		return m.forward(ctx, method, req, rule, handler)
	case authz.Redirect, authz.LeaderOnly:
		if !m.raft.IsLeader() {
			if err := m.redirect(ctx); !isSelf(err) {
				return nil, toStatus(err)
			}
		}
	}
	resp, err := handler(ctx, req)
	return resp, toStatus(err)
}

// interceptStream is intercept for the streaming methods: the same
// policy, and every stream is answered by the manager called (the rules
// give them the route Here).
func (m *Manager) interceptStream(arrival authz.Arrival) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		r, c := m.requestOf(ctx, info.FullMethod, arrival)
		c.RequestID, c.commits = m.requestID(ctx), &commitLog{}
		_ = ss.SetHeader(metadata.Pairs(audit.RequestIDHeader, c.RequestID)) // fails only once headers are sent
		decided, err := authz.Decide(r, m.view())
		if err != nil {
			m.log.Warn("call refused", "method", info.FullMethod, "from", c.Addr, "arrival", r.Arrival, "err", err, "request_id", c.RequestID)
			return m.audit(r, c, nil, nil, toStatus(err))
		}
		if rule, _ := authz.RuleFor(info.FullMethod); rule.Route != authz.Here {
			return status.Errorf(codes.Internal, "manager: stream %s is not answered here: the policy routes streams nowhere else", info.FullMethod)
		}
		if err := m.auditBroken(info.FullMethod, nil); err != nil {
			return err
		}
		c.Caller = decided
		// A stream's answer is under way when its handler returns: its line
		// is written then, with its result.
		err = toStatus(handler(srv, &callStream{ServerStream: ss, ctx: context.WithValue(ctx, callKey{}, c)}))
		return m.audit(r, c, nil, nil, err)
	}
}

// callStream is a stream whose context carries the call.
type callStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callStream) Context() context.Context { return s.ctx }

// forward answers a call on the leader: here if this manager leads
// (once its state holds every entry committed before its term, and for a
// read once it has made sure it still leads), else by relaying it to the
// leader, naming the caller.
func (m *Manager) forward(ctx context.Context, method string, req any, rule authz.Rule, handler grpc.UnaryHandler) (any, error) {
	c := callOf(ctx)
	for {
		if m.raft.IsLeader() {
			ready := m.leaderReady // a change: judged on a state that is whole
			if rule.Read {
				ready = m.leaderRead // a read: and this manager still leads
			}
			if err := ready(ctx); err != nil {
				return nil, toStatus(err)
			}
			resp, err := handler(ctx, req)
			return resp, toStatus(err)
		}
		if c.Forwarder != "" {
			// Relayed to a manager that no longer leads: never relay twice.
			return nil, toStatus(errForwardLoop)
		}
		id, addr, err := m.leader(ctx)
		if err != nil {
			return nil, toStatus(err)
		}
		if id == m.node.NodeID {
			continue // elected meanwhile: answer here
		}
		conn, err := m.peers.get(addr)
		if err != nil {
			return nil, toStatus(err)
		}
		out, err := newReply(method)
		if err != nil {
			return nil, toStatus(err)
		}
		if err := conn.Invoke(forwardContext(ctx, c), method, req, out); err != nil {
			return nil, err // the leader's status, as it gave it
		}
		return out, nil
	}
}

// leader returns the leader's node ID and API address, waiting up to
// electionWait for an election in progress.
func (m *Manager) leader(ctx context.Context) (id, addr string, err error) {
	wctx, cancel := context.WithTimeout(ctx, electionWait)
	defer cancel()
	id, err = m.raft.WaitLeader(wctx)
	if err != nil {
		if ctx.Err() != nil {
			return "", "", ctx.Err()
		}
		if disk := m.diskProblem(); disk != nil {
			return "", "", fmt.Errorf("%w; %w", errNoLeader, disk)
		}
		return "", "", errNoLeader
	}
	if id == m.node.NodeID {
		return id, m.apiAddr, nil
	}
	n, ok := m.machine.State().Node(id)
	if !ok || n.Addr == "" {
		return "", "", fmt.Errorf("%w: leader %s has no known API address yet", errNoLeader, id)
	}
	return id, n.Addr, nil
}

// redirect is the answer to a call the leader must take from the caller
// itself: where the leader is.
func (m *Manager) redirect(ctx context.Context) error {
	id, addr, err := m.leader(ctx)
	if err != nil {
		return err
	}
	if id == m.node.NodeID {
		// Elected meanwhile; the caller asks again, here.
		return &notLeaderError{id: id, addr: addr, self: true}
	}
	return &notLeaderError{id: id, addr: addr}
}

// isSelf reports whether err is a redirect to this very manager: it was
// elected meanwhile, and answers.
func isSelf(err error) bool {
	var nl *notLeaderError
	return errors.As(err, &nl) && nl.self
}

// notLeaderError says which manager leads.
type notLeaderError struct {
	id, addr string
	self     bool
}

func (e *notLeaderError) Error() string {
	if e.self {
		return "this manager became the leader while answering; ask it again"
	}
	return fmt.Sprintf("this manager is not the leader; the leader is %s at %s: ask it", e.id, e.addr)
}

// replies maps each method's full name to the type of its answer, for
// relaying a call whose answer type the interceptor does not know.
var replies = sync.OnceValue(func() map[string]protoreflect.MessageType {
	out := map[string]protoreflect.MessageType{}
	services := api.File_quorumca_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			md := sd.Methods().Get(j)
			mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
			if err != nil {
				panic(fmt.Sprintf("manager: answer type of %s: %v", md.FullName(), err)) // broken invariant
			}
			out["/"+string(sd.FullName())+"/"+string(md.Name())] = mt
		}
	}
	return out
})

func newReply(method string) (proto.Message, error) {
	mt, ok := replies()[method]
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "no method %s", method)
	}
	return mt.New().Interface(), nil
}

// maxAnonymousCalls bounds the calls without a client certificate (joins,
// bundle fetches) a manager serves at once: each may carry a message up
// to maxRecvMsg, read before the join token's proof is checked.
const maxAnonymousCalls = 32

// maxRecvMsg bounds every message a manager reads; the largest it expects
// is a RotateCA with a CA certificate, chain and key, a few KiB.
const maxRecvMsg = 256 << 10

// tapAnonymous runs when a call arrives, before its message is read: a
// caller without a certificate may only make the calls anyone may make,
// and only maxAnonymousCalls at once.
func (m *Manager) tapAnonymous(ctx context.Context, info *tap.Info) (context.Context, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			return ctx, nil
		}
	}
	if rule, ok := authz.RuleFor(info.FullMethodName); !ok || rule.Who != authz.Anyone {
		err := status.Errorf(codes.Unauthenticated, "%s needs a certificate of this cluster (mutual TLS)", info.FullMethodName)
		c := call{Addr: "unknown", UID: -1, RequestID: m.requestIDOf(info.Header)}
		if p := peerAddr(ctx); p != nil {
			c.Addr = p.String()
		}
		return nil, m.audit(authz.Request{Method: info.FullMethodName, Arrival: authz.Direct}, c, nil, nil, err)
	}
	select {
	case m.anonymous <- struct{}{}:
		context.AfterFunc(ctx, func() { <-m.anonymous })
		return ctx, nil
	default:
		return nil, busyStatus("too many joins at once on this manager; retry shortly")
	}
}
