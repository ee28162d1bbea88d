package agent

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/atomicfile"
)

// File names under <data-dir>/certificates/, stable for other programs.
const (
	CertificatesDir = "certificates"
	KeyFile         = "node.key"
	CertFile        = "node.crt"
	BundleFile      = "root-ca.crt"
	// CRLFile holds the cluster's CRLs (PEM), once the node has fetched
	// them; a cluster signed by an external CA publishes none.
	CRLFile = "crl.pem"
)

// ErrNoCredentials is returned by LoadCredentials when the data directory
// holds no node certificate: the node has not joined.
var ErrNoCredentials = errors.New("agent: no node credentials")

// Credentials are a node's key, certificate chain and trust bundle, in
// memory and on disk. TLS configurations made from them follow every
// update, so a renewed certificate reaches live listeners and clients
// without a restart. Safe for concurrent use.
type Credentials struct {
	dir string

	// updateMu serialises Update and UpdateBundle.
	updateMu sync.Mutex

	mu     sync.RWMutex // guards the fields below
	hooks  []func()
	keyPEM []byte
	// nk is what node.key holds besides the private key: a manager's data
	// keys, and the KEK it is sealed under (autolock).
	nk      NodeKey
	certPEM []byte
	cert    *tls.Certificate
	chain   []*x509.Certificate
	issuer  ca.TLSStatus
	leaf    *x509.Certificate
	id      ca.Identity
	bundle  []byte
	roots   *x509.CertPool
	// crlNumber is the number of the CRL set in crl.pem (0: none).
	crlNumber uint64
	// group is who besides the owner may read the files (SetGroup).
	group filesGroup
}

// filesGroup is the group that may read a node's certificate files.
type filesGroup struct {
	set bool
	gid int
	// key: node.key too (a worker's); a manager's holds its Raft data key.
	key bool
}

// mode returns the mode of a file (a key or not) and the group to give
// it (-1: none).
func (g filesGroup) mode(key bool) (os.FileMode, int) {
	switch {
	case !g.set && key:
		return 0o600, -1
	case !g.set:
		return 0o644, -1
	case key && !g.key:
		return 0o600, g.gid
	}
	return 0o640, g.gid
}

// write writes one of the files, atomically, with its mode and group.
func (g filesGroup) write(path string, data []byte, key bool) error {
	mode, gid := g.mode(key)
	if err := atomicfile.WriteGroup(path, data, mode, gid); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// SetGroup lets group gid read the certificate files (node.crt,
// root-ca.crt, crl.pem, and node.key when key is set) from now on, and
// through the data and certificate directories: the files are 0640, the
// certificate directory 0750, the data directory 0710, all of group gid.
// The files there now are changed at once, and every write keeps it so.
func (c *Credentials) SetGroup(gid int, key bool) error {
	c.updateMu.Lock()
	defer c.updateMu.Unlock()
	c.mu.Lock()
	c.group = filesGroup{set: true, gid: gid, key: key}
	g := c.group
	c.mu.Unlock()
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{filepath.Dir(c.dir), 0o710}, {c.dir, 0o750}} {
		if err := os.Chown(d.path, -1, gid); err != nil {
			return fmt.Errorf("agent: --cert-group: %w", err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("agent: --cert-group: %w", err)
		}
	}
	for _, f := range []struct {
		name string
		key  bool
	}{{CertFile, false}, {BundleFile, false}, {CRLFile, false}, {KeyFile, true}} {
		path := filepath.Join(c.dir, f.name)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			continue
		}
		mode, gid := g.mode(f.key)
		if err := os.Chown(path, -1, gid); err != nil {
			return fmt.Errorf("agent: --cert-group: %w", err)
		}
		if err := os.Chmod(path, mode); err != nil {
			return fmt.Errorf("agent: --cert-group: %w", err)
		}
	}
	return nil
}

func (c *Credentials) filesGroup() filesGroup {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.group
}

// CertDir returns <dataDir>/certificates.
func CertDir(dataDir string) string { return filepath.Join(dataDir, CertificatesDir) }

// LoadCredentials reads the credentials stored under
// <dataDir>/certificates/, finishing an update that a crash interrupted.
//
// A node.key sealed under an unlock key opens with the KEK of keks of the
// same ID; without it, LoadCredentials returns a *LockedError.
func LoadCredentials(dataDir string, keks ...ca.KEK) (*Credentials, error) {
	dir := CertDir(dataDir)
	if err := recoverPending(dir); err != nil {
		return nil, err
	}
	keyFile, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s; join a cluster first", ErrNoCredentials, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	bundle, err := os.ReadFile(filepath.Join(dir, BundleFile))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	nk, err := ParseNodeKey(keyFile, keks...)
	if err != nil {
		return nil, err
	}
	keyPEM := nk.Key
	c := &Credentials{dir: dir, nk: nk}
	if err := c.set(keyPEM, certPEM, bundle); err != nil {
		return nil, fmt.Errorf("agent: credentials in %s: %w", dir, err)
	}
	// A crl.pem that does not parse is fetched again.
	if b, err := os.ReadFile(filepath.Join(dir, CRLFile)); err == nil {
		if crls, err := ca.ParseCRLs(b); err == nil && len(crls) > 0 && crls[0].Number != nil && crls[0].Number.IsUint64() {
			c.crlNumber = crls[0].Number.Uint64()
		}
	}
	return c, nil
}

