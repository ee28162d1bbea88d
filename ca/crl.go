package ca

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"strings"
	"time"
)

// CRL reason codes (RFC 5280 5.3.1) a revocation may give.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
)

var reasonNames = map[string]int{
	"unspecified":          ReasonUnspecified,
	"keyCompromise":        ReasonKeyCompromise,
	"affiliationChanged":   ReasonAffiliationChanged,
	"superseded":           ReasonSuperseded,
	"cessationOfOperation": ReasonCessationOfOperation,
}

// ParseReason reads a reason by its RFC 5280 name (case aside).
func ParseReason(name string) (int, error) {
	for n, r := range reasonNames {
		if strings.EqualFold(n, name) {
			return r, nil
		}
	}
	return 0, fmt.Errorf("ca: unknown revocation reason %q: give unspecified, keyCompromise, affiliationChanged, superseded or cessationOfOperation", name)
}

// ReasonName names a reason code.
func ReasonName(r int) string {
	for n, code := range reasonNames {
		if code == r {
			return n
		}
	}
	return fmt.Sprint(r)
}

// Revoked is one entry of a CRL.
type Revoked struct {
	// Serial is the certificate's serial number, hex.
	Serial string
	At     time.Time
	Reason int
}

// CRLIssuer is a CA certificate and its key, which signs a CRL for the
// certificates it issued.
type CRLIssuer struct {
	Cert *x509.Certificate
	Key  []byte // PEM
}

// SignCRL signs, with issuer's key, a CRL numbered number, valid from
// thisUpdate to nextUpdate, listing entries; it returns it as PEM. The
// issuer must be allowed to sign CRLs (keyUsage cRLSign, when it has a
// keyUsage) and name its key (Subject Key Identifier).
func SignCRL(rand io.Reader, issuer CRLIssuer, number uint64, thisUpdate, nextUpdate time.Time, entries []Revoked) ([]byte, error) {
	key, err := ParseKey(issuer.Key)
	if err != nil {
		return nil, fmt.Errorf("ca: CRL issuer key: %w", err)
	}
	if !publicKeyEqual(key.Public(), issuer.Cert.PublicKey) {
		return nil, fmt.Errorf("%w: the key is not the key of %s", ErrKeyMismatch, issuer.Cert.Subject)
	}
	list := make([]x509.RevocationListEntry, 0, len(entries))
	for _, e := range entries {
		serial, ok := new(big.Int).SetString(e.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("ca: revoked serial %q is not hex", e.Serial)
		}
		list = append(list, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: e.At.UTC(), ReasonCode: e.Reason})
	}
	der, err := x509.CreateRevocationList(rand, &x509.RevocationList{
		Number:                    new(big.Int).SetUint64(number),
		ThisUpdate:                thisUpdate.UTC(),
		NextUpdate:                nextUpdate.UTC(),
		RevokedCertificateEntries: list,
		SignatureAlgorithm:        signatureAlgorithm(issuer.Cert.PublicKey),
	}, issuer.Cert, key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign the CRL of %s: %w", issuer.Cert.Subject, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// ParseCRLs parses the CRLs of a PEM file (crl.pem): every "X509 CRL"
// block.
func ParseCRLs(b []byte) ([]*x509.RevocationList, error) {
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
			return nil, fmt.Errorf("ca: parse CRL: %w", err)
		}
		out = append(out, crl)
	}
}
