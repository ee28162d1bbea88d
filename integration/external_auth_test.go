package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/testkit"
	"github.com/quorumca/quorumca/internal/testkit/clustertest"
	"github.com/quorumca/quorumca/manager"
	"github.com/quorumca/quorumca/node"
)

// The tests of how the cluster authenticates to a real CFSSL: mutual TLS
// with the leader's manager certificate, and authsign with an auth key.

// extSignBody is a sign request for a fresh key, as anyone could send it.
func extSignBody(t *testing.T) []byte {
	t.Helper()
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.NewCSR(rand.Reader, key, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(map[string]any{"certificate_request": string(csr), "hosts": []string{}})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// extPostSign posts body to cfssl's sign endpoint with client and returns
// the certificate it answers, if any.
func extPostSign(client *http.Client, cf *cfsslCA, body []byte) (cert string, code int, err error) {
	resp, err := client.Post(cf.URL+cfsslSignPath, "application/json", bytes.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", resp.StatusCode, err
	}
	var r struct {
		Result struct {
			Certificate string `json:"certificate"`
		} `json:"result"`
	}
	json.Unmarshal(raw, &r)
	return r.Result.Certificate, resp.StatusCode, nil
}

// TestExternalCAMutualTLS: a cluster initialised on a CFSSL that does not
// require client certificates goes on working once CFSSL requires those of
// the external root (-mutual-tls-ca): the leader presents its manager
// certificate, a worker joins and renews. CFSSL refuses, at the handshake,
// a request with no client certificate and one with a certificate of
// another CA; and a first manager, which holds no certificate during init,
// is refused with a message that says why and what to do.
func TestExternalCAMutualTLS(t *testing.T) {
	cf := startCFSSL(t, cfsslOptions{})
	rc := extCluster(t, 1, 0, nil, extCAs(cf)...)

	cf.Reconfigure(t, func(o *cfsslOptions) { o.MutualTLS = true })
	cf.Start(t)
	cf.WaitLog(t, "listening with mutual TLS")

	rw := rc.AddWorker("w0")
	serial := rw.Worker().Credentials().Leaf().SerialNumber
	if err := rw.Worker().Renewer().Renew(testkit.Ctx(t)); err != nil {
		t.Fatalf("Renew() through a CFSSL that requires client certificates = %v", err)
	}
	if rw.Worker().Credentials().Leaf().SerialNumber.Cmp(serial) == 0 {
		t.Fatalf("the renewal did not replace the worker's certificate")
	}
	extCheckNodes(t, rc, extFirstCert(t, cf.CA.Cert), rc.Bundle)

	// The harness's client presents a certificate of the external root:
	// that is what CFSSL checks, and all it checks.
	body := extSignBody(t)
	if cert, code, err := extPostSign(cf.HTTPClient(), cf, body); err != nil || cert == "" {
		t.Fatalf("sign with a client certificate of the external root = HTTP %d, %v; want a certificate", code, err)
	}
	other, err := ca.GenerateRoot(rand.Reader, time.Now(), "other")
	if err != nil {
		t.Fatal(err)
	}
	stranger := testClientCert(t, other)
	for name, cert := range map[string]*tls.Certificate{
		"no client certificate":              {},
		"a client certificate of another CA": &stranger,
	} {
		client := testTLSClient(t, cf.TLSCA)
		// Sent whatever CAs CFSSL names as acceptable (crypto/tls would
		// keep a certificate of another CA back from Certificates).
		client.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert, nil
		}
		// The TLS alert may be lost behind a reset connection: any
		// failure to get an answer is CFSSL refusing (the same request
		// with a certificate of the external root was answered above).
		cert, code, err := extPostSign(client, cf, body)
		if err == nil {
			t.Errorf("sign with %s = HTTP %d (certificate %t); want CFSSL to end the handshake", name, code, cert != "")
		}
		t.Logf("sign with %s: %v", name, err)
	}

	// init: the first manager has no certificate to present yet.
	cfg := clustertest.Config(t, "init")
	cfg.Init = &manager.InitOptions{External: extCAs(cf)}
	n, err := node.Start(t.Context(), cfg)
	if err == nil {
		n.Stop()
	}
	if err == nil || !strings.Contains(err.Error(), "requires a client certificate, which this manager does not have yet (init)") || !strings.Contains(err.Error(), "use authkey") {
		t.Fatalf("node.Start(init on a CFSSL that requires client certificates) = %v, want an error that says the manager has none yet and to use authkey", err)
	}
}

// extAuthKey returns a random auth key, raw and in hex.
func extAuthKey(t *testing.T) ([]byte, string) {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return key, hex.EncodeToString(key)
}

// TestExternalCAAuthSign: with CFSSL's default and CA profiles requiring
// an auth key, a cluster initialised with authkey signs through authsign:
// joins, renewals, an update of the external CAs, and a rotation from one
// external CA to another, whose cross-signing goes through the old CA's CA
// profile. CFSSL refuses an unauthenticated sign request; with a wrong key
// a join fails with an error that says the CA refused and names it, not
// the key. No key, in hex, raw or base64, shows in the daemons' logs, in
// errors, or in GetCA's and Update's answers.
func TestExternalCAAuthSign(t *testing.T) {
	keyA, hexA := extAuthKey(t)
	keyB, hexB := extAuthKey(t)
	keyWrong, hexWrong := extAuthKey(t)
	cfA := startCFSSL(t, cfsslOptions{CA: extRoot(t, "external-a"), AuthKey: hexA})
	extA := extCAs(cfA)[0]
	extA.AuthKey = keyA

	logs := &cfsslLog{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rc := clustertest.New(t, clustertest.Options{
		Managers: 1, Workers: 1, Init: manager.InitOptions{External: []fsm.ExternalCA{extA}},
		Configure: func(_ string, cfg *node.Config) { cfg.Logger = logger },
	})
	if st := rc.Managers[0].Manager().State(); len(st.External) != 1 || !bytes.Equal(st.External[0].AuthKey, keyA) {
		t.Fatalf("the state's external CAs hold no auth key, or another")
	}
	secrets := func(keys ...[]byte) []string {
		var out []string
		for _, k := range keys {
			h := hex.EncodeToString(k)
			out = append(out, string(k), h, strings.ToUpper(h), base64.StdEncoding.EncodeToString(k))
		}
		return out
	}
	noSecret := func(what, s string) {
		t.Helper()
		for _, secret := range secrets(keyA, keyB, keyWrong) {
			if strings.Contains(s, secret) {
				t.Errorf("%s shows an auth key", what)
				return
			}
		}
	}

	t.Log("join and renew")
	rw := rc.AddWorker("w1")
	serial := rw.Worker().Credentials().Leaf().SerialNumber
	if err := rw.Worker().Renewer().Renew(testkit.Ctx(t)); err != nil {
		t.Fatalf("Renew() through authsign = %v", err)
	}
	if rw.Worker().Credentials().Leaf().SerialNumber.Cmp(serial) == 0 {
		t.Fatalf("the renewal did not replace the worker's certificate")
	}
	extCheckNodes(t, rc, extFirstCert(t, cfA.CA.Cert), rc.Bundle)

	t.Log("CFSSL refuses to sign without authentication")
	cert, code, err := extPostSign(cfA.HTTPClient(), cfA, extSignBody(t))
	if err != nil || cert != "" || code == http.StatusOK {
		t.Errorf("unauthenticated sign = HTTP %d (certificate %t), %v; want CFSSL to refuse", code, cert != "", err)
	}
	cfA.WaitLog(t, "endpoint 'sign' is disabled")

	t.Log("GetCA and Update answer that a key is set, not which")
	for name, answer := range map[string]func() (proto.Message, []*api.ExternalCA, error){
		"GetCA": func() (proto.Message, []*api.ExternalCA, error) {
			resp, err := rc.GetCA()
			return resp, resp.GetExternalCa(), err
		},
		"Update": func() (proto.Message, []*api.ExternalCA, error) {
			resp, err := rc.Ctl().Update(testkit.Ctx(t), &api.UpdateRequest{ExternalCa: extAPI(extA)})
			return resp, resp.GetExternalCa(), err
		},
	} {
		resp, cas, err := answer()
		if err != nil {
			t.Fatalf("%s() = %v", name, err)
		}
		if len(cas) != 1 || cas[0].GetUrl() != cfA.URL || len(cas[0].GetAuthKey()) == 0 {
			t.Errorf("%s().ExternalCa = %v, want %s with a key set", name, cas, cfA.URL)
		}
		raw, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		noSecret(name+"'s answer", string(raw))
	}

	t.Log("with a wrong key, a join fails")
	cfA.Reconfigure(t, func(o *cfsslOptions) { o.AuthKey = hexWrong })
	cfA.Start(t)
	err = extTryJoin(t, rc, 5*time.Second, logger)
	if err == nil || !strings.Contains(err.Error(), "the external CA refused the request") || !strings.Contains(err.Error(), cfA.URL) {
		t.Fatalf("join with a wrong auth key = %v, want an error that says the CA refused and names %s", err, cfA.URL)
	}
	noSecret("the join's error", err.Error())
	cfA.Reconfigure(t, func(o *cfsslOptions) { o.AuthKey = hexA })
	cfA.Start(t)

	t.Log("external A → external B: A cross-signs B's root through authsign")
	cfB := startCFSSL(t, cfsslOptions{CA: extRoot(t, "external-b"), AuthKey: hexB})
	extB := extCAs(cfB)[0]
	extB.AuthKey = keyB
	oldBundle := rc.Bundle
	resp, err := rc.TryRotate(&api.RotateCARequest{ExternalCa: extAPI(extB), CaKey: cfB.CA.Key})
	if err != nil {
		t.Fatalf("RotateCA(external A → external B, both with auth keys) = %v", err)
	}
	noSecret("RotateCA's answer", resp.String())
	done := rc.WaitRotation(resp.GetRotation().GetNewRootFingerprint(), true)
	if !bytes.Equal(done.GetBundle(), cfB.CA.Bundle) {
		t.Fatalf("bundle after rotating to B is not B's root")
	}
	if st := rc.Managers[0].Manager().State(); len(st.External) != 1 || st.External[0].URL != cfB.URL || !bytes.Equal(st.External[0].AuthKey, keyB) {
		t.Errorf("external CAs after the rotation: %v, want %s with B's key", st.External, cfB.URL)
	}
	extCheckNodes(t, rc, extFirstCert(t, cfB.CA.Cert), done.GetBundle(), oldBundle)

	if !strings.Contains(logs.String(), "root rotation completed") {
		t.Errorf("the captured logs miss the daemons' messages:\n%.2000s", logs.String())
	}
	noSecret("the daemons' logs", logs.String())
}
