package ca_test

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// Seeds whose name starts with "ok-" must be accepted and those starting
// with "bad-" refused; TestFuzzCorpus checks the committed files, and
// regenerates them with -update-corpus:
//
//	go test -run=TestFuzzCorpus ./ca/ -update-corpus
//
// No private key is ever committed, not even a throwaway test key: a seed
// holding one (any "PRIVATE KEY" PEM text) has no file in testdata/fuzz. Its
// target generates it afresh and adds it with f.Add (see addSeeds), and
// TestFuzzCorpus fails if a committed file holds one.
var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpora in testdata/fuzz")

type fuzzSeed struct {
	name string
	args []any // []byte or string, as the target takes
}

// fuzzSeeds makes the seeds of every fuzz target. Certificates are valid at
// now, which is fixed, so committed seeds stay valid.
func fuzzSeeds(tb testing.TB) map[string][]fuzzSeed {
	tb.Helper()
	cluster := newID(tb, 1)
	gen := root(tb, 2, cluster)
	corp := newCorpChain(tb)
	p384 := testkit.NewX509CA(tb, "P-384 Root", ecKey(tb, elliptic.P384()), nil, now)
	sec1, err := x509.MarshalECPrivateKey(p384.Key.(*ecdsa.PrivateKey))
	if err != nil {
		tb.Fatal(err)
	}
	expired := testkit.NewX509CA(tb, "Expired Root", ecKey(tb, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = now.AddDate(-3, 0, 0), now.AddDate(0, 0, -1)
	})
	notCA := testkit.NewX509CA(tb, "Not A CA", ecKey(tb, elliptic.P256()), nil, now, func(c *x509.Certificate) {
		c.IsCA, c.KeyUsage = false, x509.KeyUsageDigitalSignature
	})
	pathRoot := testkit.NewX509CA(tb, "Path Root", ecKey(tb, elliptic.P256()), nil, now, func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
	pathInter := testkit.NewX509CA(tb, "Path Inter", ecKey(tb, elliptic.P256()), pathRoot, now)

	x, err := ecdh.X25519().GenerateKey(crand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	xDER, err := x509.MarshalPKCS8PrivateKey(x)
	if err != nil {
		tb.Fatal(err)
	}
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x00}})
	legacy := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00112233445566778899AABBCCDDEEFF"}, Bytes: []byte("ciphertext")})

	secret, err := ca.NewSecret(detRand(3))
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := ca.NewToken(gen.Bundle, secret)
	if err != nil {
		tb.Fatal(err)
	}
	digest := tok.String()[len("SWMTKN-1-") : len("SWMTKN-1-")+ca.DigestLength]

	p256 := ecKey(tb, elliptic.P256())
	p256CSR := csrPEM(tb, p256, nil)
	b, _ := pem.Decode(p256CSR)
	p256DER := b.Bytes
	forged := csrPEM(tb, ecKey(tb, elliptic.P256()), &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: newID(tb, 4), OrganizationalUnit: []string{string(ca.RoleManager)}, Organization: []string{newID(tb, 5)}},
		DNSNames:    []string{"swarm-manager", "evil.example.com"},
		IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)},
	})
	tampered := bytes.Clone(p256DER)
	tampered[bytes.Index(tampered, []byte("node"))] ^= 1
	csrs := []fuzzSeed{
		{"ok-p256-pem", []any{p256CSR}},
		{"ok-p256-der", []any{p256DER}},
		{"ok-ed25519", []any{csrPEM(tb, edKey(tb), nil)}},
		{"ok-p384", []any{csrPEM(tb, ecKey(tb, elliptic.P384()), nil)}},
		{"ok-rsa2048", []any{csrPEM(tb, rsaKey(tb, 2048), nil)}},
		{"ok-forged-subject", []any{forged}},
		{"bad-tampered", []any{tampered}},
		{"bad-rsa1024", []any{csrPEM(tb, rsaKey(tb, 1024), nil)}},
		{"bad-p224", []any{csrPEM(tb, ecKey(tb, elliptic.P224()), nil)}},
		{"bad-certificate-block", []any{gen.Cert}},
		{"bad-garbage", []any{[]byte("garbage")}},
		{"bad-empty", []any{[]byte{}}},
	}

	return map[string][]fuzzSeed{
		"FuzzParseToken": {
			{"ok-token", []any{tok.String()}},
			{"ok-padded", []any{" " + tok.String() + "\n"}},
			{"ok-zero", []any{"SWMTKN-1-" + strings.Repeat("0", 50) + "-" + strings.Repeat("0", 25)}},
			{"bad-prefix", []any{"SWMTKX-1-" + digest + "-" + secret}},
			{"bad-version", []any{"SWMTKN-2-" + digest + "-" + secret}},
			{"bad-parts", []any{"SWMTKN-1-" + digest}},
			{"bad-digest-over-256-bits", []any{"SWMTKN-1-" + strings.Repeat("z", 50) + "-" + secret}},
			{"bad-secret-upper", []any{"SWMTKN-1-" + digest + "-" + strings.ToUpper(secret)}},
			{"bad-empty", []any{""}},
		},
		"FuzzParseCertificates": {
			{"ok-root", []any{gen.Cert}},
			{"ok-chain", []any{concat(corp.inter.CertPEM(), corp.root.CertPEM())}},
			{"ok-crlf", []any{bytes.ReplaceAll(gen.Cert, []byte("\n"), []byte("\r\n"))}},
			{"bad-trailing", []any{concat(gen.Cert, []byte("junk"))}},
			{"bad-key-block", []any{gen.Key}},
			{"bad-der", []any{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")})}},
			{"bad-empty", []any{[]byte{}}},
		},
		"FuzzParseKey": {
			{"ok-pkcs8-p256", []any{gen.Key}},
			{"ok-sec1-p384", []any{pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})}},
			{"ok-pkcs1-rsa1024", []any{pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey(tb, 1024))})}},
			{"ok-pkcs8-ed25519", []any{testkit.KeyPEM(tb, edKey(tb))}},
			{"ok-after-certificate", []any{concat(gen.Cert, gen.Key)}},
			{"bad-encrypted", []any{encrypted}},
			{"bad-legacy-encrypted", []any{legacy}},
			{"bad-x25519", []any{pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: xDER})}},
			{"bad-garbage", []any{[]byte("garbage")}},
		},
		"FuzzParseCSR": csrs,
		"FuzzSign":     csrs,
		"FuzzImport": {
			{"ok-generated-root", []any{gen.Cert, gen.Key}},
			{"ok-corporate-chain", []any{concat(corp.inter.CertPEM(), corp.root.CertPEM()), corp.inter.KeyPEM(tb)}},
			{"ok-p384-sec1", []any{p384.CertPEM(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})}},
			{"bad-intermediate-alone", []any{corp.inter.CertPEM(), corp.inter.KeyPEM(tb)}},
			{"bad-key-mismatch", []any{gen.Cert, corp.inter.KeyPEM(tb)}},
			{"bad-expired", []any{expired.CertPEM(), expired.KeyPEM(tb)}},
			{"bad-not-ca", []any{notCA.CertPEM(), notCA.KeyPEM(tb)}},
			{"bad-path-length", []any{concat(pathInter.CertPEM(), pathRoot.CertPEM()), pathInter.KeyPEM(tb)}},
			{"bad-encrypted-key", []any{gen.Cert, encrypted}},
			{"bad-garbage", []any{[]byte("garbage"), []byte("garbage")}},
		},
	}
}

