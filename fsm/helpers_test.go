package fsm_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// t0 is the instant the tests' clusters are initialized at. Whole seconds,
// like certificate times.
var t0 = time.Date(2030, time.January, 1, 0, 0, 0, 0, time.UTC)

// fixture is real CA material and the settings of one test cluster.
type fixture struct {
	clusterID     string
	material      ca.Material
	status        ca.TLSStatus // of the cluster's signer
	other         ca.TLSStatus // of an unrelated root
	workerSecret  string
	managerSecret string
	expiry        time.Duration
	// managerID and managerCert are the first manager and the real
	// certificate it was issued at t0.
	managerID   string
	managerCert fsm.CertInfo
}

// newFixture makes a fixture. IDs, secrets and serials come from a fixed
// seed, so that random command sequences built on it repeat from run to
// run; keys are random whatever the reader (crypto/ecdsa ignores it), but
// nothing here depends on their bits.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	rand := mrand.NewChaCha8([32]byte{'q', 'u', 'o', 'r', 'u', 'm'})
	f := &fixture{expiry: ca.DefaultCertExpiry}
	f.clusterID = mustID(t, rand)
	f.managerID = mustID(t, rand)
	var err error
	if f.material, err = ca.GenerateRoot(rand, t0, f.clusterID); err != nil {
		t.Fatalf("ca.GenerateRoot(%s) = %v", f.clusterID, err)
	}
	signer, err := ca.NewSigner(f.material)
	if err != nil {
		t.Fatalf("ca.NewSigner() = %v", err)
	}
	f.status = ca.StatusOf(signer.Certificate())

	otherMaterial, err := ca.GenerateRoot(rand, t0, mustID(t, rand))
	if err != nil {
		t.Fatalf("ca.GenerateRoot(other) = %v", err)
	}
	otherSigner, err := ca.NewSigner(otherMaterial)
	if err != nil {
		t.Fatalf("ca.NewSigner(other) = %v", err)
	}
	f.other = ca.StatusOf(otherSigner.Certificate())

	if f.workerSecret, err = ca.NewSecret(rand); err != nil {
		t.Fatalf("ca.NewSecret() = %v", err)
	}
	if f.managerSecret, err = ca.NewSecret(rand); err != nil {
		t.Fatalf("ca.NewSecret() = %v", err)
	}

	key, err := ca.GenerateKey(rand)
	if err != nil {
		t.Fatalf("ca.GenerateKey() = %v", err)
	}
	id := ca.Identity{NodeID: f.managerID, Role: ca.RoleManager, ClusterID: f.clusterID}
	issued, err := signer.SignKey(rand, t0, key.Public(), id, f.expiry)
	if err != nil {
		t.Fatalf("SignKey(%v) = %v", id, err)
	}
	f.managerCert = fsm.CertInfo{
		Serial:    issued.Serial.Text(16),
		NotBefore: issued.NotBefore,
		NotAfter:  issued.NotAfter,
		Issuer:    f.status,
	}
	return f
}

func mustID(t testing.TB, rand io.Reader) string {
	t.Helper()
	id, err := ca.NewID(rand)
	if err != nil {
		t.Fatalf("ca.NewID() = %v", err)
	}
	return id
}

// initCmd is the Init command of the fixture's cluster, at t0.
func (f *fixture) initCmd() fsm.Command {
	return fsm.Command{At: t0, Init: &fsm.Init{
		ClusterID:     f.clusterID,
		CertExpiry:    f.expiry,
		CA:            f.material,
		WorkerSecret:  f.workerSecret,
		ManagerSecret: f.managerSecret,
		GossipKey:     make([]byte, fsm.GossipKeySize),
		Manager: fsm.Node{
			ID: f.managerID, Role: ca.RoleManager, Addr: "10.0.0.1:2377", RaftAddr: "10.0.0.1:2378",
			Cert: f.managerCert,
		},
	}}
}

