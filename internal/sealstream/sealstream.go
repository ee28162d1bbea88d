// Package sealstream seals a byte stream under an AEAD, a chunk at a time,
// so that a stream of any length is sealed and opened in bounded memory:
// a Raft snapshot, a backup.
//
// The caller writes its own header first; the stream that follows is a
// run of chunks, each a 4-byte length (its top bit marks the last chunk)
// and the AEAD's sealing of that many bytes, with nonce = the caller's
// 8-byte prefix | chunk number, and the header, the chunk number and the
// last-chunk bit as additional data. Chunks cannot be reordered, dropped,
// cut short or moved to another header without failing to open.
package sealstream

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	// ChunkSize is the most plain bytes a chunk holds.
	ChunkSize = 64 << 10
	// PrefixSize is the size of the nonce prefix; the AEAD's nonce must
	// be PrefixSize+4 bytes (AES-GCM's 12).
	PrefixSize = 8
	lastChunk  = 1 << 31
)

// ErrOpen is returned when a stream does not open: cut short, reordered,
// changed, or sealed under another key.
var ErrOpen = errors.New("sealed stream does not open")

func nonce(prefix []byte, n uint32) []byte {
	out := make([]byte, PrefixSize+4)
	copy(out, prefix)
	binary.BigEndian.PutUint32(out[PrefixSize:], n)
	return out
}

func additional(head []byte, n uint32, last bool) []byte {
	ad := append(append([]byte(nil), head...), 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(ad[len(head):], n)
	if last {
		ad[len(ad)-1] = 1
	}
	return ad
}

// Writer seals what is written to it; Close writes the last chunk (it does
// not close the underlying writer).
type Writer struct {
	w            io.Writer
	aead         cipher.AEAD
	head, prefix []byte
	buf          []byte
	n            uint32
}

// NewWriter returns a Writer that seals into w under aead, bound to head
// (the header the caller wrote before), with the nonce prefix prefix,
// which must never be used twice with the same key.
func NewWriter(w io.Writer, aead cipher.AEAD, head, prefix []byte) *Writer {
	return &Writer{w: w, aead: aead, head: head, prefix: prefix, buf: make([]byte, 0, ChunkSize)}
}

func (sw *Writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		take := min(len(p), ChunkSize-len(sw.buf))
		sw.buf = append(sw.buf, p[:take]...)
		p, written = p[take:], written+take
		if len(sw.buf) == ChunkSize {
			if err := sw.chunk(false); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

func (sw *Writer) chunk(last bool) error {
	length := uint32(len(sw.buf))
	if last {
		length |= lastChunk
	}
	out := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(sw.buf)+sw.aead.Overhead()), length)
	out = sw.aead.Seal(out, nonce(sw.prefix, sw.n), sw.buf, additional(sw.head, sw.n, last))
	sw.n++
	sw.buf = sw.buf[:0]
	_, err := sw.w.Write(out)
	return err
}

// Close seals the last chunk.
func (sw *Writer) Close() error { return sw.chunk(true) }

// Reader opens a stream a Writer sealed. It returns io.EOF only after the
// last chunk opened: a stream cut short is an error (ErrOpen).
type Reader struct {
	r            io.Reader
	aead         cipher.AEAD
	head, prefix []byte
	name         string
	buf          []byte
	n            uint32
	done         bool
}

// NewReader returns a Reader of the stream r, sealed under aead with head
// and prefix as NewWriter was given; name names the stream in errors.
func NewReader(r io.Reader, aead cipher.AEAD, head, prefix []byte, name string) *Reader {
	return &Reader{r: r, aead: aead, head: head, prefix: prefix, name: name}
}

func (or *Reader) Read(p []byte) (int, error) {
	for len(or.buf) == 0 {
		if or.done {
			return 0, io.EOF
		}
		if err := or.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, or.buf)
	or.buf = or.buf[n:]
	return n, nil
}

func (or *Reader) next() error {
	var lb [4]byte
	if _, err := io.ReadFull(or.r, lb[:]); err != nil {
		return fmt.Errorf("%w: %s is cut short at chunk %d", ErrOpen, or.name, or.n)
	}
	length := binary.BigEndian.Uint32(lb[:])
	last := length&lastChunk != 0
	length &^= lastChunk
	if length > ChunkSize {
		return fmt.Errorf("%w: %s: chunk %d of %d bytes", ErrOpen, or.name, or.n, length)
	}
	ct := make([]byte, int(length)+or.aead.Overhead())
	if _, err := io.ReadFull(or.r, ct); err != nil {
		return fmt.Errorf("%w: %s is cut short in chunk %d", ErrOpen, or.name, or.n)
	}
	plain, err := or.aead.Open(ct[:0], nonce(or.prefix, or.n), ct, additional(or.head, or.n, last))
	if err != nil {
		return fmt.Errorf("%w: %s, chunk %d: %v", ErrOpen, or.name, or.n, err)
	}
	or.n++
	or.buf, or.done = plain, last
	return nil
}