// privateKeyPEM is what marks PEM text holding a private key: the type of
// every private key block ("PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED
// PRIVATE KEY", ...).
const privateKeyPEM = "PRIVATE KEY"

// hasPrivateKey reports whether any of args holds private key PEM text. Such
// a seed is never committed; its target adds it at run time.
func hasPrivateKey(args []any) bool {
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			if bytes.Contains(v, []byte(privateKeyPEM)) {
				return true
			}
		case string:
			if strings.Contains(v, privateKeyPEM) {
				return true
			}
		}
	}
	return false
}

// addSeeds adds fresh seeds for target with f.Add, those with a private key
// included. Those have no committed file for TestFuzzCorpus to check, so
// addSeeds checks them as it would: ok- seeds accepted, bad- ones refused.
func addSeeds(f *testing.F, target string) {
	f.Helper()
	var check func([]any) error
	for _, s := range fuzzSeeds(f)[target] {
		if hasPrivateKey(s.args) {
			if check == nil {
				check = seedCheck(f, target)
			}
			checkSeedResult(f, target+"/"+s.name+" (run-time seed)", s.name, check(s.args))
		}
		f.Add(s.args...)
	}
}

// checkSeedResult fails tb, calling the seed what, unless the seed called
// name was accepted (err == nil) if it is an ok- seed, or refused if it is a
// bad- one. It reports which kind the seed is.
func checkSeedResult(tb testing.TB, what, name string, err error) (ok, bad bool) {
	tb.Helper()
	switch {
	case strings.HasPrefix(name, "ok-"):
		if err != nil {
			tb.Errorf("%s = %v, want it accepted", what, err)
		}
		return true, false
	case strings.HasPrefix(name, "bad-"):
		if err == nil {
			tb.Errorf("%s accepted, want it refused", what)
		}
		return false, true
	}
	return false, false
}

