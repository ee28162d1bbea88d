package integration

// Smoke tests of the real cfssl (v1.7.1) HTTP API, run through the harness
// of cfssl_helpers_test.go. They pin down the behaviour quorumca's external
// CA client relies on: the response envelope, how the sign endpoint treats
// the CSR's subject and SANs against the request's "subject" and "hosts",
// how a CA profile cross-signs a root, and how cfssl reports refusals.
//
// Each test runs its own cfssl, in parallel.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
)

// cfsslAPIResponse is cfssl's response envelope, for every endpoint and
// for errors too.
type cfsslAPIResponse struct {
	Success  bool              `json:"success"`
	Result   json.RawMessage   `json:"result"`
	Errors   []cfsslAPIMessage `json:"errors"`
	Messages []cfsslAPIMessage `json:"messages"`
}

type cfsslAPIMessage struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// cfsslReply is one HTTP exchange with cfssl.
type cfsslReply struct {
	Status      int
	ContentType string
	Body        []byte
	Resp        cfsslAPIResponse
}

// cfsslPost POSTs body (a string or []byte as is, anything else as JSON) to
// path and decodes cfssl's envelope. It fails the test if the body is not
// that envelope.
func cfsslPost(t *testing.T, c *cfsslCA, path string, body any) cfsslReply {
	t.Helper()
	return cfsslDo(t, c, http.MethodPost, path, body)
}

func cfsslDo(t *testing.T, c *cfsslCA, method, path string, body any) cfsslReply {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequestWithContext(t.Context(), method, c.URL+path, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v\ncfssl log:\n%s", method, path, err, c.Log())
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := cfsslReply{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: out}
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields() // the envelope has exactly these four fields
	if err := dec.Decode(&r.Resp); err != nil {
		t.Fatalf("%s %s: HTTP %d, body is not cfssl's envelope: %v\n%s", method, path, resp.StatusCode, err, out)
	}
	return r
}

// cfsslSignOK POSTs a sign request that must succeed and returns the
// certificate.
func cfsslSignOK(t *testing.T, c *cfsslCA, req any) *x509.Certificate {
	t.Helper()
	r := cfsslPost(t, c, cfsslSignPath, req)
	if r.Status != http.StatusOK || !r.Resp.Success {
		t.Fatalf("sign: HTTP %d, success %v, want 200 and true: %s\ncfssl log:\n%s", r.Status, r.Resp.Success, r.Body, c.Log())
	}
	cfsslCheckOK(t, r)
	var result map[string]json.RawMessage
	if err := json.Unmarshal(r.Resp.Result, &result); err != nil {
		t.Fatalf("sign result %s: %v", r.Resp.Result, err)
	}
	if keys := slices.Sorted(maps.Keys(result)); !slices.Equal(keys, []string{"certificate"}) {
		t.Errorf("sign result has keys %q, want only \"certificate\"", keys)
	}
	var certPEM string
	if err := json.Unmarshal(result["certificate"], &certPEM); err != nil {
		t.Fatalf("sign result certificate: %v", err)
	}
	certs, err := ca.ParseCertificates([]byte(certPEM))
	if err != nil {
		t.Fatalf("sign result certificate: %v", err)
	}
	if len(certs) != 1 {
		t.Fatalf("sign returned %d certificates, want 1", len(certs))
	}
	// cfssl returns the PEM as encoding/pem writes it, trailing newline
	// included.
	if want := string(ca.EncodeCertificates(certs[0])); certPEM != want {
		t.Errorf("sign certificate PEM %q, want canonical PEM %q", certPEM, want)
	}
	return certs[0]
}

// cfsslCheckRefused checks a refusal: HTTP status, and the envelope with one
// error of code and message, no result and no messages.
func cfsslCheckRefused(t *testing.T, r cfsslReply, status, code int, message string) {
	t.Helper()
	if r.Status != status {
		t.Errorf("HTTP status %d, want %d; body %s", r.Status, status, r.Body)
	}
	if r.Resp.Success {
		t.Errorf("success true, want false; body %s", r.Body)
	}
	if string(r.Resp.Result) != "null" {
		t.Errorf("result %s, want null", r.Resp.Result)
	}
	want := []cfsslAPIMessage{{Code: code, Message: message}}
	if !slices.Equal(r.Resp.Errors, want) {
		t.Errorf("errors %+v, want %+v; body %s", r.Resp.Errors, want, r.Body)
	}
	if r.Resp.Messages == nil || len(r.Resp.Messages) != 0 {
		t.Errorf("messages %+v, want []", r.Resp.Messages)
	}
	// Errors are written with http.Error: plain text content type, the
	// JSON envelope and a newline.
	if r.ContentType != "text/plain; charset=utf-8" {
		t.Errorf("error Content-Type %q, want text/plain; charset=utf-8", r.ContentType)
	}
}

func cfsslCheckOK(t *testing.T, r cfsslReply) {
	t.Helper()
	if r.Resp.Errors == nil || len(r.Resp.Errors) != 0 || r.Resp.Messages == nil || len(r.Resp.Messages) != 0 {
		t.Errorf("errors %+v and messages %+v, want [] and []; body %s", r.Resp.Errors, r.Resp.Messages, r.Body)
	}
	if r.ContentType != "application/json" {
		t.Errorf("Content-Type %q, want application/json", r.ContentType)
	}
}

// cfsslCSR makes a P-256 key and a PEM CSR of tmpl signed by it.
func cfsslCSR(t *testing.T, tmpl *x509.CertificateRequest) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key, cfsslCSRWithKey(t, tmpl, key)
}

