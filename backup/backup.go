// Package backup is the file format of quorumca's backups: the replicated
// state at a committed index, sealed whole under a key derived from the
// cluster's unlock key or from a passphrase. It is pure: it reads and
// writes streams, and takes its randomness from the caller.
//
// A backup file is
//
//	"quorumca-backup 1\n"                   the format, on a line
//	header JSON "\n"                        what it holds; how it is keyed
//	sealed state                            internal/sealstream chunks
//
// The state is fsm.State as a snapshot writes it, sealed with AES-256-GCM
// in chunks whose additional data is the first two lines: the header can
// be read without the key (to say what the file holds and which key it
// wants), but not changed without the state failing to open. Nothing in
// the header is secret.
package backup

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/sealstream"
)

// Format is the format this package writes; Read refuses later ones.
const Format = 1

const (
	magic     = "quorumca-backup"
	headerMax = 64 << 10
	keySize   = 32
	saltSize  = 16
	checkSize = 16
	// The key's kinds.
	KeyUnlockKey  = "unlock-key"
	KeyPassphrase = "passphrase"
	// unlockLabel names the use of the unlock key's KEK (ca.KEK.Derive).
	unlockLabel = "quorumca backup key v1"
	checkLabel  = "quorumca backup key check"
)

// Argon2id's cost for a passphrase (RFC 9106's second recommended
// setting), and the most a file may ask for: a crafted header must not
// make Read take gigabytes or minutes.
const (
	argonTime    = 3
	argonMemory  = 64 << 10 // KiB
	argonThreads = 4
	maxArgonTime = 10
	maxArgonMem  = 1 << 20 // KiB: 1 GiB
)

// Header says what a backup holds and how it is keyed.
type Header struct {
	Format int `json:"format"`
	// ClusterID, RootFingerprint (ca.BundleFingerprint of the trust
	// bundle), Index and Term are the state's; TakenAt when it was taken.
	ClusterID       string    `json:"cluster_id"`
	RootFingerprint string    `json:"root_fingerprint"`
	Index           uint64    `json:"index"`
	Term            uint64    `json:"term"`
	TakenAt         time.Time `json:"taken_at"`
	// TakenFrom is the manager that answered; Stale says it answered from
	// what it had applied, without a leader to confirm it was current.
	TakenFrom string `json:"taken_from"`
	Stale     bool   `json:"stale,omitempty"`
	// Nodes and Managers count the state's nodes; Autolock is the state's.
	Nodes    int  `json:"nodes"`
	Managers int  `json:"managers"`
	Autolock bool `json:"autolock,omitempty"`
	// Key says how the state is keyed; Nonce is the sealed stream's
	// nonce prefix.
	Key   KeyInfo `json:"key"`
	Nonce []byte  `json:"nonce"`
}

// KeyInfo says how a backup's key is derived.
type KeyInfo struct {
	// Kind is KeyUnlockKey or KeyPassphrase.
	Kind string `json:"kind"`
	// UnlockKeyID is the ID of the unlock key (ca.KEK.ID).
	UnlockKeyID string `json:"unlock_key_id,omitempty"`
	Salt        []byte `json:"salt"`
	// Argon2id's parameters, for a passphrase.
	Time      uint32 `json:"argon2_time,omitempty"`
	MemoryKiB uint32 `json:"argon2_memory_kib,omitempty"`
	Threads   uint8  `json:"argon2_threads,omitempty"`
	// Check is an HMAC under the key of a constant: a wrong key is told
	// apart from a changed file.
	Check []byte `json:"check"`
}

// Secret is what a backup is keyed by: the unlock key, or a passphrase.
type Secret struct {
	UnlockKey  string
	Passphrase []byte
}

var (
	// ErrNotBackup: the file is not a quorumca backup.
	ErrNotBackup = errors.New("backup: not a quorumca backup")
	// ErrKey: the key given is not the backup's, or none was.
	ErrKey = errors.New("backup: wrong key")
	// ErrCorrupt: the file was changed, cut short or damaged.
	ErrCorrupt = errors.New("backup: the file was changed or damaged")
)

