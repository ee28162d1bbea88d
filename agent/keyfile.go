package agent

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/quorumca/quorumca/ca"
)

// PEM blocks of node.key besides the private key, each of which other
// programs (openssl, nginx, Go's crypto/tls) skip.
const (
	// pemSealedKey is the private key sealed under a KEK (autolock).
	pemSealedKey = "QUORUMCA SEALED PRIVATE KEY"
	// pemDataKey is a manager's Raft data key; pemSealedDataKey the same,
	// sealed under a KEK. Their "slot" header says which: "current", or
	// "previous" while a rotation of the data key is under way.
	pemDataKey       = "QUORUMCA RAFT DATA KEY"
	pemSealedDataKey = "QUORUMCA SEALED RAFT DATA KEY"

	headerKEK  = "kek"
	headerSlot = "slot"
	headerType = "key-type"
)

// ErrLocked is returned (as a *LockedError) when node.key is sealed under
// an unlock key that was not given: the node is locked.
var ErrLocked = errors.New("agent: this node's keys are sealed under an unlock key")

// LockedError says which unlock key node.key is sealed under.
type LockedError struct {
	// KEK is the ID of the unlock key's KEK (ca.KEK.ID).
	KEK string
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("%v (unlock key %s): run `quorumca unlock`, or give it with --unlock-key-file", ErrLocked, e.KEK)
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// NodeKey is what node.key holds: the node's private key and, on a manager,
// its Raft data keys; sealed under KEK when autolock is on. It is written
// whole, atomically, so that the keys change together or not at all.
type NodeKey struct {
	// Key is the private key, as plain PEM.
	Key []byte
	// DataKey and PrevDataKey are a manager's Raft data keys (the one that
	// seals, and the one it replaced while the stores are sealed again).
	DataKey, PrevDataKey []byte
	// KEK, when set, seals Key and the data keys (autolock).
	KEK *ca.KEK
}

// ParseNodeKey reads node.key. Blocks sealed under a KEK open with the one
// of keks of the same ID; without it, ParseNodeKey returns a *LockedError.
func ParseNodeKey(b []byte, keks ...ca.KEK) (NodeKey, error) {
	var kf NodeKey
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		var err error
		switch block.Type {
		case pemDataKey:
			err = kf.setDataKey(block.Headers[headerSlot], block.Bytes)
		case pemSealedKey, pemSealedDataKey:
			err = kf.openSealed(block, keks)
		default:
			if kf.Key == nil && (block.Type == "PRIVATE KEY" || strings.HasSuffix(block.Type, " PRIVATE KEY")) {
				kf.Key = pem.EncodeToMemory(block)
			}
		}
		if err != nil {
			return NodeKey{}, err
		}
	}
	if kf.Key == nil {
		return NodeKey{}, fmt.Errorf("agent: node.key holds no private key")
	}
	return kf, nil
}

// openSealed opens a sealed block with the KEK it names.
func (kf *NodeKey) openSealed(block *pem.Block, keks []ca.KEK) error {
	id := block.Headers[headerKEK]
	var kek *ca.KEK
	for i := range keks {
		if keks[i].ID == id {
			kek = &keks[i]
		}
	}
	if kek == nil {
		return &LockedError{KEK: id}
	}
	plain, err := kek.Open(block.Bytes, sealAD(block.Type, block.Headers))
	if err != nil {
		return fmt.Errorf("agent: node.key: %w", err)
	}
	kf.KEK = kek
	if block.Type == pemSealedKey {
		kf.Key = pem.EncodeToMemory(&pem.Block{Type: block.Headers[headerType], Bytes: plain})
		return nil
	}
	return kf.setDataKey(block.Headers[headerSlot], plain)
}

func (kf *NodeKey) setDataKey(slot string, key []byte) error {
	switch slot {
	case "current":
		kf.DataKey = bytes.Clone(key)
	case "previous":
		kf.PrevDataKey = bytes.Clone(key)
	default:
		return fmt.Errorf("agent: node.key: a data key in slot %q", slot)
	}
	return nil
}

// sealAD binds a sealed block to its type and headers: a sealed data key
// cannot pass for the private key, nor the previous key for the current.
func sealAD(typ string, h map[string]string) []byte {
	return []byte(typ + "\x00" + h[headerKEK] + "\x00" + h[headerSlot] + "\x00" + h[headerType])
}

// Marshal writes kf as node.key, sealing under kf.KEK when set, with
// randomness from rand.
func (kf NodeKey) Marshal(rand io.Reader) ([]byte, error) {
	keyBlock, _ := pem.Decode(kf.Key)
	if keyBlock == nil {
		return nil, fmt.Errorf("agent: the private key is not PEM")
	}
	var out bytes.Buffer
	blocks := []*pem.Block{keyBlock}
	for _, dk := range []struct {
		slot string
		key  []byte
	}{{"current", kf.DataKey}, {"previous", kf.PrevDataKey}} {
		if len(dk.key) > 0 {
			blocks = append(blocks, &pem.Block{Type: pemDataKey, Headers: map[string]string{headerSlot: dk.slot}, Bytes: dk.key})
		}
	}
	for _, b := range blocks {
		if kf.KEK != nil {
			var err error
			if b, err = sealBlock(rand, *kf.KEK, b); err != nil {
				return nil, err
			}
		}
		if err := pem.Encode(&out, b); err != nil {
			return nil, err
		}
	}
	return out.Bytes(), nil
}

// sealBlock seals a plain block under kek.
func sealBlock(rand io.Reader, kek ca.KEK, b *pem.Block) (*pem.Block, error) {
	sealed := &pem.Block{Type: pemSealedDataKey, Headers: map[string]string{headerKEK: kek.ID}}
	if b.Type == pemDataKey {
		sealed.Headers[headerSlot] = b.Headers[headerSlot]
	} else {
		sealed.Type = pemSealedKey
		sealed.Headers[headerType] = b.Type
	}
	var err error
	if sealed.Bytes, err = kek.Seal(rand, b.Bytes, sealAD(sealed.Type, sealed.Headers)); err != nil {
		return nil, err
	}
	return sealed, nil
}
