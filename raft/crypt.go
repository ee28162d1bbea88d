package raft

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	hraft "github.com/hashicorp/raft"
	"github.com/quorumca/quorumca/internal/sealstream"
)

// DataKeySize is the size of a data key: AES-256-GCM.
const DataKeySize = 32

// Keys are the data keys a Node seals what it writes of the replicated
// state with (every log entry's data, every snapshot), and opens it with.
// Each manager has its own: what one manager writes, only it can read.
type Keys struct {
	// Current seals everything written from now on.
	Current []byte
	// Previous open what was sealed before Current replaced them; Open
	// seals it all again under Current, after which they may be dropped
	// (Node.Resealed).
	Previous [][]byte
}

// ErrSealed is returned (wrapped, naming the file) when a sealed record or
// snapshot does not open: the wrong key, or data changed on disk. Nothing
// of it is applied.
var ErrSealed = errors.New("raft: a sealed record does not open")

// Record formats. A sealed log entry's data is
//
//	"QCR1" | key ID (8) | nonce (12) | AES-256-GCM(data)
//
// with the entry's index, term and type as additional data, so that a
// record cannot be moved to another place in the log. Index, term and
// type stay readable: Raft works on them.
var (
	recordMagic   = []byte("QCR1")
	snapshotMagic = []byte("QCS1")
)

const (
	keyIDSize  = 8
	nonceSize  = 12
	tagSize    = 16
	recordHead = 4 + keyIDSize + nonceSize
)

// keyID names a data key without revealing it.
func keyID(key []byte) [keyIDSize]byte {
	sum := sha256.Sum256(append([]byte("quorumca raft data key id\x00"), key...))
	var id [keyIDSize]byte
	copy(id[:], sum[:])
	return id
}

// sealer seals with the current key and opens with any of the keys.
type sealer struct {
	current   cipher.AEAD
	currentID [keyIDSize]byte
	byID      map[[keyIDSize]byte]cipher.AEAD
}

