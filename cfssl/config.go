// Package cfssl is the client of CloudFlare CFSSL CA servers (`cfssl serve`)
// that a cluster uses as its external CAs. It owns their HTTP API (sign,
// authsign, info), the order in which several servers are tried and how
// long one that failed is passed over, the timeouts, CFSSL's authenticated
// (HMAC) request envelope, the TLS client certificate a server may ask for,
// and the parsing of answers.
//
// It knows nothing of clusters: which servers to ask, what to ask them to
// sign, and whether a certificate that comes back will do are the caller's
// (an accept function it is given with each request).
package cfssl

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// ErrConfig is returned by Config.Validate and New for a configuration that
// cannot work; the message names the field.
var ErrConfig = errors.New("cfssl: invalid configuration")

// Defaults of Config.
const (
	// DefaultTimeout bounds one request to one server.
	DefaultTimeout = 10 * time.Second
	// DefaultSkip is how long a server that failed is tried only after the
	// others.
	DefaultSkip = 30 * time.Second
)

// Endpoint is one CFSSL server.
type Endpoint struct {
	// URL is the server's https:// URL; the API paths go under it.
	URL string
	// RootCAs is the PEM of the certificates that may issue the server's
	// HTTPS certificate; empty: the system's roots.
	RootCAs []byte
	// AuthKey, when set, is the key of the server's "standard" auth
	// provider: sign requests then go to authsign, authenticated with it.
	// It is sent nowhere and shows in no error.
	AuthKey []byte
}

// Config configures a Client.
type Config struct {
	// Endpoints are the servers, in the order they are tried.
	Endpoints []Endpoint
	// Timeout bounds one request to one server (default DefaultTimeout).
	// Within a caller's deadline, each server gets at most its share of
	// what is left.
	Timeout time.Duration
	// Skip is how long a server that failed is tried only after the
	// others (default DefaultSkip).
	Skip time.Duration
	// ClientCertificate returns the certificate to present to a server
	// that asks for one (mutual TLS), or nil when there is none yet. It is
	// called at each handshake that asks, from the HTTP transport's
	// goroutines, so that a renewed certificate is followed. nil: none.
	ClientCertificate func() *tls.Certificate
	// Now is the clock of the skip window (default time.Now).
	Now func() time.Time
	// Observe, when set, hears how each request to each server ended:
	// "ok", "not_taken" (a certificate the caller refused), "refused" (an
	// error answer) or "down" (no answer). For metrics.
	Observe func(url, result string)
}

// DefaultConfig returns a Config with the default timeouts and clock, and
// no endpoint.
func DefaultConfig() Config {
	return Config{Timeout: DefaultTimeout, Skip: DefaultSkip, Now: time.Now}
}

// withDefaults returns c with its zero durations and clock replaced by
// DefaultConfig's.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.Skip == 0 {
		c.Skip = d.Skip
	}
	if c.Now == nil {
		c.Now = d.Now
	}
	return c
}

// Validate checks c, zero fields taking their defaults. Its errors wrap
// ErrConfig and name the field.
func (c Config) Validate() error {
	c = c.withDefaults()
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("%w: Config.Endpoints is empty; give at least one CFSSL server", ErrConfig)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("%w: Config.Timeout is %s; it must be positive", ErrConfig, c.Timeout)
	}
	if c.Skip < 0 {
		return fmt.Errorf("%w: Config.Skip is %s; it must not be negative", ErrConfig, c.Skip)
	}
	for i, e := range c.Endpoints {
		// https only: the request carries the CSR and may carry an
		// authenticated envelope, and redirects are never followed.
		if u, err := url.Parse(e.URL); err != nil || u.Scheme != "https" || u.Hostname() == "" {
			return fmt.Errorf("%w: Config.Endpoints[%d].URL %q; give an https:// URL with a host", ErrConfig, i, e.URL)
		}
		if len(e.RootCAs) > 0 {
			if _, err := rootPool(e.RootCAs); err != nil {
				return fmt.Errorf("%w: Config.Endpoints[%d].RootCAs (%s): %w", ErrConfig, i, e.URL, err)
			}
		}
	}
	return nil
}

// errNoCertificate is returned by rootPool for PEM without a certificate.
var errNoCertificate = errors.New("holds no PEM certificate")

// rootPool returns the pool of the certificates in pemCerts.
func rootPool(pemCerts []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCerts) {
		return nil, errNoCertificate
	}
	return pool, nil
}
