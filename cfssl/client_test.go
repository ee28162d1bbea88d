package cfssl

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// crossSignProfile is the signing profile a manager cross-signs with
// (manager.CrossSignProfile).
const crossSignProfile = "CA"

// newExtTestClock is a controllable clock for the skip window.
func newExtTestClock() *testkit.Clock {
	return testkit.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
}

// extTestCA is a CA that issues the HTTPS certificates of the fake
// external CAs.
type extTestCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newExtTestCA(t *testing.T, name string) *extTestCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &extTestCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serverCert issues a certificate for 127.0.0.1.
func (c *extTestCA) serverCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// extTestServer is a fake external CA that counts the requests it gets.
type extTestServer struct {
	*httptest.Server
	hits atomic.Int32
}

// startExtServer starts an HTTPS server with a certificate of issuer.
// cfg, if not nil, is the base of its TLS configuration; listener, if not
// nil, is the listener it serves on.
func startExtServer(t *testing.T, issuer *extTestCA, cfg *tls.Config, listener net.Listener, h http.HandlerFunc) *extTestServer {
	t.Helper()
	s := &extTestServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		h(w, r)
	}))
	if listener != nil {
		s.Listener.Close()
		s.Listener = listener
	}
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg.Certificates = []tls.Certificate{issuer.serverCert(t)}
	s.TLS = cfg
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are expected
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

// cfsslAnswer answers body with code.
func cfsslAnswer(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

// cfsslCert answers a successful CFSSL answer carrying cert.
func cfsslCert(cert string) http.HandlerFunc {
	b, _ := json.Marshal(map[string]any{
		"success":  true,
		"result":   map[string]string{"certificate": cert},
		"errors":   []any{},
		"messages": []any{},
	})
	return cfsslAnswer(http.StatusOK, string(b))
}

// extConf is the configuration of an external CA at url, trusted through
// trust's certificate.
func extConf(url string, trust *extTestCA) Endpoint {
	return Endpoint{URL: url, RootCAs: trust.pem}
}

func newTestExternal(t *testing.T, clock *testkit.Clock, timeout time.Duration, eps ...Endpoint) *Client {
	t.Helper()
	e, err := New(Config{Endpoints: eps, Timeout: timeout, Skip: testkit.ExternalSkip, Now: clock.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// deadAddr returns an address on 127.0.0.1 where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func acceptAll([]byte) error { return nil }

func extSign(e *Client, accept func([]byte) error) ([]byte, error) {
	return e.Sign(context.Background(), SignRequest{CSR: "CSR"}, accept)
}

// wantMarked checks whether ep is marked failing until now+skip.
func wantMarked(t *testing.T, clock *testkit.Clock, ep *endpoint, marked bool) {
	t.Helper()
	until := ep.until()
	switch {
	case marked && !until.Equal(clock.Now().Add(testkit.ExternalSkip)):
		t.Errorf("%s: failing until %v, want %v", ep.url, until, clock.Now().Add(testkit.ExternalSkip))
	case !marked && !until.IsZero():
		t.Errorf("%s: marked failing until %v, want not marked", ep.url, until)
	}
}

func TestFirstURLAnswers(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	a := startExtServer(t, trust, nil, nil, cfsslCert("cert-a"))
	b := startExtServer(t, trust, nil, nil, cfsslCert("cert-b"))
	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(a.URL, trust), extConf(b.URL+"/", trust))
	for i := range 3 {
		cert, err := extSign(e, acceptAll)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if string(cert) != "cert-a" {
			t.Fatalf("call %d: got %q, want cert-a", i, cert)
		}
	}
	if a.hits.Load() != 3 || b.hits.Load() != 0 {
		t.Errorf("hits: first %d, second %d; want 3 and 0", a.hits.Load(), b.hits.Load())
	}
	if e.eps[1].url != b.URL {
		t.Errorf("trailing slash kept: %q", e.eps[1].url)
	}
	wantMarked(t, clock, e.eps[0], false)
}

func TestFirstURLDownSkipWindow(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	addr := deadAddr(t)
	b := startExtServer(t, trust, nil, nil, cfsslCert("cert-b"))
	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf("https://"+addr, trust), extConf(b.URL, trust))

	cert, err := extSign(e, acceptAll)
	if err != nil || string(cert) != "cert-b" {
		t.Fatalf("first down: got %q, %v; want cert-b", cert, err)
	}
	if b.hits.Load() != 1 {
		t.Fatalf("second: %d hits, want 1", b.hits.Load())
	}
	wantMarked(t, clock, e.eps[0], true)
	wantMarked(t, clock, e.eps[1], false)

	// The first comes back, at the same address; within the skip window,
	// the second is still asked first.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	a := startExtServer(t, trust, nil, l, cfsslCert("cert-a"))
	clock.Advance(t, testkit.ExternalSkip-time.Second)
	cert, err = extSign(e, acceptAll)
	if err != nil || string(cert) != "cert-b" {
		t.Fatalf("within the window: got %q, %v; want cert-b", cert, err)
	}
	if a.hits.Load() != 0 || b.hits.Load() != 2 {
		t.Fatalf("within the window: hits first %d, second %d; want 0 and 2", a.hits.Load(), b.hits.Load())
	}

	// After the window, the first is tried first again.
	clock.Advance(t, 2*time.Second)
	cert, err = extSign(e, acceptAll)
	if err != nil || string(cert) != "cert-a" {
		t.Fatalf("after the window: got %q, %v; want cert-a", cert, err)
	}
	if a.hits.Load() != 1 || b.hits.Load() != 2 {
		t.Fatalf("after the window: hits first %d, second %d; want 1 and 2", a.hits.Load(), b.hits.Load())
	}
	wantMarked(t, clock, e.eps[0], false)
}

func TestAllDownListsEveryURL(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	u1, u2 := "https://"+deadAddr(t), "https://"+deadAddr(t)
	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(u1, trust), extConf(u2, trust))
	start := time.Now()
	_, err := extSign(e, acceptAll)
	if !errors.Is(err, ErrDown) {
		t.Fatalf("got %v, want ErrDown", err)
	}
	if time.Since(start) > testkit.ExternalBound {
		t.Errorf("took %v", time.Since(start))
	}
	msg := err.Error()
	i1, i2 := strings.Index(msg, u1+": "), strings.Index(msg, u2+": ")
	if i1 < 0 || i2 < 0 || i1 > i2 {
		t.Errorf("error does not list %s then %s: %v", u1, u2, err)
	}
	wantMarked(t, clock, e.eps[0], true)
	wantMarked(t, clock, e.eps[1], true)
}

func TestOrderDownSoonestRecoveryFirst(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout,
		extConf("https://127.0.0.1:1", trust), extConf("https://127.0.0.1:2", trust),
		extConf("https://127.0.0.1:3", trust), extConf("https://127.0.0.1:4", trust))
	now := clock.Now()
	e.eps[0].mark(false, now, 20*time.Second)
	e.eps[1].mark(false, now, 10*time.Second)
	e.eps[3].mark(false, now, -time.Second) // the window is over
	var got []string
	for _, ep := range e.order() {
		got = append(got, ep.url[len(ep.url)-1:])
	}
	if strings.Join(got, "") != "3421" {
		t.Errorf("order %v, want 3 4 2 1", got)
	}
}

