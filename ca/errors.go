package ca

import "errors"

// Errors returned by this package. Each is wrapped with a message that says
// what was wrong and what to do; test for them with errors.Is.
var (
	// ErrMalformedPEM is returned when PEM input has no block of the expected
	// type, or a block that does not parse.
	ErrMalformedPEM = errors.New("ca: malformed PEM")

	// ErrNotCA is returned by Import when a certificate in the given chain is
	// not a CA certificate (basic constraints CA:true).
	ErrNotCA = errors.New("ca: certificate is not a CA")

	// ErrChainIncomplete is returned by Import when the given chain does not
	// end in a self-signed root, or a link in it is not signed by the next.
	ErrChainIncomplete = errors.New("ca: chain does not reach a self-signed root")

	// ErrExpiring is returned by Import when a CA certificate is expired, not
	// yet valid, or has less than MinCAValidity left.
	ErrExpiring = errors.New("ca: CA certificate expired or expiring")

	// ErrKeyMismatch is returned when a private key does not belong to the
	// certificate it came with.
	ErrKeyMismatch = errors.New("ca: private key does not match certificate")

	// ErrUnsupportedKey is returned for a key of an algorithm or curve this
	// package does not accept.
	ErrUnsupportedKey = errors.New("ca: unsupported key")

	// ErrWeakKey is returned for an RSA key shorter than MinRSABits.
	ErrWeakKey = errors.New("ca: key too weak")

	// ErrBadCSR is returned when a certificate signing request does not parse.
	ErrBadCSR = errors.New("ca: malformed certificate signing request")

	// ErrCSRSignature is returned when a CSR's self-signature does not verify.
	ErrCSRSignature = errors.New("ca: CSR signature does not verify")

	// ErrBadIdentity is returned when a node identity (node ID, role, cluster
	// ID) is empty or malformed, in a request or in a presented certificate.
	ErrBadIdentity = errors.New("ca: bad node identity")

	// ErrExpiryTooShort is returned when a certificate validity below
	// MinCertExpiry is asked for.
	ErrExpiryTooShort = errors.New("ca: certificate expiry too short")

	// ErrMalformedToken is returned by ParseToken for a string that is not a
	// join token; the wrapping message names the malformed part.
	ErrMalformedToken = errors.New("ca: malformed join token")

	// ErrDigestMismatch is returned when a root bundle does not hash to the
	// digest pinned by a join token.
	ErrDigestMismatch = errors.New("ca: root bundle does not match the join token's digest")

	// ErrUntrusted is returned by Verify when a certificate chain does not
	// verify against the trust bundle at the given time.
	ErrUntrusted = errors.New("ca: certificate not trusted")

	// ErrKeyReused is returned by CrossSign when the new root uses the same
	// key as the old one: a rotation must change the key.
	ErrKeyReused = errors.New("ca: new root reuses the current root's key")

	// ErrExternalCA is returned when a certificate an external CA returned
	// is not the one the cluster asked for: another key, subject, names,
	// usage or issuer.
	ErrExternalCA = errors.New("ca: external CA returned an unacceptable certificate")
)