func cfsslCSRWithKey(t *testing.T, tmpl *x509.CertificateRequest, key crypto.Signer) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// cfsslBasicConstraintsCA is a CSR extension asking for CA:true (no pathlen).
func cfsslBasicConstraintsCA(t *testing.T) pkix.Extension {
	t.Helper()
	v, err := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}
}

// cfsslSKI is how cfssl computes a subject key ID: the SHA-1 of the
// subjectPublicKey bits (RFC 5280 method 1).
func cfsslSKI(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(spki.Key.Bytes)
	return sum[:]
}

func cfsslParseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificates(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// cfsslCheckValidity checks cfssl's validity window: NotBefore is now rounded
// to the minute, less 5 minutes; NotAfter is NotBefore plus the profile's
// expiry.
func cfsslCheckValidity(t *testing.T, cert *x509.Certificate, before, after time.Time, expiry time.Duration) {
	t.Helper()
	lo := before.Round(time.Minute).Add(-5 * time.Minute)
	hi := after.Round(time.Minute).Add(-5 * time.Minute)
	if cert.NotBefore.Before(lo) || cert.NotBefore.After(hi) {
		t.Errorf("NotBefore %v, want now (%v..%v) rounded to the minute less 5 minutes", cert.NotBefore, before, after)
	}
	if cert.NotBefore.Second() != 0 || cert.NotBefore.Nanosecond() != 0 {
		t.Errorf("NotBefore %v, want a whole minute", cert.NotBefore)
	}
	if got := cert.NotAfter.Sub(cert.NotBefore); got != expiry {
		t.Errorf("validity %v (NotBefore %v, NotAfter %v), want the profile's %v", got, cert.NotBefore, cert.NotAfter, expiry)
	}
}

var cfsslDefaultUsages = []string{"signing", "key encipherment", "server auth", "client auth"}

func TestCFSSLInfoReturnsSigner(t *testing.T) {
	t.Parallel()
	c := startCFSSL(t, cfsslOptions{})
	type infoResult struct {
		Certificate string   `json:"certificate"`
		Usages      []string `json:"usages"`
		Expiry      string   `json:"expiry"`
	}
	for _, tt := range []struct {
		profile string
		want    infoResult
	}{
		{"", infoResult{Usages: cfsslDefaultUsages, Expiry: "2160h"}},
		{"CA", infoResult{Usages: []string{"cert sign", "crl sign"}, Expiry: "43800h"}},
		// An unknown profile is the default one, not an error.
		{"no-such-profile", infoResult{Usages: cfsslDefaultUsages, Expiry: "2160h"}},
	} {
		t.Run("profile="+tt.profile, func(t *testing.T) {
			r := cfsslPost(t, c, cfsslInfoPath, map[string]string{"label": "", "profile": tt.profile})
			if r.Status != http.StatusOK || !r.Resp.Success {
				t.Fatalf("info: HTTP %d, success %v, want 200 and true: %s", r.Status, r.Resp.Success, r.Body)
			}
			cfsslCheckOK(t, r)
			dec := json.NewDecoder(bytes.NewReader(r.Resp.Result))
			dec.DisallowUnknownFields()
			var got infoResult
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("info result %s: %v", r.Resp.Result, err)
			}
			// The certificate is the CA's PEM without its trailing newline.
			if want := string(bytes.TrimSpace(c.CA.Cert)); got.Certificate != want {
				t.Errorf("info certificate:\n%s\nwant the CA certificate:\n%s", got.Certificate, want)
			}
			if !cfsslParseCert(t, []byte(got.Certificate)).Equal(cfsslParseCert(t, c.CA.Cert)) {
				t.Errorf("info certificate is not the CA certificate")
			}
			if !slices.Equal(got.Usages, tt.want.Usages) || got.Expiry != tt.want.Expiry {
				t.Errorf("info usages %q expiry %q, want %q %q", got.Usages, got.Expiry, tt.want.Usages, tt.want.Expiry)
			}
		})
	}
}

