package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measured is a timed run of n operations.
type measured struct {
	n   int
	lat latencies
	// wall is the run's duration; cpu the CPU time the process used
	// meanwhile (clients and servers alike: they share the process).
	wall, cpu time.Duration
}

func (m measured) rate() float64 { return float64(m.n) / m.wall.Seconds() }

// cpuPerOp is the process's CPU time per operation, in milliseconds.
func (m measured) cpuPerOp() float64 { return ms(m.cpu) / float64(m.n) }

// cores is how many cores the run kept busy on average.
func (m measured) cores() float64 { return m.cpu.Seconds() / m.wall.Seconds() }

// run calls op(i) for i in [0, n) from c goroutines and returns each
// call's latency, the wall time of the whole run and the CPU time it took.
// It stops at the first error.
func run(ctx context.Context, n, c int, op func(ctx context.Context, i int) error) (measured, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lat := make(latencies, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0, start := cpuTime(), time.Now()
	for range min(c, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t := time.Now()
				if err := op(ctx, i); err != nil {
					cancel(fmt.Errorf("operation %d: %w", i, err))
					return
				}
				lat[i] = time.Since(t)
			}
		})
	}
	wg.Wait()
	m := measured{n: n, lat: lat, wall: time.Since(start), cpu: cpuTime() - cpu0}
	if err := context.Cause(ctx); err != nil {
		return measured{}, err
	}
	return m, nil
}

// joined is a simulated node after its join: what a real node stores, kept
// in memory.
type joined struct {
	agent.Enrollment
	via string
}

// enroll joins one simulated node through via: everything agent.Join does
// (token check of the bundle, fresh key, CSR, verified TLS, checks of the
// answer) but storing the credentials in memory.
func enroll(ctx context.Context, token, via string) (joined, error) {
	e, err := agent.Enroll(ctx, agent.JoinConfig{Token: token, Remote: via, Timeout: 30 * time.Second})
	return joined{Enrollment: e, via: via}, err
}

// benchJoin runs n joins with c concurrent joiners, spread over the
// managers, then the ceiling: the same joins against a server that signs
// in the handler, with no Raft and no forwarding.
func benchJoin(ctx context.Context, cl *cluster, n, c int) (Result, []joined, error) {
	stopProfile := profile("join")
	nodes, got, err := joinAll(ctx, cl, n, c)
	if perr := stopProfile(); err == nil && perr != nil {
		err = fmt.Errorf("cpu profile: %w", perr)
	}
	if err != nil {
		return Result{}, nil, fmt.Errorf("join: %w", err)
	}
	// Every join answered was committed: the managers' state holds them.
	if err := poll(ctx, time.Minute, func() error {
		if got := cl.managers[0].State().Nodes.Len(); got < n+len(cl.managers) {
			return fmt.Errorf("the first manager holds %d nodes after %d joins", got, n)
		}
		return nil
	}); err != nil {
		return Result{}, nil, fmt.Errorf("join: %w", err)
	}
	ceil, err := joinCeiling(ctx, cl.dir, n, c)
	if err != nil {
		return Result{}, nil, fmt.Errorf("join ceiling: %w", err)
	}
	r := result("join", c, got, ceil)
	r.Goals = []Goal{
		atLeast("ratio to ceiling", 60, 100*r.Ratio, "%"),
		atMost(fmt.Sprintf("p99 at %d joiners", c), 50, r.P99, " ms"),
		atLeast("joins/s", 1000, r.Rate, ""),
	}
	return r, nodes, nil
}

// joinAll joins n simulated nodes, c at a time, spread over the managers.
func joinAll(ctx context.Context, cl *cluster, n, c int) ([]joined, measured, error) {
	nodes := make([]joined, n)
	addrs := cl.addrs()
	got, err := run(ctx, n, c, func(ctx context.Context, i int) error {
		j, err := enroll(ctx, cl.workerToken, addrs[i%len(addrs)])
		nodes[i] = j
		return err
	})
	return nodes, got, err
}