// fuzzSigner is the fixed CA FuzzSign and FuzzImport sign with.
func fuzzSigner(tb testing.TB) (ca.Material, *ca.Signer, ca.Identity) {
	tb.Helper()
	cluster := newID(tb, 10)
	m := root(tb, 11, cluster)
	return m, signer(tb, m), ca.Identity{NodeID: newID(tb, 12), Role: ca.RoleWorker, ClusterID: cluster}
}

// isOneOf reports whether err wraps one of targets.
func isOneOf(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

func FuzzParseToken(f *testing.F) {
	addSeeds(f, "FuzzParseToken")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ca.ParseToken(s)
		if err != nil {
			if !errors.Is(err, ca.ErrMalformedToken) {
				t.Fatalf("ParseToken(%q) = %v, want an error wrapping %v", s, err, ca.ErrMalformedToken)
			}
			if tok != (ca.Token{}) {
				t.Fatalf("ParseToken(%q) = %+v with its error, want a zero Token", s, tok)
			}
			// The error never repeats what stands where the secret goes.
			parts := strings.Split(strings.TrimSpace(s), "-")
			if last := parts[len(parts)-1]; len(last) >= ca.SecretLength && isBase36(last) && strings.Contains(err.Error(), last) {
				t.Fatalf("ParseToken(%q) error %q repeats the secret", s, err)
			}
			return
		}
		// Parsing and writing are inverses.
		if got, want := tok.String(), strings.TrimSpace(s); got != want {
			t.Fatalf("ParseToken(%q).String() = %q, want %q", s, got, want)
		}
		again, err := ca.ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("ParseToken(%q) = %+v, %v, want %+v", tok.String(), again, err, tok)
		}
		if _, err := ca.NewToken(nil, tok.Secret); err != nil {
			t.Fatalf("NewToken(secret %q of a parsed token) = %v, want nil", tok.Secret, err)
		}
	})
}

func FuzzParseCertificates(f *testing.F) {
	addSeeds(f, "FuzzParseCertificates")
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := ca.ParseCertificates(data)
		if err != nil {
			if !errors.Is(err, ca.ErrMalformedPEM) || certs != nil {
				t.Fatalf("ParseCertificates = %d certificates, %v, want nil and an error wrapping %v", len(certs), err, ca.ErrMalformedPEM)
			}
			if _, _, err := ca.ParseBundle(data); !errors.Is(err, ca.ErrMalformedPEM) {
				t.Fatalf("ParseBundle(input ParseCertificates refuses) = %v, want an error wrapping %v", err, ca.ErrMalformedPEM)
			}
			return
		}
		if len(certs) == 0 {
			t.Fatalf("ParseCertificates = no certificates and no error")
		}
		enc := ca.EncodeCertificates(certs...)
		again, err := ca.ParseCertificates(enc)
		if err != nil || len(again) != len(certs) {
			t.Fatalf("ParseCertificates(EncodeCertificates(certs)) = %d certificates, %v, want %d", len(again), err, len(certs))
		}
		for i := range certs {
			if !again[i].Equal(certs[i]) {
				t.Fatalf("round trip changed certificate %d", i+1)
			}
		}
		_, roots, err := ca.ParseBundle(data)
		switch {
		case err == nil:
			if len(roots) != len(certs) {
				t.Fatalf("ParseBundle = %d roots, want %d", len(roots), len(certs))
			}
			for _, r := range roots {
				if !r.IsCA || !bytes.Equal(r.RawIssuer, r.RawSubject) || r.CheckSignatureFrom(r) != nil {
					t.Fatalf("ParseBundle accepted %s, not a self-signed CA", r.Subject)
				}
			}
		case !isOneOf(err, ca.ErrNotCA, ca.ErrChainIncomplete):
			t.Fatalf("ParseBundle = %v, want nil or an error wrapping %v or %v", err, ca.ErrNotCA, ca.ErrChainIncomplete)
		}
	})
}

