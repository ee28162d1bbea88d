package fsm

import (
	"encoding/json"
	"hash/fnv"
	"iter"

	"github.com/quorumca/quorumca/ca"
)

// nodeShards is how many parts a NodeMap is split into. An update copies
// one part, about 1/256 of the nodes (8 at 2,000), and the array of parts.
const nodeShards = 256

// NodeMap holds the cluster's nodes by ID. It is a value that is never
// changed in place: With and Without return a new map that shares all but
// one of its parts with the old one, so that Apply, which must leave the
// state readers hold untouched, does not copy every node for every join
// or renewal. The zero value is empty.
type NodeMap struct {
	shards [nodeShards]map[string]Node
	n      int
	// managers holds the IDs of the manager nodes, which every join and
	// renewal lists; it is copied whole when a manager comes or goes.
	managers map[string]bool
}

// NewNodeMap returns a map holding nodes.
func NewNodeMap(nodes ...Node) NodeMap {
	var m NodeMap
	for _, n := range nodes {
		m = m.With(n)
	}
	return m
}

func shardOf(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % nodeShards)
}

// Len returns the number of nodes.
func (m NodeMap) Len() int { return m.n }

// Get returns the node with the given ID.
func (m NodeMap) Get(id string) (Node, bool) {
	n, ok := m.shards[shardOf(id)][id]
	return n, ok
}

// All yields every node and its ID, in no particular order.
func (m NodeMap) All() iter.Seq2[string, Node] {
	return func(yield func(string, Node) bool) {
		for _, s := range m.shards {
			for id, n := range s {
				if !yield(id, n) {
					return
				}
			}
		}
	}
}

// With returns a map holding n in place of any node with its ID.
func (m NodeMap) With(n Node) NodeMap {
	i := shardOf(n.ID)
	old := m.shards[i]
	s := make(map[string]Node, len(old)+1)
	for k, v := range old {
		s[k] = v
	}
	prev, ok := old[n.ID]
	if !ok {
		m.n++
	}
	s[n.ID] = n
	m.shards[i] = s
	if (ok && prev.Role == ca.RoleManager) != (n.Role == ca.RoleManager) {
		m.managers = withFlag(m.managers, n.ID, n.Role == ca.RoleManager)
	}
	return m
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
	i := shardOf(id)
	old := m.shards[i]
	prev, ok := old[id]
	if !ok {
		return m
	}
	if prev.Role == ca.RoleManager {
		m.managers = withFlag(m.managers, id, false)
	}
	s := make(map[string]Node, len(old))
	for k, v := range old {
		if k != id {
			s[k] = v
		}
	}
	m.shards[i] = s
	m.n--
	return m
}

// MarshalJSON writes the nodes as one JSON object keyed by ID, in key
// order, as a plain map would be.
func (m NodeMap) MarshalJSON() ([]byte, error) {
	all := make(map[string]Node, m.n)
	for id, n := range m.All() {
		all[id] = n
	}
	return json.Marshal(all)
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (m *NodeMap) UnmarshalJSON(b []byte) error {
	var all map[string]Node
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	var out NodeMap
	for id, n := range all {
		i := shardOf(id)
		if out.shards[i] == nil {
			out.shards[i] = map[string]Node{}
		}
		out.shards[i][id] = n
		out.n++
		if n.Role == ca.RoleManager {
			if out.managers == nil {
				out.managers = map[string]bool{}
			}
			out.managers[id] = true
		}
	}
	*m = out
	return nil
}
