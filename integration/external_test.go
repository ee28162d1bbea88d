package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

// The external CA tests run clusters whose certificates the real CFSSL
// signs (`cfssl serve` over TLS, see cfssl_helpers_test.go), and fake CFSSL
// servers for what the real one never does: hang, or answer garbage.

// extCAs lists external CAs as the cluster state keeps them.
func extCAs(cs ...*cfsslCA) []fsm.ExternalCA {
	var out []fsm.ExternalCA
	for _, c := range cs {
		out = append(out, fsm.ExternalCA{Protocol: fsm.ProtocolCFSSL, URL: c.URL, CACert: c.TLSCA})
	}
	return out
}

// extAPI lists external CAs as the API takes them.
func extAPI(cas ...fsm.ExternalCA) []*api.ExternalCA {
	var out []*api.ExternalCA
	for _, e := range cas {
		out = append(out, &api.ExternalCA{Protocol: e.Protocol, Url: e.URL, CaCert: e.CACert, AuthKey: e.AuthKey})
	}
	return out
}

// extCluster starts managers managers and workers workers on the external
// CAs cas; certPEM is --ca-cert (nil: ask the CA).
func extCluster(t *testing.T, managers, workers int, certPEM []byte, cas ...fsm.ExternalCA) *clustertest.Cluster {
	t.Helper()
	return clustertest.New(t, clustertest.Options{
		Managers: managers, Workers: workers, Init: manager.InitOptions{External: cas, ExternalCert: certPEM},
	})
}

// extFirstCert parses the first certificate of a PEM bundle.
func extFirstCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificates(pemBytes)
	if err != nil {
		t.Fatalf("ParseCertificates() = %v", err)
	}
	return certs[0]
}

// extCheckNodes checks that every running node serves a certificate signed
// by issuer, naming its own identity, that verifies, with the chain it
// carries, under each of bundles with Go's verifier and with `openssl
// verify`.
func extCheckNodes(t *testing.T, rc *clustertest.Cluster, issuer *x509.Certificate, bundles ...[]byte) {
	t.Helper()
	creds := rc.NodeCreds()
	if len(creds) == 0 {
		t.Fatal("no running node")
	}
	for id, c := range creds {
		chain := chainOf(t, c)
		leaf := chain[0]
		if err := leaf.CheckSignatureFrom(issuer); err != nil {
			t.Errorf("node %s: certificate issued by %s, want %s: %v", id, leaf.Issuer, issuer.Subject, err)
			continue
		}
		got, err := ca.IdentityOf(leaf)
		if err != nil || got.NodeID != id || got.ClusterID != rc.ClusterID || len(leaf.Subject.Names) != 3 {
			t.Errorf("node %s: certificate names %s (%v), want CN=%s, its role, O=%s and nothing else", id, leaf.Subject, err, id, rc.ClusterID)
		}
		var chainPEM []byte
		for _, cert := range chain {
			chainPEM = append(chainPEM, ca.EncodeCertificates(cert)...)
		}
		for _, b := range bundles {
			if _, _, err := ca.VerifyPEM(chainPEM, b, time.Now()); err != nil {
				t.Errorf("node %s: chain does not verify under %s: %v", id, extFirstCert(t, b).Subject, err)
			}
			opensslVerifyChain(t, b, chain)
		}
	}
}

// opensslVerifyChain runs `openssl verify` on chain's leaf, with the rest of
// the chain as untrusted intermediates, under the roots of bundle.
func opensslVerifyChain(t *testing.T, bundle []byte, chain []*x509.Certificate) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl is not installed; scripts/test.sh installs it")
		}
		t.Skip("openssl is not installed")
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-purpose", "sslclient", "-CAfile", write("roots.pem", bundle)}
	if len(chain) > 1 {
		args = append(args, "-untrusted", write("chain.pem", ca.EncodeCertificates(chain[1:]...)))
	}
	leaf := write("leaf.pem", ca.EncodeCertificates(chain[0]))
	out, err := exec.Command(bin, append(args, leaf)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "leaf.pem: OK") {
		t.Errorf("openssl verify of %s under %s: %v\n%s", chain[0].Subject, extFirstCert(t, bundle).Subject, err, out)
	}
}

