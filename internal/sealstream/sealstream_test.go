package sealstream

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

func newAEAD(t *testing.T) cipher.AEAD {
	key := make([]byte, 32)
	rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return aead
}

func seal(t *testing.T, aead cipher.AEAD, head, prefix, plain []byte) []byte {
	var out bytes.Buffer
	w := NewWriter(&out, aead, head, prefix)
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestRoundTripAndTampering: streams of every size around the chunk size
// open whole; cut short, changed, under another header, prefix or key,
// they do not.
func TestRoundTripAndTampering(t *testing.T) {
	aead, other := newAEAD(t), newAEAD(t)
	head, prefix := []byte("HEAD"), []byte("prefix00")
	for _, size := range []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 3*ChunkSize + 7} {
		plain := make([]byte, size)
		rand.Read(plain)
		sealed := seal(t, aead, head, prefix, plain)
		got, err := io.ReadAll(NewReader(bytes.NewReader(sealed), aead, head, prefix, "test"))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: read %d bytes, %v; want the %d written", size, len(got), err, size)
		}
		changed := bytes.Clone(sealed)
		changed[len(changed)/2] ^= 1
		cases := map[string]*Reader{
			"cut short":      NewReader(bytes.NewReader(sealed[:len(sealed)-1]), aead, head, prefix, "test"),
			"last chunk cut": NewReader(bytes.NewReader(sealed[:len(sealed)-4-aead.Overhead()-size%ChunkSize]), aead, head, prefix, "test"),
			"changed":        NewReader(bytes.NewReader(changed), aead, head, prefix, "test"),
			"another header": NewReader(bytes.NewReader(sealed), aead, []byte("HEAX"), prefix, "test"),
			"another prefix": NewReader(bytes.NewReader(sealed), aead, head, []byte("prefix01"), "test"),
			"another key":    NewReader(bytes.NewReader(sealed), other, head, prefix, "test"),
		}
		for name, r := range cases {
			if name == "last chunk cut" && size < ChunkSize {
				continue // one chunk only: "cut short" covers it
			}
			if _, err := io.ReadAll(r); !errors.Is(err, ErrOpen) {
				t.Errorf("size %d, %s: read %v, want ErrOpen", size, name, err)
			}
		}
	}
}