func newSealer(k Keys) (*sealer, error) {
	s := &sealer{byID: map[[keyIDSize]byte]cipher.AEAD{}}
	for i, key := range append([][]byte{k.Current}, k.Previous...) {
		if len(key) != DataKeySize {
			return nil, fmt.Errorf("raft: a data key is %d bytes, not %d", DataKeySize, len(key))
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("raft: data key: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("raft: data key: %w", err)
		}
		id := keyID(key)
		s.byID[id] = aead
		if i == 0 {
			s.current, s.currentID = aead, id
		}
	}
	return s, nil
}

// recordAD is the additional data of a log entry's seal.
func recordAD(l *hraft.Log) []byte {
	ad := make([]byte, 17)
	binary.BigEndian.PutUint64(ad, l.Index)
	binary.BigEndian.PutUint64(ad[8:], l.Term)
	ad[16] = byte(l.Type)
	return ad
}

// sealLog returns a copy of l with its data sealed under the current key.
// Raft shares the entry it passes (its log cache keeps it): it is never
// changed.
func (s *sealer) sealLog(l *hraft.Log) (*hraft.Log, error) {
	out := *l
	buf := make([]byte, recordHead, recordHead+len(l.Data)+tagSize)
	copy(buf, recordMagic)
	copy(buf[4:], s.currentID[:])
	if _, err := io.ReadFull(rand.Reader, buf[4+keyIDSize:recordHead]); err != nil {
		return nil, fmt.Errorf("raft: nonce: %w", err)
	}
	out.Data = s.current.Seal(buf, buf[4+keyIDSize:recordHead], l.Data, recordAD(l))
	return &out, nil
}

// isSealed reports whether data is a sealed record.
func isSealed(data []byte) bool { return bytes.HasPrefix(data, recordMagic) }

// openLog opens l's data in place (l is the store's decoded copy). A
// record that is not sealed is returned as is when plain is allowed (a
// store still being sealed), else refused.
func (s *sealer) openLog(l *hraft.Log, plain bool) error {
	if !isSealed(l.Data) {
		if plain || len(l.Data) == 0 {
			return nil
		}
		return fmt.Errorf("%w: entry %d is not sealed, in a store that seals everything", ErrSealed, l.Index)
	}
	if len(l.Data) < recordHead+tagSize {
		return fmt.Errorf("%w: entry %d is cut short", ErrSealed, l.Index)
	}
	var id [keyIDSize]byte
	copy(id[:], l.Data[4:])
	aead, ok := s.byID[id]
	if !ok {
		return fmt.Errorf("%w: entry %d is sealed with key %x, which this manager does not hold", ErrSealed, l.Index, id)
	}
	data, err := aead.Open(nil, l.Data[4+keyIDSize:recordHead], l.Data[recordHead:], recordAD(l))
	if err != nil {
		return fmt.Errorf("%w: entry %d: %v", ErrSealed, l.Index, err)
	}
	l.Data = data
	return nil
}

// keyOf returns the ID of the key a sealed record or snapshot header was
// sealed with.
func keyOf(head []byte) (id [keyIDSize]byte) {
	copy(id[:], head[4:])
	return id
}

// sealedStore seals log entries on their way to the bolt store and opens
// them on their way back; the stable store (term and vote, which are not
// secret) passes through.
type sealedStore struct {
	logStableStore
	s    *sealer
	file string // for errors
	// plain lets entries written before sealing be read as they are: set
	// only while the store is being sealed.
	plain bool
}

// StoreLog is called by Raft's goroutines to append an entry.
func (st *sealedStore) StoreLog(l *hraft.Log) error {
	return st.StoreLogs([]*hraft.Log{l})
}

// StoreLogs is called by Raft's goroutines to append entries.
func (st *sealedStore) StoreLogs(logs []*hraft.Log) error {
	sealed := make([]*hraft.Log, len(logs))
	for i, l := range logs {
		var err error
		if sealed[i], err = st.s.sealLog(l); err != nil {
			return err
		}
	}
	return st.logStableStore.StoreLogs(sealed)
}

// GetLog is called by Raft's goroutines to read an entry.
func (st *sealedStore) GetLog(index uint64, l *hraft.Log) error {
	if err := st.logStableStore.GetLog(index, l); err != nil {
		return err
	}
	if err := st.s.openLog(l, st.plain); err != nil {
		return fmt.Errorf("%s: %w", st.file, err)
	}
	return nil
}

// A sealed snapshot is
//
//	"QCS1" | key ID (8) | nonce prefix (8) | chunk...
//
// and a chunk is a 4-byte length (its top bit marks the last chunk) and
// AES-256-GCM of that many bytes, with nonce = prefix | chunk number and
// the header, the chunk number and the last-chunk bit as additional data:
// chunks cannot be reordered, dropped or cut short without failing.
const (
	snapshotHead  = 4 + keyIDSize + sealstream.PrefixSize
	chunkOverhead = 4 + tagSize
)

// sealedSize returns the sealed size of a snapshot of plain bytes.
func sealedSize(plain int64) int64 {
	chunks := plain/sealstream.ChunkSize + 1 // the last one may be empty
	return snapshotHead + plain + chunks*chunkOverhead
}

// plainSize returns the plain size of a sealed snapshot of sealed bytes,
// or -1 if no plain size seals to it.
func plainSize(sealed int64) int64 {
	body := sealed - snapshotHead
	per := int64(sealstream.ChunkSize + chunkOverhead)
	for chunks := max(body/per, 1); chunks <= body/per+2; chunks++ {
		if p := body - chunks*chunkOverhead; p >= 0 && sealedSize(p) == sealed {
			return p
		}
	}
	return -1
}

// sealingWriter seals what is written to it into w, a chunk at a time
// (sealstream); finish writes the last chunk.
type sealingWriter struct{ *sealstream.Writer }

func newSealingWriter(w io.Writer, s *sealer) (*sealingWriter, error) {
	head := make([]byte, snapshotHead)
	copy(head, snapshotMagic)
	copy(head[4:], s.currentID[:])
	if _, err := io.ReadFull(rand.Reader, head[4+keyIDSize:]); err != nil {
		return nil, fmt.Errorf("raft: nonce: %w", err)
	}
	if _, err := w.Write(head); err != nil {
		return nil, err
	}
	return &sealingWriter{sealstream.NewWriter(w, s.current, head, head[4+keyIDSize:])}, nil
}

func (sw *sealingWriter) finish() error { return sw.Close() }

// openingReader opens a sealed snapshot read from r; what does not open
// is ErrSealed.
type openingReader struct{ r *sealstream.Reader }

func newOpeningReader(r io.Reader, s *sealer, name string) (*openingReader, error) {
	head := make([]byte, snapshotHead)
	if _, err := io.ReadFull(r, head); err != nil || !bytes.HasPrefix(head, snapshotMagic) {
		return nil, fmt.Errorf("%w: snapshot %s is not sealed", ErrSealed, name)
	}
	aead, ok := s.byID[keyOf(head)]
	if !ok {
		return nil, fmt.Errorf("%w: snapshot %s is sealed with key %x, which this manager does not hold", ErrSealed, name, keyOf(head))
	}
	return &openingReader{sealstream.NewReader(r, aead, head, head[4+keyIDSize:], "snapshot "+name)}, nil
}

func (or *openingReader) Read(p []byte) (int, error) {
	n, err := or.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: %w", ErrSealed, err)
	}
	return n, err
}