// cert describes a certificate signed by the cluster's CA at at, valid for
// validity. No signing: Apply only looks at what the description says.
func (f *fixture) cert(at time.Time, validity time.Duration) fsm.CertInfo {
	return fsm.CertInfo{
		Serial:    fmt.Sprintf("%x", at.UnixNano()^int64(validity)),
		NotBefore: at.Add(-time.Hour),
		NotAfter:  at.Add(validity),
		Issuer:    f.status,
	}
}

// join is the Issue command of a node joining with the standing secret of
// its role, issued at at for the fixture's expiry.
func (f *fixture) join(id string, role ca.Role, secret string, at time.Time) fsm.Command {
	return fsm.Command{At: at, Issue: &fsm.Issue{
		Node:       fsm.Node{ID: id, Role: role, Addr: "10.0.1.1:0", Cert: f.cert(at, f.expiry)},
		Join:       true,
		SecretHash: fsm.HashSecret(secret),
	}}
}

// renew is the Issue command of a node renewing at at, for validity.
func (f *fixture) renew(id string, role ca.Role, at time.Time, validity time.Duration) fsm.Command {
	return fsm.Command{At: at, Issue: &fsm.Issue{
		Node: fsm.Node{ID: id, Role: role, Cert: f.cert(at, validity)},
	}}
}

// apply applies cmds in turn from s, at indexes following s.Index, and
// fails the test if any is refused.
func apply(t testing.TB, s *fsm.State, cmds ...fsm.Command) *fsm.State {
	t.Helper()
	for _, c := range cmds {
		var index uint64 = 1
		if s != nil {
			index = s.Index + 1
		}
		next, err := fsm.Apply(s, index, c)
		if err != nil {
			t.Fatalf("Apply(%d, %s) = %v, want nil", index, describe(c), err)
		}
		s = next
	}
	return s
}

// describe names the operation of a command, for failure messages.
func describe(c fsm.Command) string {
	v := reflect.ValueOf(c)
	var ops []string
	for i := range v.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Pointer && !f.IsNil() {
			ops = append(ops, v.Type().Field(i).Name)
		}
	}
	if len(ops) == 0 {
		return "Command{}"
	}
	return strings.Join(ops, "+")
}

// snapshot returns s written with WriteTo and read back with ReadState:
// a deep copy, and the round trip a Raft snapshot makes.
func snapshot(t testing.TB, s *fsm.State) *fsm.State {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		t.Fatalf("WriteTo() = %v", err)
	}
	r, err := fsm.ReadState(&buf)
	if err != nil {
		t.Fatalf("ReadState() = %v", err)
	}
	return r
}

// withIndex returns a copy of s with Index set: what a refused command
// must leave.
func withIndex(s *fsm.State, index uint64) *fsm.State {
	c := *s
	c.Index = index
	return &c
}

// sentinels are fsm's errors, to name the one an error wraps.
var sentinels = []error{
	fsm.ErrNotInitialized, fsm.ErrInitialized, fsm.ErrNodeExists, fsm.ErrUnknownNode,
	fsm.ErrBadCommand, fsm.ErrStale, fsm.ErrRemoved, fsm.ErrLastManager,
	fsm.ErrTokenUnusable, fsm.ErrUnknownToken, fsm.ErrRotating, fsm.ErrUnknownAdmin,
}

// kind returns the fsm sentinel err wraps, nil for nil, and err itself
// when it wraps none.
func kind(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}

// diff compares got and want deeply and describes the first differences,
// one per line; "" means equal. Times compare with time.Time.Equal, and a
// nil map or slice equals an empty one (JSON omits empty maps). It is a
// small stand-in for go-cmp with cmpopts.EquateEmpty, which this module
// does not require.
func diff(got, want any) string {
	d := &differ{}
	d.walk("", reflect.ValueOf(got), reflect.ValueOf(want))
	return strings.Join(d.lines, "\n")
}

type differ struct{ lines []string }