func TestCFSSLSignOverridesSubjectAndHosts(t *testing.T) {
	t.Parallel()
	c := startCFSSL(t, cfsslOptions{Expiry: "720h"})
	caCert := cfsslParseCert(t, c.CA.Cert)
	emailOID := asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
	key, csr := cfsslCSR(t, &x509.CertificateRequest{
		Subject: pkix.Name{
			CommonName:         "forged",
			Organization:       []string{"evil"},
			OrganizationalUnit: []string{"evil", "evil2"},
			Country:            []string{"XX"},
			Province:           []string{"Evil State"},
			Locality:           []string{"Evil Town"},
			StreetAddress:      []string{"1 Evil Street"},
			PostalCode:         []string{"66666"},
			SerialNumber:       "forged-serial",
			ExtraNames:         []pkix.AttributeTypeAndValue{{Type: emailOID, Value: "evil@example.com"}},
		},
		DNSNames:       []string{"evil.example", "node1"},
		IPAddresses:    []net.IP{net.IPv4(10, 6, 6, 6)},
		EmailAddresses: []string{"evil@example.com"},
		URIs:           []*url.URL{{Scheme: "spiffe", Host: "evil", Path: "/x"}},
	})
	before := time.Now()
	cert := cfsslSignOK(t, c, map[string]any{
		"certificate_request": csr,
		"hosts":               []string{"worker", "node1"},
		"subject": map[string]any{
			"CN":    "node1",
			"names": []map[string]string{{"O": "cluster1", "OU": "swarm-worker"}},
		},
	})
	after := time.Now()
	t.Logf("subject: %s; DNS %q", cert.Subject, cert.DNSNames)

	// What the request's subject names replaces the CSR's, OU list and all.
	if cert.Subject.CommonName != "node1" {
		t.Errorf("CN %q, want node1", cert.Subject.CommonName)
	}
	if !slices.Equal(cert.Subject.Organization, []string{"cluster1"}) {
		t.Errorf("O %q, want [cluster1]", cert.Subject.Organization)
	}
	if !slices.Equal(cert.Subject.OrganizationalUnit, []string{"swarm-worker"}) {
		t.Errorf("OU %q, want [swarm-worker]: the CSR's two OUs are replaced", cert.Subject.OrganizationalUnit)
	}
	// What it leaves empty of C, ST, L and serialNumber comes from the CSR
	// (local.PopulateSubjectFromCSR): a client that wants none of the
	// CSR's subject must name those fields itself, or make the CSR.
	if !slices.Equal(cert.Subject.Country, []string{"XX"}) {
		t.Errorf("C %q, want the CSR's [XX] to leak through", cert.Subject.Country)
	}
	if !slices.Equal(cert.Subject.Province, []string{"Evil State"}) {
		t.Errorf("ST %q, want the CSR's [Evil State] to leak through", cert.Subject.Province)
	}
	if !slices.Equal(cert.Subject.Locality, []string{"Evil Town"}) {
		t.Errorf("L %q, want the CSR's [Evil Town] to leak through", cert.Subject.Locality)
	}
	if cert.Subject.SerialNumber != "forged-serial" {
		t.Errorf("subject serialNumber %q, want the CSR's forged-serial to leak through", cert.Subject.SerialNumber)
	}
	// Street, postal code and attributes Go does not name (emailAddress)
	// are dropped once a subject is given.
	if len(cert.Subject.StreetAddress) != 0 || len(cert.Subject.PostalCode) != 0 {
		t.Errorf("street %q postal code %q, want none", cert.Subject.StreetAddress, cert.Subject.PostalCode)
	}
	for _, n := range cert.Subject.Names {
		if n.Type.Equal(emailOID) {
			t.Errorf("subject keeps the CSR's emailAddress %v", n.Value)
		}
	}
	// "hosts" replaces every SAN of the CSR, in the order given.
	if !slices.Equal(cert.DNSNames, []string{"worker", "node1"}) {
		t.Errorf("DNSNames %q, want [worker node1]", cert.DNSNames)
	}
	if len(cert.IPAddresses)+len(cert.EmailAddresses)+len(cert.URIs) != 0 {
		t.Errorf("IPs %v emails %q URIs %v, want none: hosts replaces the CSR's SANs", cert.IPAddresses, cert.EmailAddresses, cert.URIs)
	}

	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage %v, want [serverAuth clientAuth]", cert.ExtKeyUsage)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; cert.KeyUsage != want {
		t.Errorf("KeyUsage %v, want %v", cert.KeyUsage, want)
	}
	if !cert.BasicConstraintsValid || cert.IsCA {
		t.Errorf("BasicConstraintsValid %v IsCA %v, want true and false", cert.BasicConstraintsValid, cert.IsCA)
	}
	if err := cert.CheckSignatureFrom(caCert); err != nil {
		t.Errorf("not signed by the CA: %v", err)
	}
	if !bytes.Equal(cert.RawIssuer, caCert.RawSubject) {
		t.Errorf("issuer %s, want the CA's subject %s", cert.Issuer, caCert.Subject)
	}
	if !bytes.Equal(cert.AuthorityKeyId, caCert.SubjectKeyId) {
		t.Errorf("AuthorityKeyId %x, want the CA's key ID %x", cert.AuthorityKeyId, caCert.SubjectKeyId)
	}
	if !bytes.Equal(cert.SubjectKeyId, cfsslSKI(t, key.Public())) {
		t.Errorf("SubjectKeyId %x, want SHA-1 of the key bits", cert.SubjectKeyId)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Errorf("public key is not the CSR's")
	}
	if cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("SignatureAlgorithm %v, want ECDSA-SHA256", cert.SignatureAlgorithm)
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 159 {
		t.Errorf("serial %x, want positive and at most 20 bytes", cert.SerialNumber)
	}
	cfsslCheckValidity(t, cert, before, after, 720*time.Hour)

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "node1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify under the CA as node1: %v", err)
	}
}