// sealedSnapshots seals the snapshots the file store writes and opens
// those it reads. Sizes it reports are the plain ones: Raft sends a
// snapshot to a follower as the plain stream, which the follower seals
// under its own key.
type sealedSnapshots struct {
	hraft.SnapshotStore
	s *sealer
	// plain lets snapshots written before sealing be read as they are:
	// set only while the store is being sealed.
	plain bool
}

// Create is called by Raft's goroutines to start a snapshot.
func (ss *sealedSnapshots) Create(version hraft.SnapshotVersion, index, term uint64, c hraft.Configuration, cIndex uint64, trans hraft.Transport) (hraft.SnapshotSink, error) {
	sink, err := ss.SnapshotStore.Create(version, index, term, c, cIndex, trans)
	if err != nil {
		return nil, err
	}
	w, err := newSealingWriter(sink, ss.s)
	if err != nil {
		sink.Cancel()
		return nil, err
	}
	return &sealingSink{SnapshotSink: sink, w: w}, nil
}

// List is called by Raft's goroutines to find the snapshots.
func (ss *sealedSnapshots) List() ([]*hraft.SnapshotMeta, error) {
	metas, err := ss.SnapshotStore.List()
	for _, m := range metas {
		if p := plainSize(m.Size); p >= 0 {
			m.Size = p
		}
	}
	return metas, err
}

// Open is called by Raft's goroutines to restore or send a snapshot.
func (ss *sealedSnapshots) Open(id string) (*hraft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := ss.SnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	br := &peekReader{r: rc}
	if ss.plain && !br.hasPrefix(snapshotMagic) {
		return meta, struct {
			io.Reader
			io.Closer
		}{br, rc}, nil
	}
	or, err := newOpeningReader(br, ss.s, id)
	if err != nil {
		rc.Close()
		return nil, nil, err
	}
	if meta.Size = plainSize(meta.Size); meta.Size < 0 {
		rc.Close()
		return nil, nil, fmt.Errorf("%w: snapshot %s has a size no sealed snapshot has", ErrSealed, id)
	}
	return meta, struct {
		io.Reader
		io.Closer
	}{or, rc}, nil
}

// sealingSink seals a snapshot as the state machine persists it.
type sealingSink struct {
	hraft.SnapshotSink
	w *sealingWriter
}

// Write is called by the StateMachine's Snapshot.Persist.
func (s *sealingSink) Write(p []byte) (int, error) { return s.w.Write(p) }

// Close is called by Raft once the snapshot is persisted.
func (s *sealingSink) Close() error {
	if err := s.w.finish(); err != nil {
		s.SnapshotSink.Cancel()
		return err
	}
	return s.SnapshotSink.Close()
}

// peekReader reads r, able to look at its first bytes first.
type peekReader struct {
	r    io.Reader
	head []byte
}

func (p *peekReader) hasPrefix(prefix []byte) bool {
	if len(p.head) < len(prefix) {
		b := make([]byte, len(prefix)-len(p.head))
		n, _ := io.ReadFull(p.r, b)
		p.head = append(p.head, b[:n]...)
	}
	return bytes.HasPrefix(p.head, prefix)
}

func (p *peekReader) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.r.Read(b)
}
