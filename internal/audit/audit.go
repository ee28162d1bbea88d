// Package audit writes a manager's audit log: one JSON line per
// state-changing call, per refused call and per change the leader commits
// by itself, appended to a file that only its owner reads.
//
// Every line is written and fsynced before the call it records is
// answered (concurrent writers share fsyncs): a line that Write returned for survives a crash of the
// process or the machine. What a crash can lose is a line that was being
// written: a change the Raft log committed just before the crash may then
// have no line (its answer was never sent). A torn last line is the only
// partial line there can be; readers skip a line that does not parse.
//
// Records hold identifiers (node IDs, serials, token IDs, request IDs),
// never a request or answer body: no key, token, unlock key or
// passphrase reaches the file.
package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Results a record can carry.
const (
	// ResultOK: the call was answered, or the leader's change committed.
	ResultOK = "ok"
	// ResultRefused: the caller may not make the call, or what it showed
	// (a join token's proof, an unlock key) does not admit it.
	ResultRefused = "refused"
	// ResultError: the call failed for another reason (no leader, a bad
	// argument, a conflict); it may or may not have committed a change,
	// as Commits says.
	ResultError = "error"
)

// Record is one line of the log.
type Record struct {
	Time time.Time `json:"time"`
	// Manager is the node ID of the manager that wrote the line.
	Manager string `json:"manager"`
	// RequestID is the call's x-request-id: the caller's, or one the
	// manager made (and answered in the x-request-id header). A call a
	// follower relays to the leader keeps it, so both lines share it.
	RequestID string `json:"request_id,omitempty"`
	Actor     Actor  `json:"actor"`
	// Action names what was asked: "join", "renew", "node.promote",
	// "ca.rotate"... (see the README's table).
	Action string `json:"action"`
	// Method is the gRPC method, for actions the leader took by itself
	// empty.
	Method string `json:"method,omitempty"`
	// Arrival is "local" (control socket), "direct" or "forwarded".
	Arrival string `json:"arrival,omitempty"`
	Target  Target `json:"target,omitzero"`
	Result  string `json:"result"`
	// Code and Reason are the gRPC status code and the refusal's reason
	// (google.rpc.ErrorInfo) of a call that failed; Error its message.
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
	// Commits are the Raft commands this call committed on this manager,
	// by name ("issue", "remove_node"...); a relayed call commits on the
	// leader, whose own log lists them. A name that ends in "?" is a
	// command whose proposal failed in a way that leaves its fate unknown
	// (leadership lost, or the wait ended, while it was in flight): it
	// may have committed.
	Commits []string `json:"commits,omitempty"`
}

// Actor is who made a call, as the manager established it from the
// verified certificate or the control socket.
type Actor struct {
	// Kind is "node", "admin", "host" (the control socket), "anonymous"
	// or "leader" (a change the leader made by itself).
	Kind string `json:"kind"`
	// NodeID is the ID the certificate names (a node's, or an admin
	// certificate's); Role the role it names.
	NodeID string `json:"node_id,omitempty"`
	Role   string `json:"role,omitempty"`
	// Serial is the certificate's serial, lower-case hex.
	Serial string `json:"serial,omitempty"`
	// UID is the control socket peer's user ID.
	UID *int `json:"uid,omitempty"`
	// Addr is the caller's network address, when it called over the
	// network.
	Addr string `json:"addr,omitempty"`
	// Via is the node ID of the manager that relayed the call.
	Via string `json:"via,omitempty"`
}

// Target is what a call acted on.
type Target struct {
	NodeID  string   `json:"node_id,omitempty"`
	Serials []string `json:"serials,omitempty"`
	Role    string   `json:"role,omitempty"`
	TokenID string   `json:"token_id,omitempty"`
	All     bool     `json:"all,omitempty"`
}

// maxError bounds the error message a record keeps.
const maxError = 300

