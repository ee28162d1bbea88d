// Package nodetls gives programs on a quorumca node (a Go service, a
// sidecar) TLS configurations made from the node's certificate files, that
// follow them: a renewal, a root rotation and a new CRL reach live
// listeners and clients without a restart. It uses the standard library
// alone: no Raft, gossip or gRPC comes with it.
//
//	files, err := nodetls.Open("/var/lib/quorumca/certificates")
//	...
//	defer files.Close()
//	srv := &http.Server{TLSConfig: files.ServerConfig()}      // mutual TLS, cluster nodes only
//	client := &http.Client{Transport: &http.Transport{TLSClientConfig: files.ClientConfig("")}}
//
// Both sides verify the peer's chain under the cluster's current trust
// bundle (root-ca.crt), that its certificate names the cluster (O =
// cluster ID: a corporate root would vouch for more than the cluster),
// and that no CRL in crl.pem lists it or a CA of its chain.
//
// The files are read as quorumca writes them (each replaced atomically);
// a change is seen within the polling interval. A key and certificate
// that do not match (read between the two renames of a renewal) are
// passed over until they do.
package nodetls

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The files of a node's certificate directory, as quorumca names them.
const (
	CertFile   = "node.crt"
	KeyFile    = "node.key"
	BundleFile = "root-ca.crt"
	CRLFile    = "crl.pem"
)

// DefaultInterval is how often Open's Files look at the files.
const DefaultInterval = time.Second

// Identity is who a node certificate names.
type Identity struct {
	NodeID    string // CN
	Role      string // OU: swarm-manager, swarm-worker (or swarm-admin)
	ClusterID string // O
}

// ErrRevoked is returned (wrapped) for a peer whose certificate, or a CA
// certificate of its chain, a CRL of the cluster lists.
var ErrRevoked = errors.New("nodetls: certificate revoked")

// Files follows a node's certificate directory. Safe for concurrent use.
type Files struct {
	dir      string
	interval time.Duration
	cur      atomic.Pointer[snapshot]
	gen      atomic.Uint64
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

// snapshot is one consistent reading of the files.
type snapshot struct {
	stamp  string // what the files looked like (size, mtime, inode)
	cert   *tls.Certificate
	id     Identity
	roots  *x509.CertPool
	crls   []*x509.RevocationList
	loaded time.Time
}

// Option changes how Open follows the files.
type Option func(*Files)

// WithInterval makes Open look at the files every d.
func WithInterval(d time.Duration) Option { return func(f *Files) { f.interval = d } }

// Open reads the certificate directory dir (<data-dir>/certificates) and
// follows its changes until Close.
func Open(dir string, opts ...Option) (*Files, error) {
	f := &Files{dir: dir, interval: DefaultInterval, stop: make(chan struct{}), done: make(chan struct{})}
	for _, o := range opts {
		o(f)
	}
	if f.interval <= 0 {
		return nil, errors.New("nodetls: the interval must be positive")
	}
	s, err := f.read()
	if err != nil {
		return nil, err
	}
	f.cur.Store(s)
	f.gen.Store(1)
	go f.follow()
	return f, nil
}

// Close stops following the files.
func (f *Files) Close() error {
	f.once.Do(func() { close(f.stop) })
	<-f.done
	return nil
}

// Identity returns who the node's certificate names.
func (f *Files) Identity() Identity { return f.cur.Load().id }

// Generation counts the readings taken: it grows every time a change of
// the files was taken in.
func (f *Files) Generation() uint64 { return f.gen.Load() }

// Certificate returns the node's current key pair.
func (f *Files) Certificate() *tls.Certificate { return f.cur.Load().cert }

func (f *Files) follow() {
	defer close(f.done)
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		if f.stamp() == f.cur.Load().stamp {
			continue
		}
		if s, err := f.read(); err == nil {
			f.cur.Store(s)
			f.gen.Add(1)
		}
	}
}