// NewCredentials checks a key, certificate chain and bundle, writes them
// under <dataDir>/certificates/ and returns them.
func NewCredentials(dataDir string, keyPEM, certPEM, bundle []byte) (*Credentials, error) {
	c := &Credentials{dir: CertDir(dataDir)}
	if err := c.Update(keyPEM, certPEM, bundle); err != nil {
		return nil, err
	}
	return c, nil
}

// NewManagerCredentials is NewCredentials for a node whose node.key holds
// more than its private key (nk: a manager's data keys, sealed under a KEK
// with autolock): the file is written whole, never plain first.
func NewManagerCredentials(dataDir string, nk NodeKey, certPEM, bundle []byte) (*Credentials, error) {
	c := &Credentials{dir: CertDir(dataDir), nk: nk}
	if err := c.Update(nk.Key, certPEM, bundle); err != nil {
		return nil, err
	}
	return c, nil
}

// Update checks and stores a new key and certificate chain (and bundle; nil
// keeps the current one), on disk first, then in memory.
func (c *Credentials) Update(keyPEM, certPEM, bundle []byte) error {
	c.updateMu.Lock()
	defer c.updateMu.Unlock()
	return c.update(keyPEM, certPEM, bundle)
}

func (c *Credentials) update(keyPEM, certPEM, bundle []byte) error {
	if bundle == nil {
		bundle = c.Bundle()
	}
	next := &Credentials{dir: c.dir}
	if err := next.set(keyPEM, certPEM, bundle); err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	c.mu.RLock()
	nk := c.nk
	c.mu.RUnlock()
	nk.Key = keyPEM
	keyFile, err := nk.Marshal(rand.Reader)
	if err != nil {
		return err
	}
	// A renewal rarely changes the bundle: then its file is left as it is
	// (no rewrite and fsync per renewal).
	newBundle := bundle
	if bytes.Equal(bundle, c.Bundle()) {
		newBundle = nil
	}
	if err := writeCredentials(c.dir, c.filesGroup(), keyFile, certPEM, newBundle); err != nil {
		return err
	}
	if err := c.set(keyPEM, certPEM, bundle); err != nil {
		return err
	}
	c.mu.RLock()
	hooks := c.hooks
	c.mu.RUnlock()
	for _, f := range hooks {
		f()
	}
	return nil
}

// OnUpdate registers f to be called after every change of the files
// (Update, UpdateBundle, UpdateCRL), from the updating goroutine. f must
// not change the credentials.
func (c *Credentials) OnUpdate(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hooks = append(c.hooks[:len(c.hooks):len(c.hooks)], f)
}

// NodeKey returns what node.key holds: the private key, a manager's data
// keys and the KEK it is sealed under.
func (c *Credentials) NodeKey() NodeKey {
	c.mu.RLock()
	defer c.mu.RUnlock()
	nk := c.nk
	nk.Key = c.keyPEM
	return nk
}

// SetNodeKey changes what node.key holds besides the private key (data
// keys, KEK) with change, and writes node.key again, atomically: the keys
// change together or not at all.
func (c *Credentials) SetNodeKey(change func(*NodeKey)) error {
	c.updateMu.Lock()
	defer c.updateMu.Unlock()
	nk := c.NodeKey()
	change(&nk)
	nk.Key = c.NodeKey().Key // the private key changes only with the certificate
	keyFile, err := nk.Marshal(rand.Reader)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := c.filesGroup().write(filepath.Join(c.dir, KeyFile), keyFile, true); err != nil {
		return err
	}
	c.mu.Lock()
	c.nk = nk
	c.mu.Unlock()
	return nil
}

// CRLNumber returns the number of the CRL set in crl.pem, 0 for none.
func (c *Credentials) CRLNumber() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.crlNumber
}

// UpdateCRL replaces crl.pem with the CRL set numbered number, if it is
// newer than the one there, atomically, and calls the OnUpdate hooks.
func (c *Credentials) UpdateCRL(pem []byte, number uint64) error {
	c.updateMu.Lock()
	defer c.updateMu.Unlock()
	if number <= c.CRLNumber() {
		return nil
	}
	crls, err := ca.ParseCRLs(pem)
	if err != nil {
		return err
	}
	if len(crls) == 0 {
		return errors.New("agent: the CRL set holds no CRL")
	}
	if err := c.filesGroup().write(filepath.Join(c.dir, CRLFile), pem, false); err != nil {
		return err
	}
	c.mu.Lock()
	c.crlNumber = number
	hooks := c.hooks
	c.mu.Unlock()
	for _, f := range hooks {
		f()
	}
	return nil
}

