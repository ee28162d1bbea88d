package fsm

import (
	"bytes"
	"iter"
	"math/bits"
	"slices"
	"strings"

	"github.com/quorumca/quorumca/ca"
)

// NodeMap holds the cluster's nodes by ID. It is a value that is never
// changed in place: With and Without return a new map that shares all but
// one path of its trie with the old one, so that Apply, which must leave
// the state readers hold untouched, does not copy every node for every
// join or renewal. The zero value is empty.
//
// The map is a hash array mapped trie: the 64-bit FNV-1a hash of a node's
// ID, five bits per level, picks the way down, and each level holds only
// the slots in use. An update copies one node per level, at most 32
// entries each, about four levels at 100,000 nodes: its cost grows with
// the logarithm of the number of nodes, not with the number (a map split
// into a fixed number of parts copied one part, 1/256 of the nodes).
type NodeMap struct {
	root *trie
	n    int
	// managers holds the IDs of the manager nodes, which every join and
	// renewal lists; it is copied whole when a manager comes or goes.
	managers map[string]bool
}

const (
	trieBits = 5
	trieMask = 1<<trieBits - 1
)

// trie is one level of a NodeMap. kids holds a slot for each bit set in
// bitmap, in bit order. A trie reachable from a NodeMap another may share
// is never changed.
type trie struct {
	bitmap uint32
	kids   []slot
}

// slot is either a deeper level or the nodes whose IDs hash to one value
// (more than one only when hashes collide), ordered by ID.
type slot struct {
	sub  *trie
	leaf *leaf
}

type leaf struct {
	hash  uint64
	nodes []Node
}

// hashID is the 64-bit FNV-1a hash of id.
func hashID(id string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return h
}

// NewNodeMap returns a map holding nodes.
func NewNodeMap(nodes ...Node) NodeMap {
	var b nodeMapBuilder
	for _, n := range nodes {
		b.add(n)
	}
	return b.m
}

// Len returns the number of nodes.
func (m NodeMap) Len() int { return m.n }

// Get returns the node with the given ID.
func (m NodeMap) Get(id string) (Node, bool) {
	h := hashID(id)
	t := m.root
	for shift := uint(0); t != nil; shift += trieBits {
		bit := uint32(1) << (h >> shift & trieMask)
		if t.bitmap&bit == 0 {
			return Node{}, false
		}
		s := t.kids[bits.OnesCount32(t.bitmap&(bit-1))]
		if s.sub != nil {
			t = s.sub
			continue
		}
		if s.leaf.hash != h {
			return Node{}, false
		}
		for _, n := range s.leaf.nodes {
			if n.ID == id {
				return n, true
			}
		}
		return Node{}, false
	}
	return Node{}, false
}

// All yields every node and its ID. The order depends on the IDs alone,
// not on the order the nodes came in, but is no order people would
// recognise; sort for that.
func (m NodeMap) All() iter.Seq2[string, Node] {
	return func(yield func(string, Node) bool) {
		m.root.each(yield)
	}
}

func (t *trie) each(yield func(string, Node) bool) bool {
	if t == nil {
		return true
	}
	for _, s := range t.kids {
		if s.sub != nil {
			if !s.sub.each(yield) {
				return false
			}
			continue
		}
		for _, n := range s.leaf.nodes {
			if !yield(n.ID, n) {
				return false
			}
		}
	}
	return true
}

// SameIDs reports whether m and o hold the same node IDs. It skips the
// parts of the two maps that are shared (o made from m, or m from o, by
// With and Without), so it costs in proportion to what changed between
// them, not to the number of nodes. Maps built apart may be reported
// different when they hold the same IDs, never the other way.
func (m NodeMap) SameIDs(o NodeMap) bool {
	return m.n == o.n && sameIDs(m.root, o.root)
}