// TestCFSSLSignHostsAndSubjectFields documents the sign request's optional
// fields: "hosts" omitted or null keeps the CSR's SANs, [] removes them;
// "subject" omitted keeps the CSR's subject whole; subject fields given
// replace the CSR's.
func TestCFSSLSignHostsAndSubjectFields(t *testing.T) {
	t.Parallel()
	c := startCFSSL(t, cfsslOptions{})
	csrTmpl := &x509.CertificateRequest{
		Subject: pkix.Name{
			CommonName: "from-csr", Organization: []string{"csr-org"}, Country: []string{"XX"},
			StreetAddress: []string{"1 CSR Street"},
		},
		DNSNames:    []string{"csr.example"},
		IPAddresses: []net.IP{net.IPv4(10, 0, 0, 9)},
	}
	_, csr := cfsslCSR(t, csrTmpl)
	// A CSR that asks for CA:true, to sign with the CA profile.
	caTmpl := *csrTmpl
	caTmpl.ExtraExtensions = []pkix.Extension{cfsslBasicConstraintsCA(t)}
	_, caCSR := cfsslCSR(t, &caTmpl)
	subject := map[string]any{"CN": "node1", "names": []map[string]string{{"O": "cluster1", "OU": "swarm-worker", "C": "US"}}}
	type sans struct {
		DNS []string
		IP  []string
	}
	sansOf := func(c *x509.Certificate) sans {
		var s sans
		s.DNS = c.DNSNames
		for _, ip := range c.IPAddresses {
			s.IP = append(s.IP, ip.String())
		}
		return s
	}
	csrSANs := sans{DNS: []string{"csr.example"}, IP: []string{"10.0.0.9"}}
	for _, tt := range []struct {
		name        string
		req         string // JSON, with CSR for the CSR
		csr         string
		wantSANs    sans
		wantSubject string
		wantOther   []string // email and URI SANs
	}{
		{"hosts omitted", `{"certificate_request":CSR}`, csr, csrSANs, "CN=from-csr,O=csr-org,STREET=1 CSR Street,C=XX", nil},
		{"hosts null", `{"certificate_request":CSR,"hosts":null}`, csr, csrSANs, "CN=from-csr,O=csr-org,STREET=1 CSR Street,C=XX", nil},
		{"hosts empty", `{"certificate_request":CSR,"hosts":[]}`, csr, sans{}, "CN=from-csr,O=csr-org,STREET=1 CSR Street,C=XX", nil},
		{"hosts of each kind", `{"certificate_request":CSR,"hosts":["10.1.2.3","b.example","a@b.example","spiffe://c/d","::1"]}`, csr,
			sans{DNS: []string{"b.example"}, IP: []string{"10.1.2.3", "::1"}}, "CN=from-csr,O=csr-org,STREET=1 CSR Street,C=XX",
			[]string{"a@b.example", "spiffe://c/d"}},
		// "hostname" (comma-separated) wins over "hosts".
		{"hostname wins", `{"certificate_request":CSR,"hostname":"h1,h2","hosts":["x"]}`, csr, sans{DNS: []string{"h1", "h2"}}, "CN=from-csr,O=csr-org,STREET=1 CSR Street,C=XX", nil},
		{"subject with C", `{"certificate_request":CSR,"hosts":[],"subject":SUBJECT}`, csr, sans{}, "CN=node1,OU=swarm-worker,O=cluster1,C=US", nil},
		// The CA profile drops DNS names, emails and URIs, but not IPs.
		{"CA profile, hosts omitted", `{"certificate_request":CSR,"profile":"CA"}`, caCSR, sans{IP: []string{"10.0.0.9"}}, "CN=from-csr,O=csr-org,STREET=1 CSR Street,C=XX", nil},
		{"CA profile, hosts empty", `{"certificate_request":CSR,"profile":"CA","hosts":[]}`, caCSR, sans{}, "CN=from-csr,O=csr-org,STREET=1 CSR Street,C=XX", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			csrJSON, _ := json.Marshal(tt.csr)
			subjJSON, _ := json.Marshal(subject)
			body := strings.NewReplacer("CSR", string(csrJSON), "SUBJECT", string(subjJSON)).Replace(tt.req)
			cert := cfsslSignOK(t, c, body)
			if got := sansOf(cert); !slices.Equal(got.DNS, tt.wantSANs.DNS) || !slices.Equal(got.IP, tt.wantSANs.IP) {
				t.Errorf("SANs %+v, want %+v", got, tt.wantSANs)
			}
			if got := cert.Subject.String(); got != tt.wantSubject {
				t.Errorf("subject %q, want %q", got, tt.wantSubject)
			}
			other := slices.Clone(cert.EmailAddresses)
			for _, u := range cert.URIs {
				other = append(other, u.String())
			}
			if !slices.Equal(other, tt.wantOther) {
				t.Errorf("email and URI SANs %q, want %q", other, tt.wantOther)
			}
		})
	}
}