// ErrBundleMismatch is returned by UpdateBundle when the node's own
// certificate does not verify under the new bundle.
var ErrBundleMismatch = errors.New("agent: this node's certificate does not verify under the new trust bundle")

// UpdateBundle replaces the trust bundle, keeping the key and certificate,
// after checking that the certificate verifies under it at now: a node
// must never trust a root that would refuse its own certificate.
func (c *Credentials) UpdateBundle(bundle []byte, now time.Time) error {
	c.updateMu.Lock()
	defer c.updateMu.Unlock()
	c.mu.RLock()
	chain, keyPEM, certPEM := c.chain, c.keyPEM, c.certPEM
	c.mu.RUnlock()
	roots, _, err := ca.ParseBundle(bundle)
	if err != nil {
		return fmt.Errorf("agent: new trust bundle: %w", err)
	}
	if _, _, err := ca.Verify(chain, roots, now); err != nil {
		return fmt.Errorf("%w: %w", ErrBundleMismatch, err)
	}
	return c.update(keyPEM, certPEM, bundle)
}

func (c *Credentials) set(keyPEM, certPEM, bundle []byte) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("agent: key and certificate: %w", err)
	}
	leaf := pair.Leaf
	id, err := ca.IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("agent: node certificate: %w", err)
	}
	roots, rootCerts, err := ca.ParseBundle(bundle)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	chain := make([]*x509.Certificate, 0, len(pair.Certificate))
	for _, der := range pair.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("agent: node certificate chain: %w", err)
		}
		chain = append(chain, x)
	}
	issuer, _ := ca.IssuerOf(chain, rootCerts)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cert, c.leaf, c.id, c.bundle, c.roots = &pair, leaf, id, bundle, roots
	c.keyPEM, c.certPEM = keyPEM, certPEM
	c.chain, c.issuer = chain, issuer
	return nil
}

// writeCredentials writes key, chain and bundle so that a crash leaves
// either the old pair or the new one: node.key.new is written in full,
// then node.crt.new, then both are renamed into place, key first.
// recoverPending completes or discards an interrupted write. A nil bundle
// leaves the bundle file as it is.
func writeCredentials(dir string, g filesGroup, keyPEM, certPEM, bundle []byte) error {
	newKey := filepath.Join(dir, KeyFile+".new")
	newCert := filepath.Join(dir, CertFile+".new")
	if err := g.write(newKey, keyPEM, true); err != nil {
		return err
	}
	if err := g.write(newCert, certPEM, false); err != nil {
		return err
	}
	if err := os.Rename(newKey, filepath.Join(dir, KeyFile)); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := os.Rename(newCert, filepath.Join(dir, CertFile)); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return err
	}
	if bundle == nil {
		return nil
	}
	return g.write(filepath.Join(dir, BundleFile), bundle, false)
}

// recoverPending finishes a writeCredentials that a crash interrupted. A
// node.crt.new means the new pair was complete: rename what is left of it
// into place. A lone node.key.new means the certificate never was: discard
// it and keep the old pair.
func recoverPending(dir string) error {
	newKey := filepath.Join(dir, KeyFile+".new")
	newCert := filepath.Join(dir, CertFile+".new")
	if !exists(newCert) {
		if exists(newKey) {
			if err := os.Remove(newKey); err != nil {
				return fmt.Errorf("agent: discard interrupted key update: %w", err)
			}
		}
		return nil
	}
	if exists(newKey) {
		if err := os.Rename(newKey, filepath.Join(dir, KeyFile)); err != nil {
			return fmt.Errorf("agent: recover interrupted key update: %w", err)
		}
	}
	if err := os.Rename(newCert, filepath.Join(dir, CertFile)); err != nil {
		return fmt.Errorf("agent: recover interrupted certificate update: %w", err)
	}
	return atomicfile.SyncDir(dir)
}

// Identity returns who the current certificate names.
func (c *Credentials) Identity() ca.Identity {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.id
}

// Leaf returns the current node certificate.
func (c *Credentials) Leaf() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.leaf
}

// Certificate returns the current key pair with its chain.
func (c *Credentials) Certificate() *tls.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cert
}

// Bundle returns the PEM trust bundle.
func (c *Credentials) Bundle() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.bundle
}

// Roots returns the trust bundle as a pool.
func (c *Credentials) Roots() *x509.CertPool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.roots
}

// Issuer returns the TLS status of the current certificate: who signed it.
func (c *Credentials) Issuer() ca.TLSStatus {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.issuer
}

// NotAfter returns when the current certificate expires.
func (c *Credentials) NotAfter() time.Time { return c.Leaf().NotAfter }

// Dir returns the directory the credentials are stored in.
func (c *Credentials) Dir() string { return c.dir }

// certPEMs returns the current certificate chain as PEM.
func (c *Credentials) certPEMs() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.certPEM
}