func sameIDs(a, b *trie) bool {
	if a == b {
		return true
	}
	if a == nil || b == nil || a.bitmap != b.bitmap || len(a.kids) != len(b.kids) {
		return false
	}
	for i, x := range a.kids {
		y := b.kids[i]
		switch {
		case x.sub != nil && y.sub != nil:
			if !sameIDs(x.sub, y.sub) {
				return false
			}
		case x.leaf != nil && y.leaf != nil:
			if x.leaf == y.leaf {
				continue
			}
			if x.leaf.hash != y.leaf.hash || len(x.leaf.nodes) != len(y.leaf.nodes) {
				return false
			}
			for j, n := range x.leaf.nodes {
				if n.ID != y.leaf.nodes[j].ID {
					return false
				}
			}
		default:
			return false
		}
	}
	return true
}

// With returns a map holding n in place of any node with its ID.
func (m NodeMap) With(n Node) NodeMap {
	root, prev, ok := m.root.with(hashID(n.ID), 0, n, false)
	m.root = root
	if !ok {
		m.n++
	}
	if (ok && prev.Role == ca.RoleManager) != (n.Role == ca.RoleManager) {
		m.managers = withFlag(m.managers, n.ID, n.Role == ca.RoleManager)
	}
	return m
}

// with returns t (nil for an empty level) holding n, which hashes to h, at
// the level whose slot bits start at shift, and the node n replaced if
// there was one. It copies t and the levels on the way down, unless owned
// is set: then they belong to the caller, which builds a map no one else
// holds yet, and are changed in place.
func (t *trie) with(h uint64, shift uint, n Node, owned bool) (*trie, Node, bool) {
	bit := uint32(1) << (h >> shift & trieMask)
	if t == nil {
		return &trie{bitmap: bit, kids: []slot{{leaf: &leaf{hash: h, nodes: []Node{n}}}}}, Node{}, false
	}
	pos := bits.OnesCount32(t.bitmap & (bit - 1))
	out := t
	if !owned {
		out = &trie{bitmap: t.bitmap, kids: t.kids}
	}
	if t.bitmap&bit == 0 {
		kids := make([]slot, 0, len(t.kids)+1)
		kids = append(kids, t.kids[:pos]...)
		kids = append(kids, slot{leaf: &leaf{hash: h, nodes: []Node{n}}})
		out.kids = append(kids, t.kids[pos:]...)
		out.bitmap |= bit
		return out, Node{}, false
	}
	if !owned {
		out.kids = slices.Clone(t.kids)
	}
	s := t.kids[pos]
	var (
		prev Node
		ok   bool
	)
	switch {
	case s.sub != nil:
		var sub *trie
		sub, prev, ok = s.sub.with(h, shift+trieBits, n, owned)
		out.kids[pos] = slot{sub: sub}
	case s.leaf.hash == h:
		i, found := slices.BinarySearchFunc(s.leaf.nodes, n.ID, func(x Node, id string) int { return strings.Compare(x.ID, id) })
		nodes := slices.Clone(s.leaf.nodes)
		if found {
			prev, ok = nodes[i], true
			nodes[i] = n
		} else {
			nodes = slices.Insert(nodes, i, n)
		}
		out.kids[pos] = slot{leaf: &leaf{hash: h, nodes: nodes}}
	default:
		// Another hash in the slot: a level below parts them.
		sub := &trie{bitmap: uint32(1) << (s.leaf.hash >> (shift + trieBits) & trieMask), kids: []slot{s}}
		sub, _, _ = sub.with(h, shift+trieBits, n, true)
		out.kids[pos] = slot{sub: sub}
	}
	return out, prev, ok
}

// withFlag returns a copy of set with id in it or not.
func withFlag(set map[string]bool, id string, in bool) map[string]bool {
	out := make(map[string]bool, len(set)+1)
	for k := range set {
		out[k] = true
	}
	if in {
		out[id] = true
	} else {
		delete(out, id)
	}
	return out
}

