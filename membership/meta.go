package membership

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/quorumca/quorumca/ca"
)

// metaVersion is the metadata encoding this package writes.
const metaVersion = 1

// Meta is what a node tells the others about itself: its role and the
// certificate it serves now, and the trust bundle it holds. It is small
// (well under memberlist's 512 bytes) because it travels in every alive
// message.
type Meta struct {
	Role ca.Role
	// Serial is the serial number of the certificate the node serves, in
	// hex as the cluster state records it.
	Serial string
	// Issuer is the digest of the TLS status of that certificate
	// (StatusDigest).
	Issuer [32]byte
	// Bundle is the digest of the trust bundle the node holds
	// (BundleDigest).
	Bundle [16]byte
}

// StatusDigest condenses a TLS status (issuer subject and key) into the
// fixed-size form gossip carries.
func StatusDigest(s ca.TLSStatus) [32]byte {
	h := sha256.New()
	fmt.Fprintf(h, "%d:", len(s.IssuerSubject))
	h.Write(s.IssuerSubject)
	h.Write(s.IssuerKeyHash[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// BundleDigest condenses a PEM trust bundle into the form gossip carries.
func BundleDigest(bundle []byte) [16]byte {
	sum := sha256.Sum256(bundle)
	var out [16]byte
	copy(out[:], sum[:])
	return out
}

type wireMeta struct {
	V      int    `json:"v"`
	Role   string `json:"r"`
	Serial string `json:"s"`
	Issuer string `json:"i"`
	Bundle string `json:"b"`
}

// maxMeta keeps metadata well under memberlist's limit.
const maxMeta = 400

// Encode returns the wire form of m.
func (m Meta) Encode() ([]byte, error) {
	b, err := json.Marshal(wireMeta{
		V: metaVersion, Role: string(m.Role), Serial: m.Serial,
		Issuer: hex.EncodeToString(m.Issuer[:]), Bundle: hex.EncodeToString(m.Bundle[:]),
	})
	if err != nil {
		return nil, err
	}
	if len(b) > maxMeta {
		return nil, fmt.Errorf("%w: %d bytes", ErrMetaTooLarge, len(b))
	}
	return b, nil
}

// DecodeMeta parses metadata from the wire. It never panics on bad input.
func DecodeMeta(b []byte) (Meta, error) {
	var w wireMeta
	if err := json.Unmarshal(b, &w); err != nil {
		return Meta{}, fmt.Errorf("membership: metadata: %w", err)
	}
	if w.V != metaVersion {
		return Meta{}, fmt.Errorf("membership: metadata version %d; this node reads %d", w.V, metaVersion)
	}
	m := Meta{Role: ca.Role(w.Role), Serial: w.Serial}
	if err := decodeHex(w.Issuer, m.Issuer[:]); err != nil {
		return Meta{}, fmt.Errorf("membership: metadata issuer: %w", err)
	}
	if err := decodeHex(w.Bundle, m.Bundle[:]); err != nil {
		return Meta{}, fmt.Errorf("membership: metadata bundle: %w", err)
	}
	return m, nil
}

func decodeHex(s string, dst []byte) error {
	b, err := hex.DecodeString(s)
	if err != nil {
		return err
	}
	if len(b) != len(dst) {
		return fmt.Errorf("%d bytes, want %d", len(b), len(dst))
	}
	copy(dst, b)
	return nil
}
