package ca

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Unlock keys: the secret an operator keeps when autolock is on. Every
// manager's private key and Raft data keys are sealed under a key derived
// from it (a KEK), so that a copy of a manager's disk opens nothing.
const (
	unlockKeyPrefix = "QCKEY-1-"
	unlockKeySize   = 32 // 256 bits
	kekSize         = 32 // AES-256-GCM
)

// ErrMalformedUnlockKey is returned by ParseUnlockKey for a string that is
// not an unlock key. Its message never repeats the key.
var ErrMalformedUnlockKey = errors.New("ca: malformed unlock key")

// ErrKEKOpen is returned when what a KEK sealed does not open: another
// unlock key, or data changed on disk.
var ErrKEKOpen = errors.New("ca: sealed key does not open with this unlock key")

// NewUnlockKey draws a new unlock key from rand.
func NewUnlockKey(rand io.Reader) (string, error) {
	b := make([]byte, unlockKeySize)
	if _, err := io.ReadFull(rand, b); err != nil {
		return "", fmt.Errorf("ca: read random unlock key: %w", err)
	}
	return unlockKeyPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// KEK is a key-encryption key, derived from an unlock key.
type KEK struct {
	// ID names the unlock key without revealing it.
	ID  string
	key []byte
}

// ParseUnlockKey checks an unlock key and derives its KEK.
func ParseUnlockKey(s string) (KEK, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, unlockKeyPrefix)
	if !ok {
		return KEK{}, fmt.Errorf("%w: it does not start with %s", ErrMalformedUnlockKey, unlockKeyPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(b) != unlockKeySize {
		return KEK{}, fmt.Errorf("%w: want %s and %d base64url characters", ErrMalformedUnlockKey, unlockKeyPrefix, base64.RawURLEncoding.EncodedLen(unlockKeySize))
	}
	key, err := hkdf.Key(sha256.New, b, nil, "quorumca key-encryption key v1", kekSize)
	if err != nil {
		return KEK{}, fmt.Errorf("ca: derive KEK: %w", err)
	}
	id := sha256.Sum256(append([]byte("quorumca unlock key id\x00"), b...))
	return KEK{ID: hex.EncodeToString(id[:6]), key: key}, nil
}

// Valid reports whether k was derived from an unlock key.
func (k KEK) Valid() bool { return len(k.key) == kekSize }

func (k KEK) aead() (cipher.AEAD, error) {
	block, err := aes.NewCipher(k.key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal seals plain under k, with ad bound to it: nonce | AES-256-GCM.
func (k KEK) Seal(rand io.Reader, plain, ad []byte) ([]byte, error) {
	aead, err := k.aead()
	if err != nil {
		return nil, fmt.Errorf("ca: KEK: %w", err)
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, fmt.Errorf("ca: nonce: %w", err)
	}
	return aead.Seal(nonce, nonce, plain, ad), nil
}

// Open opens what Seal sealed under k with ad.
func (k KEK) Open(sealed, ad []byte) ([]byte, error) {
	aead, err := k.aead()
	if err != nil {
		return nil, fmt.Errorf("ca: KEK: %w", err)
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("%w: cut short", ErrKEKOpen)
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKEKOpen, err)
	}
	return plain, nil
}

// Derive returns a key of size bytes for another use of the unlock key
// than sealing node.key: label names the use, salt binds the key to one
// instance of it (a backup file). Keys of different labels or salts are
// unrelated.
func (k KEK) Derive(label string, salt []byte, size int) ([]byte, error) {
	if !k.Valid() {
		return nil, fmt.Errorf("%w: no key", ErrMalformedUnlockKey)
	}
	key, err := hkdf.Key(sha256.New, k.key, salt, label, size)
	if err != nil {
		return nil, fmt.Errorf("ca: derive %s: %w", label, err)
	}
	return key, nil
}
