package cfssl

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// Errors of a request. Each comes wrapped with the servers asked and what
// each answered; test for them with errors.Is.
var (
	// ErrDown is returned when some server did not answer (it could not be
	// reached, timed out, failed, or answered garbage) and none gave a
	// certificate accept took. Callers retry later. Its message is the one
	// api.ExternalCADown names.
	ErrDown = errors.New("no external CA answered")

	// ErrRefused is returned when every server answered and the last one
	// asked refused the request (a CFSSL refusal, an auth key it does not
	// take, or a client certificate it asks for and the caller does not
	// have): asking again would not help. (When the last answered a
	// certificate accept refused, the error wraps accept's instead.)
	ErrRefused = errors.New("the external CA refused the request")
)

// maxResponse bounds what is read of an answer.
const maxResponse = 1 << 20

// CFSSL API paths, under a server's URL.
const (
	signPath     = "/api/v1/cfssl/sign"
	authSignPath = "/api/v1/cfssl/authsign"
	infoPath     = "/api/v1/cfssl/info"
)

// Bounds of the time given to one server within a caller's deadline.
const (
	// deadlineMargin is kept back from the caller's deadline, to answer
	// it in time.
	deadlineMargin = 250 * time.Millisecond
	// minTimeout is the least time one server is given.
	minTimeout = 100 * time.Millisecond
)

// Subject is the subject a sign request imposes on the certificate: it
// replaces the CSR's common name and the names it sets.
type Subject struct {
	CN    string `json:"CN"`
	Names []Name `json:"names,omitempty"`
}

// Name is one entry of Subject.Names.
type Name struct {
	O  string `json:"O,omitempty"`
	OU string `json:"OU,omitempty"`
}

// SignRequest is the body of CFSSL's sign request.
type SignRequest struct {
	// CSR is the certificate signing request, PEM.
	CSR string `json:"certificate_request"`
	// Hosts are the names the certificate gets; nil is sent as an empty
	// list, which drops any name the CSR asks for.
	Hosts []string `json:"hosts"`
	// Subject, when set, replaces the CSR's subject.
	Subject *Subject `json:"subject,omitempty"`
	// Profile is the server's signing profile; "" for its default one.
	Profile string `json:"profile,omitempty"`
}

// authRequest is the body of POST /api/v1/cfssl/authsign, CFSSL's
// authenticated request: Request is the sign request's JSON, and Token the
// HMAC-SHA256 of exactly those bytes under the auth key (CFSSL's
// "standard" provider, with no additional data). Both travel as base64.
type authRequest struct {
	Token   []byte `json:"token"`
	Request []byte `json:"request"`
}

// response is CFSSL's answer envelope.
type response struct {
	Success bool `json:"success"`
	Result  struct {
		Certificate string `json:"certificate"`
	} `json:"result"`
	Errors []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// Client asks CFSSL servers to sign. It tries them in the configured order;
// one that fails is tried after the others for a while (Config.Skip). It is
// safe for concurrent use.
type Client struct {
	eps     []*endpoint
	timeout time.Duration
	skip    time.Duration
	now     func() time.Time
	observe func(url, result string)
}

// endpoint is one server.
type endpoint struct {
	url    string
	client *http.Client
	// authKey, when set, authenticates its sign requests (authsign).
	authKey []byte
	// cert is the client certificate the server may ask for; nil when
	// there is none. certAsked records that the server asked for one.
	cert      func() *tls.Certificate
	certAsked atomic.Bool

	mu        sync.Mutex // guards downUntil
	downUntil time.Time
}

// New returns a client of cfg.Endpoints. Its errors wrap ErrConfig.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	c := &Client{timeout: cfg.Timeout, skip: cfg.Skip, now: cfg.Now, observe: cfg.Observe}
	if c.observe == nil {
		c.observe = func(string, string) {}
	}
	for _, e := range cfg.Endpoints {
		ep := &endpoint{url: strings.TrimSuffix(e.URL, "/"), authKey: bytes.Clone(e.AuthKey), cert: cfg.ClientCertificate}
		tc := ca.HardenTLS(&tls.Config{GetClientCertificate: ep.clientCertificate})
		if len(e.RootCAs) > 0 {
			pool, err := rootPool(e.RootCAs)
			if err != nil { // Validate saw it parse
				return nil, fmt.Errorf("%w: %s: RootCAs: %w", ErrConfig, e.URL, err)
			}
			tc.RootCAs = pool
		}
		tr := &http.Transport{
			TLSClientConfig:     tc,
			TLSHandshakeTimeout: cfg.Timeout,
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     time.Minute,
			ForceAttemptHTTP2:   true,
		}
		ep.client = &http.Client{
			Transport: tr,
			// Never follow a redirect: it could leave HTTPS.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		c.eps = append(c.eps, ep)
	}
	return c, nil
}

// Close drops the idle connections. The client may still be used.
func (c *Client) Close() {
	for _, ep := range c.eps {
		ep.client.CloseIdleConnections()
	}
}

// Sign asks the servers to sign req, until one answers a certificate
// (PEM) that accept takes, and returns it. See call for the errors.
func (c *Client) Sign(ctx context.Context, req SignRequest, accept func(certPEM []byte) error) ([]byte, error) {
	if req.Hosts == nil {
		req.Hosts = []string{} // an empty list drops any name the CSR asks for
	}
	return c.call(ctx, signPath, req, accept)
}

// Info asks the servers for the certificate they sign with (of the
// default profile), until one answers a certificate that accept takes,
// and returns it. See call for the errors.
func (c *Client) Info(ctx context.Context, accept func(certPEM []byte) error) ([]byte, error) {
	return c.call(ctx, infoPath, map[string]string{"label": "", "profile": ""}, accept)
}

// clientCertificate is the TLS client's GetClientCertificate: crypto/tls
// calls it during a handshake in which the server asks for a certificate.
func (ep *endpoint) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	ep.certAsked.Store(true)
	if ep.cert != nil {
		if c := ep.cert(); c != nil {
			return c, nil
		}
	}
	return &tls.Certificate{}, nil // none: crypto/tls sends an empty list
}