func TestSlowServerTimesOut(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	stop := make(chan struct{})
	slow := startExtServer(t, trust, nil, nil, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	})
	t.Cleanup(func() { close(stop) }) // runs before slow.Close
	b := startExtServer(t, trust, nil, nil, cfsslCert("cert-b"))
	const timeout = 200 * time.Millisecond

	t.Run("only", func(t *testing.T) {
		clock := newExtTestClock()
		e := newTestExternal(t, clock, timeout, extConf(slow.URL, trust))
		start := time.Now()
		_, err := extSign(e, acceptAll)
		took := time.Since(start)
		if !errors.Is(err, ErrDown) || !strings.Contains(err.Error(), "no answer within "+timeout.String()) || !strings.Contains(err.Error(), slow.URL) {
			t.Fatalf("got %v, want ErrDown naming %s and saying no answer within %v", err, slow.URL, timeout)
		}
		if took < timeout || took > testkit.ExternalBound {
			t.Errorf("took %v, want between %v and %v", took, timeout, testkit.ExternalBound)
		}
		wantMarked(t, clock, e.eps[0], true)
	})
	t.Run("then next", func(t *testing.T) {
		clock := newExtTestClock()
		e := newTestExternal(t, clock, timeout, extConf(slow.URL, trust), extConf(b.URL, trust))
		start := time.Now()
		cert, err := extSign(e, acceptAll)
		if err != nil || string(cert) != "cert-b" {
			t.Fatalf("got %q, %v; want cert-b", cert, err)
		}
		if took := time.Since(start); took > testkit.ExternalBound {
			t.Errorf("took %v", took)
		}
		wantMarked(t, clock, e.eps[0], true)
		if b.hits.Load() != 1 {
			t.Errorf("second: %d hits, want 1", b.hits.Load())
		}
	})
}

