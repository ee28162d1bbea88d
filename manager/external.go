package manager

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
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

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// Errors of the external CA client.
var (
	// errExternalDown: no external CA answered. Callers retry later.
	errExternalDown = errors.New(api.ExternalCADown)
	// errExternalRefused: an external CA answered, and refused the request.
	errExternalRefused = errors.New("the external CA refused the request")
)

// Defaults of the external CA client.
const (
	// DefaultExternalTimeout bounds one request to one external CA.
	DefaultExternalTimeout = 10 * time.Second
	// DefaultExternalSkip is how long an external CA that failed is tried
	// only after the others.
	DefaultExternalSkip = 30 * time.Second
	// maxExternalResponse bounds what is read of an answer.
	maxExternalResponse = 1 << 20
)

// CFSSL API paths, under an external CA's URL.
const (
	cfsslSignPath     = "/api/v1/cfssl/sign"
	cfsslAuthSignPath = "/api/v1/cfssl/authsign"
	cfsslInfoPath     = "/api/v1/cfssl/info"
)

// cfsslSubject is the subject a CFSSL sign request imposes on the
// certificate: it replaces the CSR's common name and the names it sets.
type cfsslSubject struct {
	CN    string      `json:"CN"`
	Names []cfsslName `json:"names,omitempty"`
}

type cfsslName struct {
	O  string `json:"O,omitempty"`
	OU string `json:"OU,omitempty"`
}

// cfsslSignRequest is the body of POST /api/v1/cfssl/sign.
type cfsslSignRequest struct {
	Request string        `json:"certificate_request"`
	Hosts   []string      `json:"hosts"`
	Subject *cfsslSubject `json:"subject,omitempty"`
	Profile string        `json:"profile,omitempty"`
}

// cfsslAuthRequest is the body of POST /api/v1/cfssl/authsign, CFSSL's
// authenticated request: Request is the sign request's JSON, and Token the
// HMAC-SHA256 of exactly those bytes under the auth key (CFSSL's
// "standard" provider, with no additional data). Both travel as base64.
type cfsslAuthRequest struct {
	Token   []byte `json:"token"`
	Request []byte `json:"request"`
}

