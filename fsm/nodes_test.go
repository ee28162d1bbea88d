package fsm_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// TestNodeMapCopyOnWrite: With and Without leave the map they were called
// on as it was, whatever part of it they change.
func TestNodeMapCopyOnWrite(t *testing.T) {
	var base fsm.NodeMap
	for i := range 300 {
		base = base.With(fsm.Node{ID: fmt.Sprintf("n%03d", i), Role: ca.RoleWorker})
	}
	before := plain(base)
	for i := range 300 {
		id := fmt.Sprintf("n%03d", i)
		changed := base.With(fsm.Node{ID: id, Role: ca.RoleManager})
		if got, _ := changed.Get(id); got.Role != ca.RoleManager || changed.Len() != 300 {
			t.Fatalf("With(%s as manager): role %s, %d nodes; want manager, 300", id, got.Role, changed.Len())
		}
		gone := base.Without(id)
		if _, ok := gone.Get(id); ok || gone.Len() != 299 {
			t.Fatalf("Without(%s): still there %t, %d nodes; want gone, 299", id, ok, gone.Len())
		}
	}
	added := base.With(fsm.Node{ID: "new"})
	if added.Len() != 301 || base.Len() != 300 {
		t.Errorf("With(new): %d nodes, original %d; want 301, 300", added.Len(), base.Len())
	}
	if same := base.Without("absent"); same.Len() != 300 {
		t.Errorf("Without(absent) = %d nodes, want 300", same.Len())
	}
	if d := diff(plain(base), before); d != "" {
		t.Errorf("the original map changed under With and Without:\n%s", d)
	}
}

// TestNodeMapJSON: a NodeMap is written as the plain JSON object of its
// nodes by ID, the same bytes whatever order the nodes came in, and reads
// back equal.
func TestNodeMapJSON(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	nodes := []fsm.Node{
		{ID: "b", Role: ca.RoleWorker, Addr: "10.0.0.2:0", JoinedAt: at},
		{ID: "a", Role: ca.RoleManager, Addr: "10.0.0.1:2377", RaftAddr: "10.0.0.1:2378", JoinedAt: at},
		{ID: "c", Role: ca.RoleWorker},
	}
	m1 := fsm.NewNodeMap(nodes...)
	m2 := fsm.NewNodeMap(nodes[2], nodes[0], nodes[1])
	b1, err := json.Marshal(m1)
	if err != nil {
		t.Fatalf("json.Marshal(NodeMap) = %v", err)
	}
	b2, _ := json.Marshal(m2)
	want, _ := json.Marshal(map[string]fsm.Node{"a": nodes[1], "b": nodes[0], "c": nodes[2]})
	if string(b1) != string(want) || string(b2) != string(want) {
		t.Errorf("json.Marshal(NodeMap) = %s and %s, want %s", b1, b2, want)
	}
	var back fsm.NodeMap
	if err := json.Unmarshal(b1, &back); err != nil {
		t.Fatalf("json.Unmarshal(%s) = %v", b1, err)
	}
	if d := diff(plain(back), plain(m1)); d != "" || back.Len() != 3 {
		t.Errorf("round trip: %d nodes, want 3; diff:\n%s", back.Len(), d)
	}
	var empty fsm.NodeMap
	if err := json.Unmarshal([]byte("null"), &empty); err != nil || empty.Len() != 0 {
		t.Errorf("json.Unmarshal(null) = %v, %d nodes; want nil, 0", err, empty.Len())
	}
	if err := json.Unmarshal([]byte(`["a"]`), &empty); err == nil {
		t.Errorf("json.Unmarshal(a list) = nil, want an error")
	}
}

func plain(m fsm.NodeMap) map[string]fsm.Node {
	out := map[string]fsm.Node{}
	for id, n := range m.All() {
		out[id] = n
	}
	return out
}

// BenchmarkApplyJoin is the cost of applying one join to a state of 2,000
// nodes: the checks and the new state, which must leave the old one as it
// was.
//
//	go test -run='^$' -bench=ApplyJoin ./fsm/
func BenchmarkApplyJoin(b *testing.B) {
	f := newFixture(b)
	s := apply(b, nil, f.initCmd())
	for i := range 2000 {
		s = apply(b, s, f.join(fmt.Sprintf("w%05d", i), ca.RoleWorker, f.workerSecret, t0))
	}
	cmds := make([]fsm.Command, 1000)
	for i := range cmds {
		cmds[i] = f.join(fmt.Sprintf("x%05d", i), ca.RoleWorker, f.workerSecret, t0)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := fsm.Apply(s, s.Index+1, cmds[i%len(cmds)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// TestNodeMapManagers: Managers follows joins, promotions, demotions and
// removals, in the map changed and not in the one it came from, and
// survives a JSON round trip.
func TestNodeMapManagers(t *testing.T) {
	managers := func(m fsm.NodeMap) []string {
		var ids []string
		for n := range m.Managers() {
			if n.Role != ca.RoleManager {
				t.Errorf("Managers() yielded %s, a %s", n.ID, n.Role)
			}
			ids = append(ids, n.ID)
		}
		slices.Sort(ids)
		return ids
	}
	m0 := fsm.NewNodeMap(fsm.Node{ID: "m1", Role: ca.RoleManager}, fsm.Node{ID: "w1", Role: ca.RoleWorker}, fsm.Node{ID: "w2", Role: ca.RoleWorker})
	m1 := m0.With(fsm.Node{ID: "w1", Role: ca.RoleManager})           // promoted
	m2 := m1.With(fsm.Node{ID: "m1", Role: ca.RoleWorker})            // demoted
	m3 := m2.Without("w1")                                            // removed
	m4 := m3.With(fsm.Node{ID: "w2", Role: ca.RoleWorker, Addr: "x"}) // renewed
	for _, tt := range []struct {
		name string
		m    fsm.NodeMap
		want []string
	}{
		{"start", m0, []string{"m1"}},
		{"promoted", m1, []string{"m1", "w1"}},
		{"demoted", m2, []string{"w1"}},
		{"removed", m3, nil},
		{"worker renewed", m4, nil},
	} {
		if got := managers(tt.m); !slices.Equal(got, tt.want) {
			t.Errorf("%s: Managers() = %v, want %v", tt.name, got, tt.want)
		}
		b, err := json.Marshal(tt.m)
		if err != nil {
			t.Fatal(err)
		}
		var back fsm.NodeMap
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if got := managers(back); !slices.Equal(got, tt.want) {
			t.Errorf("%s, read back from JSON: Managers() = %v, want %v", tt.name, got, tt.want)
		}
	}
}
