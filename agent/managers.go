// The renewer's connections to the managers: which one it calls, the
// redirect to the leader, and what it says when none trusts it any more.

package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// diagnose runs after a failed heartbeat: it asks the managers for the
// cluster's trust bundle (the one call that needs no client certificate)
// and checks this node's certificate against it. A certificate the
// cluster's bundle does not cover means the root was rotated while this
// node was away. The answer is not authenticated (the managers' new
// certificates may no longer chain to this node's old root): it only
// decides what to tell the operator, never what to trust.
func (r *Renewer) diagnose(ctx context.Context) {
	r.mu.Lock()
	managers := slices.Clone(r.managers)
	r.mu.Unlock()
	creds := r.cfg.Credentials
	for _, addr := range managers {
		if addr == r.cfg.Self {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		bundle, err := fetchBundleUnverified(cctx, addr)
		cancel()
		if err != nil {
			continue
		}
		if string(bundle) != string(creds.Bundle()) {
			if _, _, err := ca.ParseBundle(bundle); err != nil {
				continue // not an answer to judge by
			}
		}
		_, _, err = ca.VerifyPEM(creds.certPEMs(), bundle, r.cfg.Now())
		if err != nil && string(bundle) == string(creds.Bundle()) {
			return // an expired certificate: status says so
		}
		if err == nil {
			if r.refusedBy(ctx, addr) {
				r.setProblem(fmt.Errorf("%w: the manager at %s refuses this node's certificate, which the cluster's root still covers: the node was removed from the cluster (or its certificate revoked and not yet renewed). "+
					"If it was removed, rejoin it: stop it, remove its data directory, and run `quorumca join --token-file FILE %s` with a token from `quorumca join-token worker` (or manager) on a manager", ErrRefused, addr, addr))
			}
			return
		}
		r.setProblem(fmt.Errorf("%w: its certificate chains to a root CA that the managers (%s) no longer trust, because the cluster's root was rotated while it was unreachable. "+
			"Rejoin it: stop it, remove its data directory, and run `quorumca join --token TOKEN %s` with a token from `quorumca join-token worker` (or manager) on a manager", ErrLeftBehind, addr, addr))
		return
	}
}

// ErrRefused is the problem of a node whose certificate, though its
// cluster's root covers it, the managers refuse at the handshake: a
// removed node.
var ErrRefused = errors.New("agent: the managers refuse this node's certificate")

// refusedBy reports whether the manager at addr refuses this node's
// certificate at the TLS handshake: a server that refuses a client
// certificate sends the bad_certificate alert (under TLS 1.3, after the
// client has finished; the first read gets it).
func (r *Renewer) refusedBy(ctx context.Context, addr string) bool {
	cfg := r.cfg.Credentials.ClientTLS(ManagerName)
	cfg.NextProtos = []string{"h2"}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
	if err == nil {
		defer conn.Close()
		deadline, _ := ctx.Deadline()
		conn.SetReadDeadline(deadline)
		_, err = conn.Read(make([]byte, 1))
	}
	return err != nil && strings.Contains(err.Error(), "tls: bad certificate")
}

// ErrNoManager is returned when no manager in the list answered.
var ErrNoManager = errors.New("agent: no manager answered")

// call runs f against the leader, then each manager in turn, until one
// answers; a manager's redirect to the leader is followed at once.
func (r *Renewer) call(ctx context.Context, f func(context.Context, *grpc.ClientConn) error) error {
	r.mu.Lock()
	queue := slices.Clone(r.managers)
	if r.leader != "" {
		queue = append([]string{r.leader}, slices.DeleteFunc(queue, func(a string) bool { return a == r.leader })...)
	}
	r.mu.Unlock()
	var errs []error
	tried := map[string]bool{}
	for len(queue) > 0 {
		addr := queue[0]
		queue = queue[1:]
		if tried[addr] {
			continue
		}
		tried[addr] = true
		conn, err := r.conn(addr)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = f(cctx, conn)
			cancel()
		}
		if err == nil {
			r.mu.Lock()
			r.leader = addr
			r.mu.Unlock()
			return nil
		}
		if leader, ok := api.LeaderRedirect(err); ok && !tried[leader] {
			queue = append([]string{leader}, queue...)
			continue
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	r.mu.Lock()
	r.leader = ""
	r.mu.Unlock()
	return fmt.Errorf("%w: %w", ErrNoManager, errors.Join(errs...))
}

func (r *Renewer) conn(addr string) (*grpc.ClientConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return nil, errStopped
	}
	if c, ok := r.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(r.cfg.Credentials.ClientTLS(ManagerName))))
	if err != nil {
		return nil, err
	}
	r.conns[addr] = c
	return c, nil
}

// errStopped is returned by a call made after Run returned.
var errStopped = errors.New("agent: renewer stopped")

// stop closes the connections once Run returns, for good.
func (r *Renewer) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.closeConns()
}

func (r *Renewer) closeConns() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for a, c := range r.conns {
		c.Close()
		delete(r.conns, a)
	}
}

func (r *Renewer) setManagers(ms []string) {
	if len(ms) == 0 {
		return
	}
	r.mu.Lock()
	same := slices.Equal(ms, r.managers)
	if !same {
		r.managers = slices.Clone(ms)
	}
	r.mu.Unlock()
	if !same && r.cfg.OnManagers != nil {
		r.cfg.OnManagers(ms)
	}
}
