package ca_test

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/ca"
)

var tokenRE = regexp.MustCompile(`^SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$`)

func TestTokenRoundTrip(t *testing.T) {
	bundles := [][]byte{
		root(t, 1, newID(t, 1)).Bundle,
		nil,
		[]byte("any bytes at all"),
	}
	r := detRand(2)
	for i, bundle := range bundles {
		secret, err := ca.NewSecret(r)
		if err != nil {
			t.Fatalf("NewSecret = %v", err)
		}
		if len(secret) != 25 || !isBase36(secret) {
			t.Fatalf("NewSecret = %q, want 25 base-36 characters", secret)
		}
		tok, err := ca.NewToken(bundle, secret)
		if err != nil {
			t.Fatalf("NewToken(bundle %d, %q) = %v", i, secret, err)
		}
		if tok.Digest != sha256.Sum256(bundle) || tok.Secret != secret {
			t.Errorf("NewToken(bundle %d) = %x/%q, want the bundle's SHA-256 and the secret", i, tok.Digest, tok.Secret)
		}
		s := tok.String()
		if !tokenRE.MatchString(s) {
			t.Errorf("Token.String() = %q, want it to match %s", s, tokenRE)
		}
		if !strings.HasSuffix(s, "-"+secret) {
			t.Errorf("Token.String() = %q, want it to end in the secret", s)
		}
		got, err := ca.ParseToken(s)
		if err != nil || got != tok {
			t.Errorf("ParseToken(%q) = %+v, %v, want %+v, nil", s, got, err, tok)
		}
		// Spaces and a newline around a pasted token are fine.
		if got, err := ca.ParseToken("  " + s + "\n"); err != nil || got != tok {
			t.Errorf("ParseToken(padded) = %+v, %v, want %+v, nil", got, err, tok)
		}
		if err := got.VerifyBundle(bundle); err != nil {
			t.Errorf("VerifyBundle(its own bundle) = %v, want nil", err)
		}
	}
}

// Digests and secrets with leading zero digits keep their width.
func TestTokenPadding(t *testing.T) {
	zero, err := ca.NewSecret(constReader(0))
	if err != nil || zero != strings.Repeat("0", 25) {
		t.Fatalf("NewSecret(zeros) = %q, %v, want 25 zeros", zero, err)
	}
	tok := ca.Token{Secret: zero} // digest all zero
	want := "SWMTKN-1-" + strings.Repeat("0", 50) + "-" + strings.Repeat("0", 25)
	if got := tok.String(); got != want {
		t.Errorf("Token{zero}.String() = %q, want %q", got, want)
	}
	if got, err := ca.ParseToken(want); err != nil || got != tok {
		t.Errorf("ParseToken(%q) = %+v, %v, want %+v, nil", want, got, err, tok)
	}
	var max ca.Token
	for i := range max.Digest {
		max.Digest[i] = 0xff
	}
	max.Secret, _ = ca.NewSecret(constReader(0xff))
	s := max.String()
	if !tokenRE.MatchString(s) {
		t.Errorf("Token{max}.String() = %q, want it to match %s", s, tokenRE)
	}
	if got, err := ca.ParseToken(s); err != nil || got != max {
		t.Errorf("ParseToken(%q) = %+v, %v, want %+v, nil", s, got, err, max)
	}
}

func TestNewSecretFailingReader(t *testing.T) {
	if s, err := ca.NewSecret(errReader{}); !errors.Is(err, errRead) || s != "" {
		t.Errorf("NewSecret(failing reader) = %q, %v, want \"\", %v", s, err, errRead)
	}
}

func TestNewTokenRefusesBadSecret(t *testing.T) {
	for _, secret := range []string{"", "short", strings.Repeat("A", 25), strings.Repeat("z", 25), strings.Repeat("0", 24) + "-"} {
		if _, err := ca.NewToken(nil, secret); !errors.Is(err, ca.ErrMalformedToken) {
			t.Errorf("NewToken(%q) = %v, want %v", secret, err, ca.ErrMalformedToken)
		}
	}
}