func FuzzParseKey(f *testing.F) {
	addSeeds(f, "FuzzParseKey")
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ca.ParseKey(data)
		if err != nil {
			if !isOneOf(err, ca.ErrMalformedPEM, ca.ErrUnsupportedKey) || k != nil {
				t.Fatalf("ParseKey = %v, %v, want nil and an error wrapping %v or %v", k, err, ca.ErrMalformedPEM, ca.ErrUnsupportedKey)
			}
			return
		}
		out, err := ca.MarshalKey(k)
		if err != nil {
			t.Fatalf("MarshalKey(ParseKey(x)) = %v, want nil", err)
		}
		k2, err := ca.ParseKey(out)
		if err != nil || !publicKeyEqual(k2.Public(), k.Public()) {
			t.Fatalf("ParseKey(MarshalKey(key)) = %v, want the same key", err)
		}
		if out2, err := ca.MarshalKey(k2); err != nil || !bytes.Equal(out2, out) {
			t.Fatalf("MarshalKey is not stable across a round trip: %v", err)
		}
	})
}

// checkNodeKeyType fails unless pub is a key a node certificate may carry.
func checkNodeKeyType(t *testing.T, pub any) {
	t.Helper()
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if c := k.Curve; c != elliptic.P256() && c != elliptic.P384() && c != elliptic.P521() {
			t.Fatalf("accepted an ECDSA key on %s", c.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < ca.MinRSABits || n > ca.MaxRSABits {
			t.Fatalf("accepted an RSA key of %d bits", n)
		}
	default:
		t.Fatalf("accepted a %T key", pub)
	}
}

func FuzzParseCSR(f *testing.F) {
	addSeeds(f, "FuzzParseCSR")
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, err := ca.ParseCSR(data)
		if err != nil {
			if !isOneOf(err, ca.ErrBadCSR, ca.ErrCSRSignature, ca.ErrWeakKey, ca.ErrUnsupportedKey) || pub != nil {
				t.Fatalf("ParseCSR = %T, %v, want nil and an error wrapping a CSR error", pub, err)
			}
			return
		}
		checkNodeKeyType(t, pub)
		// The key is the CSR's, and the CSR's signature checks.
		req, err := x509.ParseCertificateRequest(pemOrDER(data))
		if err != nil {
			t.Fatalf("ParseCSR accepted what x509.ParseCertificateRequest refuses: %v", err)
		}
		if err := req.CheckSignature(); err != nil {
			t.Fatalf("ParseCSR accepted a CSR whose signature does not check: %v", err)
		}
		if !publicKeyEqual(pub, req.PublicKey) {
			t.Fatalf("ParseCSR returned a key that is not the CSR's")
		}
	})
}

func FuzzSign(f *testing.F) {
	addSeeds(f, "FuzzSign")
	m, s, id := fuzzSigner(f)
	want := ca.StatusOf(s.Certificate())
	f.Fuzz(func(t *testing.T, csr []byte) {
		iss, err := s.Sign(detRand(13), now, csr, id, ca.DefaultCertExpiry)
		if err != nil {
			if !isOneOf(err, ca.ErrBadCSR, ca.ErrCSRSignature, ca.ErrWeakKey, ca.ErrUnsupportedKey) || iss.PEM != nil {
				t.Fatalf("Sign = %v, want no certificate and an error wrapping a CSR error", err)
			}
			return
		}
		pub, err := ca.ParseCSR(csr)
		if err != nil {
			t.Fatalf("Sign accepted a CSR ParseCSR refuses: %v", err)
		}
		gotID, status, err := ca.VerifyPEM(iss.PEM, m.Bundle, now)
		if err != nil {
			t.Fatalf("VerifyPEM(Sign's certificate) = %v, want nil", err)
		}
		if gotID != id || !status.Equal(want) {
			t.Fatalf("VerifyPEM(Sign's certificate) = %+v, %v, want %+v, %v", gotID, status, id, want)
		}
		leaf := mustParseOne(t, iss.PEM)
		checkLeaf(t, leaf, id, pub)
	})
}