// extIntermediate returns a root and a CA certificate it signed, with the
// intermediate's key: CFSSL material that signs with an intermediate.
func extIntermediate(t *testing.T) ca.Material {
	t.Helper()
	root, err := ca.GenerateRoot(rand.Reader, time.Now(), "corp-root")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := ca.GenerateRoot(rand.Reader, time.Now(), "corp-issuing")
	if err != nil {
		t.Fatal(err)
	}
	rootCert := extFirstCert(t, root.Cert)
	rootKey, err := ca.ParseKey(root.Key)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := ca.CrossSign(rand.Reader, time.Now(), rootCert, rootKey, extFirstCert(t, sub.Cert))
	if err != nil {
		t.Fatal(err)
	}
	interPEM := ca.EncodeCertificates(inter)
	return ca.Material{Cert: interPEM, Key: sub.Key, Chain: interPEM, Bundle: root.Bundle}
}

// TestExternalCAInit: a cluster initialised on an external CA holds no
// key, and every manager and worker gets a certificate the CA signed with
// the cluster's CN/OU/O, verified by Go and by openssl.
func TestExternalCAInit(t *testing.T) {
	t.Run("root", func(t *testing.T) {
		cf := startCFSSL(t, cfsslOptions{})
		rc := extCluster(t, 3, 2, nil, extCAs(cf)...)
		if !bytes.Equal(rc.Bundle, cf.CA.Bundle) {
			t.Errorf("cluster bundle is not the external CA's root")
		}
		for _, mg := range rc.RunningManagers() {
			st := mg.Manager().State()
			if st.Signs() || len(st.CA.Key) > 0 {
				t.Errorf("manager %s holds a CA key; an external CA cluster must not", mg.Name)
			}
			if len(st.External) != 1 || st.External[0].URL != cf.URL {
				t.Errorf("manager %s: external CAs %+v, want %s", mg.Name, st.External, cf.URL)
			}
		}
		resp, err := rc.GetCA()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetExternalCa()) != 1 || resp.GetExternalCa()[0].GetUrl() != cf.URL {
			t.Errorf("GetCA().ExternalCa = %v, want %s", resp.GetExternalCa(), cf.URL)
		}
		extCheckNodes(t, rc, extFirstCert(t, cf.CA.Cert), rc.Bundle)
	})
	t.Run("intermediate", func(t *testing.T) {
		m := extIntermediate(t)
		cf := startCFSSL(t, cfsslOptions{CA: m})
		// Asked, the CA answers its intermediate: the root cannot be
		// guessed, and Init says to give the chain.
		cfg := clustertest.Config(t, "bad")
		cfg.Init = &manager.InitOptions{External: extCAs(cf)}
		n, err := node.Start(t.Context(), cfg)
		if err == nil {
			n.Stop()
		}
		if err == nil || !strings.Contains(err.Error(), "--ca-cert") {
			t.Fatalf("node.Start(init on an external CA with an intermediate, no --ca-cert) = %v, want an error that asks for --ca-cert", err)
		}
		if entries, _ := os.ReadDir(cfg.DataDir); len(entries) > 0 {
			t.Errorf("a failed Init left %d entries in the data dir", len(entries))
		}
		chain := append(append([]byte(nil), m.Cert...), m.Bundle...)
		rc := extCluster(t, 1, 2, chain, extCAs(cf)...)
		if !bytes.Equal(rc.Bundle, m.Bundle) {
			t.Errorf("cluster bundle is not the corporate root")
		}
		extCheckNodes(t, rc, extFirstCert(t, m.Cert), m.Bundle)
	})
}