func TestParseTokenRefuses(t *testing.T) {
	secret := "0123456789abcdefghijklmno" // 25 base-36 characters, under 2^128
	tok, err := ca.NewToken([]byte("bundle"), secret)
	if err != nil {
		t.Fatalf("NewToken = %v", err)
	}
	good := tok.String()
	digest := good[len("SWMTKN-1-") : len("SWMTKN-1-")+50]
	tests := []struct {
		name     string
		token    string
		wantPart string // the error names it
	}{
		{"empty", "", "4 parts"},
		{"three parts", "SWMTKN-1-" + digest, "4 parts"},
		{"five parts", good + "-extra", "4 parts"},
		{"dash in the secret", "SWMTKN-1-" + digest + "-" + secret[:12] + "-" + secret[12:], "4 parts"},
		{"wrong prefix", "SWMTKX-1-" + digest + "-" + secret, "prefix"},
		{"lower-case prefix", "swmtkn-1-" + digest + "-" + secret, "prefix"},
		{"version 2", "SWMTKN-2-" + digest + "-" + secret, "version"},
		{"secret where the version goes", "SWMTKN-" + secret + "-" + digest + "-1", "version"},
		{"short digest", "SWMTKN-1-" + digest[1:] + "-" + secret, "digest"},
		{"long digest", "SWMTKN-1-" + digest + "0-" + secret, "digest"},
		{"upper-case digest", "SWMTKN-1-" + strings.ToUpper(digest) + "-" + secret, "digest"},
		{"digest over 256 bits", "SWMTKN-1-" + strings.Repeat("z", 50) + "-" + secret, "digest"},
		{"short secret", "SWMTKN-1-" + digest + "-" + secret[1:], "secret"},
		{"long secret", good + "p", "secret"},
		{"upper-case secret", "SWMTKN-1-" + digest + "-" + strings.ToUpper(secret), "secret"},
		{"secret over 128 bits", "SWMTKN-1-" + digest + "-" + strings.Repeat("z", 25), "secret"},
		{"secret with a symbol", "SWMTKN-1-" + digest + "-" + secret[:24] + "!", "secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.ParseToken(tt.token)
			if !errors.Is(err, ca.ErrMalformedToken) {
				t.Fatalf("ParseToken(%q) = %+v, %v, want %v", tt.token, got, err, ca.ErrMalformedToken)
			}
			if got != (ca.Token{}) {
				t.Errorf("ParseToken(%q) = %+v with its error, want a zero Token", tt.token, got)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.wantPart) {
				t.Errorf("ParseToken(%q) error %q, want it to name the %s", tt.token, msg, tt.wantPart)
			}
			// Only the malformed part: the message for a wrong count
			// spells out the whole layout, the others name one part.
			if tt.wantPart != "4 parts" {
				for _, other := range []string{"4 parts", "prefix", "version", "digest", "secret"} {
					if other != tt.wantPart && strings.Contains(msg, other) {
						t.Errorf("ParseToken(%q) error %q names the %s, want only the %s", tt.token, msg, other, tt.wantPart)
					}
				}
			}
			if strings.Contains(msg, secret) || strings.Contains(msg, strings.ToUpper(secret)) {
				t.Errorf("ParseToken(%q) error %q repeats the secret", tt.token, msg)
			}
		})
	}
}

func TestVerifyBundle(t *testing.T) {
	cluster := newID(t, 1)
	bundle := root(t, 2, cluster).Bundle
	other := root(t, 3, cluster).Bundle
	secret, err := ca.NewSecret(detRand(4))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ca.NewToken(bundle, secret)
	if err != nil {
		t.Fatal(err)
	}
	// Parse the token back, as a joining node does.
	tok, err = ca.ParseToken(tok.String())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		bundle []byte
		want   error
	}{
		{"exact bundle", bundle, nil},
		{"extra root appended", concat(bundle, other), ca.ErrDigestMismatch},
		{"extra root first", concat(other, bundle), ca.ErrDigestMismatch},
		{"different bundle", other, ca.ErrDigestMismatch},
		{"trailing newline", concat(bundle, []byte("\n")), ca.ErrDigestMismatch},
		{"empty", nil, ca.ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tok.VerifyBundle(tt.bundle); !errors.Is(err, tt.want) {
				t.Errorf("VerifyBundle(%s) = %v, want %v", tt.name, err, tt.want)
			}
		})
	}
}