// order returns the endpoints to try: those not known to be failing, in
// the configured order, then the failing ones, soonest to recover first.
func (c *Client) order() []*endpoint {
	now := c.now()
	type entry struct {
		ep    *endpoint
		until time.Time
	}
	var up []*endpoint
	var down []entry
	for _, ep := range c.eps {
		until := ep.until()
		if now.Before(until) {
			down = append(down, entry{ep, until})
		} else {
			up = append(up, ep)
		}
	}
	slices.SortStableFunc(down, func(a, b entry) int { return a.until.Compare(b.until) })
	for _, d := range down {
		up = append(up, d.ep)
	}
	return up
}

func (ep *endpoint) until() time.Time {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.downUntil
}

func (ep *endpoint) mark(healthy bool, now time.Time, skip time.Duration) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if healthy {
		ep.downUntil = time.Time{}
	} else {
		ep.downUntil = now.Add(skip)
	}
}

// call posts body to path on each server in turn until one answers a
// certificate that accept takes, and returns it. A server that cannot be
// reached, times out, answers garbage or a certificate accept refuses is
// marked failing, and the next one is tried; so is the next after a server
// that refuses the request (CFSSL answers 400 for its own failures too).
// When every server answered and none was taken, the error says why
// (nothing to retry: ErrRefused, or accept's error); when some did not
// answer, it wraps ErrDown (retried). When ctx ends, it wraps ctx.Err().
//
// Each server gets the configured timeout, or its share of what is left of
// the caller's deadline if that is less, so that a hung server is marked
// and the call ends with ErrDown before the caller gives up.
func (c *Client) call(ctx context.Context, path string, body any, accept func(certPEM []byte) error) ([]byte, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("external CA: encode request: %w", err)
	}
	var (
		failures []string
		down     bool  // some server did not answer
		refusal  error // the last answer that was not taken
	)
	eps := c.order()
	for i, ep := range eps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		timeout := c.timeout
		if dl, ok := ctx.Deadline(); ok {
			share := (time.Until(dl) - deadlineMargin) / time.Duration(len(eps)-i)
			timeout = max(min(timeout, share), minTimeout)
		}
		cert, refused, err := ep.post(ctx, path, payload, timeout)
		if err != nil && ctx.Err() != nil {
			// The caller gave up, not the server: blame nobody.
			return nil, fmt.Errorf("external CA %s: %w", ep.url, ctx.Err())
		}
		switch {
		case err == nil:
			if err = accept(cert); err == nil {
				ep.mark(true, c.now(), c.skip)
				c.observe(ep.url, "ok")
				return cert, nil
			}
			// A certificate not taken: a server misconfigured, or
			// another CA.
			refusal = err
			ep.mark(false, c.now(), c.skip)
			c.observe(ep.url, "not_taken")
		case refused:
			refusal = fmt.Errorf("%w: %s: %w", ErrRefused, ep.url, err)
			c.observe(ep.url, "refused")
		default:
			down = true
			ep.mark(false, c.now(), c.skip)
			c.observe(ep.url, "down")
		}
		failures = append(failures, fmt.Sprintf("%s: %v", ep.url, err))
	}
	if !down && refusal != nil {
		// Asking again would not help: say what is wrong with the answers.
		return nil, fmt.Errorf("%w (%s)", refusal, strings.Join(failures, "; "))
	}
	return nil, fmt.Errorf("%w (%s); check that it runs and that its URL is right, or add another with `quorumca update --external-ca`; the request will be retried", ErrDown, strings.Join(failures, "; "))
}

