package fsm

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/quorumca/quorumca/ca"
)

// A snapshot of 100,000 nodes is about 100 MB of JSON, and encoding/json
// spends most of its time on it in reflection (the issuer's key hash, a
// [32]byte, is 32 numbers in each certificate). The nodes are written and
// read here by hand, in the very JSON encoding/json writes and reads:
// the format does not change. What the hand-written reader does not
// expect (escapes, null, white space, keys of another case) is left to
// encoding/json, node by node, so that it reads all that it did.

// writeJSON writes the nodes to w as one JSON object keyed by ID, in ID
// order, as json.Marshal writes a map[string]Node, a part at a time.
func (m NodeMap) writeJSON(w io.Writer) error {
	const flushAt = 64 << 10
	b := make([]byte, 0, flushAt+4<<10)
	b = append(b, '{')
	for i, n := range m.sorted() {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, n.ID)
		b = append(b, ':')
		b = n.appendJSON(b)
		if len(b) >= flushAt {
			if bytes.Contains(b, []byte(badTime)) {
				return errBadTime
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
			b = b[:0]
		}
	}
	b = append(b, '}')
	if bytes.Contains(b, []byte(badTime)) {
		return errBadTime
	}
	_, err := w.Write(b)
	return err
}

// sorted returns the nodes in ID order, without copying them.
func (m NodeMap) sorted() []*Node {
	out := make([]*Node, 0, m.n)
	var walk func(t *trie)
	walk = func(t *trie) {
		if t == nil {
			return
		}
		for _, s := range t.kids {
			if s.sub != nil {
				walk(s.sub)
				continue
			}
			for i := range s.leaf.nodes {
				out = append(out, &s.leaf.nodes[i])
			}
		}
	}
	walk(m.root)
	slices.SortFunc(out, func(a, b *Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// appendJSON appends n as json.Marshal writes it.
func (n *Node) appendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, n.ID)
	b = append(b, `,"role":`...)
	b = appendString(b, string(n.Role))
	if n.Addr != "" {
		b = append(b, `,"addr":`...)
		b = appendString(b, n.Addr)
	}
	if n.RaftAddr != "" {
		b = append(b, `,"raft_addr":`...)
		b = appendString(b, n.RaftAddr)
	}
	if n.Hostname != "" {
		b = append(b, `,"hostname":`...)
		b = appendString(b, n.Hostname)
	}
	b = append(b, `,"cert":`...)
	b = n.Cert.appendJSON(b)
	if len(n.Prev) > 0 {
		b = append(b, `,"prev_certs":[`...)
		for i := range n.Prev {
			if i > 0 {
				b = append(b, ',')
			}
			b = n.Prev[i].appendJSON(b)
		}
		b = append(b, ']')
	}
	b = append(b, `,"certs_valid_until":`...)
	b = appendTime(b, n.CertsValidUntil)
	b = append(b, `,"joined_at":`...)
	b = appendTime(b, n.JoinedAt)
	if n.Unconfirmed {
		b = append(b, `,"unconfirmed":true`...)
	}
	return append(b, '}')
}

func (c *CertInfo) appendJSON(b []byte) []byte {
	b = append(b, `{"serial":`...)
	b = appendString(b, c.Serial)
	b = append(b, `,"not_before":`...)
	b = appendTime(b, c.NotBefore)
	b = append(b, `,"not_after":`...)
	b = appendTime(b, c.NotAfter)
	b = append(b, `,"issuer":{"IssuerSubject":`...)
	if c.Issuer.IssuerSubject == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, c.Issuer.IssuerSubject)
		b = append(b, '"')
	}
	b = append(b, `,"IssuerKeyHash":[`...)
	for i, x := range c.Issuer.IssuerKeyHash {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(x), 10)
	}
	b = append(b, `]},"issued_at":`...)
	b = appendTime(b, c.IssuedAt)
	if c.Index != 0 {
		b = append(b, `,"index":`...)
		b = strconv.AppendUint(b, c.Index, 10)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string, escaped as json.Marshal
// escapes it (leaving all but plain printable ASCII to it).
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendTime appends t as json.Marshal writes it. A time that has no JSON
// form (a year outside 0-9999) makes the whole snapshot fail to encode,
// as it did with json.Marshal: the marker below is not JSON, and WriteTo
// checks for it.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	out, err := t.AppendText(b)
	if err != nil {
		return append(b, badTime...)
	}
	return append(out, '"')
}