func TestCFSSLSignWithCAProfileCrossSigns(t *testing.T) {
	t.Parallel()
	c := startCFSSL(t, cfsslOptions{})
	caCert := cfsslParseCert(t, c.CA.Cert)
	cluster, err := ca.NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	newM, err := ca.GenerateRoot(rand.Reader, time.Now(), cluster)
	if err != nil {
		t.Fatal(err)
	}
	newRoot := cfsslParseCert(t, newM.Cert)
	newKey, err := ca.ParseKey(newM.Key)
	if err != nil {
		t.Fatal(err)
	}
	csr := cfsslCSRWithKey(t, &x509.CertificateRequest{Subject: newRoot.Subject, RawSubject: newRoot.RawSubject}, newKey)

	for _, tt := range []struct {
		name  string
		hosts any // nil: left out
	}{
		{"hosts empty", []string{}},
		{"hosts omitted", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := map[string]any{"certificate_request": csr, "profile": "CA"}
			if tt.hosts != nil {
				req["hosts"] = tt.hosts
			}
			before := time.Now()
			cross := cfsslSignOK(t, c, req)
			after := time.Now()

			if !bytes.Equal(cross.RawSubject, newRoot.RawSubject) {
				t.Errorf("subject %s (%x), want the new root's %s byte for byte (%x)", cross.Subject, cross.RawSubject, newRoot.Subject, newRoot.RawSubject)
			}
			if !newKey.Public().(*ecdsa.PublicKey).Equal(cross.PublicKey) {
				t.Errorf("public key is not the new root's")
			}
			if !bytes.Equal(cross.RawIssuer, caCert.RawSubject) {
				t.Errorf("issuer %s, want cfssl's CA %s", cross.Issuer, caCert.Subject)
			}
			if err := cross.CheckSignatureFrom(caCert); err != nil {
				t.Errorf("not signed by cfssl's CA: %v", err)
			}
			if !cross.BasicConstraintsValid || !cross.IsCA {
				t.Errorf("IsCA %v, want true", cross.IsCA)
			}
			// ca_constraint.max_path_len 1 is written as is: cfssl's CA (a
			// root without pathlen) puts no bound on it.
			if cross.MaxPathLen != 1 || cross.MaxPathLenZero {
				t.Errorf("MaxPathLen %d (zero %v), want 1", cross.MaxPathLen, cross.MaxPathLenZero)
			}
			if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign; cross.KeyUsage != want {
				t.Errorf("KeyUsage %v, want %v", cross.KeyUsage, want)
			}
			if len(cross.ExtKeyUsage) != 0 {
				t.Errorf("ExtKeyUsage %v, want none", cross.ExtKeyUsage)
			}
			if len(cross.DNSNames)+len(cross.IPAddresses)+len(cross.EmailAddresses)+len(cross.URIs) != 0 {
				t.Errorf("SANs %q %v %q %v, want none", cross.DNSNames, cross.IPAddresses, cross.EmailAddresses, cross.URIs)
			}
			// The profile's expiry, not clamped to either root's.
			cfsslCheckValidity(t, cross, before, after, 43800*time.Hour)
			// cfssl computes the key ID itself (SHA-1 of the key bits);
			// ca.GenerateRoot hashes the whole SubjectPublicKeyInfo. So the
			// cross-signed certificate's SKI is not the new root's, and
			// leaves of the new root carry an AKI that does not match it.
			// Go's verifier still chains them (it only prefers matching
			// key IDs).
			if !bytes.Equal(cross.SubjectKeyId, cfsslSKI(t, newRoot.PublicKey)) {
				t.Errorf("SubjectKeyId %x, want cfssl's SHA-1 of the key bits %x", cross.SubjectKeyId, cfsslSKI(t, newRoot.PublicKey))
			}
			if bytes.Equal(cross.SubjectKeyId, newRoot.SubjectKeyId) {
				t.Logf("SubjectKeyId %x equals the new root's: ca.GenerateRoot now uses RFC 5280 method 1", cross.SubjectKeyId)
			}
			if !bytes.Equal(cross.AuthorityKeyId, caCert.SubjectKeyId) {
				t.Errorf("AuthorityKeyId %x, want cfssl's CA key ID %x", cross.AuthorityKeyId, caCert.SubjectKeyId)
			}

			// A leaf the new root's key signs verifies under cfssl's root
			// through the cross-signed certificate: with crypto/x509, and
			// with the project's own signer and verifier.
			rotating := ca.Material{Cert: newM.Cert, Key: newM.Key, Chain: ca.EncodeCertificates(cross), Bundle: c.CA.Cert}
			s, err := ca.NewSigner(rotating)
			if err != nil {
				t.Fatalf("ca.NewSigner(new root + cfssl's cross-signed certificate) = %v", err)
			}
			nodeID, err := ca.NewID(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			id := ca.Identity{NodeID: nodeID, Role: ca.RoleWorker, ClusterID: cluster}
			leafKey, err := ca.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			leafCSR, err := ca.NewCSR(rand.Reader, leafKey, "leaf")
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			iss, err := s.Sign(rand.Reader, now, leafCSR, id, ca.DefaultCertExpiry)
			if err != nil {
				t.Fatalf("sign a leaf with the new root: %v", err)
			}
			chain, err := ca.ParseCertificates(iss.PEM)
			if err != nil {
				t.Fatal(err)
			}
			if len(chain) != 2 || !chain[1].Equal(cross) {
				t.Fatalf("leaf PEM has %d certificates, want the leaf and the cross-signed certificate", len(chain))
			}
			roots := x509.NewCertPool()
			roots.AddCert(caCert)
			inter := x509.NewCertPool()
			inter.AddCert(cross)
			paths, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if err != nil {
				t.Fatalf("leaf does not verify under cfssl's root via the cross-signed certificate: %v", err)
			}
			if p := paths[0]; len(p) != 3 || !p[1].Equal(cross) || !p[2].Equal(caCert) {
				t.Errorf("verified path has %d certificates, want leaf, cross-signed, cfssl's root", len(p))
			}
			if got, _, err := ca.VerifyPEM(iss.PEM, c.CA.Cert, now); err != nil || got != id {
				t.Errorf("ca.VerifyPEM(leaf, cfssl's root) = %+v, %v; want %+v, nil", got, err, id)
			}
			// And without the cross-signed certificate, it does not.
			if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				t.Errorf("leaf verifies under cfssl's root without the cross-signed certificate")
			}
		})
	}
}