// post makes one request. refused is set when the server answered a
// proper refusal, or wants a client certificate the caller does not have.
func (ep *endpoint) post(ctx context.Context, path string, payload []byte, timeout time.Duration) (cert []byte, refused bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	path, payload, err = ep.authenticate(path, payload)
	if err != nil {
		return nil, false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.url+path, bytes.NewReader(payload))
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ep.client.Do(req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, false, fmt.Errorf("no answer within %s", timeout)
		}
		return nil, ep.lacksCertificate(), ep.explainTLS(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, false, fmt.Errorf("read answer: %w", err)
	}
	var r response
	if err := json.Unmarshal(raw, &r); err != nil {
		err := fmt.Errorf("HTTP %d, not a CFSSL answer: %q", resp.StatusCode, truncateBytes(raw, 80))
		if resp.StatusCode == http.StatusNotFound && path == signPath {
			err = fmt.Errorf("%w (CFSSL has no sign endpoint when every profile requires an auth key: give authkey=FILE)", err)
		}
		return nil, false, err
	}
	if !r.Success {
		msgs := make([]string, 0, len(r.Errors))
		for _, e := range r.Errors {
			msgs = append(msgs, fmt.Sprintf("%s (code %d)", e.Message, e.Code))
		}
		err := fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.Join(msgs, "; "))
		// A 4xx with reasons is CFSSL refusing; a 5xx is the server failing.
		return nil, resp.StatusCode >= 400 && resp.StatusCode < 500 && len(msgs) > 0, err
	}
	if r.Result.Certificate == "" {
		return nil, false, fmt.Errorf("HTTP %d: success without a certificate", resp.StatusCode)
	}
	return []byte(r.Result.Certificate), false, nil
}

// authenticate returns the path and body of a request for path with
// payload to ep: a sign request to a server with an auth key goes to
// authsign, in CFSSL's authenticated envelope. The key shows nowhere else.
func (ep *endpoint) authenticate(path string, payload []byte) (string, []byte, error) {
	if path != signPath || len(ep.authKey) == 0 {
		return path, payload, nil
	}
	mac := hmac.New(sha256.New, ep.authKey)
	mac.Write(payload)
	body, err := json.Marshal(authRequest{Token: mac.Sum(nil), Request: payload})
	if err != nil {
		return "", nil, fmt.Errorf("encode authenticated request: %w", err)
	}
	return authSignPath, body, nil
}

// lacksCertificate reports whether the server asked for a client
// certificate and the caller has none to give (a first manager during
// init): a request that then fails is refused, not retried.
func (ep *endpoint) lacksCertificate() bool {
	return ep.certAsked.Load() && (ep.cert == nil || ep.cert() == nil)
}

// explainTLS says what err, a request that got no answer, has to do with
// the client certificate the server asked for, if it asked.
//
// The server's verdict on a client certificate is a TLS alert, which under
// TLS 1.3 comes after the handshake; over HTTP/2 the transport may then
// report only that the connection "could not be established". So a failure
// after the server asked for a certificate the caller lacks is taken for
// that refusal whatever its type; with a certificate sent, a refusal is
// named only when the alert shows (crypto/tls reports a peer's alert as a
// *net.OpError whose Op is "remote error"; its alert type is unexported).
func (ep *endpoint) explainTLS(err error) error {
	if !ep.certAsked.Load() {
		return err
	}
	if ep.lacksCertificate() {
		return fmt.Errorf("the external CA requires a client certificate, which this manager does not have yet (init): use authkey, or require client certificates only after init (%w)", err)
	}
	if op := (*net.OpError)(nil); errors.As(err, &op) && op.Op == "remote error" {
		return fmt.Errorf("the external CA refused this manager's client certificate: its -mutual-tls-ca must trust the cluster's root (%w)", err)
	}
	return fmt.Errorf("%w (the CA asked for a client certificate: if it refused this manager's, its -mutual-tls-ca must trust the cluster's root)", err)
}

func truncateBytes(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
