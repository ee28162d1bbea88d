package manager

// The client of the external CAs is package cfssl, tested there. These
// tests cover what manager adds: the cluster's list of CAs, and the gRPC
// codes the client's errors become.

import (
	"context"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/cfssl"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
)

// extTestCert returns the PEM of a CA certificate, for cacert.
func extTestCert(t *testing.T) []byte {
	t.Helper()
	m, err := ca.GenerateRoot(rand.Reader, time.Now(), "trusted")
	if err != nil {
		t.Fatal(err)
	}
	return m.Cert
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(toStatus(err)); got != want {
		t.Errorf("toStatus(%v) = %v, want %v", err, got, want)
	}
}

func TestNewExternalCARefuses(t *testing.T) {
	trusted := fsm.ExternalCA{Protocol: fsm.ProtocolCFSSL, URL: "https://127.0.0.1:8888", CACert: extTestCert(t)}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	for _, tc := range []struct {
		name string
		cas  []fsm.ExternalCA
	}{
		{"empty list", nil},
		{"http URL", []fsm.ExternalCA{{Protocol: fsm.ProtocolCFSSL, URL: "http://127.0.0.1:8888"}}},
		{"no host", []fsm.ExternalCA{{Protocol: fsm.ProtocolCFSSL, URL: "https://"}}},
		{"unknown protocol", []fsm.ExternalCA{{Protocol: "acme", URL: "https://127.0.0.1:8888"}}},
		{"no protocol", []fsm.ExternalCA{{URL: "https://127.0.0.1:8888"}}},
		{"cacert without a certificate", []fsm.ExternalCA{{Protocol: fsm.ProtocolCFSSL, URL: "https://127.0.0.1:8888", CACert: []byte("not PEM at all")}}},
		{"cacert with a key", []fsm.ExternalCA{{Protocol: fsm.ProtocolCFSSL, URL: "https://127.0.0.1:8888", CACert: keyPEM}}},
		{"second one bad", []fsm.ExternalCA{trusted, {Protocol: fsm.ProtocolCFSSL, URL: "ftp://127.0.0.1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := newExternalCA(tc.cas, nil, testkit.ExternalTimeout, testkit.ExternalSkip, time.Now, nil)
			if err == nil {
				e.close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, fsm.ErrBadCommand) {
				t.Errorf("got %v, want fsm.ErrBadCommand", err)
			}
			wantCode(t, err, codes.InvalidArgument)
		})
	}
	// Without cacert, the system's roots are used.
	e, err := newExternalCA([]fsm.ExternalCA{{Protocol: fsm.ProtocolCFSSL, URL: "https://127.0.0.1:8888"}}, nil, testkit.ExternalTimeout, testkit.ExternalSkip, time.Now, nil)
	if err != nil {
		t.Fatalf("without cacert: %v", err)
	}
	e.close()
}

// TestExternalSameAuthKey: a changed auth key makes a new client.
func TestExternalSameAuthKey(t *testing.T) {
	a := fsm.ExternalCA{Protocol: fsm.ProtocolCFSSL, URL: "https://127.0.0.1:8888", CACert: extTestCert(t)}
	a.AuthKey = []byte("0123456789abcdef")
	e, err := newExternalCA([]fsm.ExternalCA{a}, nil, testkit.ExternalTimeout, testkit.ExternalSkip, time.Now, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	b := a
	b.AuthKey = []byte("0123456789abcdeF")
	none := a
	none.AuthKey = nil
	if !e.same([]fsm.ExternalCA{a}) {
		t.Errorf("same(the same key) = false, want true")
	}
	if e.same([]fsm.ExternalCA{b}) || e.same([]fsm.ExternalCA{none}) {
		t.Errorf("same(another key or none) = true, want false")
	}
}

// TestExternalToAPIHidesAuthKey: answers say an auth key is set, never
// which.
func TestExternalToAPIHidesAuthKey(t *testing.T) {
	key := []byte("0123456789abcdef")
	out := externalToAPI([]fsm.ExternalCA{
		{Protocol: fsm.ProtocolCFSSL, URL: "https://a.example", AuthKey: key},
		{Protocol: fsm.ProtocolCFSSL, URL: "https://b.example"},
	})
	if got := string(out[0].GetAuthKey()); got != authKeySet {
		t.Errorf("externalToAPI(with a key).AuthKey = %q, want %q", got, authKeySet)
	}
	if got := out[1].GetAuthKey(); len(got) != 0 {
		t.Errorf("externalToAPI(without a key).AuthKey = %q, want none", got)
	}
	// Sent back, the placeholder is refused, not taken for a key.
	if err := fsm.CheckExternal(externalFromAPI(out)); !errors.Is(err, fsm.ErrBadCommand) {
		t.Errorf("CheckExternal(an answer sent back) = %v, want %v", err, fsm.ErrBadCommand)
	}
}

// extFake serves h over HTTPS on 127.0.0.1 until the test ends, and returns
// the external CA it is.
func extFake(t *testing.T, h http.HandlerFunc) fsm.ExternalCA {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return fsm.ExternalCA{Protocol: fsm.ProtocolCFSSL, URL: srv.URL, CACert: cert}
}

// extDropping returns an external CA that closes every connection at once:
// it never answers. (A listener of its own, held until the test ends: no
// port is probed free and reused.)
func extDropping(t *testing.T) fsm.ExternalCA {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	})
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return fsm.ExternalCA{Protocol: fsm.ProtocolCFSSL, URL: "https://" + l.Addr().String(), CACert: extTestCert(t)}
}

