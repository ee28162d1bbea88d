package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/quorumca/quorumca/internal/testkit/clustertest"
)

// TestResolveNode: a node is named by its ID, its host name when no other
// node has it, or a unique start of its ID; a name that names none or
// several is an error that says so and lists the candidates.
func TestResolveNode(t *testing.T) {
	nodes := []nodeJSON{
		{ID: "abc123", Role: "swarm-manager", Addr: "10.0.0.1:2377", Hostname: "web-1"},
		{ID: "abd456", Role: "swarm-worker", Hostname: "db"},
		{ID: "abd4567", Role: "swarm-worker", Hostname: "db"},
	}
	tests := []struct {
		arg     string
		want    string   // the ID, or empty for an error
		wantErr []string // what the error says
	}{
		{"abc123", "abc123", nil},
		{"abc", "abc123", nil},
		{"abd456", "abd456", nil}, // an exact ID wins over a longer one it starts
		{"abd4567", "abd4567", nil},
		{"ab", "", []string{`"ab" names 3 nodes; give more of the ID`, "abc123  manager  10.0.0.1:2377", "abd456  worker  -"}},
		{"web-1", "abc123", nil},
		{"db", "", []string{`"db" names 2 nodes`, "abd456", "abd4567"}},
		{"abd", "", []string{`"abd" names 2 nodes`, "abd456", "abd4567"}},
		{"zzz", "", []string{`no node has the host name "zzz" or an ID starting with it: see ` + "`quorumca node ls`"}},
		{"", "", []string{"an empty node ID"}},
	}
	for _, tt := range tests {
		t.Run(tt.arg, func(t *testing.T) {
			got, err := resolveNode(nodes, tt.arg)
			if tt.want != "" {
				if err != nil || got.ID != tt.want {
					t.Fatalf("resolveNode(%q) = %q, %v, want %q", tt.arg, got.ID, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("resolveNode(%q) = %q, want an error", tt.arg, got.ID)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("resolveNode(%q) = %q, want it to contain %q", tt.arg, err, w)
				}
			}
		})
	}
	got, err := resolveNodes(nodes, []string{"abc", "abc123", "abd4567"})
	if err != nil || len(got) != 2 || got[0].ID != "abc123" || got[1].ID != "abd4567" {
		t.Errorf("resolveNodes(abc, abc123, abd4567) = %v, %v, want abc123 once, then abd4567", got, err)
	}
	if _, err := resolveNodes(nodes, []string{"zzz", "ab"}); err == nil || !strings.Contains(err.Error(), "zzz") || !strings.Contains(err.Error(), `"ab" names 3`) {
		t.Errorf("resolveNodes(zzz, ab) = %v, want both failures", err)
	}
}

// uniquePrefix returns the shortest start of id that no other of ids
// starts with.
func uniquePrefix(t *testing.T, id string, ids []string) string {
	t.Helper()
	for l := 1; l <= len(id); l++ {
		clash := false
		for _, o := range ids {
			if o != id && strings.HasPrefix(o, id[:l]) {
				clash = true
			}
		}
		if !clash {
			return id[:l]
		}
	}
	t.Fatalf("no unique prefix of %s in %v", id, ids)
	return ""
}

// TestNodeCommandsTakePrefixesAndSeveralIDs: node ls names each node's
// host and marks the node asked; node ls -q prints the IDs alone; inspect, rm and promote take unique ID prefixes and several IDs;
// an unknown or ambiguous name changes nothing.
func TestNodeCommandsTakePrefixesAndSeveralIDs(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Managers: 1, Workers: 2})
	m, w0, w1 := c.Managers[0], c.Workers[0], c.Workers[1]
	ids := []string{m.ID(), w0.ID(), w1.ID()}

	// node ls names each node's host and marks the node asked.
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(t, on(m, "node", "ls")...)
	if err != nil || !strings.Contains(out, "HOSTNAME") || !strings.Contains(out, m.ID()+" *") || strings.Contains(out, w0.ID()+" *") || strings.Count(out, " "+host+" ") != 3 {
		t.Fatalf("node ls = %v\n%s\nwant HOSTNAME %s on each node, and the manager asked marked *", err, out, host)
	}
	out, err = run(t, on(m, "node", "ls", "-q")...)
	if err != nil {
		t.Fatalf("node ls -q = %v", err)
	}
	got := strings.Fields(out)
	if len(got) != 3 || strings.Join(got, "\n")+"\n" != out {
		t.Fatalf("node ls -q = %q, want the 3 IDs, one a line", out)
	}
	for _, id := range ids {
		if !strings.Contains(out, id) {
			t.Errorf("node ls -q = %q, want %s", out, id)
		}
	}

	p0, p1 := uniquePrefix(t, w0.ID(), ids), uniquePrefix(t, w1.ID(), ids)
	out, err = run(t, on(m, "node", "inspect", p0, "--format", "json")...)
	var one nodeJSON
	if err != nil || json.Unmarshal([]byte(out), &one) != nil || one.ID != w0.ID() {
		t.Fatalf("node inspect %s --format json = %v\n%s\nwant the object of %s", p0, err, out, w0.ID())
	}
	out, err = run(t, on(m, "node", "inspect", p0, w1.ID(), "--format", "json")...)
	var two []nodeJSON
	if err != nil || json.Unmarshal([]byte(out), &two) != nil || len(two) != 2 || two[0].ID != w0.ID() || two[1].ID != w1.ID() {
		t.Fatalf("node inspect %s %s --format json = %v\n%s\nwant an array of both", p0, w1.ID(), err, out)
	}
	out, err = run(t, on(m, "node", "inspect", p0, p1)...)
	if err != nil || strings.Count(out, "ID:  ") != 2 {
		t.Fatalf("node inspect %s %s = %v\n%s\nwant both nodes", p0, p1, err, out)
	}

	// A name that resolves to nothing: nothing is removed, the good one
	// included.
	out, err = run(t, on(m, "node", "rm", "--force", p1, "zzzzzz")...)
	if err == nil || !strings.Contains(err.Error(), `no node has the host name "zzzzzz"`) || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("node rm %s zzzzzz = %v\n%s\nwant the unknown name refused and nothing changed", p1, err, out)
	}
	if out, _ := run(t, on(m, "node", "ls", "-q")...); !strings.Contains(out, w1.ID()) {
		t.Fatalf("a refused node rm removed %s: node ls -q = %q", w1.ID(), out)
	}
	// An empty prefix is refused, never a match of every node.
	if _, err := run(t, on(m, "node", "demote", "")...); err == nil || !strings.Contains(err.Error(), "an empty node ID") {
		t.Fatalf(`node demote "" = %v, want it refused`, err)
	}

	out, err = run(t, on(m, "node", "rm", "--force", p1)...)
	if err != nil || strings.TrimSpace(out) != w1.ID() {
		t.Fatalf("node rm --force %s = %v\n%s\nwant %s removed", p1, err, out, w1.ID())
	}
	if out, _ := run(t, on(m, "node", "ls", "-q")...); strings.Contains(out, w1.ID()) {
		t.Fatalf("node ls -q after rm = %q, still lists %s", out, w1.ID())
	}
	out, err = run(t, on(m, "node", "promote", p0)...)
	if err != nil || !strings.Contains(out, "Node "+w0.ID()+" is now a manager.") {
		t.Fatalf("node promote %s = %v\n%s", p0, err, out)
	}
}