// cfsslResponse is CFSSL's answer envelope.
type cfsslResponse struct {
	Success bool `json:"success"`
	Result  struct {
		Certificate string `json:"certificate"`
	} `json:"result"`
	Errors []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// externalCA is the client of a cluster's external CAs. It tries them in
// the order given; one that fails is tried after the others for a while.
type externalCA struct {
	cas     []fsm.ExternalCA // the configuration it was made from
	eps     []*endpoint
	timeout time.Duration
	skip    time.Duration
	now     func() time.Time
}

// endpoint is one external CA.
type endpoint struct {
	url    string
	client *http.Client
	// authKey, when set, authenticates its sign requests (authsign).
	authKey []byte
	// cert is the client certificate the CA may ask for; nil when there is
	// none. certAsked records that the CA asked for one.
	cert      func() *tls.Certificate
	certAsked atomic.Bool

	mu        sync.Mutex // guards downUntil
	downUntil time.Time
}

// newExternalCA returns the client of the external CAs cas. cert returns
// the certificate to present to a CA that asks for one (mutual TLS): this
// manager's, which follows its renewals; nil before it has one (init).
func newExternalCA(cas []fsm.ExternalCA, cert func() *tls.Certificate, timeout, skip time.Duration, now func() time.Time) (*externalCA, error) {
	if len(cas) == 0 {
		return nil, fmt.Errorf("%w: the cluster has no key and no external CA", fsm.ErrBadCommand)
	}
	if err := fsm.CheckExternal(cas); err != nil {
		return nil, err
	}
	e := &externalCA{cas: cas, timeout: timeout, skip: skip, now: now}
	for _, c := range cas {
		ep := &endpoint{url: strings.TrimSuffix(c.URL, "/"), authKey: c.AuthKey, cert: cert}
		cfg := ca.HardenTLS(&tls.Config{GetClientCertificate: ep.clientCertificate})
		if len(c.CACert) > 0 {
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(c.CACert) {
				return nil, fmt.Errorf("%w: external CA %s: cacert holds no certificate", fsm.ErrBadCommand, c.URL)
			}
		}
		tr := &http.Transport{
			TLSClientConfig:     cfg,
			TLSHandshakeTimeout: timeout,
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     time.Minute,
			ForceAttemptHTTP2:   true,
		}
		ep.client = &http.Client{
			Transport: tr,
			// Never follow a redirect: it could leave HTTPS.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		e.eps = append(e.eps, ep)
	}
	return e, nil
}

// clientCertificate is the TLS client's GetClientCertificate: crypto/tls
// calls it during a handshake in which the CA asks for a certificate.
func (ep *endpoint) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	ep.certAsked.Store(true)
	if ep.cert != nil {
		if c := ep.cert(); c != nil {
			return c, nil
		}
	}
	return &tls.Certificate{}, nil // none: crypto/tls sends an empty list
}

// same reports whether e was made from cas.
func (e *externalCA) same(cas []fsm.ExternalCA) bool {
	return slices.EqualFunc(e.cas, cas, func(a, b fsm.ExternalCA) bool {
		return a.Protocol == b.Protocol && a.URL == b.URL && bytes.Equal(a.CACert, b.CACert) && bytes.Equal(a.AuthKey, b.AuthKey)
	})
}

// close drops the idle connections.
func (e *externalCA) close() {
	for _, ep := range e.eps {
		ep.client.CloseIdleConnections()
	}
}

// order returns the endpoints to try: those not known to be failing, in
// the configured order, then the failing ones, soonest to recover first.
func (e *externalCA) order() []*endpoint {
	now := e.now()
	type entry struct {
		ep    *endpoint
		until time.Time
	}
	var up []*endpoint
	var down []entry
	for _, ep := range e.eps {
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

// call posts body to path on each external CA in turn until one answers a
// certificate that accept takes, and returns it. A CA that cannot be
// reached, times out, answers garbage or a certificate accept refuses is
// marked failing, and the next one is tried; so is the next after a CA
// that refuses the request (CFSSL answers 400 for its own failures too).
// When every CA answered and none was taken, the error says why (nothing
// to retry); when some did not answer, it wraps errExternalDown (retried).
//
// Each CA gets the configured timeout, or its share of what is left of the
// caller's deadline if that is less, so that a hung CA is marked and the
// call ends with errExternalDown before the caller gives up.
func (e *externalCA) call(ctx context.Context, path string, body any, accept func(certPEM []byte) error) ([]byte, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("external CA: encode request: %w", err)
	}
	var (
		failures []string
		down     bool  // some CA did not answer
		refusal  error // the last answer that was not taken
	)
	eps := e.order()
	for i, ep := range eps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		timeout := e.timeout
		if dl, ok := ctx.Deadline(); ok {
			share := (time.Until(dl) - deadlineMargin) / time.Duration(len(eps)-i)
			timeout = max(min(timeout, share), minExternalTimeout)
		}
		cert, refused, err := ep.post(ctx, path, payload, timeout)
		if err != nil && ctx.Err() != nil {
			// The caller gave up, not the CA: blame nobody.
			return nil, fmt.Errorf("external CA %s: %w", ep.url, ctx.Err())
		}
		switch {
		case err == nil:
			if err = accept(cert); err == nil {
				ep.mark(true, e.now(), e.skip)
				return cert, nil
			}
			// A certificate not taken: a CA misconfigured, or another CA.
			refusal = err
			ep.mark(false, e.now(), e.skip)
		case refused:
			refusal = fmt.Errorf("%w: %s: %w", errExternalRefused, ep.url, err)
		default:
			down = true
			ep.mark(false, e.now(), e.skip)
		}
		failures = append(failures, fmt.Sprintf("%s: %v", ep.url, err))
	}
	if !down && refusal != nil {
		// Asking again would not help: say what is wrong with the answers.
		return nil, fmt.Errorf("%w (%s)", refusal, strings.Join(failures, "; "))
	}
	return nil, fmt.Errorf("%w (%s); check that it runs and that its URL is right, or add another with `quorumca update --external-ca`; the request will be retried", errExternalDown, strings.Join(failures, "; "))
}

// Bounds of the time given to one external CA within a caller's deadline.
const (
	// deadlineMargin is kept back from the caller's deadline, to answer
	// it in time.
	deadlineMargin = 250 * time.Millisecond
	// minExternalTimeout is the least time one CA is given.
	minExternalTimeout = 100 * time.Millisecond
)

// post makes one request. refused is set when the CA answered a proper
// refusal, or wants a client certificate this manager does not have.
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
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxExternalResponse))
	if err != nil {
		return nil, false, fmt.Errorf("read answer: %w", err)
	}
	var r cfsslResponse
	if err := json.Unmarshal(raw, &r); err != nil {
		err := fmt.Errorf("HTTP %d, not a CFSSL answer: %q", resp.StatusCode, truncateBytes(raw, 80))
		if resp.StatusCode == http.StatusNotFound && path == cfsslSignPath {
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
		// A 4xx with reasons is CFSSL refusing; a 5xx is the CA failing.
		return nil, resp.StatusCode >= 400 && resp.StatusCode < 500 && len(msgs) > 0, err
	}
	if r.Result.Certificate == "" {
		return nil, false, fmt.Errorf("HTTP %d: success without a certificate", resp.StatusCode)
	}
	return []byte(r.Result.Certificate), false, nil
}