// extAnswer answers body with code.
func extAnswer(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

// TestExternalErrorStatus: what the external CA client returns becomes the
// gRPC code a caller acts on: Unavailable with ReasonExternalCADown (retry)
// when some CA did not answer, FailedPrecondition (do not retry) when every
// CA answered and none would do, the context's code when the caller gave
// up. The errors come from the real client, against fake CAs.
func TestExternalErrorStatus(t *testing.T) {
	const (
		refusal      = `{"success":false,"result":null,"errors":[{"code":2000,"message":"Invalid certificate request"}],"messages":[]}`
		invalidToken = `{"success":false,"result":null,"errors":[{"code":400,"message":"invalid token"}],"messages":[]}`
		certificate  = `{"success":true,"result":{"certificate":"cert-bad"},"errors":[],"messages":[]}`
	)
	slow := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-t.Context().Done():
		}
	}
	keyed := extFake(t, extAnswer(http.StatusBadRequest, invalidToken))
	keyed.AuthKey = []byte("fedcba9876543210fedcba9876543210")
	refusing := extFake(t, extAnswer(http.StatusBadRequest, refusal))
	notTaken := func([]byte) error { return fmt.Errorf("%w: wrong issuer", ca.ErrExternalCA) }
	acceptAll := func([]byte) error { return nil }
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()

	for _, tc := range []struct {
		name   string
		cas    []fsm.ExternalCA
		ctx    context.Context
		accept func([]byte) error
		code   codes.Code
		want   error
	}{
		{"all down", []fsm.ExternalCA{extDropping(t), extDropping(t)}, nil, nil, codes.Unavailable, cfssl.ErrDown},
		{"no answer in time", []fsm.ExternalCA{extFake(t, slow)}, nil, nil, codes.Unavailable, cfssl.ErrDown},
		{"html", []fsm.ExternalCA{extFake(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>It works!</body></html>")
		})}, nil, nil, codes.Unavailable, cfssl.ErrDown},
		{"404 html", []fsm.ExternalCA{extFake(t, http.NotFound)}, nil, nil, codes.Unavailable, cfssl.ErrDown},
		{"500 cfssl", []fsm.ExternalCA{extFake(t, extAnswer(http.StatusInternalServerError, `{"success":false,"result":null,"errors":[{"code":9000,"message":"database is down"}],"messages":[]}`))}, nil, nil, codes.Unavailable, cfssl.ErrDown},
		{"success without certificate", []fsm.ExternalCA{extFake(t, extAnswer(http.StatusOK, `{"success":true,"result":{},"errors":[],"messages":[]}`))}, nil, nil, codes.Unavailable, cfssl.ErrDown},
		{"400 without reasons", []fsm.ExternalCA{extFake(t, extAnswer(http.StatusBadRequest, `{"success":false,"result":null,"errors":[],"messages":[]}`))}, nil, nil, codes.Unavailable, cfssl.ErrDown},
		{"every CA refuses", []fsm.ExternalCA{refusing, extFake(t, extAnswer(http.StatusBadRequest, refusal))}, nil, nil, codes.FailedPrecondition, cfssl.ErrRefused},
		{"a refusal and a CA down", []fsm.ExternalCA{refusing, extDropping(t)}, nil, nil, codes.Unavailable, cfssl.ErrDown},
		{"wrong auth key", []fsm.ExternalCA{keyed}, nil, nil, codes.FailedPrecondition, cfssl.ErrRefused},
		{"certificate not taken", []fsm.ExternalCA{extFake(t, extAnswer(http.StatusOK, certificate))}, nil, notTaken, codes.FailedPrecondition, ca.ErrExternalCA},
		{"cancelled before the call", []fsm.ExternalCA{refusing}, cancelled, nil, codes.Canceled, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := newExternalCA(tc.cas, nil, 200*time.Millisecond, testkit.ExternalSkip, time.Now, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(e.close)
			ctx, accept := tc.ctx, tc.accept
			if ctx == nil {
				ctx = t.Context()
			}
			if accept == nil {
				accept = acceptAll
			}
			_, err = e.Sign(ctx, cfssl.SignRequest{CSR: "CSR"}, accept)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Sign() = %v, want %v", err, tc.want)
			}
			wantCode(t, err, tc.code)
			if down := api.IsExternalCADown(toStatus(err)); down != (tc.code == codes.Unavailable) {
				t.Errorf("api.IsExternalCADown(toStatus(%v)) = %t, want %t", err, down, !down)
			}
		})
	}
	// The message says so too, in the words api.ExternalCADown gives.
	if !strings.Contains(status.Convert(toStatus(fmt.Errorf("sign: %w", cfssl.ErrDown))).Message(), api.ExternalCADown) {
		t.Errorf("the message of cfssl.ErrDown does not say %q", api.ExternalCADown)
	}
}

// TestNoHTTPClient keeps the external CAs' HTTP behind package cfssl:
// manager does not import net/http.
func TestNoHTTPClient(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	out, err := exec.CommandContext(t.Context(), goCmd, "list", "-f", `{{join .Imports " "}}`, ".").Output()
	if err != nil {
		t.Fatalf("go list . = %v", err)
	}
	imports := strings.Fields(string(out))
	if !slices.Contains(imports, "github.com/quorumca/quorumca/cfssl") {
		t.Fatalf("go list . = %q, want manager's imports, cfssl among them", out)
	}
	for _, p := range imports {
		if p == "net/http" || strings.HasPrefix(p, "net/http/") {
			t.Errorf("manager imports %s; speak to external CAs through package cfssl", p)
		}
	}
}