func TestBadAnswersFallThrough(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	for _, tc := range []struct {
		name, reason string
		h            http.HandlerFunc
	}{
		{"html", "HTTP 200, not a CFSSL answer", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>It works!</body></html>")
		}},
		{"404 html", `HTTP 404, not a CFSSL answer: "404 page not found\n" (CFSSL has no sign endpoint when every profile requires an auth key: give authkey=FILE)`, http.NotFound},
		{"500 cfssl", "HTTP 500: database is down (code 9000)",
			cfsslAnswer(http.StatusInternalServerError, `{"success":false,"result":null,"errors":[{"code":9000,"message":"database is down"}],"messages":[]}`)},
		{"success without certificate", "HTTP 200: success without a certificate",
			cfsslAnswer(http.StatusOK, `{"success":true,"result":{},"errors":[],"messages":[]}`)},
		{"400 without reasons", "HTTP 400: ",
			cfsslAnswer(http.StatusBadRequest, `{"success":false,"result":null,"errors":[],"messages":[]}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := startExtServer(t, trust, nil, nil, tc.h)
			good := startExtServer(t, trust, nil, nil, cfsslCert("cert-good"))

			clock := newExtTestClock()
			e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(bad.URL, trust), extConf(good.URL, trust))
			cert, err := extSign(e, acceptAll)
			if err != nil || string(cert) != "cert-good" {
				t.Fatalf("got %q, %v; want cert-good", cert, err)
			}
			if bad.hits.Load() != 1 || good.hits.Load() != 1 {
				t.Errorf("hits: bad %d, good %d; want 1 and 1", bad.hits.Load(), good.hits.Load())
			}
			wantMarked(t, clock, e.eps[0], true)
			wantMarked(t, clock, e.eps[1], false)

			clock = newExtTestClock()
			e = newTestExternal(t, clock, testkit.ExternalTimeout, extConf(bad.URL, trust))
			_, err = extSign(e, acceptAll)
			if !errors.Is(err, ErrDown) {
				t.Fatalf("only URL: got %v, want ErrDown", err)
			}
			if !strings.Contains(err.Error(), bad.URL+": "+tc.reason) {
				t.Errorf("only URL: %v does not say %q", err, bad.URL+": "+tc.reason)
			}
			wantMarked(t, clock, e.eps[0], true)
		})
	}
}

func TestRefusalFallsThrough(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	refusal := `{"success":false,"result":null,"errors":[{"code":2000,"message":"Invalid certificate request"}],"messages":[]}`
	refuse := startExtServer(t, trust, nil, nil, cfsslAnswer(http.StatusBadRequest, refusal))
	good := startExtServer(t, trust, nil, nil, cfsslCert("cert-good"))
	clock := newExtTestClock()

	// CFSSL answers 400 for its own failures too: the next CA is asked,
	// and the refusing one is not marked failing.
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(refuse.URL, trust), extConf(good.URL, trust))
	cert, err := extSign(e, acceptAll)
	if err != nil || string(cert) != "cert-good" {
		t.Fatalf("got %q, %v; want the second CA's certificate", cert, err)
	}
	wantMarked(t, clock, e.eps[0], false)

	// When every CA refuses, the refusal is the answer: no retry.
	refuse2 := startExtServer(t, trust, nil, nil, cfsslAnswer(http.StatusBadRequest, refusal))
	e = newTestExternal(t, clock, testkit.ExternalTimeout, extConf(refuse.URL, trust), extConf(refuse2.URL, trust))
	_, err = extSign(e, acceptAll)
	if !errors.Is(err, ErrRefused) || errors.Is(err, ErrDown) {
		t.Fatalf("got %v, want ErrRefused and not ErrDown", err)
	}
	for _, want := range []string{refuse.URL, refuse2.URL, "Invalid certificate request (code 2000)", "HTTP 400"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v does not say %q", err, want)
		}
	}

	// A refusal and a CA down: retried later (Unavailable).
	e = newTestExternal(t, clock, testkit.ExternalTimeout, extConf(refuse.URL, trust), extConf("https://"+deadAddr(t), trust))
	_, err = extSign(e, acceptAll)
	if !errors.Is(err, ErrDown) {
		t.Fatalf("got %v, want ErrDown", err)
	}
}

// TestHungCAWithinCallerDeadline: a CA that hangs is given its
// share of the caller's deadline, marked failing, and the next one asked,
// before the caller gives up.
func TestHungCAWithinCallerDeadline(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	hung := startExtServer(t, trust, nil, nil, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-t.Context().Done():
		}
	})
	good := startExtServer(t, trust, nil, nil, cfsslCert("cert-good"))
	clock := newExtTestClock()
	// The configured timeout (10s) is the caller's whole deadline.
	e := newTestExternal(t, clock, 10*time.Second, extConf(hung.URL, trust), extConf(good.URL, trust))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	cert, err := e.Sign(ctx, SignRequest{CSR: "csr"}, acceptAll)
	if err != nil || string(cert) != "cert-good" {
		t.Fatalf("got %q, %v; want the second CA's certificate within the caller's deadline", cert, err)
	}
	wantMarked(t, clock, e.eps[0], true)
}

func TestAcceptRefusesCertificate(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	bad := startExtServer(t, trust, nil, nil, cfsslCert("cert-bad"))
	good := startExtServer(t, trust, nil, nil, cfsslCert("cert-good"))
	accept := func(cert []byte) error {
		if string(cert) == "cert-bad" {
			return fmt.Errorf("%w: wrong issuer", ca.ErrExternalCA)
		}
		return nil
	}

	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(bad.URL, trust), extConf(good.URL, trust))
	cert, err := extSign(e, accept)
	if err != nil || string(cert) != "cert-good" {
		t.Fatalf("got %q, %v; want cert-good", cert, err)
	}
	if bad.hits.Load() != 1 || good.hits.Load() != 1 {
		t.Errorf("hits: bad %d, good %d; want 1 and 1", bad.hits.Load(), good.hits.Load())
	}
	wantMarked(t, clock, e.eps[0], true)
	wantMarked(t, clock, e.eps[1], false)

	// Every CA answers a certificate accept refuses: the error says why.
	clock = newExtTestClock()
	e = newTestExternal(t, clock, testkit.ExternalTimeout, extConf(bad.URL, trust))
	_, err = extSign(e, accept)
	if !errors.Is(err, ca.ErrExternalCA) || !strings.Contains(err.Error(), bad.URL+": ") || !strings.Contains(err.Error(), "wrong issuer") {
		t.Fatalf("got %v, want ca.ErrExternalCA naming %s", err, bad.URL)
	}
	wantMarked(t, clock, e.eps[0], true)
}

func TestUntrustedServerCertificate(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	other := newExtTestCA(t, "other")
	untrusted := startExtServer(t, other, nil, nil, cfsslCert("cert-untrusted"))
	good := startExtServer(t, trust, nil, nil, cfsslCert("cert-good"))

	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(untrusted.URL, trust), extConf(good.URL, trust))
	cert, err := extSign(e, acceptAll)
	if err != nil || string(cert) != "cert-good" {
		t.Fatalf("got %q, %v; want cert-good", cert, err)
	}
	wantMarked(t, clock, e.eps[0], true)

	e = newTestExternal(t, clock, testkit.ExternalTimeout, extConf(untrusted.URL, trust))
	_, err = extSign(e, acceptAll)
	if !errors.Is(err, ErrDown) || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("got %v, want ErrDown for an unknown authority", err)
	}
	if untrusted.hits.Load() != 0 {
		t.Errorf("the untrusted server got %d requests", untrusted.hits.Load())
	}

	// Trusting its CA is enough to talk to it.
	e = newTestExternal(t, clock, testkit.ExternalTimeout, extConf(untrusted.URL, other))
	if cert, err := extSign(e, acceptAll); err != nil || string(cert) != "cert-untrusted" {
		t.Fatalf("trusting its CA: got %q, %v", cert, err)
	}
}

func TestRefusesTLS11(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	old := startExtServer(t, trust, &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, nil, cfsslCert("cert-old"))

	// The server does speak TLS 1.1 to a client that accepts it.
	roots := x509.NewCertPool()
	roots.AddCert(trust.cert)
	conn, err := tls.Dial("tcp", old.Listener.Addr().String(), &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS10})
	if err != nil {
		t.Fatalf("TLS 1.1 handshake: %v", err)
	}
	if v := conn.ConnectionState().Version; v != tls.VersionTLS11 {
		t.Fatalf("negotiated %s, want TLS 1.1", tls.VersionName(v))
	}
	conn.Close()

	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(old.URL, trust))
	_, err = extSign(e, acceptAll)
	if !errors.Is(err, ErrDown) || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("got %v, want ErrDown for the protocol version", err)
	}
	if old.hits.Load() != 0 {
		t.Errorf("the TLS 1.1 server got %d requests", old.hits.Load())
	}
	wantMarked(t, clock, e.eps[0], true)
}

func TestOversizedAnswer(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	huge := startExtServer(t, trust, nil, nil, cfsslCert(strings.Repeat("A", 2*maxResponse)))
	good := startExtServer(t, trust, nil, nil, cfsslCert("cert-good"))

	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(huge.URL, trust))
	_, err := extSign(e, acceptAll)
	if !errors.Is(err, ErrDown) || !strings.Contains(err.Error(), "not a CFSSL answer") {
		t.Fatalf("got %v, want ErrDown for a truncated answer", err)
	}
	if len(err.Error()) > 4096 {
		t.Errorf("the error holds %d bytes of the answer", len(err.Error()))
	}
	wantMarked(t, clock, e.eps[0], true)

	e = newTestExternal(t, clock, testkit.ExternalTimeout, extConf(huge.URL, trust), extConf(good.URL, trust))
	if cert, err := extSign(e, acceptAll); err != nil || string(cert) != "cert-good" {
		t.Fatalf("got %q, %v; want cert-good", cert, err)
	}
}

func TestNewRefuses(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"empty list", Config{}},
		{"http URL", Config{Endpoints: []Endpoint{{URL: "http://127.0.0.1:8888"}}}},
		{"no host", Config{Endpoints: []Endpoint{{URL: "https://"}}}},
		{"cacert without a certificate", Config{Endpoints: []Endpoint{{URL: "https://127.0.0.1:8888", RootCAs: []byte("not PEM at all")}}}},
		{"cacert with a key", Config{Endpoints: []Endpoint{{URL: "https://127.0.0.1:8888", RootCAs: keyPEM}}}},
		{"second one bad", Config{Endpoints: []Endpoint{extConf("https://127.0.0.1:8888", trust), {URL: "ftp://127.0.0.1"}}}},
		{"negative timeout", Config{Endpoints: []Endpoint{extConf("https://127.0.0.1:8888", trust)}, Timeout: -time.Second}},
		{"negative skip", Config{Endpoints: []Endpoint{extConf("https://127.0.0.1:8888", trust)}, Skip: -time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); !errors.Is(err, ErrConfig) {
				t.Errorf("Validate() = %v, want ErrConfig", err)
			}
			c, err := New(tc.cfg)
			if err == nil {
				c.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("New() = %v, want ErrConfig", err)
			}
		})
	}
	// Without cacert, the system's roots are used.
	c, err := New(Config{Endpoints: []Endpoint{{URL: "https://127.0.0.1:8888"}}})
	if err != nil {
		t.Fatalf("without cacert: %v", err)
	}
	c.Close()
}

func TestContextCancelledBeforeCall(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	a := startExtServer(t, trust, nil, nil, cfsslCert("cert-a"))
	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(a.URL, trust))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	_, err := e.Sign(ctx, SignRequest{CSR: "CSR"}, acceptAll)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > testkit.ExternalBound/3 {
		t.Errorf("took %v", took)
	}
	if a.hits.Load() != 0 {
		t.Errorf("the server got %d requests", a.hits.Load())
	}
	wantMarked(t, clock, e.eps[0], false)
}

// TestCallerGivesUp: the caller's context ending during a request
// says nothing about the external CA, which must not be marked failing,
// and the call must return the context's error.
func TestCallerGivesUp(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	entered := make(chan struct{}, 4)
	stop := make(chan struct{})
	slow := startExtServer(t, trust, nil, nil, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	})
	t.Cleanup(func() { close(stop) })

	t.Run("cancelled", func(t *testing.T) {
		clock := newExtTestClock()
		e := newTestExternal(t, clock, 10*time.Second, extConf(slow.URL, trust))
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-entered
			cancel()
		}()
		_, err := e.Sign(ctx, SignRequest{CSR: "CSR"}, acceptAll)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want context.Canceled", err)
		}
		wantMarked(t, clock, e.eps[0], false)
	})
	t.Run("deadline", func(t *testing.T) {
		clock := newExtTestClock()
		e := newTestExternal(t, clock, 10*time.Second, extConf(slow.URL, trust))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := e.Sign(ctx, SignRequest{CSR: "CSR"}, acceptAll)
		if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "no answer within 10s") {
			t.Errorf("got %v, want context.DeadlineExceeded", err)
		}
		wantMarked(t, clock, e.eps[0], false)
	})
}

func TestSignRequestBody(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	type captured struct {
		method, path, contentType string
		body                      []byte
	}
	got := make(chan captured, 4)
	srv := startExtServer(t, trust, nil, nil, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- captured{r.Method, r.URL.Path, r.Header.Get("Content-Type"), b}
		cfsslCert("cert")(w, r)
	})
	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(srv.URL, trust))
	ctx := context.Background()

	// An admin certificate: no hosts, a subject, the default profile.
	csr := "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
	if _, err := e.Sign(ctx, SignRequest{
		CSR:     csr,
		Subject: &Subject{CN: "node-1", Names: []Name{{O: "cluster-1", OU: "admin"}}},
	}, acceptAll); err != nil {
		t.Fatal(err)
	}
	c := <-got
	if c.method != http.MethodPost || c.path != signPath || c.contentType != "application/json" {
		t.Errorf("request %s %s (%s), want POST %s (application/json)", c.method, c.path, c.contentType, signPath)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(c.body, &raw); err != nil {
		t.Fatalf("body %s: %v", c.body, err)
	}
	if string(raw["hosts"]) != "[]" {
		t.Errorf("hosts = %s, want [] (body %s)", raw["hosts"], c.body)
	}
	if _, ok := raw["profile"]; ok {
		t.Errorf("profile sent for the default one: %s", c.body)
	}
	var body struct {
		Request string `json:"certificate_request"`
		Subject struct {
			CN    string              `json:"CN"`
			Names []map[string]string `json:"names"`
		} `json:"subject"`
	}
	if err := json.Unmarshal(c.body, &body); err != nil {
		t.Fatal(err)
	}
	if body.Request != csr {
		t.Errorf("certificate_request = %q, want %q", body.Request, csr)
	}
	if body.Subject.CN != "node-1" || len(body.Subject.Names) != 1 ||
		body.Subject.Names[0]["O"] != "cluster-1" || body.Subject.Names[0]["OU"] != "admin" {
		t.Errorf("subject = %+v (body %s)", body.Subject, c.body)
	}

	// A node certificate through a profile, with hosts.
	if _, err := e.Sign(ctx, SignRequest{
		CSR:     csr,
		Hosts:   []string{"worker", "node-2"},
		Subject: &Subject{CN: "node-2"},
		Profile: crossSignProfile,
	}, acceptAll); err != nil {
		t.Fatal(err)
	}
	c = <-got
	var full map[string]any
	if err := json.Unmarshal(c.body, &full); err != nil {
		t.Fatal(err)
	}
	if h, _ := json.Marshal(full["hosts"]); string(h) != `["worker","node-2"]` {
		t.Errorf("hosts = %s", h)
	}
	if full["profile"] != crossSignProfile {
		t.Errorf("profile = %v, want %q", full["profile"], crossSignProfile)
	}
	if s, _ := json.Marshal(full["subject"]); string(s) != `{"CN":"node-2"}` {
		t.Errorf("subject = %s, want no names", s)
	}

	// No subject: none sent.
	if _, err := e.Sign(ctx, SignRequest{CSR: csr}, acceptAll); err != nil {
		t.Fatal(err)
	}
	c = <-got
	raw = nil
	if err := json.Unmarshal(c.body, &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw["subject"]; ok {
		t.Errorf("subject sent: %s", c.body)
	}

	// info asks the info path.
	if _, err := e.Info(ctx, acceptAll); err != nil {
		t.Fatal(err)
	}
	c = <-got
	if c.method != http.MethodPost || c.path != infoPath {
		t.Errorf("info: %s %s, want POST %s", c.method, c.path, infoPath)
	}
	if string(c.body) != `{"label":"","profile":""}` {
		t.Errorf("info body %s", c.body)
	}
}

// clientCert issues a client certificate (clientAuth) named cn.
func (c *extTestCA) clientCert(t *testing.T, cn string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// cfsslInvalidToken is CFSSL's answer to an authsign request whose token
// does not verify.
const cfsslInvalidToken = `{"success":false,"result":null,"errors":[{"code":400,"message":"invalid token"}],"messages":[]}`

// TestAuthSign: a CA with an auth key gets every sign request (a
// node's, and the cross-signing through the CA profile) at authsign, in
// CFSSL's authenticated envelope whose token is the HMAC-SHA256 of the
// request's bytes under the key, as CFSSL's standard provider checks it;
// info stays unauthenticated; a CA of the list without a key still gets
// plain sign requests. A wrong key is a refusal that names the CA and
// shows no key.
func TestAuthSign(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	key := []byte("0123456789abcdef0123456789abcdef")
	type seen struct {
		path string
		body []byte
	}
	got := make(chan seen, 8)
	srv := startExtServer(t, trust, nil, nil, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.URL.Path, b}
		if r.URL.Path != authSignPath {
			cfsslCert("cert-plain")(w, r)
			return
		}
		// What CFSSL's AuthHandler does.
		var ar struct {
			Token   []byte `json:"token"`
			Request []byte `json:"request"`
		}
		if err := json.Unmarshal(b, &ar); err != nil {
			cfsslAnswer(http.StatusBadRequest, `{"success":false,"errors":[{"code":400,"message":"bad envelope"}]}`)(w, r)
			return
		}
		mac := hmac.New(sha256.New, key)
		mac.Write(ar.Request)
		if !hmac.Equal(mac.Sum(nil), ar.Token) {
			cfsslAnswer(http.StatusBadRequest, cfsslInvalidToken)(w, r)
			return
		}
		cfsslCert("cert-auth")(w, r)
	})
	keyed := extConf(srv.URL, trust)
	keyed.AuthKey = key
	clock := newExtTestClock()
	e := newTestExternal(t, clock, testkit.ExternalTimeout, keyed)
	ctx := t.Context()

	for _, req := range []SignRequest{
		{CSR: "CSR-node", Hosts: []string{"worker", "node-1"}, Subject: &Subject{CN: "node-1", Names: []Name{{O: "cluster-1", OU: "worker"}}}},
		{CSR: "CSR-root", Hosts: []string{}, Profile: crossSignProfile},
	} {
		cert, err := e.Sign(ctx, req, acceptAll)
		if err != nil || string(cert) != "cert-auth" {
			t.Fatalf("sign(%s) = %q, %v; want cert-auth", req.CSR, cert, err)
		}
		c := <-got
		if c.path != authSignPath {
			t.Errorf("sign(%s) went to %s, want %s", req.CSR, c.path, authSignPath)
		}
		var env map[string]json.RawMessage
		if err := json.Unmarshal(c.body, &env); err != nil {
			t.Fatal(err)
		}
		var inner []byte
		if err := json.Unmarshal(env["request"], &inner); err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(req)
		if string(inner) != string(want) {
			t.Errorf("authenticated request = %s, want the sign request %s", inner, want)
		}
		if len(env) != 2 {
			t.Errorf("envelope %s, want token and request only", c.body)
		}
		if strings.Contains(string(c.body), string(key)) || strings.Contains(string(c.body), hex.EncodeToString(key)) {
			t.Errorf("the envelope carries the key: %s", c.body)
		}
	}

	if _, err := e.Info(ctx, acceptAll); err != nil {
		t.Fatal(err)
	}
	if c := <-got; c.path != infoPath || string(c.body) != `{"label":"","profile":""}` {
		t.Errorf("info: %s %s, want %s unauthenticated", c.path, c.body, infoPath)
	}

	// A CA of the list without a key: plain sign.
	plain := newTestExternal(t, clock, testkit.ExternalTimeout, extConf(srv.URL, trust))
	if cert, err := extSign(plain, acceptAll); err != nil || string(cert) != "cert-plain" {
		t.Fatalf("sign without a key = %q, %v; want cert-plain", cert, err)
	}
	if c := <-got; c.path != signPath {
		t.Errorf("sign without a key went to %s, want %s", c.path, signPath)
	}

	// A wrong key.
	wrongKey := []byte("fedcba9876543210fedcba9876543210")
	wrong := extConf(srv.URL, trust)
	wrong.AuthKey = wrongKey
	e = newTestExternal(t, clock, testkit.ExternalTimeout, wrong)
	_, err := extSign(e, acceptAll)
	<-got
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), "invalid token") {
		t.Fatalf("sign with a wrong key = %v, want a refusal naming %s and saying invalid token", err, srv.URL)
	}
	for _, k := range [][]byte{key, wrongKey} {
		if strings.Contains(err.Error(), string(k)) || strings.Contains(err.Error(), hex.EncodeToString(k)) {
			t.Errorf("the error shows a key: %v", err)
		}
	}
	wantMarked(t, clock, e.eps[0], false)
}

// TestClientCertificate: a CA that asks for a client certificate
// (mutual TLS, as `cfssl serve -mutual-tls-ca`) is shown the one cert
// returns at each new connection, so a renewal is followed. Without one
// (a first manager at init) the call is refused with a message that says
// why and what to do; a certificate the CA does not trust fails the call
// with a message that says what to fix on the CA. Both under TLS 1.2 and
// 1.3 (whose verdict comes after the handshake), over HTTP/1.1 and HTTP/2
// (which may lose that verdict behind "could not be established"). A CA
// that asks for no certificate gets none.
func TestClientCertificate(t *testing.T) {
	trust := newExtTestCA(t, "trusted")
	clients := newExtTestCA(t, "cluster root")
	pool := x509.NewCertPool()
	pool.AddCert(clients.cert)
	m1, m2 := clients.clientCert(t, "manager-1"), clients.clientCert(t, "manager-1 renewed")
	stranger := newExtTestCA(t, "other root").clientCert(t, "stranger")

	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, h2 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, HTTP/2 %t", tls.VersionName(version), h2), func(t *testing.T) {
				type seen struct {
					client string
					proto  int
				}
				peer := make(chan seen, 4)
				var hits atomic.Int32
				srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					hits.Add(1)
					peer <- seen{r.TLS.PeerCertificates[0].Subject.CommonName, r.ProtoMajor}
					cfsslCert("cert")(w, r)
				}))
				srv.EnableHTTP2 = h2
				srv.TLS = &tls.Config{
					Certificates: []tls.Certificate{trust.serverCert(t)},
					ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: pool, MaxVersion: version,
				}
				srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
				srv.StartTLS()
				t.Cleanup(srv.Close)
				var cur atomic.Pointer[tls.Certificate]
				e, err := New(Config{Endpoints: []Endpoint{extConf(srv.URL, trust)}, ClientCertificate: cur.Load, Timeout: testkit.ExternalTimeout, Skip: testkit.ExternalSkip, Now: newExtTestClock().Now})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(e.Close)

				for _, c := range []*tls.Certificate{m1, m2} {
					cur.Store(c)
					e.Close() // a new connection, a new handshake
					if _, err := extSign(e, acceptAll); err != nil {
						t.Fatalf("sign with a trusted client certificate = %v", err)
					}
					leaf, _ := x509.ParseCertificate(c.Certificate[0])
					got := <-peer
					if got.client != leaf.Subject.CommonName {
						t.Errorf("the CA saw client %q, want %q", got.client, leaf.Subject.CommonName)
					}
					if want := map[bool]int{false: 1, true: 2}[h2]; got.proto != want {
						t.Errorf("the request came over HTTP/%d, want HTTP/%d", got.proto, want)
					}
				}

				cur.Store(nil)
				e.Close()
				_, err = extSign(e, acceptAll)
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "requires a client certificate, which this manager does not have yet (init)") || !strings.Contains(err.Error(), "use authkey") {
					t.Errorf("sign without a client certificate = %v, want a refusal that says the manager has none yet and to use authkey", err)
				}

				cur.Store(stranger)
				e.Close()
				_, err = extSign(e, acceptAll)
				if !errors.Is(err, ErrDown) || !strings.Contains(err.Error(), "-mutual-tls-ca must trust the cluster's root") {
					t.Errorf("sign with an untrusted client certificate = %v, want ErrDown saying what the CA must trust", err)
				}
				if n := hits.Load(); n != 2 {
					t.Errorf("the CA served %d requests, want 2 (refused handshakes serve none)", n)
				}
			})
		}
	}

	t.Run("not asked", func(t *testing.T) {
		srv := startExtServer(t, trust, nil, nil, func(w http.ResponseWriter, r *http.Request) {
			if n := len(r.TLS.PeerCertificates); n != 0 {
				t.Errorf("a CA that asks for no client certificate got %d", n)
			}
			cfsslCert("cert")(w, r)
		})
		e, err := New(Config{Endpoints: []Endpoint{extConf(srv.URL, trust)}, ClientCertificate: func() *tls.Certificate { return m1 }, Timeout: testkit.ExternalTimeout, Skip: testkit.ExternalSkip})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		if _, err := extSign(e, acceptAll); err != nil {
			t.Fatal(err)
		}
	})
}
