package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
)

// Key size limits.
const (
	// MinRSABits is the smallest RSA modulus accepted, for CA and node keys.
	MinRSABits = 2048
	// MaxRSABits is the largest RSA modulus accepted: larger keys only make
	// signature checks slow enough to be a denial of service.
	MaxRSABits = 8192
)

// checkCAKey reports whether pub is a key a CA may sign with: ECDSA P-256 or
// P-384, or RSA of MinRSABits to MaxRSABits.
func checkCAKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s; use P-256 or P-384", ErrUnsupportedKey, k.Curve.Params().Name)
	case *rsa.PublicKey:
		return checkRSA(k)
	default:
		return fmt.Errorf("%w: %T; use ECDSA P-256/P-384 or RSA of at least %d bits", ErrUnsupportedKey, pub, MinRSABits)
	}
}

// checkNodeKey reports whether pub is a key a node certificate may carry:
// what checkCAKey accepts, and Ed25519.
func checkNodeKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() || k.Curve == elliptic.P521() {
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s; use P-256", ErrUnsupportedKey, k.Curve.Params().Name)
	case *rsa.PublicKey:
		return checkRSA(k)
	default:
		return fmt.Errorf("%w: %T; use ECDSA P-256", ErrUnsupportedKey, pub)
	}
}

func checkRSA(k *rsa.PublicKey) error {
	bits := k.N.BitLen()
	if bits < MinRSABits {
		return fmt.Errorf("%w: RSA key of %d bits; use at least %d", ErrWeakKey, bits, MinRSABits)
	}
	if bits > MaxRSABits {
		return fmt.Errorf("%w: RSA key of %d bits; use at most %d", ErrUnsupportedKey, bits, MaxRSABits)
	}
	return nil
}

// ParseKey parses a PEM private key: PKCS#8 ("PRIVATE KEY"), SEC 1
// ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"). Encrypted keys are refused.
func ParseKey(keyPEM []byte) (crypto.Signer, error) {
	var block *pem.Block
	rest := keyPEM
	for {
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%w: no private key block found", ErrMalformedPEM)
		}
		if block.Type == "PRIVATE KEY" || block.Type == "EC PRIVATE KEY" || block.Type == "RSA PRIVATE KEY" {
			break
		}
		if block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] != "" {
			return nil, fmt.Errorf("%w: the private key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)", ErrMalformedPEM)
		}
	}
	if block.Headers["Proc-Type"] != "" {
		return nil, fmt.Errorf("%w: the private key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)", ErrMalformedPEM)
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s block: %w", ErrMalformedPEM, block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T cannot sign", ErrUnsupportedKey, key)
	}
	return signer, nil
}

// MarshalKey encodes a private key as a PKCS#8 PEM block.
func MarshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// GenerateKey makes an ECDSA P-256 key from rand, the kind every node and
// generated root uses.
func GenerateKey(rand io.Reader) (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand)
}

// NewCSR makes a PEM certificate signing request for key. The subject it
// names is only a hint: the cluster takes the public key alone and decides
// the identity itself.
func NewCSR(rand io.Reader, key crypto.Signer, commonName string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand, &x509.CertificateRequest{
		Subject: pkixName(commonName, "", ""),
	}, key)
	if err != nil {
		return nil, fmt.Errorf("ca: create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// publicKeyEqual reports whether two public keys are the same key.
func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
