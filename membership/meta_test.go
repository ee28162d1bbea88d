package membership

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/quorumca/quorumca/ca"
)

func filled(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func TestMetaRoundTrip(t *testing.T) {
	var issuer [32]byte
	var bundle [16]byte
	copy(issuer[:], filled(0xff, 32))
	copy(bundle[:], filled(0x80, 16))
	cases := []struct {
		name string
		meta Meta
	}{
		{"zero", Meta{}},
		{"manager", testMeta(ca.RoleManager, "7f3a9c01")},
		{"worker", testMeta(ca.RoleWorker, "00")},
		{"all ones digests", Meta{Role: ca.RoleWorker, Serial: "1", Issuer: issuer, Bundle: bundle}},
		{"role only", Meta{Role: ca.RoleManager}},
		{"unknown role kept as is", Meta{Role: "swarm-admin", Serial: "ab"}},
		{"json-special serial", Meta{Role: ca.RoleWorker, Serial: `"<>&\` + "\u2028\n\t"}},
		{"unicode serial", Meta{Serial: "séríal-✓"}},
		{"longest serial", func() Meta {
			m := testMeta(ca.RoleManager, "")
			m.Serial = strings.Repeat("9", maxSerialLen(t, m))
			return m
		}()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.meta.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if len(b) > maxMeta {
				t.Fatalf("Encode gave %d bytes, over %d", len(b), maxMeta)
			}
			got, err := DecodeMeta(b)
			if err != nil {
				t.Fatalf("DecodeMeta(%s): %v", b, err)
			}
			if got != tc.meta {
				t.Fatalf("round trip: got %+v, want %+v", got, tc.meta)
			}
			// Encoding is deterministic.
			b2, err := got.Encode()
			if err != nil || !bytes.Equal(b, b2) {
				t.Fatalf("re-encode: %s, %v; first encoding %s", b2, err, b)
			}
		})
	}
}

func TestMetaWireFormat(t *testing.T) {
	// Other nodes, maybe of another release, read this: pin it.
	m := Meta{Role: ca.RoleWorker, Serial: "0a"}
	m.Issuer[0], m.Issuer[31] = 0x01, 0xfe
	m.Bundle[15] = 0x10
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var w map[string]any
	if err := json.Unmarshal(b, &w); err != nil {
		t.Fatalf("Encode is not JSON: %s: %v", b, err)
	}
	want := map[string]any{
		"v": float64(1),
		"r": "swarm-worker",
		"s": "0a",
		"i": "01" + strings.Repeat("00", 30) + "fe",
		"b": strings.Repeat("00", 15) + "10",
	}
	if fmt.Sprint(w) != fmt.Sprint(want) {
		t.Fatalf("wire form %s, want %v", b, want)
	}
	// A hand-written encoding, upper-case hex and reordered fields, reads.
	in := `{"s":"0a","b":"` + strings.Repeat("00", 15) + `10","r":"swarm-worker","i":"01` + strings.Repeat("00", 30) + `FE","v":1}`
	got, err := DecodeMeta([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got != m {
		t.Fatalf("DecodeMeta(%s) = %+v, want %+v", in, got, m)
	}
}

func TestDecodeMetaRejects(t *testing.T) {
	good := func(mut func(*wireMeta)) string {
		w := wireMeta{V: 1, Role: string(ca.RoleWorker), Serial: "01",
			Issuer: strings.Repeat("ab", 32), Bundle: strings.Repeat("cd", 16)}
		mut(&w)
		b, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// Sanity: the unmutated form decodes.
	if _, err := DecodeMeta([]byte(good(func(*wireMeta) {}))); err != nil {
		t.Fatalf("valid encoding refused: %v", err)
	}
	cases := map[string]string{
		"nil":                  "",
		"garbage":              "\x00\x01garbage\xff",
		"not an object":        `[1,2,3]`,
		"json null":            `null`,
		"truncated":            good(func(*wireMeta) {})[:40],
		"trailing data":        good(func(*wireMeta) {}) + "x",
		"version 0":            good(func(w *wireMeta) { w.V = 0 }),
		"version 2":            good(func(w *wireMeta) { w.V = 2 }),
		"version -1":           good(func(w *wireMeta) { w.V = -1 }),
		"version as string":    strings.Replace(good(func(*wireMeta) {}), `"v":1`, `"v":"1"`, 1),
		"no version":           strings.Replace(good(func(*wireMeta) {}), `"v":1,`, ``, 1),
		"serial not a string":  strings.Replace(good(func(*wireMeta) {}), `"s":"01"`, `"s":1`, 1),
		"issuer short":         good(func(w *wireMeta) { w.Issuer = strings.Repeat("ab", 31) }),
		"issuer long":          good(func(w *wireMeta) { w.Issuer = strings.Repeat("ab", 33) }),
		"issuer empty":         good(func(w *wireMeta) { w.Issuer = "" }),
		"issuer odd length":    good(func(w *wireMeta) { w.Issuer = strings.Repeat("ab", 32) + "a" }),
		"issuer non-hex":       good(func(w *wireMeta) { w.Issuer = strings.Repeat("zz", 32) }),
		"issuer bundle-sized":  good(func(w *wireMeta) { w.Issuer = strings.Repeat("ab", 16) }),
		"bundle short":         good(func(w *wireMeta) { w.Bundle = strings.Repeat("cd", 15) }),
		"bundle issuer-sized":  good(func(w *wireMeta) { w.Bundle = strings.Repeat("cd", 32) }),
		"bundle empty":         good(func(w *wireMeta) { w.Bundle = "" }),
		"bundle non-hex":       good(func(w *wireMeta) { w.Bundle = strings.Repeat("g0", 16) }),
		"bundle with 0x":       good(func(w *wireMeta) { w.Bundle = "0x" + strings.Repeat("cd", 15) }),
		"bundle with spaces":   good(func(w *wireMeta) { w.Bundle = strings.Repeat("cd ", 16) }),
		"issuer missing field": strings.Replace(good(func(*wireMeta) {}), `"i":"`+strings.Repeat("ab", 32)+`",`, ``, 1),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			var (
				m   Meta
				err error
			)
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("DecodeMeta(%q) panicked: %v", in, r)
					}
				}()
				m, err = DecodeMeta([]byte(in))
			}()
			if err == nil {
				t.Fatalf("DecodeMeta(%q) = %+v, want an error", in, m)
			}
			if m != (Meta{}) {
				t.Errorf("DecodeMeta(%q) returned %+v along with its error", in, m)
			}
		})
	}
}

func TestEncodeMetaTooLarge(t *testing.T) {
	m := testMeta(ca.RoleManager, strings.Repeat("ab", 500)) // 1000 chars
	b, err := m.Encode()
	if !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("Encode of a 1000-char serial = %d bytes, %v; want ErrMetaTooLarge", len(b), err)
	}
	if b != nil {
		t.Errorf("Encode returned %d bytes along with its error", len(b))
	}

	// The limit is exact: maxMeta bytes encode, one more does not.
	n := maxSerialLen(t, m)
	m.Serial = strings.Repeat("a", n)
	if b, err := m.Encode(); err != nil || len(b) != maxMeta {
		t.Fatalf("Encode at the limit = %d bytes, %v; want %d bytes", len(b), err, maxMeta)
	}
	m.Serial += "a"
	if _, err := m.Encode(); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("Encode one byte over the limit: %v, want ErrMetaTooLarge", err)
	}
	// Escaping counts: a short serial that JSON escapes 6-fold is too large.
	m.Serial = strings.Repeat("<", 70)
	if _, err := m.Encode(); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("Encode of an escaped serial: %v, want ErrMetaTooLarge", err)
	}
}

func TestMaxMetaFitsMemberlist(t *testing.T) {
	// NodeMeta panics if metadata exceeds memberlist's limit; Encode's
	// limit must stay below it.
	if maxMeta > memberlist.MetaMaxSize {
		t.Fatalf("maxMeta %d is over memberlist.MetaMaxSize %d", maxMeta, memberlist.MetaMaxSize)
	}
	m := testMeta(ca.RoleManager, "")
	m.Serial = strings.Repeat("e", maxSerialLen(t, m))
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d := delegate{&Member{meta: b}}
	if got := d.NodeMeta(memberlist.MetaMaxSize); !bytes.Equal(got, b) {
		t.Fatalf("NodeMeta = %q, want %q", got, b)
	}
}

func TestStatusDigest(t *testing.T) {
	var k1, k2 [sha256.Size]byte
	copy(k1[:], "issuer key hash number one......")
	copy(k2[:], "issuer key hash number two......")
	subject := []byte("0\x1a1\x180\x16\x06\x03U\x04\x03\x13\x0fquorumca root")

	base := ca.TLSStatus{IssuerSubject: subject, IssuerKeyHash: k1}
	same := ca.TLSStatus{IssuerSubject: append([]byte(nil), subject...), IssuerKeyHash: k1}
	if StatusDigest(base) != StatusDigest(same) {
		t.Fatal("equal statuses have different digests")
	}
	if StatusDigest(ca.TLSStatus{}) != StatusDigest(ca.TLSStatus{IssuerSubject: []byte{}}) {
		t.Fatal("nil and empty subjects have different digests")
	}

	otherSubject := ca.TLSStatus{IssuerSubject: append(append([]byte(nil), subject[:len(subject)-1]...), 'X'), IssuerKeyHash: k1}
	otherKey := ca.TLSStatus{IssuerSubject: subject, IssuerKeyHash: k2}
	noSubject := ca.TLSStatus{IssuerKeyHash: k1}
	digests := map[string][32]byte{
		"base":          StatusDigest(base),
		"other subject": StatusDigest(otherSubject),
		"other key":     StatusDigest(otherKey),
		"no subject":    StatusDigest(noSubject),
		"zero":          StatusDigest(ca.TLSStatus{}),
	}
	// Subject and key run into each other: subject "ab" with key K, and
	// subject "a" with a key starting with "b" and then K, hash nearly
	// the same bytes; the length prefix keeps them apart.
	var kb [sha256.Size]byte
	kb[0] = 'b'
	copy(kb[1:], k1[:])
	digests[`"ab"+K`] = StatusDigest(ca.TLSStatus{IssuerSubject: []byte("ab"), IssuerKeyHash: k1})
	digests[`"a"+"b"K`] = StatusDigest(ca.TLSStatus{IssuerSubject: []byte("a"), IssuerKeyHash: kb})
	seen := map[[32]byte]string{}
	for name, d := range digests {
		if prev, dup := seen[d]; dup {
			t.Errorf("statuses %q and %q have the same digest", prev, name)
		}
		seen[d] = name
	}

	// Pin the construction: SHA-256 of "<len>:" || subject || key hash.
	want := sha256.Sum256(append([]byte("2:ab"), k1[:]...))
	if got := digests[`"ab"+K`]; got != want {
		t.Fatalf("StatusDigest = %x, want %x", got, want)
	}
	// And the digest is not the plain concatenation.
	if plain := sha256.Sum256(append([]byte("ab"), k1[:]...)); digests[`"ab"+K`] == plain {
		t.Fatal("StatusDigest has no length prefix")
	}
}

func TestBundleDigest(t *testing.T) {
	b1 := []byte("-----BEGIN CERTIFICATE-----\nMIIB...one\n-----END CERTIFICATE-----\n")
	b2 := []byte("-----BEGIN CERTIFICATE-----\nMIIB...two\n-----END CERTIFICATE-----\n")
	both := append(append([]byte(nil), b1...), b2...)
	if BundleDigest(b1) != BundleDigest(append([]byte(nil), b1...)) {
		t.Fatal("equal bundles have different digests")
	}
	if BundleDigest(nil) != BundleDigest([]byte{}) {
		t.Fatal("nil and empty bundles have different digests")
	}
	ds := map[[16]byte]string{}
	for name, b := range map[string][]byte{"b1": b1, "b2": b2, "both": both, "empty": nil, "b1 without newline": b1[:len(b1)-1]} {
		d := BundleDigest(b)
		if prev, dup := ds[d]; dup {
			t.Errorf("bundles %q and %q have the same digest", prev, name)
		}
		ds[d] = name
	}
	sum := sha256.Sum256(b1)
	if d := BundleDigest(b1); !bytes.Equal(d[:], sum[:16]) {
		t.Fatalf("BundleDigest = %x, want the first half of SHA-256 %x", d, sum[:16])
	}
}

func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{
		{},
		testMeta(ca.RoleManager, "7f3a9c01"),
		testMeta(ca.RoleWorker, "00"),
		{Role: ca.RoleWorker, Serial: `"<>&\` + "\u2028"},
	} {
		b, err := m.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	hex64, hex32 := strings.Repeat("ab", 32), strings.Repeat("cd", 16)
	for _, s := range []string{
		"",
		"null",
		"{}",
		`{"v":1}`,
		`{"v":2,"r":"swarm-worker","s":"01","i":"` + hex64 + `","b":"` + hex32 + `"}`,
		`{"v":1,"r":"swarm-worker","s":"01","i":"` + hex64[2:] + `","b":"` + hex32 + `"}`,
		`{"v":1,"r":"swarm-worker","s":"01","i":"` + hex64 + `","b":"` + strings.Repeat("zz", 16) + `"}`,
		`{"V":1,"R":"x","S":"\u003c\ud800","I":"` + strings.ToUpper(hex64) + `","B":"` + hex32 + `"}`,
		`{"v":1,"s":"` + strings.Repeat("\\u003c", 80) + `","i":"` + hex64 + `","b":"` + hex32 + `"}`,
		"\xff\xfe{",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			if m != (Meta{}) {
				t.Fatalf("DecodeMeta(%q) returned %+v along with error %v", b, m, err)
			}
			return
		}
		enc, err := m.Encode()
		if errors.Is(err, ErrMetaTooLarge) {
			// Decoding is lenient about size (escapes, long input);
			// encoding is not.
			return
		}
		if err != nil {
			t.Fatalf("decoded %+v from %q, but Encode: %v", m, b, err)
		}
		if len(enc) > maxMeta {
			t.Fatalf("Encode gave %d bytes, over %d", len(enc), maxMeta)
		}
		m2, err := DecodeMeta(enc)
		if err != nil {
			t.Fatalf("DecodeMeta(Encode(%+v)) = %v (encoding %q)", m, err, enc)
		}
		if m2 != m {
			t.Fatalf("round trip of %q: %+v, then %+v", b, m, m2)
		}
		// The digests survive as the hex the wire says.
		if w := hex.EncodeToString(m.Issuer[:]); !bytes.Contains(enc, []byte(w)) {
			t.Fatalf("encoding %q lacks issuer %s", enc, w)
		}
	})
}