// TestExternalCARotations: internal → external (the cluster's key
// cross-signs), external → external (the old CFSSL cross-signs through its
// "CA" profile, given the new root's key; refused clearly without it), and
// external → internal. Each completes; every node ends on the new CA, and
// the certificates issued during a rotation verify under the old root and
// the new one, with openssl too.
func TestExternalCARotations(t *testing.T) {
	rc := clustertest.New(t, clustertest.Options{Managers: 3, Workers: 2})
	rotateTo := func(req *api.RotateCARequest) (oldBundle, newBundle []byte) {
		t.Helper()
		oldBundle = rc.RunningManagers()[0].Manager().State().CA.Bundle
		resp, err := rc.TryRotate(req)
		if err != nil {
			t.Fatalf("RotateCA() = %v", err)
		}
		done := rc.WaitRotation(resp.GetRotation().GetNewRootFingerprint(), true)
		return oldBundle, done.GetBundle()
	}
	checkState := func(wantSigns bool, want []fsm.ExternalCA) {
		t.Helper()
		for _, mg := range rc.RunningManagers() {
			st := mg.Manager().State()
			if st.Signs() != wantSigns {
				t.Errorf("manager %s: Signs() = %v, want %v", mg.Name, st.Signs(), wantSigns)
			}
			if len(st.External) != len(want) || (len(want) > 0 && st.External[0].URL != want[0].URL) {
				t.Errorf("manager %s: external CAs %+v, want %+v", mg.Name, st.External, want)
			}
		}
	}

	t.Log("internal → external A")
	cfA := startCFSSL(t, cfsslOptions{CA: extRoot(t, "external-a")})
	old, now := rotateTo(&api.RotateCARequest{ExternalCa: extAPI(extCAs(cfA)...)})
	if !bytes.Equal(now, cfA.CA.Bundle) {
		t.Fatalf("bundle after rotating to A is not A's root")
	}
	checkState(false, extCAs(cfA))
	extCheckNodes(t, rc, extFirstCert(t, cfA.CA.Cert), now, old)

	t.Log("external A → external B, without B's root key: refused")
	cfB := startCFSSL(t, cfsslOptions{CA: extRoot(t, "external-b")})
	_, err := rc.TryRotate(&api.RotateCARequest{ExternalCa: extAPI(extCAs(cfB)...)})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--ca-key") {
		t.Fatalf("RotateCA(external → external, no key) = %v, want FailedPrecondition naming --ca-key", err)
	}
	if st := rc.RunningManagers()[0].Manager().State(); st.Rotation != nil {
		t.Fatalf("a refused rotation started anyway")
	}

	t.Log("external A → external B, with B's root key")
	old, now = rotateTo(&api.RotateCARequest{ExternalCa: extAPI(extCAs(cfB)...), CaKey: cfB.CA.Key})
	if !bytes.Equal(now, cfB.CA.Bundle) {
		t.Fatalf("bundle after rotating to B is not B's root")
	}
	checkState(false, extCAs(cfB))
	extCheckNodes(t, rc, extFirstCert(t, cfB.CA.Cert), now, old)

	t.Log("external B → internal (generated root)")
	old, now = rotateTo(&api.RotateCARequest{})
	checkState(true, nil)
	st := rc.RunningManagers()[0].Manager().State()
	if !bytes.Equal(st.CA.Bundle, now) || bytes.Equal(now, old) {
		t.Fatalf("bundle after rotating to a generated root is not the state's new root")
	}
	extCheckNodes(t, rc, extFirstCert(t, st.CA.Cert), now, old)
}

// extRoot generates a root whose subject names org.
func extRoot(t *testing.T, org string) ca.Material {
	t.Helper()
	m, err := ca.GenerateRoot(rand.Reader, time.Now(), org)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestExternalCACannotCrossSign: when the old external CA cannot make a
// cross-signed root that every verifier accepts, the rotation is refused
// with a message that says why; nothing starts.
func TestExternalCACannotCrossSign(t *testing.T) {
	t.Run("no CA profile", func(t *testing.T) {
		cf := startCFSSL(t, cfsslOptions{NoCAProfile: true})
		rc := extCluster(t, 1, 0, nil, extCAs(cf)...)
		_, err := rc.TryRotate(&api.RotateCARequest{})
		if err == nil || !strings.Contains(err.Error(), manager.CrossSignProfile) {
			t.Fatalf("RotateCA(external without CA profile → internal) = %v, want a refusal naming the %q profile", err, manager.CrossSignProfile)
		}
		if st := rc.Managers[0].Manager().State(); st.Rotation != nil || st.Signs() {
			t.Fatalf("a refused rotation changed the state")
		}
	})
	t.Run("same subject", func(t *testing.T) {
		cf := startCFSSL(t, cfsslOptions{CA: extRoot(t, "same-name")})
		rc := extCluster(t, 1, 0, nil, extCAs(cf)...)
		next := startCFSSL(t, cfsslOptions{CA: extRoot(t, "same-name")})
		_, err := rc.TryRotate(&api.RotateCARequest{ExternalCa: extAPI(extCAs(next)...), CaKey: next.CA.Key})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "same subject") {
			t.Fatalf("RotateCA(external → external of the same subject) = %v, want FailedPrecondition naming the same subject", err)
		}
		if st := rc.Managers[0].Manager().State(); st.Rotation != nil || st.External[0].URL != cf.URL {
			t.Fatalf("a refused rotation changed the state")
		}
	})
}