func TestCFSSLSignWithoutCAProfileRefuses(t *testing.T) {
	t.Parallel()
	c := startCFSSL(t, cfsslOptions{NoCAProfile: true})
	newM, err := ca.GenerateRoot(rand.Reader, time.Now(), "new-root")
	if err != nil {
		t.Fatal(err)
	}
	newRoot := cfsslParseCert(t, newM.Cert)
	newKey, err := ca.ParseKey(newM.Key)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("CSR asks for CA", func(t *testing.T) {
		// A CSR with basicConstraints CA:true is refused outright: no
		// profile of that name allows a CA.
		csr := cfsslCSRWithKey(t, &x509.CertificateRequest{
			RawSubject:      newRoot.RawSubject,
			ExtraExtensions: []pkix.Extension{cfsslBasicConstraintsCA(t)},
		}, newKey)
		r := cfsslPost(t, c, cfsslSignPath, map[string]any{"certificate_request": csr, "profile": "CA", "hosts": []string{}})
		cfsslCheckRefused(t, r, http.StatusBadRequest, 5300, "Policy violation request")
		if want := `{"success":false,"result":null,"errors":[{"code":5300,"message":"Policy violation request"}],"messages":[]}` + "\n"; string(r.Body) != want {
			t.Errorf("body %q, want %q", r.Body, want)
		}
		c.WaitLog(t, "local signer policy disallows issuing CA certificate")
	})
	t.Run("CSR without basic constraints", func(t *testing.T) {
		// The trap: a profile that does not exist is the default profile,
		// so a plain CSR gets a leaf, with success true. A client must
		// check IsCA in what comes back (or put CA:true in the CSR).
		csr := cfsslCSRWithKey(t, &x509.CertificateRequest{RawSubject: newRoot.RawSubject}, newKey)
		cert := cfsslSignOK(t, c, map[string]any{"certificate_request": csr, "profile": "CA", "hosts": []string{}})
		if cert.IsCA {
			t.Errorf("IsCA true, want cfssl's default profile (a leaf)")
		}
		if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
			t.Errorf("ExtKeyUsage %v, want the default profile's", cert.ExtKeyUsage)
		}
		if got := cert.NotAfter.Sub(cert.NotBefore); got != 2160*time.Hour {
			t.Errorf("validity %v, want the default profile's 2160h", got)
		}
	})
}