// NewerError is returned for a backup of a later format.
type NewerError struct{ Format int }

func (e *NewerError) Error() string {
	return fmt.Sprintf("backup: format %d, made by a later quorumca (this one reads format %d): restore it with that release", e.Format, Format)
}

// Write seals state into w. h says what the state is (Stale, TakenFrom,
// TakenAt, Term: the caller's; the rest Write fills from state and the
// secret) and is returned as written. With a passphrase the file is keyed
// by it, else by the unlock key; with neither, Write refuses.
func Write(w io.Writer, rand io.Reader, h Header, secret Secret, state *fsm.State) (Header, error) {
	if !state.Initialized() {
		return Header{}, errors.New("backup: the state holds no cluster")
	}
	h.Format = Format
	h.ClusterID, h.Index = state.ClusterID, state.Index
	h.RootFingerprint = ca.BundleFingerprint(state.CA.Bundle)
	h.Nodes, h.Managers, h.Autolock = state.Nodes.Len(), len(state.Managers()), state.Autolock
	h.Key = KeyInfo{Salt: make([]byte, saltSize)}
	h.Nonce = make([]byte, sealstream.PrefixSize)
	if _, err := io.ReadFull(rand, h.Key.Salt); err != nil {
		return Header{}, fmt.Errorf("backup: salt: %w", err)
	}
	if _, err := io.ReadFull(rand, h.Nonce); err != nil {
		return Header{}, fmt.Errorf("backup: nonce: %w", err)
	}
	switch {
	case len(secret.Passphrase) > 0:
		h.Key.Kind = KeyPassphrase
		h.Key.Time, h.Key.MemoryKiB, h.Key.Threads = argonTime, argonMemory, argonThreads
	case secret.UnlockKey != "":
		kek, err := ca.ParseUnlockKey(secret.UnlockKey)
		if err != nil {
			return Header{}, err
		}
		h.Key.Kind, h.Key.UnlockKeyID = KeyUnlockKey, kek.ID
	default:
		return Header{}, fmt.Errorf("%w: a backup holds the CA's keys and is always encrypted: give a passphrase, or turn autolock on to key it by the unlock key", ErrKey)
	}
	key, err := deriveKey(h.Key, secret)
	if err != nil {
		return Header{}, err
	}
	h.Key.Check = check(key)
	head, err := encodeHead(h)
	if err != nil {
		return Header{}, err
	}
	aead, err := newAEAD(key)
	if err != nil {
		return Header{}, err
	}
	if _, err := w.Write(head); err != nil {
		return Header{}, err
	}
	sw := sealstream.NewWriter(w, aead, head, h.Nonce)
	if _, err := state.WriteTo(sw); err != nil {
		return Header{}, err
	}
	return h, sw.Close()
}

func encodeHead(h Header) ([]byte, error) {
	b, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("backup: encode header: %w", err)
	}
	return fmt.Appendf(nil, "%s %d\n%s\n", magic, h.Format, b), nil
}

// ReadHeader reads a backup's header from r, which is left at the sealed
// state; it also returns the header's bytes, as the state is bound to
// them.
func ReadHeader(r *bufio.Reader) (Header, []byte, error) {
	first, err := readLine(r, 64)
	if err != nil {
		return Header{}, nil, ErrNotBackup
	}
	name, version, ok := strings.Cut(strings.TrimSuffix(first, "\n"), " ")
	if !ok || name != magic {
		return Header{}, nil, ErrNotBackup
	}
	format, err := strconv.Atoi(version)
	if err != nil || format < 1 {
		return Header{}, nil, fmt.Errorf("%w: format %q", ErrNotBackup, version)
	}
	if format > Format {
		return Header{}, nil, &NewerError{Format: format}
	}
	second, err := readLine(r, headerMax)
	if err != nil {
		return Header{}, nil, fmt.Errorf("%w: the header is cut short or too long", ErrCorrupt)
	}
	var h Header
	dec := json.NewDecoder(strings.NewReader(second))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return Header{}, nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if h.Format != format || len(h.Nonce) != sealstream.PrefixSize || len(h.Key.Salt) != saltSize || len(h.Key.Check) != checkSize {
		return Header{}, nil, fmt.Errorf("%w: header does not hold what a backup's does", ErrCorrupt)
	}
	return h, []byte(first + second), nil
}