// joinLog is a slog handler that signals when a message containing want is
// logged.
type joinLog struct {
	want string
	seen chan struct{}
}

func (h *joinLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *joinLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.want) {
		select {
		case h.seen <- struct{}{}:
		default:
		}
	}
	return nil
}
func (h *joinLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *joinLog) WithGroup(string) slog.Handler      { return h }

// extTryJoin joins a worker with timeout; it returns the error and checks
// that a failed join left the data dir empty.
func extTryJoin(t *testing.T, rc *clustertest.Cluster, timeout time.Duration, log *slog.Logger) error {
	t.Helper()
	if log == nil {
		log = testkit.Logger()
	}
	dir := t.TempDir()
	_, err := agent.Join(t.Context(), agent.JoinConfig{
		DataDir: dir, Token: rc.WorkerToken, Remote: rc.Via(), Timeout: timeout, Logger: log,
	})
	if err != nil {
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			t.Errorf("a failed join left %d entries in its data dir", len(entries))
		}
	}
	return err
}

// extFakeCA is a CFSSL in front of the real one cf: /info answers cf's
// certificate and /sign forwards to cf, until broken is set; then /sign
// does what sign says, and counts the requests. (The cluster checks a CA
// before it takes it: it must work when it is added.)
func extFakeCA(t *testing.T, cf *cfsslCA, sign http.HandlerFunc) (ext fsm.ExternalCA, signs *atomic.Int64, broken *atomic.Bool) {
	t.Helper()
	signs, broken = new(atomic.Int64), new(atomic.Bool)
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/cfssl/info", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"success": true, "result": map[string]any{"certificate": string(cf.CA.Cert)}})
	})
	mux.HandleFunc("/api/v1/cfssl/sign", func(w http.ResponseWriter, r *http.Request) {
		if broken.Load() {
			signs.Add(1)
			sign(w, r)
			return
		}
		resp, err := cf.HTTPClient().Post(cf.URL+r.URL.Path, "application/json", r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
	url, caFile := startFakeCA(t, mux)
	tlsCA, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	return fsm.ExternalCA{Protocol: fsm.ProtocolCFSSL, URL: url, CACert: tlsCA}, signs, broken
}

// extUpdate replaces the cluster's external CAs.
func extUpdate(t *testing.T, rc *clustertest.Cluster, cas ...fsm.ExternalCA) error {
	t.Helper()
	_, err := rc.Ctl().Update(testkit.Ctx(t), &api.UpdateRequest{ExternalCa: extAPI(cas...)})
	return err
}

// TestExternalCAUnavailable: with the external CA down, slow or answering
// garbage, joins fail with an error that names the CA and the reason, and
// nothing is stored; a join waiting on a CA that comes back succeeds; a
// failing CA is passed over for a fallback, and not asked first again for
// a while.
func TestExternalCAUnavailable(t *testing.T) {
	cf := startCFSSL(t, cfsslOptions{})
	rc := extCluster(t, 1, 0, nil, extCAs(cf)...)
	nodes := func() int { return rc.Managers[0].Manager().State().Nodes.Len() }
	before := nodes()

	t.Run("down", func(t *testing.T) {
		cf.Stop(t)
		err := extTryJoin(t, rc, 3*time.Second, nil)
		if err == nil || !strings.Contains(err.Error(), api.ExternalCADown) || !strings.Contains(err.Error(), cf.URL) {
			t.Fatalf("join with the external CA down = %v, want an error that says no external CA answered and names %s", err, cf.URL)
		}
		if got := nodes(); got != before {
			t.Fatalf("the cluster has %d nodes after a failed join, want %d", got, before)
		}
		// A join in progress retries, and succeeds once the CA is back.
		h := &joinLog{want: "retrying", seen: make(chan struct{}, 1)}
		joined := make(chan error, 1)
		go func() { joined <- extTryJoin(t, rc, testkit.Wait, slog.New(h)) }()
		select {
		case <-h.seen:
		case err := <-joined:
			t.Fatalf("join returned %v before retrying", err)
		case <-time.After(testkit.Wait):
			t.Fatal("the join did not retry")
		}
		cf.Start(t)
		if err := <-joined; err != nil {
			t.Fatalf("join after the external CA came back = %v", err)
		}
		if got := nodes(); got != before+1 {
			t.Fatalf("the cluster has %d nodes, want %d", got, before+1)
		}
		before = nodes()
		// The manager's metrics count the requests to the CA by result.
		fams := gathered(t, rc.Managers[0])
		url := strings.TrimSuffix(cf.URL, "/")
		down, _ := value(fams, "quorumca_external_ca_requests_total", map[string]string{"url": url, "result": "down"})
		ok, _ := value(fams, "quorumca_external_ca_requests_total", map[string]string{"url": url, "result": "ok"})
		if down < 1 || ok < 1 {
			t.Errorf("quorumca_external_ca_requests_total{url=%s}: down %v, ok %v; want both counted", url, down, ok)
		}
	})

	t.Run("slow, with a fallback", func(t *testing.T) {
		slow, signs, broken := extFakeCA(t, cf, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-t.Context().Done():
			}
		})
		if err := extUpdate(t, rc, slow, extCAs(cf)[0]); err != nil {
			t.Fatalf("Update(external CAs: slow, cfssl) = %v", err)
		}
		broken.Store(true)
		for i := range 2 {
			if err := extTryJoin(t, rc, testkit.Wait, nil); err != nil {
				t.Fatalf("join %d with a slow first CA and a working fallback = %v", i, err)
			}
		}
		// The second join went to the fallback first: the slow CA is
		// passed over for a while after it failed.
		if n := signs.Load(); n != 1 {
			t.Errorf("the slow CA got %d sign requests for 2 joins, want 1", n)
		}
		// A CA that hangs when it is added is refused.
		if err := extUpdate(t, rc, slow); err == nil || !strings.Contains(err.Error(), "no answer within") {
			t.Fatalf("Update(external CAs: slow) = %v, want a refusal saying it does not answer", err)
		}
		broken.Store(false)
		if err := extUpdate(t, rc, slow); err != nil {
			t.Fatalf("Update(external CAs: slow, answering for now) = %v", err)
		}
		broken.Store(true)
		before = nodes()
		err := extTryJoin(t, rc, 3*time.Second, nil)
		if err == nil || !strings.Contains(err.Error(), "no answer within") {
			t.Fatalf("join with only a slow CA = %v, want an error that says it did not answer in time", err)
		}
		if got := nodes(); got != before {
			t.Fatalf("the cluster has %d nodes after a failed join, want %d", got, before)
		}
	})

	other, err := ca.GenerateRoot(rand.Reader, time.Now(), "other")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		sign http.HandlerFunc
		want string
	}{
		{"garbage", func(w http.ResponseWriter, _ *http.Request) {
			w.Write([]byte("<html>502 Bad Gateway</html>"))
		}, "not a CFSSL answer"},
		{"success without a certificate", func(w http.ResponseWriter, _ *http.Request) {
			w.Write([]byte(`{"success":true,"result":{}}`))
		}, "without a certificate"},
		{"a certificate of another CA", func(w http.ResponseWriter, r *http.Request) {
			// A real certificate, for the right key, signed by a CA the
			// cluster does not trust.
			signer, err := ca.NewSigner(other)
			if err != nil {
				t.Error(err)
				return
			}
			var req struct {
				CSR     string `json:"certificate_request"`
				Subject struct {
					CN    string
					Names []struct{ O, OU string } `json:"names"`
				} `json:"subject"`
			}
			json.NewDecoder(r.Body).Decode(&req)
			id := ca.Identity{NodeID: req.Subject.CN, Role: ca.RoleWorker}
			if len(req.Subject.Names) > 0 {
				id.ClusterID, id.Role = req.Subject.Names[0].O, ca.Role(req.Subject.Names[0].OU)
			}
			iss, err := signer.Sign(rand.Reader, time.Now(), []byte(req.CSR), id, time.Hour*24)
			if err != nil {
				t.Error(err)
				return
			}
			json.NewEncoder(w).Encode(map[string]any{"success": true, "result": map[string]any{"certificate": string(iss.PEM)}})
		}, "not by the cluster's CA"},
		{"a refusal", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"success":false,"result":null,"errors":[{"code":5300,"message":"Policy violation request"}],"messages":[]}`))
		}, "Policy violation request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake, signs, broken := extFakeCA(t, cf, tc.sign)
			broken.Store(true)
			// The cluster checks a CA before it takes it...
			if err := extUpdate(t, rc, fake); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Update(external CAs: %s) = %v, want a refusal containing %q", tc.name, err, tc.want)
			}
			// ... but a CA can go wrong later.
			broken.Store(false)
			if err := extUpdate(t, rc, fake); err != nil {
				t.Fatalf("Update(external CAs: fake, working for now) = %v", err)
			}
			broken.Store(true)
			signs.Store(0)
			before := nodes()
			err := extTryJoin(t, rc, 3*time.Second, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("join = %v, want an error containing %q", err, tc.want)
			}
			if signs.Load() == 0 {
				t.Fatalf("the fake CA got no sign request")
			}
			if got := nodes(); got != before {
				t.Fatalf("the cluster has %d nodes after a failed join, want %d", got, before)
			}
		})
	}

	// Back on the real CA, joins work again.
	if err := extUpdate(t, rc, extCAs(cf)...); err != nil {
		t.Fatal(err)
	}
	if err := extTryJoin(t, rc, testkit.Wait, nil); err != nil {
		t.Fatalf("join back on the real CA = %v", err)
	}
}

// TestExternalCAUpdateRefusals: update --external-ca is refused on a
// cluster that holds its key, and for a CA that signs with another
// certificate or does not answer; the external CAs stay as they were.
func TestExternalCAUpdateRefusals(t *testing.T) {
	internal := clustertest.New(t, clustertest.Options{Managers: 1})
	cf := startCFSSL(t, cfsslOptions{})
	if err := extUpdate(t, internal, extCAs(cf)...); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "rotate") {
		t.Errorf("Update(external CA) on a self-signing cluster = %v, want InvalidArgument that says to rotate", err)
	}

	rc := extCluster(t, 1, 0, nil, extCAs(cf)...)
	otherCA := startCFSSL(t, cfsslOptions{})
	if err := extUpdate(t, rc, extCAs(otherCA)...); err == nil || !strings.Contains(err.Error(), "not with the cluster's CA") {
		t.Errorf("Update(external CA of another CA) = %v, want a refusal", err)
	}
	down := startCFSSL(t, cfsslOptions{CA: cf.CA})
	down.Stop(t)
	if err := extUpdate(t, rc, extCAs(down)...); err == nil || !strings.Contains(err.Error(), down.URL) {
		t.Errorf("Update(external CA that is down) = %v, want a refusal naming %s", err, down.URL)
	}
	if st := rc.Managers[0].Manager().State(); len(st.External) != 1 || st.External[0].URL != cf.URL {
		t.Errorf("external CAs after refused updates = %+v, want only %s", st.External, cf.URL)
	}
	// A second CFSSL with the same key is a valid fallback.
	twin := startCFSSL(t, cfsslOptions{CA: cf.CA})
	if err := extUpdate(t, rc, extCAs(cf, twin)...); err != nil {
		t.Fatalf("Update(external CAs: cfssl, its twin) = %v", err)
	}
	cf.Stop(t)
	if err := extTryJoin(t, rc, testkit.Wait, nil); err != nil {
		t.Fatalf("join with the first CA down and its twin up = %v", err)
	}
}

// TestExternalCAForgedCSR: the external CA signs the identity the cluster
// decides, whatever a CSR asks; a CSR that asks for subject attributes
// CFSSL would copy through is refused before it reaches the CA.
func TestExternalCAForgedCSR(t *testing.T) {
	cf := startCFSSL(t, cfsslOptions{})
	rc := extCluster(t, 1, 0, nil, extCAs(cf)...)
	roots, _, err := ca.ParseBundle(rc.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(rc.Via(), grpc.WithTransportCredentials(credentials.NewTLS(agent.BundleClientTLS(roots, agent.ManagerName))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	issue := func(subject pkix.Name) (*api.IssueNodeCertificateResponse, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject, DNSNames: []string{"evil.example"}}, key)
		if err != nil {
			t.Fatal(err)
		}
		ctx := testkit.Ctx(t)
		req := joinRequest(t, conn, rc.WorkerToken, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		return api.NewCAClient(conn).IssueNodeCertificate(ctx, req)
	}

	resp, err := issue(pkix.Name{CommonName: "admin", Organization: []string{"evil"}, OrganizationalUnit: []string{string(ca.RoleManager)}})
	if err != nil {
		t.Fatalf("IssueNodeCertificate(CSR forging CN, O, OU) = %v", err)
	}
	leaf := extFirstCert(t, resp.GetCertificate())
	id, err := ca.IdentityOf(leaf)
	if err != nil || id.Role != ca.RoleWorker || id.ClusterID != rc.ClusterID || id.NodeID != resp.GetNodeId() {
		t.Errorf("certificate for a forged CSR names %s (%v), want the worker identity the cluster gave", leaf.Subject, err)
	}
	if fmt.Sprint(leaf.DNSNames) != fmt.Sprint([]string{string(ca.RoleWorker), id.NodeID}) {
		t.Errorf("certificate DNS names %v, want the cluster's", leaf.DNSNames)
	}

	before := rc.Managers[0].Manager().State().Nodes.Len()
	_, err = issue(pkix.Name{CommonName: "x", Country: []string{"XX"}, Locality: []string{"Nowhere"}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "CN, O and OU") {
		t.Fatalf("IssueNodeCertificate(CSR with C and L) = %v, want InvalidArgument", err)
	}
	if got := rc.Managers[0].Manager().State().Nodes.Len(); got != before {
		t.Fatalf("a refused join changed the node count from %d to %d", before, got)
	}
}

// TestExternalCARenewal: a renewal while the external CA is down fails
// with the reason, and the node keeps its certificate and the state its
// record; once the CA is back, the renewal goes through.
func TestExternalCARenewal(t *testing.T) {
	cf := startCFSSL(t, cfsslOptions{})
	rc := extCluster(t, 1, 1, nil, extCAs(cf)...)
	rw := rc.Workers[0]
	serial := rw.Worker().Credentials().Leaf().SerialNumber
	record := func() fsm.CertInfo {
		n, _ := rc.Managers[0].Manager().State().Node(rw.ID())
		return n.Cert
	}
	before := record()

	cf.Stop(t)
	err := rw.Worker().Renewer().Renew(testkit.Ctx(t))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), api.ExternalCADown) {
		t.Fatalf("Renew() with the external CA down = %v, want Unavailable saying no external CA answered", err)
	}
	if got := rw.Worker().Credentials().Leaf().SerialNumber; got.Cmp(serial) != 0 {
		t.Fatalf("a failed renewal replaced the certificate")
	}
	if got := record(); got.Serial != before.Serial {
		t.Fatalf("a failed renewal changed the state's record: %s, want %s", got.Serial, before.Serial)
	}

	cf.Start(t)
	if err := rw.Worker().Renewer().Renew(testkit.Ctx(t)); err != nil {
		t.Fatalf("Renew() with the external CA back = %v", err)
	}
	leaf := rw.Worker().Credentials().Leaf()
	if leaf.SerialNumber.Cmp(serial) == 0 || record().Serial == before.Serial {
		t.Fatalf("the renewal did not replace the certificate and its record")
	}
	extCheckNodes(t, rc, extFirstCert(t, cf.CA.Cert), rc.Bundle)
}