// stamp describes the files' state cheaply: size, mtime and inode each.
func (f *Files) stamp() string {
	var b bytes.Buffer
	for _, name := range []string{CertFile, KeyFile, BundleFile, CRLFile} {
		fi, err := os.Stat(filepath.Join(f.dir, name))
		if err != nil {
			fmt.Fprintf(&b, "%s:none;", name)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d:%v;", name, fi.Size(), fi.ModTime().UnixNano(), fi.Sys())
	}
	return b.String()
}

// read takes one consistent reading of the files.
func (f *Files) read() (*snapshot, error) {
	stamp := f.stamp()
	certPEM, err := os.ReadFile(filepath.Join(f.dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("nodetls: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(f.dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("nodetls: %w", err)
	}
	bundle, err := os.ReadFile(filepath.Join(f.dir, BundleFile))
	if err != nil {
		return nil, fmt.Errorf("nodetls: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("nodetls: %s and %s: %w", CertFile, KeyFile, err)
	}
	id := identityOf(pair.Leaf)
	if id.ClusterID == "" {
		return nil, fmt.Errorf("nodetls: %s names no cluster (O)", CertFile)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return nil, fmt.Errorf("nodetls: %s holds no certificate", BundleFile)
	}
	s := &snapshot{stamp: stamp, cert: &pair, id: id, roots: roots, loaded: time.Now()}
	if b, err := os.ReadFile(filepath.Join(f.dir, CRLFile)); err == nil {
		if s.crls, err = parseCRLs(b); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// parseCRLs reads every "X509 CRL" block of crl.pem. ca.ParseCRLs does the
// same, but this package takes nothing from quorumca's own (see the purity
// test TestNodeTLSStandardLibraryOnly): programs import it alone.
func parseCRLs(b []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out, nil
		}
		if block.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("nodetls: %s: %w", CRLFile, err)
		}
		out = append(out, crl)
	}
}

func identityOf(c *x509.Certificate) Identity {
	id := Identity{NodeID: c.Subject.CommonName}
	if len(c.Subject.OrganizationalUnit) == 1 {
		id.Role = c.Subject.OrganizationalUnit[0]
	}
	if len(c.Subject.Organization) == 1 {
		id.ClusterID = c.Subject.Organization[0]
	}
	return id
}

// Verify checks a peer's chain (leaf first, as presented) for usage: it
// verifies under the cluster's current bundle, names the cluster, and no
// CRL lists it or a CA of its chain. It returns who the leaf names.
func (f *Files) Verify(chain []*x509.Certificate, usage x509.ExtKeyUsage) (Identity, error) {
	s := f.cur.Load()
	if len(chain) == 0 {
		return Identity{}, errors.New("nodetls: the peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verified, err := chain[0].Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err != nil {
		return Identity{}, fmt.Errorf("nodetls: peer certificate: %w", err)
	}
	id := identityOf(chain[0])
	if id.ClusterID != s.id.ClusterID {
		return Identity{}, fmt.Errorf("nodetls: the peer's certificate names cluster %q, not this node's %q", id.ClusterID, s.id.ClusterID)
	}
	for _, path := range verified {
		if err := s.revoked(path); err != nil {
			return Identity{}, err
		}
	}
	return id, nil
}

// revoked checks each certificate of a verified path, but the root,
// against the CRL of its issuer, if there is one.
func (s *snapshot) revoked(path []*x509.Certificate) error {
	for _, c := range path[:len(path)-1] {
		for _, crl := range s.crls {
			if !bytes.Equal(crl.RawIssuer, c.RawIssuer) || (len(crl.AuthorityKeyId) > 0 && len(c.AuthorityKeyId) > 0 && !bytes.Equal(crl.AuthorityKeyId, c.AuthorityKeyId)) {
				continue
			}
			if slices.ContainsFunc(crl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool { return serialEqual(e.SerialNumber, c.SerialNumber) }) {
				return fmt.Errorf("%w: %s (serial %s)", ErrRevoked, c.Subject, c.SerialNumber.Text(16))
			}
		}
	}
	return nil
}

func serialEqual(a, b *big.Int) bool { return a != nil && b != nil && a.Cmp(b) == 0 }

// ServerConfig returns a server configuration that presents the node's
// current certificate and admits only clients holding a certificate of
// the cluster (mutual TLS), checked as Verify does. TLS 1.2 at least.
func (f *Files) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return f.Certificate(), nil
		},
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := f.Verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// ClientConfig returns a client configuration that presents the node's
// current certificate and accepts only servers holding a certificate of
// the cluster, checked as Verify does. With serverName set, the server's
// certificate must also name it: a node ID, or a role (swarm-manager,
// swarm-worker), which node certificates carry as DNS names.
func (f *Files) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return f.Certificate(), nil
		},
		// The chain is verified in VerifyConnection, under the bundle of
		// the moment, which crypto/tls's own check would not follow.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := f.Verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth); err != nil {
				return err
			}
			if serverName != "" {
				if err := cs.PeerCertificates[0].VerifyHostname(serverName); err != nil {
					return fmt.Errorf("nodetls: %w", err)
				}
			}
			return nil
		},
	}
}