// Log is an audit log file. A nil *Log records nothing. Its methods may be
// called from any goroutine.
//
// Concurrent writers share fsyncs (group commit): a writer appends its
// line, then waits for an fsync that began after its write, and the first
// writer to find none running starts one for all lines written so far.
// That needs two mutexes, where the house has one per struct: with one,
// every writer would wait for every fsync before it could even append.
type Log struct {
	path string

	mu      sync.Mutex // guards f, err and written; never held across an fsync
	f       *os.File
	err     error  // the first failure; every later Write returns it too
	written uint64 // lines written

	syncMu sync.Mutex // guards synced; held across an fsync; taken before mu
	synced uint64     // lines known to be on disk
}

// Open opens the audit log at path to append to it, creating it with mode
// 0600. An existing file that others may read or write is refused: the log
// names every node and certificate of the cluster.
func Open(path string) (*Log, error) {
	if path == "" {
		return nil, errors.New("audit: the audit log's path (--audit-log) is empty")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open --audit-log %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: --audit-log %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("audit: --audit-log %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		f.Close()
		return nil, fmt.Errorf("audit: --audit-log %s has mode %04o: others may read or change it; chmod 600 it", path, fi.Mode().Perm())
	}
	return &Log{f: f, path: path}, nil
}

// Write appends r as one line and fsyncs the file before it returns. After
// a failed write, the log takes no more lines and every Write returns the
// first failure: a gap is never hidden behind later lines.
func (l *Log) Write(r Record) error {
	if l == nil {
		return nil
	}
	if len(r.Error) > maxError {
		r.Error = r.Error[:maxError] + "..."
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("audit: %w", err) // broken invariant: Record always marshals
	}
	b = append(b, '\n')
	l.mu.Lock()
	if l.err != nil {
		defer l.mu.Unlock()
		return l.err
	}
	// One write(2) of a whole line on an O_APPEND file: lines never
	// interleave, and a crash tears the last one at most.
	if _, err := l.f.Write(b); err != nil {
		defer l.mu.Unlock()
		return l.fail(fmt.Errorf("audit: write %s: %w", l.path, err))
	}
	l.written++
	line := l.written
	l.mu.Unlock()
	return l.sync(line)
}

// sync returns once line is on disk: an fsync that began after it was
// written has succeeded, this caller's or another's.
func (l *Log) sync(line uint64) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	f, upto, err := l.f, l.written, l.err
	l.mu.Unlock()
	if l.synced >= line {
		return nil
	}
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.fail(fmt.Errorf("audit: fsync %s: %w", l.path, err))
	}
	l.synced = upto
	return nil
}

// fail records the log's first failure and returns it; l.mu is held.
func (l *Log) fail(err error) error {
	if l.err == nil {
		l.err = err
	}
	return l.err
}

// Err returns the failure that stopped the log, or nil while it writes.
func (l *Log) Err() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Close closes the file; later Writes fail, and Err says it is closed.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	// No fsync runs while the file closes: every line a Write returned
	// for is on disk, and a Write waiting for its fsync fails.
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	l.fail(fmt.Errorf("audit: %s is closed", l.path))
	return err
}

// NewRequestID returns a random request ID: 16 bytes of r, hex.
func NewRequestID(r io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("audit: request ID: %w", err)
	}
	return fmt.Sprintf("%x", b), nil
}

// RequestIDHeader is the metadata key of a call's request ID, in the
// call's headers and in the answer's.
const RequestIDHeader = "x-request-id"

// ValidRequestID reports whether a caller's request ID may be recorded as
// it is: 1 to 128 characters of letters, digits and ._:- only. Another is
// replaced by one the manager makes.
func ValidRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// Read returns the records of an audit log, skipping lines that do not
// parse (the torn last line a crash can leave).
func Read(rd io.Reader) ([]Record, error) {
	br := bufio.NewReader(rd)
	var out []Record
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			var r Record
			if json.Unmarshal(line, &r) == nil {
				out = append(out, r)
			}
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("audit: read: %w", err)
		}
	}
}