func FuzzImport(f *testing.F) {
	addSeeds(f, "FuzzImport")
	csr := csrPEM(f, ecKey(f, elliptic.P256()), nil)
	id := ca.Identity{NodeID: newID(f, 20), Role: ca.RoleManager, ClusterID: newID(f, 21)}
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		m, err := ca.Import(certPEM, keyPEM, now)
		if err != nil {
			if !isOneOf(err, ca.ErrMalformedPEM, ca.ErrNotCA, ca.ErrChainIncomplete, ca.ErrExpiring, ca.ErrKeyMismatch, ca.ErrUnsupportedKey, ca.ErrWeakKey) {
				t.Fatalf("Import = %v, want an error wrapping one of Import's errors", err)
			}
			if m.Cert != nil || m.Key != nil || m.Chain != nil || m.Bundle != nil {
				t.Fatalf("Import returned material with its error")
			}
			return
		}
		// The bundle is one self-signed root, the key is the certificate's,
		// and the chain starts at the certificate.
		_, roots, err := ca.ParseBundle(m.Bundle)
		if err != nil || len(roots) != 1 {
			t.Fatalf("ParseBundle(imported bundle) = %d roots, %v, want 1", len(roots), err)
		}
		cert := mustParseOne(t, m.Cert)
		key, err := ca.ParseKey(m.Key)
		if err != nil || !publicKeyEqual(key.Public(), cert.PublicKey) {
			t.Fatalf("imported key: %v, or not the certificate's", err)
		}
		if len(m.Chain) == 0 {
			if !cert.Equal(roots[0]) {
				t.Fatalf("Import: no chain, yet the certificate is not the bundle's root")
			}
		} else if chain := mustParse(t, m.Chain); !chain[0].Equal(cert) {
			t.Fatalf("Import: chain starts with %s, want the certificate %s", chain[0].Subject, cert.Subject)
		}
		// And it works: a leaf it signs verifies under its bundle.
		s, err := ca.NewSigner(m)
		if err != nil {
			t.Fatalf("NewSigner(imported material) = %v", err)
		}
		iss, err := s.Sign(detRand(22), now, csr, id, ca.DefaultCertExpiry)
		if err != nil {
			t.Fatalf("Sign(with imported material) = %v", err)
		}
		if got, _, err := ca.VerifyPEM(iss.PEM, m.Bundle, now); err != nil || got != id {
			t.Fatalf("VerifyPEM(leaf of imported material) = %+v, %v, want %+v", got, err, id)
		}
	})
}

// seedCheck runs a seed through what its target fuzzes and returns the
// error, if any.
func seedCheck(tb testing.TB, target string) func(args []any) error {
	tb.Helper()
	_, s, id := fuzzSigner(tb)
	return func(args []any) error {
		switch target {
		case "FuzzParseToken":
			_, err := ca.ParseToken(args[0].(string))
			return err
		case "FuzzParseCertificates":
			_, err := ca.ParseCertificates(args[0].([]byte))
			return err
		case "FuzzParseKey":
			_, err := ca.ParseKey(args[0].([]byte))
			return err
		case "FuzzParseCSR":
			_, err := ca.ParseCSR(args[0].([]byte))
			return err
		case "FuzzSign":
			_, err := s.Sign(detRand(1), now, args[0].([]byte), id, ca.DefaultCertExpiry)
			return err
		case "FuzzImport":
			_, err := ca.Import(args[0].([]byte), args[1].([]byte), now)
			return err
		}
		tb.Fatalf("no check for %s", target)
		return nil
	}
}