// badTime marks a time that has no JSON form; it cannot occur in JSON.
const badTime = "\x00bad time\x00"

var errBadTime = errors.New("fsm: a node's time has no JSON form (its year is outside 0-9999)")

// parseNodes reads a NodeMap from the JSON object of its nodes by ID.
func parseNodes(b []byte) (NodeMap, error) {
	var bld nodeMapBuilder
	r := reader{b: b}
	r.ws()
	if r.lit("null") {
		if r.ws(); r.i == len(b) {
			return NodeMap{}, nil
		}
	}
	r = reader{b: b}
	r.ws()
	if !r.byte('{') {
		return parseNodesSlowly(b)
	}
	r.ws()
	if !r.byte('}') {
		for {
			r.ws()
			key, ok := r.str()
			if !ok {
				return parseNodesSlowly(b)
			}
			r.ws()
			if !r.byte(':') {
				return parseNodesSlowly(b)
			}
			r.ws()
			start := r.i
			end, ok := skipValue(b, start)
			if !ok {
				return parseNodesSlowly(b)
			}
			n, ok := parseNode(b[start:end])
			if !ok {
				if err := json.Unmarshal(b[start:end], &n); err != nil {
					return NodeMap{}, err
				}
			}
			if n.ID != string(key) {
				return NodeMap{}, fmt.Errorf("fsm: node %q is recorded under ID %q", n.ID, key)
			}
			bld.add(n)
			r.i = end
			r.ws()
			if r.byte('}') {
				break
			}
			if !r.byte(',') {
				return parseNodesSlowly(b)
			}
		}
	}
	if r.ws(); r.i != len(b) {
		return parseNodesSlowly(b)
	}
	return bld.m, nil
}

// parseNodesSlowly reads b with encoding/json alone, for its errors.
func parseNodesSlowly(b []byte) (NodeMap, error) {
	var all map[string]Node
	if err := json.Unmarshal(b, &all); err != nil {
		return NodeMap{}, err
	}
	var bld nodeMapBuilder
	for _, id := range slices.Sorted(func(yield func(string) bool) {
		for id := range all {
			if !yield(id) {
				return
			}
		}
	}) {
		n := all[id]
		if n.ID != id {
			return NodeMap{}, fmt.Errorf("fsm: node %q is recorded under ID %q", n.ID, id)
		}
		bld.add(n)
	}
	return bld.m, nil
}

// reader reads the JSON encoding/json writes: compact, no escapes. Its
// methods report false at anything else, for the caller to leave it to
// encoding/json.
type reader struct {
	b []byte
	i int
}

func (r *reader) ws() {
	for r.i < len(r.b) && (r.b[r.i] == ' ' || r.b[r.i] == '\t' || r.b[r.i] == '\n' || r.b[r.i] == '\r') {
		r.i++
	}
}

func (r *reader) byte(c byte) bool {
	if r.i < len(r.b) && r.b[r.i] == c {
		r.i++
		return true
	}
	return false
}

func (r *reader) lit(s string) bool {
	if bytes.HasPrefix(r.b[r.i:], []byte(s)) {
		r.i += len(s)
		return true
	}
	return false
}

// str reads a string with no escapes and valid UTF-8, and returns its
// contents.
func (r *reader) str() ([]byte, bool) {
	if !r.byte('"') {
		return nil, false
	}
	start := r.i
	ascii := true
	for ; r.i < len(r.b); r.i++ {
		switch c := r.b[r.i]; {
		case c == '"':
			s := r.b[start:r.i]
			r.i++
			return s, ascii || utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= 0x80:
			ascii = false
		}
	}
	return nil, false
}

func (r *reader) string() (string, bool) {
	s, ok := r.str()
	return string(s), ok
}

// quoted returns the span of a string, quotes included.
func (r *reader) quoted() ([]byte, bool) {
	start := r.i
	_, ok := r.str()
	return r.b[start:r.i], ok
}

func (r *reader) time() (time.Time, bool) {
	q, ok := r.quoted()
	if !ok {
		return time.Time{}, false
	}
	var t time.Time
	return t, t.UnmarshalJSON(q) == nil
}

// uint reads a decimal of at most 19 digits, which cannot overflow.
func (r *reader) uint() (uint64, bool) {
	start := r.i
	var v uint64
	for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' && r.i-start < 19 {
		v = v*10 + uint64(r.b[r.i]-'0')
		r.i++
	}
	n := r.i - start
	if n == 0 || (n > 1 && r.b[start] == '0') || (r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9') {
		return 0, false
	}
	return v, true
}