// authenticate returns the path and body of a request for path with
// payload to ep: a sign request to a CA with an auth key goes to authsign,
// in CFSSL's authenticated envelope. The key shows nowhere else.
func (ep *endpoint) authenticate(path string, payload []byte) (string, []byte, error) {
	if path != cfsslSignPath || len(ep.authKey) == 0 {
		return path, payload, nil
	}
	mac := hmac.New(sha256.New, ep.authKey)
	mac.Write(payload)
	body, err := json.Marshal(cfsslAuthRequest{Token: mac.Sum(nil), Request: payload})
	if err != nil {
		return "", nil, fmt.Errorf("encode authenticated request: %w", err)
	}
	return cfsslAuthSignPath, body, nil
}

// lacksCertificate reports whether the CA asked for a client certificate
// and this manager has none to give (a first manager during init): a
// request that then fails is refused, not retried.
func (ep *endpoint) lacksCertificate() bool {
	return ep.certAsked.Load() && (ep.cert == nil || ep.cert() == nil)
}

// explainTLS says what err, a request that got no answer, has to do with
// the client certificate the CA asked for, if it asked.
//
// The CA's verdict on a client certificate is a TLS alert, which under TLS
// 1.3 comes after the handshake; over HTTP/2 the transport may then report
// only that the connection "could not be established". So a failure after
// the CA asked for a certificate this manager lacks is taken for that
// refusal whatever its type; with a certificate sent, a refusal is named
// only when the alert shows (crypto/tls reports a peer's alert as a
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

// sign asks an external CA to sign csrPEM, imposing subject and hosts,
// with profile ("" for the default one).
func (e *externalCA) sign(ctx context.Context, req cfsslSignRequest, accept func([]byte) error) ([]byte, error) {
	if req.Hosts == nil {
		req.Hosts = []string{} // an empty list drops any name the CSR asks for
	}
	return e.call(ctx, cfsslSignPath, req, accept)
}

// info asks an external CA for the certificate it signs with.
func (e *externalCA) info(ctx context.Context, accept func([]byte) error) ([]byte, error) {
	return e.call(ctx, cfsslInfoPath, map[string]string{"label": "", "profile": ""}, accept)
}