// Managers yields the manager nodes, in no particular order.
func (m NodeMap) Managers() iter.Seq[Node] {
	return func(yield func(Node) bool) {
		for id := range m.managers {
			n, _ := m.Get(id)
			if !yield(n) {
				return
			}
		}
	}
}

// Without returns a map without the node id.
func (m NodeMap) Without(id string) NodeMap {
	root, prev, ok := m.root.without(hashID(id), 0, id)
	if !ok {
		return m
	}
	if prev.Role == ca.RoleManager {
		m.managers = withFlag(m.managers, id, false)
	}
	m.root = root
	m.n--
	return m
}

// without returns a copy of t without the node id, which hashes to h (nil
// when the level is left empty), and the node removed; t itself and false
// when it holds no such node. A level left with a single leaf is folded
// into its parent's slot, so that a map's shape depends on its IDs alone.
func (t *trie) without(h uint64, shift uint, id string) (*trie, Node, bool) {
	if t == nil {
		return t, Node{}, false
	}
	bit := uint32(1) << (h >> shift & trieMask)
	if t.bitmap&bit == 0 {
		return t, Node{}, false
	}
	pos := bits.OnesCount32(t.bitmap & (bit - 1))
	s := t.kids[pos]
	var (
		next slot // the slot's new value; empty to drop it
		prev Node
	)
	if s.sub != nil {
		sub, p, ok := s.sub.without(h, shift+trieBits, id)
		if !ok {
			return t, Node{}, false
		}
		prev = p
		switch {
		case sub == nil:
		case len(sub.kids) == 1 && sub.kids[0].leaf != nil:
			next = sub.kids[0]
		default:
			next = slot{sub: sub}
		}
	} else {
		if s.leaf.hash != h {
			return t, Node{}, false
		}
		i, found := slices.BinarySearchFunc(s.leaf.nodes, id, func(x Node, id string) int { return strings.Compare(x.ID, id) })
		if !found {
			return t, Node{}, false
		}
		prev = s.leaf.nodes[i]
		if len(s.leaf.nodes) > 1 {
			next = slot{leaf: &leaf{hash: h, nodes: slices.Delete(slices.Clone(s.leaf.nodes), i, i+1)}}
		}
	}
	if next.sub == nil && next.leaf == nil {
		if len(t.kids) == 1 {
			return nil, prev, true
		}
		return &trie{bitmap: t.bitmap &^ bit, kids: slices.Delete(slices.Clone(t.kids), pos, pos+1)}, prev, true
	}
	out := &trie{bitmap: t.bitmap, kids: slices.Clone(t.kids)}
	out.kids[pos] = next
	return out, prev, true
}

// nodeMapBuilder builds a NodeMap no one else holds yet, in place.
type nodeMapBuilder struct{ m NodeMap }

func (b *nodeMapBuilder) add(n Node) {
	root, prev, ok := b.m.root.with(hashID(n.ID), 0, n, true)
	b.m.root = root
	if !ok {
		b.m.n++
	}
	isManager := n.Role == ca.RoleManager
	if (ok && prev.Role == ca.RoleManager) != isManager {
		if b.m.managers == nil {
			b.m.managers = map[string]bool{}
		}
		if isManager {
			b.m.managers[n.ID] = true
		} else {
			delete(b.m.managers, n.ID)
		}
	}
}

// MarshalJSON writes the nodes as one JSON object keyed by ID, in key
// order, as a plain map would be.
func (m NodeMap) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	if err := m.writeJSON(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// IsZero reports whether the map holds no node. A snapshot's head leaves
// an empty map out (omitzero), and WriteTo writes the nodes after it.
func (m NodeMap) IsZero() bool { return m.n == 0 }

// UnmarshalJSON reads what MarshalJSON wrote.
func (m *NodeMap) UnmarshalJSON(b []byte) error {
	out, err := parseNodes(b)
	if err != nil {
		return err
	}
	*m = out
	return nil
}