// object reads an object, calling field for each key; field reads the
// value and reports false at anything unexpected.
func (r *reader) object(field func(key string) bool) bool {
	if !r.byte('{') {
		return false
	}
	if r.byte('}') {
		return true
	}
	for {
		key, ok := r.str()
		if !ok || !r.byte(':') || !field(string(key)) {
			return false
		}
		if r.byte('}') {
			return true
		}
		if !r.byte(',') {
			return false
		}
	}
}

// parseNode reads one node as json.Marshal writes it.
func parseNode(b []byte) (Node, bool) {
	var n Node
	r := reader{b: b}
	ok := r.object(func(key string) bool {
		var ok bool
		switch key {
		case "id":
			n.ID, ok = r.string()
		case "role":
			var s string
			s, ok = r.string()
			n.Role = ca.Role(s)
		case "addr":
			n.Addr, ok = r.string()
		case "raft_addr":
			n.RaftAddr, ok = r.string()
		case "hostname":
			n.Hostname, ok = r.string()
		case "cert":
			n.Cert, ok = r.cert()
		case "prev_certs":
			if !r.byte('[') {
				return false
			}
			n.Prev = []CertInfo{}
			if r.byte(']') {
				return true
			}
			for {
				c, ok := r.cert()
				if !ok {
					return false
				}
				n.Prev = append(n.Prev, c)
				if r.byte(']') {
					return true
				}
				if !r.byte(',') {
					return false
				}
			}
		case "certs_valid_until":
			n.CertsValidUntil, ok = r.time()
		case "joined_at":
			n.JoinedAt, ok = r.time()
		case "unconfirmed":
			switch {
			case r.lit("true"):
				n.Unconfirmed, ok = true, true
			case r.lit("false"):
				n.Unconfirmed, ok = false, true
			}
		}
		return ok
	})
	return n, ok && r.i == len(b)
}

func (r *reader) cert() (CertInfo, bool) {
	var c CertInfo
	ok := r.object(func(key string) bool {
		var ok bool
		switch key {
		case "serial":
			c.Serial, ok = r.string()
		case "not_before":
			c.NotBefore, ok = r.time()
		case "not_after":
			c.NotAfter, ok = r.time()
		case "issued_at":
			c.IssuedAt, ok = r.time()
		case "index":
			c.Index, ok = r.uint()
		case "issuer":
			c.Issuer, ok = r.status()
		}
		return ok
	})
	return c, ok
}

func (r *reader) status() (ca.TLSStatus, bool) {
	var s ca.TLSStatus
	ok := r.object(func(key string) bool {
		switch key {
		case "IssuerSubject":
			if r.lit("null") {
				s.IssuerSubject = nil
				return true
			}
			q, ok := r.str()
			if !ok {
				return false
			}
			out := make([]byte, base64.StdEncoding.DecodedLen(len(q)))
			n, err := base64.StdEncoding.Decode(out, q)
			s.IssuerSubject = out[:n]
			return err == nil
		case "IssuerKeyHash":
			// Exactly 32 numbers of 0-255; anything else is left to
			// encoding/json.
			if !r.byte('[') {
				return false
			}
			for i := range s.IssuerKeyHash {
				if i > 0 && !r.byte(',') {
					return false
				}
				v, ok := r.uint()
				if !ok || v > 255 {
					return false
				}
				s.IssuerKeyHash[i] = byte(v)
			}
			return r.byte(']')
		}
		return false
	})
	return s, ok
}

// skipValue returns the end of the JSON value that starts at b[i], or
// false if there is none. It checks the nesting and the strings, not the
// rest: its caller reads the value.
func skipValue(b []byte, i int) (int, bool) {
	depth := 0
	for i < len(b) {
		c := b[i]
		switch c {
		case '"':
			i++
			for i < len(b) && b[i] != '"' {
				if b[i] == '\\' {
					i++
				}
				i++
			}
			if i >= len(b) {
				return 0, false
			}
			i++
		case '{', '[':
			depth++
			i++
		case '}', ']':
			if depth == 0 {
				return i, true
			}
			depth--
			i++
		case ',':
			if depth == 0 {
				return i, true
			}
			i++
		case ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i, true
			}
			i++
		default:
			i++
		}
		if depth == 0 && (c == '"' || c == '}' || c == ']') {
			return i, true
		}
	}
	return i, depth == 0 && i > 0
}