// joinCeiling measures the join loop against ceilingCA.
func joinCeiling(ctx context.Context, dir string, n, c int) (*Ceiling, error) {
	srv, err := startCeilingCA(dir)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	got, err := run(ctx, n, c, func(ctx context.Context, i int) error {
		_, err := enroll(ctx, srv.token, srv.addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return ceiling("the same joins against one server that signs in the handler: no Raft, no forwarding, no state", got), nil
}

// ceilingCA is the least a CA server must do for a join: serve the bundle,
// check the token in constant time, parse the CSR, sign. It answers over
// the same TLS configuration as a manager's API.
type ceilingCA struct {
	api.UnimplementedCAServer
	signer    *ca.Signer
	bundle    []byte
	secret    string
	clusterID string
	token     string
	addr      string
	srv       *grpc.Server
}

func startCeilingCA(dir string) (*ceilingCA, error) {
	now := time.Now()
	clusterID, root, signer, err := ceilingRoot(now)
	if err != nil {
		return nil, err
	}
	secret, err := ca.NewSecret(rand.Reader)
	if err != nil {
		return nil, err
	}
	tok, err := ca.NewToken(root.Bundle, secret)
	if err != nil {
		return nil, err
	}
	// The server's own identity, stored as a manager stores it.
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		return nil, err
	}
	nodeID, err := ca.NewID(rand.Reader)
	if err != nil {
		return nil, err
	}
	issued, err := signer.SignKey(rand.Reader, now, key.Public(), ca.Identity{NodeID: nodeID, Role: ca.RoleManager, ClusterID: clusterID}, ca.DefaultCertExpiry)
	if err != nil {
		return nil, err
	}
	creds, err := agent.NewCredentials(dir+"/ceiling", keyPEM, issued.PEM, root.Bundle)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &ceilingCA{signer: signer, bundle: root.Bundle, secret: secret, clusterID: clusterID, token: tok.String(), addr: ln.Addr().String()}
	s.srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(creds.ServerTLS(tls.VerifyClientCertIfGiven))))
	api.RegisterCAServer(s.srv, s)
	go s.srv.Serve(ln)
	return s, nil
}

func (s *ceilingCA) stop() { s.srv.Stop() }

func (s *ceilingCA) GetRootBundle(context.Context, *api.GetRootBundleRequest) (*api.GetRootBundleResponse, error) {
	return &api.GetRootBundleResponse{Bundle: s.bundle}, nil
}

func (s *ceilingCA) IssueNodeCertificate(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	// The same checks a manager makes: the token's root and its proof,
	// bound to this connection.
	if req.GetTokenDigest() != (ca.Token{Digest: sha256.Sum256(s.bundle)}).DigestString() {
		return nil, fmt.Errorf("bad token")
	}
	p, _ := peer.FromContext(ctx)
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, fmt.Errorf("no TLS")
	}
	ekm, err := ti.State.ExportKeyingMaterial(ca.TokenExporterLabel, nil, ca.TokenExporterLength)
	if err != nil {
		return nil, err
	}
	if !ca.CheckTokenProof(sha256.Sum256([]byte(s.secret)), ekm, req.GetCsr(), req.GetTokenProof()) {
		return nil, fmt.Errorf("bad token")
	}
	pub, err := ca.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	nodeID, err := ca.NewID(rand.Reader)
	if err != nil {
		return nil, err
	}
	id := ca.Identity{NodeID: nodeID, Role: ca.RoleWorker, ClusterID: s.clusterID}
	issued, err := s.signer.SignKey(rand.Reader, time.Now(), pub, id, ca.DefaultCertExpiry)
	if err != nil {
		return nil, err
	}
	return &api.IssueNodeCertificateResponse{
		NodeId: nodeID, Role: string(id.Role), ClusterId: s.clusterID,
		Certificate: issued.PEM, Bundle: s.bundle, Managers: []string{s.addr},
	}, nil
}

// ceilingRoot makes a cluster ID and a root CA for a ceiling.
func ceilingRoot(now time.Time) (string, ca.Material, *ca.Signer, error) {
	clusterID, err := ca.NewID(rand.Reader)
	if err != nil {
		return "", ca.Material{}, nil, err
	}
	root, err := ca.GenerateRoot(rand.Reader, now, clusterID)
	if err != nil {
		return "", ca.Material{}, nil, err
	}
	signer, err := ca.NewSigner(root)
	return clusterID, root, signer, err
}
