package fsm_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// TestSameIDs: SameIDs agrees with a comparison of the ID sets on random
// histories of joins, renewals and removals, and reports a renewal (a
// node replaced under its ID) as no change.
func TestSameIDs(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ids := func(m fsm.NodeMap) map[string]bool {
		out := map[string]bool{}
		for id := range m.All() {
			out[id] = true
		}
		return out
	}
	equal := func(a, b map[string]bool) bool {
		if len(a) != len(b) {
			return false
		}
		for id := range a {
			if !b[id] {
				return false
			}
		}
		return true
	}
	var base fsm.NodeMap
	for i := range 300 {
		base = base.With(fsm.Node{ID: fmt.Sprintf("n%03d", i), Role: ca.RoleWorker})
	}
	for round := range 500 {
		next := base
		for range 1 + rng.IntN(3) {
			id := fmt.Sprintf("n%03d", rng.IntN(400))
			switch rng.IntN(3) {
			case 0: // a renewal, or a join of a new ID
				next = next.With(fsm.Node{ID: id, Role: ca.RoleWorker, Addr: fmt.Sprint(round)})
			case 1:
				next = next.Without(id)
			case 2: // a renewal of a node there
				if n, ok := next.Get(id); ok {
					n.Addr = fmt.Sprint("renewed", round)
					next = next.With(n)
				}
			}
		}
		want := equal(ids(base), ids(next))
		if got := base.SameIDs(next); got != want {
			t.Fatalf("round %d: SameIDs() = %v, want %v", round, got, want)
		}
		if got := next.SameIDs(base); got != want {
			t.Fatalf("round %d: SameIDs() the other way = %v, want %v", round, got, want)
		}
		base = next
	}
	n, _ := base.Get("n000")
	if !ok(base, "n000") {
		n = fsm.Node{ID: "n000", Role: ca.RoleWorker}
		base = base.With(n)
	}
	n.Addr = "renewed once more"
	if !base.SameIDs(base.With(n)) {
		t.Errorf("SameIDs() of a map and itself with one node renewed = false, want true")
	}
}

func ok(m fsm.NodeMap, id string) bool {
	_, found := m.Get(id)
	return found
}