// readLine reads a line of at most max bytes, its newline included.
func readLine(r *bufio.Reader, max int) (string, error) {
	var b []byte
	for len(b) <= max {
		c, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		b = append(b, c)
		if c == '\n' {
			return string(b), nil
		}
	}
	return "", errors.New("line too long")
}

// Read opens a backup with secret and returns its header and state. A
// backup that does not open with the secret is ErrKey; one that was
// changed or cut short, or whose state is not the one its header names,
// ErrCorrupt.
func Read(r io.Reader, secret Secret) (Header, *fsm.State, error) {
	br := bufio.NewReader(r)
	h, head, err := ReadHeader(br)
	if err != nil {
		return Header{}, nil, err
	}
	key, err := deriveKey(h.Key, secret)
	if err != nil {
		return h, nil, err
	}
	if !hmac.Equal(check(key), h.Key.Check) {
		if h.Key.Kind == KeyPassphrase {
			return h, nil, fmt.Errorf("%w: the passphrase is not this backup's", ErrKey)
		}
		return h, nil, fmt.Errorf("%w: the unlock key does not open this backup", ErrKey)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return h, nil, err
	}
	st, err := fsm.ReadState(sealstream.NewReader(br, aead, head, h.Nonce, "the backup"))
	var newer *fsm.NewerError
	switch {
	case errors.As(err, &newer):
		return h, nil, fmt.Errorf("backup: %w", err)
	case err != nil:
		return h, nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return h, nil, fmt.Errorf("%w: bytes after the sealed state", ErrCorrupt)
	}
	if st.ClusterID != h.ClusterID || st.Index != h.Index || ca.BundleFingerprint(st.CA.Bundle) != h.RootFingerprint || st.Nodes.Len() != h.Nodes {
		return h, nil, fmt.Errorf("%w: the state is not the one the header names", ErrCorrupt)
	}
	return h, st, nil
}

// deriveKey derives the key of a backup keyed as k from secret.
func deriveKey(k KeyInfo, secret Secret) ([]byte, error) {
	switch k.Kind {
	case KeyPassphrase:
		if len(secret.Passphrase) == 0 {
			return nil, fmt.Errorf("%w: this backup is keyed by a passphrase: give it", ErrKey)
		}
		if k.Time == 0 || k.Time > maxArgonTime || k.MemoryKiB == 0 || k.MemoryKiB > maxArgonMem || k.Threads == 0 {
			return nil, fmt.Errorf("%w: argon2id parameters out of bounds", ErrCorrupt)
		}
		return argon2.IDKey(secret.Passphrase, k.Salt, k.Time, k.MemoryKiB, k.Threads, keySize), nil
	case KeyUnlockKey:
		if secret.UnlockKey == "" {
			return nil, fmt.Errorf("%w: this backup is keyed by the unlock key %s: give it", ErrKey, k.UnlockKeyID)
		}
		kek, err := ca.ParseUnlockKey(secret.UnlockKey)
		if err != nil {
			return nil, err
		}
		if kek.ID != k.UnlockKeyID {
			return nil, fmt.Errorf("%w: this backup is keyed by the unlock key %s, not %s (the key in force when it was taken)", ErrKey, k.UnlockKeyID, kek.ID)
		}
		return kek.Derive(unlockLabel, k.Salt, keySize)
	}
	return nil, fmt.Errorf("%w: unknown key kind %q", ErrCorrupt, k.Kind)
}

func check(key []byte) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(checkLabel))
	return mac.Sum(nil)[:checkSize]
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	return cipher.NewGCM(block)
}