func TestSecretEqual(t *testing.T) {
	a, _ := ca.NewSecret(detRand(1))
	b, _ := ca.NewSecret(detRand(2))
	tests := []struct {
		x, y string
		want bool
	}{
		{a, a, true},
		{a, strings.Clone(a), true},
		{"", "", true},
		{a, b, false},
		{a, a[:24], false},
		{a, a + "0", false},
		{a, strings.ToUpper(a), false},
		{a, "", false},
	}
	for _, tt := range tests {
		if got := ca.SecretEqual(tt.x, tt.y); got != tt.want {
			t.Errorf("SecretEqual(%q, %q) = %v, want %v", tt.x, tt.y, got, tt.want)
		}
	}
}

// TestTokenProof checks that a proof holds for its secret, keying
// material and CSR only.
func TestTokenProof(t *testing.T) {
	secret := sha256.Sum256([]byte("secret"))
	other := sha256.Sum256([]byte("other"))
	ekm, csr := []byte("keying material of one connection"), []byte("csr")
	proof := ca.TokenProof(secret, ekm, csr)
	if !ca.CheckTokenProof(secret, ekm, csr, proof) {
		t.Fatalf("CheckTokenProof(its own proof) = false")
	}
	for name, ok := range map[string]bool{
		"other secret":     ca.CheckTokenProof(other, ekm, csr, proof),
		"other connection": ca.CheckTokenProof(secret, []byte("keying material of another"), csr, proof),
		"other CSR":        ca.CheckTokenProof(secret, ekm, []byte("csr2"), proof),
		"truncated proof":  ca.CheckTokenProof(secret, ekm, csr, proof[:16]),
		"no proof":         ca.CheckTokenProof(secret, ekm, csr, nil),
	} {
		if ok {
			t.Errorf("CheckTokenProof(%s) = true, want false", name)
		}
	}
}

// TestUnlockKey checks unlock keys: their form, their KEK, and that what
// one seals opens with it only.
func TestUnlockKey(t *testing.T) {
	key, err := ca.NewUnlockKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(key, "QCKEY-1-") {
		t.Errorf("NewUnlockKey() = %q, want the QCKEY-1- prefix", key)
	}
	kek, err := ca.ParseUnlockKey(key)
	if err != nil || !kek.Valid() || kek.ID == "" {
		t.Fatalf("ParseUnlockKey(%q) = %v, %v", key, kek.ID, err)
	}
	again, _ := ca.ParseUnlockKey(" " + key + "\n")
	if again.ID != kek.ID {
		t.Errorf("the KEK of the same key differs: %s, %s", again.ID, kek.ID)
	}
	other, _ := ca.NewUnlockKey(rand.Reader)
	otherKEK, _ := ca.ParseUnlockKey(other)
	if otherKEK.ID == kek.ID {
		t.Errorf("two unlock keys share KEK ID %s", kek.ID)
	}
	sealed, err := kek.Seal(rand.Reader, []byte("data key"), []byte("slot"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := kek.Open(sealed, []byte("slot")); err != nil || string(got) != "data key" {
		t.Errorf("Open(Seal()) = %q, %v", got, err)
	}
	for name, err := range map[string]error{
		"another key":  func() error { _, err := otherKEK.Open(sealed, []byte("slot")); return err }(),
		"another slot": func() error { _, err := kek.Open(sealed, []byte("other")); return err }(),
		"cut short":    func() error { _, err := kek.Open(sealed[:10], []byte("slot")); return err }(),
	} {
		if !errors.Is(err, ca.ErrKEKOpen) {
			t.Errorf("Open(%s) = %v, want ErrKEKOpen", name, err)
		}
	}
	for _, bad := range []string{"", "QCKEY-1-", "QCKEY-2-" + key[8:], key + "x", "SWMTKN-1-abc"} {
		if _, err := ca.ParseUnlockKey(bad); !errors.Is(err, ca.ErrMalformedUnlockKey) {
			t.Errorf("ParseUnlockKey(%q) = %v, want ErrMalformedUnlockKey", bad, err)
		}
		if _, err := ca.ParseUnlockKey(bad); err != nil && strings.Contains(err.Error(), key[8:]) {
			t.Errorf("ParseUnlockKey's error repeats the key")
		}
	}
}
