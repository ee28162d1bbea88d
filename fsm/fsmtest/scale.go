// Package fsmtest builds large fsm states for benchmarks: a cluster of N
// nodes as Apply would have recorded them, with real IDs, serials and CA
// material, and commands to apply to it. It is for tests and benchmarks
// of fsm and of the packages that persist its state; nothing else imports
// it.
package fsmtest

import (
	"encoding/json"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// T0 is when the scale clusters are initialized.
var T0 = time.Date(2030, time.January, 1, 0, 0, 0, 0, time.UTC)

// Managers is how many of a scale cluster's nodes are managers.
const Managers = 5

// Scale is a cluster of N nodes and commands to apply to it, each on its
// own to State (they do not follow one another).
type Scale struct {
	State *fsm.State
	// Renew holds renewals of nodes of State, Join joins of new nodes,
	// both at At.
	Renew, Join []fsm.Command
	At          time.Time
}

// NewScale returns a cluster of n nodes (at least 1): Managers managers
// and workers, each joined once and renewed once, so that its record
// holds a current certificate and the previous one, as a node's does
// through most of its certificates' lifetime. cmds is how many renewals
// and joins to make. The same n and cmds give the same cluster.
//
// The nodes are what Apply records for a join and a renewal, but the map
// of them is read from JSON rather than built by n Apply calls, so that
// building it costs O(n) whatever NodeMap's update costs.
func NewScale(n, cmds int) (*Scale, error) {
	rand := mrand.NewChaCha8([32]byte{'s', 'c', 'a', 'l', 'e'})
	pick := mrand.New(rand)
	clusterID, err := ca.NewID(rand)
	if err != nil {
		return nil, err
	}
	material, err := ca.GenerateRoot(rand, T0, clusterID)
	if err != nil {
		return nil, err
	}
	signer, err := ca.NewSigner(material)
	if err != nil {
		return nil, err
	}
	status := ca.StatusOf(signer.Certificate())
	expiry := ca.DefaultCertExpiry
	cert := func(at time.Time, index uint64) (fsm.CertInfo, error) {
		var b [20]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fsm.CertInfo{}, err
		}
		b[0] = b[0]&0x7f | 0x40 // as ca's serials: positive, 150 bits at least
		return fsm.CertInfo{
			Serial:    new(big.Int).SetBytes(b[:]).Text(16),
			NotBefore: at.Add(-time.Hour), NotAfter: at.Add(expiry),
			Issuer: status, IssuedAt: at, Index: index,
		}, nil
	}
	node := func(i int, role ca.Role) (fsm.Node, error) {
		id, err := ca.NewID(rand)
		if err != nil {
			return fsm.Node{}, err
		}
		n := fsm.Node{
			ID: id, Role: role, Hostname: fmt.Sprintf("node-%06d", i),
			Addr:     fmt.Sprintf("10.%d.%d.%d:0", i>>16&0xff, i>>8&0xff, i&0xff),
			JoinedAt: T0.Add(time.Duration(i) * time.Millisecond),
		}
		if role == ca.RoleManager {
			n.Addr = fmt.Sprintf("10.255.0.%d:2377", i)
			n.RaftAddr = fmt.Sprintf("10.255.0.%d:2378", i)
		}
		return n, nil
	}

	first, err := node(0, ca.RoleManager)
	if err != nil {
		return nil, err
	}
	if first.Cert, err = cert(T0, 1); err != nil {
		return nil, err
	}
	secret := func() string { s, _ := ca.NewSecret(rand); return s }
	workerSecret, managerSecret := secret(), secret()
	s, err := fsm.Apply(nil, 1, fsm.Command{At: T0, Init: &fsm.Init{
		ClusterID: clusterID, CertExpiry: expiry, CA: material,
		WorkerSecret: workerSecret, ManagerSecret: managerSecret,
		GossipKey: make([]byte, fsm.GossipKeySize), Manager: first,
	}})
	if err != nil {
		return nil, fmt.Errorf("fsmtest: init: %w", err)
	}

	// Joined over the first day, renewed over the third.
	renewedAt := T0.Add(48 * time.Hour)
	index := uint64(1)
	all := make(map[string]fsm.Node, n)
	ids := make([]string, 0, n)
	for i := range n {
		role := ca.RoleWorker
		if i < Managers {
			role = ca.RoleManager
		}
		nd, err := node(i, role)
		if i == 0 {
			nd, _ = s.Node(first.ID)
		} else if err != nil {
			return nil, err
		} else {
			index++
			if nd.Cert, err = cert(nd.JoinedAt, index); err != nil {
				return nil, err
			}
		}
		index++
		old := nd.Cert
		if nd.Cert, err = cert(renewedAt.Add(time.Duration(i)*time.Millisecond), index); err != nil {
			return nil, err
		}
		nd.Prev = []fsm.CertInfo{old}
		nd.CertsValidUntil = nd.Cert.NotAfter
		all[nd.ID] = nd
		ids = append(ids, nd.ID)
	}
	b, err := json.Marshal(all)
	if err != nil {
		return nil, err
	}
	next := *s
	if err := json.Unmarshal(b, &next.Nodes); err != nil {
		return nil, err
	}
	next.Index = index

	at := renewedAt.Add(24 * time.Hour)
	sc := &Scale{State: &next, At: at}
	for i := range cmds {
		id := ids[pick.IntN(len(ids))]
		old, _ := next.Node(id)
		c, err := cert(at, 0)
		if err != nil {
			return nil, err
		}
		sc.Renew = append(sc.Renew, fsm.Command{At: at, Issue: &fsm.Issue{
			Node: fsm.Node{ID: id, Role: old.Role, Cert: c},
		}})
		nd, err := node(n+i, ca.RoleWorker)
		if err != nil {
			return nil, err
		}
		if nd.Cert, err = cert(at, 0); err != nil {
			return nil, err
		}
		sc.Join = append(sc.Join, fsm.Command{At: at, Issue: &fsm.Issue{
			Node: nd, Join: true, SecretHash: fsm.HashSecret(workerSecret),
		}})
	}
	return sc, nil
}