// TestCFSSLSignErrors pins the status and error envelope of malformed
// requests.
func TestCFSSLSignErrors(t *testing.T) {
	t.Parallel()
	c := startCFSSL(t, cfsslOptions{})
	_, csr := cfsslCSR(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}})
	block, _ := pem.Decode([]byte(csr))
	// The CSR with its signature's last byte changed.
	badSig := bytes.Clone(block.Bytes)
	badSig[len(badSig)-1] ^= 0xff
	badSigPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: badSig}))
	garbagePEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("not DER")}))
	for _, tt := range []struct {
		name    string
		method  string
		body    any
		status  int
		code    int
		message string // "prefix*" matches a prefix
	}{
		{"malformed JSON", http.MethodPost, `{"certificate_request":`, 400, 400, "Unable to parse sign request"},
		{"wrong JSON type", http.MethodPost, `{"certificate_request":1}`, 400, 400, "Unable to parse sign request"},
		{"no CSR", http.MethodPost, `{"hosts":["a"]}`, 400, 400, "missing parameter 'certificate_request'"},
		{"CSR not PEM", http.MethodPost, map[string]any{"certificate_request": "hello"}, 400, 9002, "CSR Decode failed"},
		{"PEM not a CSR", http.MethodPost, map[string]any{"certificate_request": string(c.CA.Cert)}, 400, 9300, "not a csr"},
		{"CSR not DER", http.MethodPost, map[string]any{"certificate_request": garbagePEM}, 400, 9003, "asn1: structure error: *"},
		{"CSR bad signature", http.MethodPost, map[string]any{"certificate_request": badSigPEM}, 400, 9300, "x509: ECDSA verification failure"},
		{"GET", http.MethodGet, nil, 405, 405, `Method is not allowed:"GET"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := cfsslDo(t, c, tt.method, cfsslSignPath, tt.body)
			t.Logf("HTTP %d %s: %s", r.Status, r.ContentType, bytes.TrimSpace(r.Body))
			msg := tt.message
			if p, ok := strings.CutSuffix(msg, "*"); ok && len(r.Resp.Errors) == 1 && strings.HasPrefix(r.Resp.Errors[0].Message, p) {
				msg = r.Resp.Errors[0].Message
			}
			cfsslCheckRefused(t, r, tt.status, tt.code, msg)
		})
	}
	if t.Failed() {
		t.Logf("cfssl log:\n%s", c.Log())
	}
}

func TestCFSSLRestartSamePort(t *testing.T) {
	t.Parallel()
	c := startCFSSL(t, cfsslOptions{})
	url, port := c.URL, c.Port()
	info := func() string {
		t.Helper()
		r := cfsslPost(t, c, cfsslInfoPath, map[string]string{"label": "", "profile": ""})
		if r.Status != http.StatusOK || !r.Resp.Success {
			t.Fatalf("info: HTTP %d: %s", r.Status, r.Body)
		}
		var res struct {
			Certificate string `json:"certificate"`
		}
		if err := json.Unmarshal(r.Resp.Result, &res); err != nil {
			t.Fatal(err)
		}
		return res.Certificate
	}
	first := info()

	c.Stop(t)
	if resp, err := c.HTTPClient().Post(c.URL+cfsslInfoPath, "application/json", strings.NewReader(`{}`)); err == nil {
		resp.Body.Close()
		t.Fatalf("info answered HTTP %d after Stop", resp.StatusCode)
	}
	c.Stop(t) // stopping twice is harmless

	c.Start(t)
	if c.URL != url || c.Port() != port {
		t.Errorf("restarted on %s, want %s", c.URL, url)
	}
	if got := info(); got != first {
		t.Errorf("after the restart info returns another certificate")
	}
	if n := strings.Count(c.Log(), "=== harness: start"); n != 2 {
		t.Errorf("log shows %d starts, want 2", n)
	}
}
