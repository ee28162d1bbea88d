package ca

import (
	"crypto/tls"
	"slices"
)

// aeadSuites are the TLS 1.2 cipher suites quorumca offers and accepts:
// ECDHE key exchange with an AEAD only. TLS 1.3 suites are all AEAD and
// are not configurable.
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	// RSA certificates are only met on external CAs' HTTPS endpoints.
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// TLSSuites returns the TLS 1.2 cipher suites of HardenTLS.
func TLSSuites() []uint16 { return slices.Clone(aeadSuites) }

// HardenTLS applies quorumca's one TLS policy to c, for every listener and
// every client: TLS 1.3 preferred (Go negotiates the highest version both
// sides speak), TLS 1.2 at least, and under TLS 1.2 only ECDHE suites with
// an AEAD (no CBC, no SHA-1 MAC, no RSA key exchange). It returns c.
//
// A config whose GetConfigForClient returns other configs must harden
// those too: crypto/tls uses them in place of c.
func HardenTLS(c *tls.Config) *tls.Config {
	c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
	c.CipherSuites = TLSSuites()
	return c
}
