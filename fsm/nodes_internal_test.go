package fsm

import (
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"testing"

	"github.com/quorumca/quorumca/ca"
)

// TestTrieAgainstMap drives the trie with random insertions and removals
// under hash functions that collide on purpose (a few bits, or all bits
// the same but the last level's), beside a plain map, and checks after
// every step that both hold the same nodes, that the map before the step
// is unchanged, and that the shape folds back as it would for the same
// IDs inserted afresh.
func TestTrieAgainstMap(t *testing.T) {
	hashes := map[string]func(string) uint64{
		"fnv":          hashID,
		"3 bits":       func(id string) uint64 { return hashID(id) & 7 },
		"deep":         func(id string) uint64 { return hashID(id)&(1<<60|1<<61) | 0x0aaaaaaaaaaaaaaa },
		"all collide":  func(string) uint64 { return 42 },
		"low bits tie": func(id string) uint64 { return hashID(id) << 40 },
	}
	for name, hash := range hashes {
		t.Run(name, func(t *testing.T) {
			rand := mrand.New(mrand.NewPCG(1, 2))
			var root *trie
			want := map[string]Node{}
			for step := range 3000 {
				id := fmt.Sprintf("n%03d", rand.IntN(200))
				before, beforeMap := root, clonePlain(want)
				if rand.IntN(3) == 0 {
					next, prev, ok := root.without(hash(id), 0, id)
					w, had := want[id]
					if ok != had || (ok && prev.Addr != w.Addr) {
						t.Fatalf("step %d: without(%s) = %v, %v; want %v, %v", step, id, prev.Addr, ok, w.Addr, had)
					}
					delete(want, id)
					root = next
				} else {
					n := Node{ID: id, Role: ca.RoleWorker, Addr: fmt.Sprint(step)}
					next, prev, ok := root.with(hash(id), 0, n, false)
					w, had := want[id]
					if ok != had || (ok && prev.Addr != w.Addr) {
						t.Fatalf("step %d: with(%s) replaced %v, %v; want %v, %v", step, id, prev.Addr, ok, w.Addr, had)
					}
					want[id] = n
					root = next
				}
				if got := trieNodes(before); !samePlain(got, beforeMap) {
					t.Fatalf("step %d: the trie before the step changed", step)
				}
				if got := trieNodes(root); !samePlain(got, want) {
					t.Fatalf("step %d: trie holds %d nodes, want %d", step, len(got), len(want))
				}
				for id, n := range want {
					if got, ok := trieGet(root, hash, id); !ok || got.Addr != n.Addr {
						t.Fatalf("step %d: get(%s) = %v, %v; want %v", step, id, got.Addr, ok, n.Addr)
					}
				}
				if step%100 == 0 {
					var fresh *trie
					for _, id := range slices.Sorted(mapsKeys(want)) {
						fresh, _, _ = fresh.with(hash(id), 0, want[id], true)
					}
					if a, b := shape(root), shape(fresh); a != b {
						t.Fatalf("step %d: shape %s, built afresh %s", step, a, b)
					}
				}
			}
		})
	}
}

func clonePlain(m map[string]Node) map[string]Node {
	out := make(map[string]Node, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func samePlain(a, b map[string]Node) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w.Addr != v.Addr || w.ID != k {
			return false
		}
	}
	return true
}

func trieNodes(t *trie) map[string]Node {
	out := map[string]Node{}
	t.each(func(id string, n Node) bool { out[id] = n; return true })
	return out
}

// trieGet is NodeMap.Get under another hash.
func trieGet(t *trie, hash func(string) uint64, id string) (Node, bool) {
	h := hash(id)
	for shift := uint(0); t != nil; shift += trieBits {
		bit := uint32(1) << (h >> shift & trieMask)
		if t.bitmap&bit == 0 {
			return Node{}, false
		}
		s := t.kids[popcount(t.bitmap&(bit-1))]
		if s.sub != nil {
			t = s.sub
			continue
		}
		for _, n := range s.leaf.nodes {
			if n.ID == id && s.leaf.hash == h {
				return n, true
			}
		}
		return Node{}, false
	}
	return Node{}, false
}

func popcount(x uint32) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

func mapsKeys(m map[string]Node) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// shape describes a trie's levels and leaves.
func shape(t *trie) string {
	if t == nil {
		return "-"
	}
	s := fmt.Sprintf("%x[", t.bitmap)
	for _, k := range t.kids {
		if k.sub != nil {
			s += shape(k.sub)
		} else {
			ids := []string{}
			for _, n := range k.leaf.nodes {
				ids = append(ids, n.ID)
			}
			s += fmt.Sprint(ids)
		}
	}
	return s + "]"
}