// TestFuzzCorpus checks the committed seed corpora: none holds a private
// key, each file is in Go's corpus format with the target's argument types,
// every seed without a private key is committed, and ok-/bad- seeds, the
// run-time ones included, are accepted/refused. With -update-corpus it first
// rewrites them, leaving out (and deleting any stale file of) each seed that
// holds a private key.
func TestFuzzCorpus(t *testing.T) {
	seeds := fuzzSeeds(t)
	if *updateCorpus {
		for target, ss := range seeds {
			dir := filepath.Join("testdata", "fuzz", target)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, s := range ss {
				path := filepath.Join(dir, s.name)
				if hasPrivateKey(s.args) {
					// Never committed: addSeeds adds it at run time.
					if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
						t.Fatal(err)
					}
					continue
				}
				if err := os.WriteFile(path, marshalCorpus(s.args), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	t.Run("NoPrivateKey", func(t *testing.T) {
		dir := filepath.Join("testdata", "fuzz")
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			// The decoded values too, in case the quoting hides the text.
			args, _ := unmarshalCorpus(data)
			if bytes.Contains(data, []byte(privateKeyPEM)) || hasPrivateKey(args) {
				t.Errorf("%s holds %q: never commit a private key, not even a test key; delete the file and let the target add the seed at run time (see addSeeds)", path, privateKeyPEM)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	for target, ss := range seeds {
		t.Run(target, func(t *testing.T) {
			dir := filepath.Join("testdata", "fuzz", target)
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatalf("seed corpus: %v (write it with go test -run=TestFuzzCorpus ./ca/ -update-corpus)", err)
			}
			check := seedCheck(t, target)
			want := ss[0].args
			var ok, bad int
			count := func(isOK, isBad bool) {
				if isOK {
					ok++
				}
				if isBad {
					bad++
				}
			}
			committed := make(map[string]bool)
			for _, e := range entries {
				committed[e.Name()] = true
				data, err := os.ReadFile(filepath.Join(dir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				args, err := unmarshalCorpus(data)
				if err != nil {
					t.Errorf("%s/%s: %v", target, e.Name(), err)
					continue
				}
				if len(args) != len(want) {
					t.Errorf("%s/%s: %d arguments, want %d", target, e.Name(), len(args), len(want))
					continue
				}
				typesOK := true
				for i := range args {
					if fmt.Sprintf("%T", args[i]) != fmt.Sprintf("%T", want[i]) {
						t.Errorf("%s/%s: argument %d is %T, want %T", target, e.Name(), i, args[i], want[i])
						typesOK = false
					}
				}
				if !typesOK {
					continue
				}
				count(checkSeedResult(t, target+"/"+e.Name(), e.Name(), check(args)))
			}
			for _, s := range ss {
				if hasPrivateKey(s.args) {
					// Added at run time only; addSeeds checks it too.
					count(checkSeedResult(t, target+"/"+s.name+" (run-time seed)", s.name, check(s.args)))
					continue
				}
				if !committed[s.name] {
					t.Errorf("%s/%s: seed not committed (write it with go test -run=TestFuzzCorpus ./ca/ -update-corpus)", target, s.name)
				}
			}
			if ok == 0 || bad == 0 {
				t.Errorf("%s: %d ok- and %d bad- seeds, committed or added at run time, want some of each", target, ok, bad)
			}
		})
	}
}

// marshalCorpus writes args in Go's fuzz corpus format.
func marshalCorpus(args []any) []byte {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		default:
			panic(fmt.Sprintf("marshalCorpus: %T", a))
		}
	}
	return b.Bytes()
}

// unmarshalCorpus reads the []byte and string values of a corpus file.
func unmarshalCorpus(data []byte) ([]any, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	if !sc.Scan() || sc.Text() != "go test fuzz v1" {
		return nil, errors.New(`first line is not "go test fuzz v1"`)
	}
	var args []any
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var kind string
		switch {
		case strings.HasPrefix(line, "[]byte(") && strings.HasSuffix(line, ")"):
			kind, line = "[]byte", line[len("[]byte("):len(line)-1]
		case strings.HasPrefix(line, "string(") && strings.HasSuffix(line, ")"):
			kind, line = "string", line[len("string("):len(line)-1]
		default:
			return nil, fmt.Errorf("line %q is not []byte(...) or string(...)", line)
		}
		s, err := strconv.Unquote(line)
		if err != nil {
			return nil, fmt.Errorf("line %q: %v", line, err)
		}
		if kind == "[]byte" {
			args = append(args, []byte(s))
		} else {
			args = append(args, s)
		}
	}
	return args, sc.Err()
}