const maxDiffLines = 20

var (
	timeType    = reflect.TypeFor[time.Time]()
	nodeMapType = reflect.TypeFor[fsm.NodeMap]()
)

// plainNodes turns a NodeMap value into a plain map, which the differ
// compares entry by entry.
func plainNodes(v reflect.Value) reflect.Value {
	all := map[string]fsm.Node{}
	for id, n := range v.Interface().(fsm.NodeMap).All() {
		all[id] = n
	}
	return reflect.ValueOf(all)
}

func (d *differ) report(path string, got, want any) {
	if len(d.lines) < maxDiffLines {
		d.lines = append(d.lines, fmt.Sprintf("%s: got %v, want %v", orRoot(path), got, want))
	}
}

func orRoot(path string) string {
	if path == "" {
		return "(root)"
	}
	return path
}

// equal is walk without the paths: the fast check walk makes first, so
// that equal values cost no formatting.
func equal(got, want reflect.Value) bool {
	if !got.IsValid() || !want.IsValid() {
		return got.IsValid() == want.IsValid()
	}
	if got.Type() != want.Type() {
		return false
	}
	if got.Type() == timeType {
		return timeOf(got).Equal(timeOf(want))
	}
	if got.Type() == nodeMapType {
		return equal(plainNodes(got), plainNodes(want))
	}
	switch got.Kind() {
	case reflect.Pointer, reflect.Interface:
		if got.IsNil() || want.IsNil() {
			return got.IsNil() == want.IsNil()
		}
		return equal(got.Elem(), want.Elem())
	case reflect.Struct:
		for i := range got.NumField() {
			if !equal(got.Field(i), want.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if got.Len() != want.Len() {
			return false
		}
		for it := got.MapRange(); it.Next(); {
			w := want.MapIndex(it.Key())
			if !w.IsValid() || !equal(it.Value(), w) {
				return false
			}
		}
		return true
	case reflect.Slice, reflect.Array:
		if got.Kind() == reflect.Slice && got.Type().Elem().Kind() == reflect.Uint8 {
			return bytes.Equal(got.Bytes(), want.Bytes())
		}
		if got.Len() != want.Len() {
			return false
		}
		for i := range got.Len() {
			if !equal(got.Index(i), want.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Bool:
		return got.Bool() == want.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return got.Int() == want.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return got.Uint() == want.Uint()
	case reflect.Float32, reflect.Float64:
		return got.Float() == want.Float()
	case reflect.String:
		return got.String() == want.String()
	}
	return false
}

func (d *differ) walk(path string, got, want reflect.Value) {
	if equal(got, want) {
		return
	}
	if !got.IsValid() || !want.IsValid() {
		if got.IsValid() != want.IsValid() {
			d.report(path, got, want)
		}
		return
	}
	if got.Type() != want.Type() {
		d.report(path, got.Type(), want.Type())
		return
	}
	if got.Type() == nodeMapType {
		d.walk(path, plainNodes(got), plainNodes(want))
		return
	}
	if got.Type() == timeType {
		g, w := timeOf(got), timeOf(want)
		if !g.Equal(w) {
			d.report(path, g, w)
		}
		return
	}
	switch got.Kind() {
	case reflect.Pointer, reflect.Interface:
		if got.IsNil() || want.IsNil() {
			if got.IsNil() != want.IsNil() {
				d.report(path, nilness(got), nilness(want))
			}
			return
		}
		d.walk(path, got.Elem(), want.Elem())
	case reflect.Struct:
		for i := range got.NumField() {
			d.walk(path+"."+got.Type().Field(i).Name, got.Field(i), want.Field(i))
		}
	case reflect.Map:
		keys := map[string]reflect.Value{}
		for _, k := range got.MapKeys() {
			keys[fmt.Sprint(k)] = k
		}
		for _, k := range want.MapKeys() {
			keys[fmt.Sprint(k)] = k
		}
		names := make([]string, 0, len(keys))
		for n := range keys {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			p := fmt.Sprintf("%s[%s]", path, n)
			g, w := got.MapIndex(keys[n]), want.MapIndex(keys[n])
			switch {
			case !g.IsValid():
				d.report(p, "(missing)", "present")
			case !w.IsValid():
				d.report(p, "present", "(missing)")
			default:
				d.walk(p, g, w)
			}
		}
	case reflect.Slice, reflect.Array:
		if got.Kind() == reflect.Slice && got.Type().Elem().Kind() == reflect.Uint8 {
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				d.report(path, fmt.Sprintf("%d bytes %.16x…", got.Len(), got.Bytes()), fmt.Sprintf("%d bytes %.16x…", want.Len(), want.Bytes()))
			}
			return
		}
		if got.Len() != want.Len() {
			d.report(path+".len", got.Len(), want.Len())
			return
		}
		for i := range got.Len() {
			d.walk(fmt.Sprintf("%s[%d]", path, i), got.Index(i), want.Index(i))
		}
	case reflect.Bool:
		if got.Bool() != want.Bool() {
			d.report(path, got.Bool(), want.Bool())
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if got.Int() != want.Int() {
			d.report(path, got.Int(), want.Int())
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if got.Uint() != want.Uint() {
			d.report(path, got.Uint(), want.Uint())
		}
	case reflect.Float32, reflect.Float64:
		if got.Float() != want.Float() {
			d.report(path, got.Float(), want.Float())
		}
	case reflect.String:
		if got.String() != want.String() {
			d.report(path, fmt.Sprintf("%q", got.String()), fmt.Sprintf("%q", want.String()))
		}
	default:
		d.report(path, "uncomparable "+got.Kind().String(), want.Kind().String())
	}
}

func timeOf(v reflect.Value) time.Time {
	if v.CanInterface() {
		return v.Interface().(time.Time)
	}
	// An unexported time field: copy it out through an addressable value.
	c := reflect.New(timeType).Elem()
	c.Set(v)
	return c.Interface().(time.Time)
}

func nilness(v reflect.Value) string {
	if v.IsNil() {
		return "nil"
	}
	return "non-nil"
}

// TestDiff checks the comparison the other tests rely on.
func TestDiff(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		got, want any
		equal     bool
	}{
		{"same state", &fsm.State{Index: 1, Nodes: fsm.NewNodeMap(fsm.Node{ID: "a"})}, &fsm.State{Index: 1, Nodes: fsm.NewNodeMap(fsm.Node{ID: "a"})}, true},
		{"nil and empty maps", &fsm.State{Removed: map[string]time.Time{}}, &fsm.State{}, true},
		{"same instant in two zones", at, at.In(time.FixedZone("x", 3600)), true},
		{"index", &fsm.State{Index: 1}, &fsm.State{Index: 2}, false},
		{"extra map key", &fsm.State{Removed: map[string]time.Time{"a": at}}, &fsm.State{}, false},
		{"map value", &fsm.State{Removed: map[string]time.Time{"a": at}}, &fsm.State{Removed: map[string]time.Time{"a": at.Add(1)}}, false},
		{"bytes", fsm.State{CA: ca.Material{Cert: []byte("a")}}, fsm.State{CA: ca.Material{Cert: []byte("b")}}, false},
		{"array", ca.TLSStatus{IssuerKeyHash: [32]byte{1}}, ca.TLSStatus{}, false},
		{"nil pointer", fsm.Command{Prune: &fsm.Prune{}}, fsm.Command{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := diff(tt.got, tt.want)
			if (d == "") != tt.equal {
				t.Errorf("diff(%v, %v) = %q, want equal %v", tt.got, tt.want, d, tt.equal)
			}
		})
	}
}

// nodeOf returns node id of s, or the zero Node when s holds none.
func nodeOf(s *fsm.State, id string) fsm.Node {
	n, _ := s.Nodes.Get(id)
	return n
}
