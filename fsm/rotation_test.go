package fsm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// Times of the rotation tests, after the base world of apply_test.go:
// the rotation starts at now, nodes renew at renewAt, it completes at
// completeAt.
var (
	renewAt    = now.Add(time.Minute)
	completeAt = now.Add(time.Hour)
)

// rotWorld is the base world of apply_test.go (managers f.managerID and
// idM2, workers idW and idS, idR removed, three extra tokens) with the
// material of root CA rotations away from its root.
type rotWorld struct {
	*world
	// next is the new root, as ca.GenerateRoot made it; rot is what
	// ca.Rotation makes to move to it from the cluster's root: the
	// material StartRotation carries.
	next, rot ca.Material
	// newStatus is the TLS status of certificates rot (and next) signs.
	newStatus ca.TLSStatus
	// next2 and rot2 are another new root and the material to rotate to it
	// from the cluster's root, as a second leader would prepare it.
	next2, rot2 ca.Material
	// newWorker and newManager are the join secrets a completion installs.
	newWorker, newManager string
}

func newRotWorld(t testing.TB) *rotWorld {
	t.Helper()
	w := &rotWorld{world: newWorld(t)}
	rand := mrand.NewChaCha8([32]byte{'r', 'o', 't', 'a', 't', 'e'})
	w.next, w.rot, w.newStatus = rotationTo(t, rand, now, w.material, w.clusterID)
	w.next2, w.rot2, _ = rotationTo(t, rand, now, w.material, w.clusterID)
	w.newWorker, w.newManager = mustSecret(t, rand), mustSecret(t, rand)
	if w.newStatus.Equal(w.status) {
		t.Fatalf("the new root's status equals the old one's")
	}
	return w
}

// rotationTo makes a new root for clusterID and the material to rotate
// to it from old, and returns them with the status of what they sign.
func rotationTo(t testing.TB, rand *mrand.ChaCha8, at time.Time, old ca.Material, clusterID string) (next, rot ca.Material, status ca.TLSStatus) {
	t.Helper()
	next, err := ca.GenerateRoot(rand, at, clusterID)
	if err != nil {
		t.Fatalf("ca.GenerateRoot() = %v", err)
	}
	rot, err = ca.Rotation(rand, at, old, next)
	if err != nil {
		t.Fatalf("ca.Rotation() = %v", err)
	}
	return next, rot, certStatus(t, rot.Cert)
}

// certStatus is the TLS status of the certificates the first certificate
// of certPEM signs.
func certStatus(t testing.TB, certPEM []byte) ca.TLSStatus {
	t.Helper()
	certs, err := ca.ParseCertificates(certPEM)
	if err != nil {
		t.Fatalf("ca.ParseCertificates() = %v", err)
	}
	return ca.StatusOf(certs[0])
}

func mustSecret(t testing.TB, rand *mrand.ChaCha8) string {
	t.Helper()
	s, err := ca.NewSecret(rand)
	if err != nil {
		t.Fatalf("ca.NewSecret() = %v", err)
	}
	return s
}

// start is the StartRotation command to rot, at now.
func (w *rotWorld) start() fsm.Command {
	return fsm.Command{At: now, StartRotation: &fsm.StartRotation{CA: w.rot, Chain: w.next.Chain, Bundle: w.next.Bundle}}
}

func (w *rotWorld) startWith(change func(*fsm.StartRotation)) fsm.Command {
	c := w.start()
	change(c.StartRotation)
	return c
}

// renewNew is node id renewing under the new CA at renewAt.
func (w *rotWorld) renewNew(id string, role ca.Role) fsm.Command {
	c := w.renew(id, role, renewAt, w.expiry)
	c.Issue.Node.Cert.Issuer = w.newStatus
	return c
}

// renewAllBut renews every node of the base world but those named under
// the new CA.
func (w *rotWorld) renewAllBut(except ...string) []fsm.Command {
	var cmds []fsm.Command
	for _, n := range w.base.SortedNodes() {
		if !slices.Contains(except, n.ID) {
			cmds = append(cmds, w.renewNew(n.ID, n.Role))
		}
	}
	return cmds
}

// complete is the CompleteRotation command with the new secrets, at
// completeAt.
func (w *rotWorld) complete(skipped ...string) fsm.Command {
	return fsm.Command{At: completeAt, CompleteRotation: &fsm.CompleteRotation{
		Skipped: skipped, WorkerSecret: w.newWorker, ManagerSecret: w.newManager,
	}}
}

func (w *rotWorld) completeWith(worker, manager string) fsm.Command {
	c := w.complete()
	c.CompleteRotation.WorkerSecret, c.CompleteRotation.ManagerSecret = worker, manager
	return c
}

// then concatenates command lists.
func then(lists ...[]fsm.Command) []fsm.Command {
	var out []fsm.Command
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// rotCase is one command applied to a state: the base world, or the empty
// state, after setup.
type rotCase struct {
	name  string
	empty bool
	setup []fsm.Command
	cmd   fsm.Command
	want  error // nil: accepted
	// msg, when set, must appear in the refusal's message.
	msg   string
	check func(t *testing.T, before, after *fsm.State)
}

// runRotCases applies each case and checks its outcome: an accepted case
// with its check, a refused one wraps want and changes nothing but Index.
func runRotCases(t *testing.T, w *rotWorld, cases []rotCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			s := w.base
			if tt.empty {
				s = &fsm.State{}
			}
			before := apply(t, s, tt.setup...)
			saved := snapshot(t, before)
			index := before.Index + 3
			after, err := fsm.Apply(before, index, tt.cmd)
			if d := diff(before, saved); d != "" {
				t.Errorf("Apply(%s) changed its input:\n%s", describe(tt.cmd), d)
			}
			if after == nil || after.Index != index {
				t.Fatalf("Apply(%d, %s) state = %+v, want Index %d", index, describe(tt.cmd), after, index)
			}
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("Apply(%s) = %v, want %v", describe(tt.cmd), err, tt.want)
				}
				if tt.msg != "" && !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("Apply(%s) = %q, want a message naming %q", describe(tt.cmd), err, tt.msg)
				}
				if d := diff(after, withIndex(before, index)); d != "" {
					t.Errorf("Apply(%s) refused with %v but changed the state:\n%s", describe(tt.cmd), err, d)
				}
				return
			}
			if err != nil {
				t.Fatalf("Apply(%s) = %v, want nil", describe(tt.cmd), err)
			}
			if tt.check == nil {
				t.Fatal("an accepted case needs a check")
			}
			tt.check(t, before, after)
		})
	}
}

// keyGone fails the test if any of the PEM keys oldKeys, or its DER,
// appears anywhere in s: in its JSON (as PEM or in base64), or in any of
// its byte slices and strings.
// keyOnlyInRotation checks that the key a rotation in progress retired is
// in Rotation.FromCA, to sign its root's CRL, and nowhere else in s.
func keyOnlyInRotation(t *testing.T, s *fsm.State, key []byte) {
	t.Helper()
	if s.Rotation == nil || !bytes.Equal(s.Rotation.FromCA.Key, key) {
		t.Errorf("state at %d: Rotation.FromCA does not hold the key the rotation retired", s.Index)
		return
	}
	c, r := *s, *s.Rotation
	r.FromCA = ca.Material{}
	c.Rotation = &r
	keyGone(t, &c, key)
}

func keyGone(t *testing.T, s *fsm.State, oldKeys ...[]byte) {
	t.Helper()
	js, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("json.Marshal(state) = %v", err)
	}
	var fields [][]byte
	paths := []string{}
	walkBytes(reflect.ValueOf(s), "state", func(path string, b []byte) {
		fields, paths = append(fields, b), append(paths, path)
	})
	for i, oldKey := range oldKeys {
		block, _ := pem.Decode(oldKey)
		if block == nil {
			t.Fatalf("old key %d is not PEM", i)
		}
		der := block.Bytes
		derB64 := base64.StdEncoding.EncodeToString(der)[:64] // the PEM's first body line
		for _, needle := range []string{string(oldKey), base64.StdEncoding.EncodeToString(oldKey), derB64, base64.StdEncoding.EncodeToString(der)} {
			if bytes.Contains(js, []byte(needle)) {
				t.Errorf("state at %d: its JSON contains old CA key %d", s.Index, i)
				break
			}
		}
		for j, b := range fields {
			if bytes.Contains(b, oldKey) || bytes.Contains(b, der) || bytes.Contains(b, []byte(derB64)) {
				t.Errorf("state at %d: %s contains old CA key %d", s.Index, paths[j], i)
			}
		}
	}
}

// walkBytes calls fn with every byte slice and string reachable from v.
func walkBytes(v reflect.Value, path string, fn func(path string, b []byte)) {
	if v.Type() == timeType {
		return
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			walkBytes(v.Elem(), path, fn)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			walkBytes(v.Field(i), path+"."+v.Type().Field(i).Name, fn)
		}
	case reflect.Map:
		for it := v.MapRange(); it.Next(); {
			p := fmt.Sprintf("%s[%v]", path, it.Key())
			walkBytes(it.Key(), p+".key", fn)
			walkBytes(it.Value(), p, fn)
		}
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint8 {
			fn(path, v.Bytes())
			return
		}
		for i := range v.Len() {
			walkBytes(v.Index(i), fmt.Sprintf("%s[%d]", path, i), fn)
		}
	case reflect.String:
		fn(path, []byte(v.String()))
	}
}

// TestInitGossipKey: Init must carry a gossip key of GossipKeySize bytes,
// and the state keeps it.
func TestInitGossipKey(t *testing.T) {
	f := newFixture(t)
	key := make([]byte, fsm.GossipKeySize)
	for i := range key {
		key[i] = byte(i*7 + 1)
	}
	tests := []struct {
		name string
		key  []byte
		want error
	}{
		{"32 bytes", key, nil},
		{"none", nil, fsm.ErrBadCommand},
		{"empty", []byte{}, fsm.ErrBadCommand},
		{"16 bytes", key[:16], fsm.ErrBadCommand},
		{"31 bytes", key[:31], fsm.ErrBadCommand},
		{"33 bytes", append(slices.Clone(key), 0), fsm.ErrBadCommand},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.initWith(func(in *fsm.Init) { in.GossipKey = slices.Clone(tt.key) })
			s, err := fsm.Apply(&fsm.State{}, 1, c)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Apply(init with a %d-byte gossip key) = %v, want %v", len(tt.key), err, tt.want)
			}
			if tt.want != nil {
				if d := diff(s, &fsm.State{Index: 1}); d != "" {
					t.Errorf("refused Init changed the state:\n%s", d)
				}
				return
			}
			if !bytes.Equal(s.GossipKey, key) {
				t.Errorf("GossipKey = %x, want %x", s.GossipKey, key)
			}
			if r := snapshot(t, s); !bytes.Equal(r.GossipKey, key) {
				t.Errorf("GossipKey after a snapshot = %x, want %x", r.GossipKey, key)
			}
		})
	}
}

// started checks the state a StartRotation to w.rot leaves, with the cert
// expiry it must have.
func (w *rotWorld) started(expiry time.Duration) func(t *testing.T, before, after *fsm.State) {
	return func(t *testing.T, before, after *fsm.State) {
		t.Helper()
		wantRot := &fsm.Rotation{StartedAt: now, From: before.CAStatus, Chain: w.next.Chain, Bundle: w.next.Bundle, FromCA: before.CA}
		if d := diff(after.Rotation, wantRot); d != "" {
			t.Errorf("Rotation differs:\n%s", d)
		}
		if d := diff(after.CA, w.rot); d != "" {
			t.Errorf("CA is not the rotation material:\n%s", d)
		}
		if !bytes.Equal(after.CA.Bundle, before.CA.Bundle) {
			t.Errorf("CA.Bundle changed when the rotation started, want the old bundle kept")
		}
		if !after.CAStatus.Equal(w.newStatus) {
			t.Errorf("CAStatus = %v, want the new CA's %v", after.CAStatus, w.newStatus)
		}
		if got := certStatus(t, after.CA.Cert); !after.CAStatus.Equal(got) {
			t.Errorf("CAStatus = %v, want the status of CA.Cert %v", after.CAStatus, got)
		}
		if after.CertExpiry != expiry {
			t.Errorf("CertExpiry = %s, want %s", after.CertExpiry, expiry)
		}
		// Nothing else changes.
		want := withIndex(before, after.Index)
		want.Rotation, want.CA, want.CAStatus, want.CertExpiry = after.Rotation, after.CA, after.CAStatus, after.CertExpiry
		if d := diff(after, want); d != "" {
			t.Errorf("StartRotation changed more than the CA and the rotation:\n%s", d)
		}
		keyOnlyInRotation(t, after, w.material.Key)
		// The material is usable, and signs under the status recorded.
		signer, err := ca.NewSigner(after.CA)
		if err != nil {
			t.Fatalf("ca.NewSigner(state CA) = %v", err)
		}
		if got := ca.StatusOf(signer.Certificate()); !got.Equal(after.CAStatus) {
			t.Errorf("the signer's status = %v, want CAStatus %v", got, after.CAStatus)
		}
	}
}

func TestStartRotation(t *testing.T) {
	w := newRotWorld(t)
	garbage := []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
	// A rotation from the new root to another, once the first completed.
	rand := mrand.NewChaCha8([32]byte{'s', 'e', 'c', 'o', 'n', 'd'})
	next3, rot3, status3 := rotationTo(t, rand, completeAt.Add(time.Hour), w.next, w.clusterID)
	completed := then([]fsm.Command{w.start()}, w.renewAllBut(), []fsm.Command{w.complete()})
	runRotCases(t, w, []rotCase{
		{name: "accepted", cmd: w.start(), check: w.started(ca.DefaultCertExpiry)},
		{name: "with a cert expiry", cmd: w.startWith(func(s *fsm.StartRotation) { s.CertExpiry = 48 * time.Hour }), check: w.started(48 * time.Hour)},
		{name: "with the minimum cert expiry", cmd: w.startWith(func(s *fsm.StartRotation) { s.CertExpiry = ca.MinCertExpiry }), check: w.started(ca.MinCertExpiry)},
		{name: "with a chain", cmd: w.startWith(func(s *fsm.StartRotation) { s.Chain = []byte("the new CA's chain") }), check: func(t *testing.T, _, after *fsm.State) {
			if after.Rotation == nil || string(after.Rotation.Chain) != "the new CA's chain" {
				t.Errorf("Rotation = %+v, want Chain %q", after.Rotation, "the new CA's chain")
			}
		}},
		{name: "cert expiry under the minimum", cmd: w.startWith(func(s *fsm.StartRotation) { s.CertExpiry = ca.MinCertExpiry - time.Second }), want: fsm.ErrBadCommand},
		{name: "negative cert expiry", cmd: w.startWith(func(s *fsm.StartRotation) { s.CertExpiry = -time.Hour }), want: fsm.ErrBadCommand},
		{name: "while one runs", setup: []fsm.Command{w.start()}, cmd: w.start(), want: fsm.ErrRotating},
		{name: "another while one runs", setup: []fsm.Command{w.start()},
			cmd:  fsm.Command{At: now, StartRotation: &fsm.StartRotation{CA: w.rot2, Chain: w.next2.Chain, Bundle: w.next2.Bundle}},
			want: fsm.ErrRotating},
		{name: "while one runs, with a bad cert expiry", setup: []fsm.Command{w.start()},
			cmd: w.startWith(func(s *fsm.StartRotation) { s.CertExpiry = time.Minute }), want: fsm.ErrRotating},
		{name: "signing material with the new bundle", cmd: w.startWith(func(s *fsm.StartRotation) { s.CA = w.next }), want: fsm.ErrStale},
		{name: "signing material with another bundle", cmd: w.startWith(func(s *fsm.StartRotation) { s.CA.Bundle = w.next2.Bundle }), want: fsm.ErrStale},
		{name: "replayed after the rotation completed", setup: completed, cmd: w.start(), want: fsm.ErrStale},
		{name: "no key", cmd: w.startWith(func(s *fsm.StartRotation) { s.CA.Key = nil }), want: fsm.ErrBadCommand},
		{name: "no bundle", cmd: w.startWith(func(s *fsm.StartRotation) { s.Bundle = nil }), want: fsm.ErrBadCommand},
		{name: "no certificate", cmd: w.startWith(func(s *fsm.StartRotation) { s.CA.Cert = nil }), want: fsm.ErrBadCommand},
		{name: "certificate not PEM", cmd: w.startWith(func(s *fsm.StartRotation) { s.CA.Cert = []byte("not PEM") }), want: fsm.ErrBadCommand},
		{name: "certificate unparsable", cmd: w.startWith(func(s *fsm.StartRotation) { s.CA.Cert = garbage }), want: fsm.ErrBadCommand},
		{name: "the current CA", cmd: w.startWith(func(s *fsm.StartRotation) {
			s.CA, s.Chain, s.Bundle = w.material, w.material.Chain, w.material.Bundle
		}), want: fsm.ErrBadCommand},
		{name: "not initialized", empty: true, cmd: w.start(), want: fsm.ErrNotInitialized},
		{name: "a second rotation after the first completed", setup: completed,
			cmd: fsm.Command{At: completeAt.Add(time.Hour), StartRotation: &fsm.StartRotation{CA: rot3, Chain: next3.Chain, Bundle: next3.Bundle}},
			check: func(t *testing.T, before, after *fsm.State) {
				wantRot := &fsm.Rotation{StartedAt: completeAt.Add(time.Hour), From: w.newStatus, Bundle: next3.Bundle, FromCA: before.CA}
				if d := diff(after.Rotation, wantRot); d != "" {
					t.Errorf("Rotation differs:\n%s", d)
				}
				if !after.CAStatus.Equal(status3) || !bytes.Equal(after.CA.Bundle, w.next.Bundle) {
					t.Errorf("CAStatus, CA.Bundle = %v, %d bytes; want %v and the first rotation's bundle", after.CAStatus, len(after.CA.Bundle), status3)
				}
				if d := diff(after.LastRotation, before.LastRotation); d != "" {
					t.Errorf("LastRotation changed when the next rotation started:\n%s", d)
				}
				keyGone(t, after, w.material.Key)
				keyOnlyInRotation(t, after, w.rot.Key)
			}},
	})
}

// TestIssueDuringRotation: while a rotation runs only certificates of the
// new CA are recorded.
func TestIssueDuringRotation(t *testing.T) {
	w := newRotWorld(t)
	started := []fsm.Command{w.start()}
	underNew := func(c fsm.Command) fsm.Command { c.Issue.Node.Cert.Issuer = w.newStatus; return c }
	underOther := func(c fsm.Command) fsm.Command { c.Issue.Node.Cert.Issuer = w.other; return c }
	renewed := func(id string) func(t *testing.T, before, after *fsm.State) {
		return func(t *testing.T, _, after *fsm.State) {
			n, ok := after.Node(id)
			if !ok || !n.Cert.Issuer.Equal(w.newStatus) || !n.Cert.IssuedAt.Equal(renewAt) {
				t.Errorf("Node(%s) = %+v, %v; want a certificate of the new CA issued at %v", id, n, ok, renewAt)
			}
			if after.Rotation == nil {
				t.Errorf("Rotation = nil after an Issue, want it still running")
			}
		}
	}
	tokJoin := w.joinToken(idNew, ca.RoleWorker, tokOnce, renewAt)
	runRotCases(t, w, []rotCase{
		{name: "renew under the old CA", setup: started, cmd: w.renew(idW, ca.RoleWorker, renewAt, w.expiry), want: fsm.ErrStale},
		{name: "renew under the new CA", setup: started, cmd: w.renewNew(idW, ca.RoleWorker), check: renewed(idW)},
		{name: "renew under an unrelated CA", setup: started, cmd: underOther(w.renew(idW, ca.RoleWorker, renewAt, w.expiry)), want: fsm.ErrStale},
		{name: "join under the old CA", setup: started, cmd: w.join(idNew, ca.RoleWorker, w.workerSecret, renewAt), want: fsm.ErrStale},
		{name: "join under the new CA", setup: started, cmd: underNew(w.join(idNew, ca.RoleWorker, w.workerSecret, renewAt)), check: renewed(idNew)},
		{name: "join with a token under the new CA", setup: started, cmd: underNew(tokJoin), check: renewed(idNew)},
		{name: "renew under the new CA before the rotation", cmd: w.renewNew(idW, ca.RoleWorker), want: fsm.ErrStale},
		{name: "renew under the old CA after completion", setup: then(started, w.renewAllBut(idW), []fsm.Command{w.complete(idW)}),
			cmd: w.renew(idW, ca.RoleWorker, completeAt, w.expiry), want: fsm.ErrStale},
	})
}

// completed checks the state a CompleteRotation of the rotation to w.next
// leaves, with the nodes it must record as skipped.
func (w *rotWorld) completed(skipped ...string) func(t *testing.T, before, after *fsm.State) {
	return func(t *testing.T, before, after *fsm.State) {
		t.Helper()
		r := before.Rotation
		wantCA := ca.Material{Cert: w.rot.Cert, Key: w.rot.Key, Chain: r.Chain, Bundle: w.next.Bundle}
		if d := diff(after.CA, wantCA); d != "" {
			t.Errorf("CA differs:\n%s", d)
		}
		if !after.CAStatus.Equal(w.newStatus) {
			t.Errorf("CAStatus = %v, want the new CA's %v", after.CAStatus, w.newStatus)
		}
		if after.Rotation != nil {
			t.Errorf("Rotation = %+v, want nil", after.Rotation)
		}
		var wantSkipped []string
		if len(skipped) > 0 {
			wantSkipped = skipped
		}
		wantLast := &fsm.RotationRecord{StartedAt: r.StartedAt, CompletedAt: completeAt, Skipped: wantSkipped}
		if d := diff(after.LastRotation, wantLast); d != "" {
			t.Errorf("LastRotation differs:\n%s", d)
		}
		if after.LastRotation != nil && !slices.Equal(after.LastRotation.Skipped, wantSkipped) {
			t.Errorf("LastRotation.Skipped = %q, want %q", after.LastRotation.Skipped, wantSkipped)
		}
		if after.WorkerSecret != w.newWorker || after.ManagerSecret != w.newManager {
			t.Errorf("secrets = %q, %q, want %q, %q", after.WorkerSecret, after.ManagerSecret, w.newWorker, w.newManager)
		}
		if len(after.Tokens) != 0 {
			t.Errorf("Tokens = %v, want none: their digests named the old root", after.Tokens)
		}
		for _, role := range []ca.Role{ca.RoleWorker, ca.RoleManager} {
			tok, err := after.Token(role)
			if err != nil {
				t.Fatalf("Token(%s) = %v", role, err)
			}
			if tok.Digest != sha256.Sum256(w.next.Bundle) || tok.Secret != after.Secret(role) {
				t.Errorf("Token(%s) = digest %x, secret %q; want the new bundle's digest %x and %q", role, tok.Digest, tok.Secret, sha256.Sum256(w.next.Bundle), after.Secret(role))
			}
		}
		// Nothing else changes.
		want := withIndex(before, after.Index)
		want.CA, want.Rotation, want.LastRotation = after.CA, nil, after.LastRotation
		want.WorkerSecret, want.ManagerSecret, want.Tokens = after.WorkerSecret, after.ManagerSecret, nil
		if d := diff(after, want); d != "" {
			t.Errorf("CompleteRotation changed more than it should:\n%s", d)
		}
		for _, n := range after.Nodes.All() {
			if got, want := after.WasSkipped(n.ID), slices.Contains(skipped, n.ID); got != want {
				t.Errorf("WasSkipped(%s) = %v, want %v", n.ID, got, want)
			}
			if !after.WasSkipped(n.ID) && !n.Cert.Issuer.Equal(after.CAStatus) {
				t.Errorf("node %s was not skipped but holds a certificate of %v", n.ID, n.Cert.Issuer)
			}
		}
		keyGone(t, after, w.material.Key)
		if r.Chain == nil {
			signer, err := ca.NewSigner(after.CA)
			if err != nil {
				t.Fatalf("ca.NewSigner(state CA) = %v", err)
			}
			if got := ca.StatusOf(signer.Certificate()); !got.Equal(after.CAStatus) {
				t.Errorf("the signer's status = %v, want CAStatus %v", got, after.CAStatus)
			}
		}
	}
}

func TestCompleteRotation(t *testing.T) {
	w := newRotWorld(t)
	started := []fsm.Command{w.start()}
	all := then(started, w.renewAllBut())
	sorted := slices.Sorted(slices.Values([]string{idS, idW}))
	joinedNew := w.join(idNew, ca.RoleWorker, w.workerSecret, renewAt)
	joinedNew.Issue.Node.Cert.Issuer = w.newStatus
	withChain := w.startWith(func(s *fsm.StartRotation) { s.Chain = []byte("the new CA's chain") })
	runRotCases(t, w, []rotCase{
		{name: "no rotation", cmd: w.complete(), want: fsm.ErrStale},
		{name: "not initialized", empty: true, cmd: w.complete(), want: fsm.ErrNotInitialized},
		{name: "no node renewed", setup: started, cmd: w.complete(), want: fsm.ErrStale},
		{name: "a worker not renewed", setup: then(started, w.renewAllBut(idW)), cmd: w.complete(), want: fsm.ErrStale, msg: idW},
		{name: "a manager not renewed", setup: then(started, w.renewAllBut(idM2)), cmd: w.complete(), want: fsm.ErrStale, msg: idM2},
		{name: "the first manager not renewed", setup: then(started, w.renewAllBut(w.managerID)), cmd: w.complete(), want: fsm.ErrStale, msg: w.managerID},
		{name: "one skipped, another not renewed", setup: then(started, w.renewAllBut(idW, idS)), cmd: w.complete(idW), want: fsm.ErrStale, msg: idS},
		{name: "a removed ID skipped for a member", setup: then(started, w.renewAllBut(idW)), cmd: w.complete(idR), want: fsm.ErrStale, msg: idW},
		{name: "all renewed", setup: all, cmd: w.complete(), check: w.completed()},
		{name: "a worker skipped", setup: then(started, w.renewAllBut(idW)), cmd: w.complete(idW), check: w.completed(idW)},
		{name: "skipped sorted, deduplicated, unknown and removed IDs dropped", setup: then(started, w.renewAllBut(idW, idS)),
			cmd: w.complete("zz-unknown", idW, idS, idW, idR, "", idS), check: w.completed(sorted...)},
		{name: "only unknown IDs skipped", setup: all, cmd: w.complete("zz-unknown", idR), check: w.completed()},
		{name: "a node not renewed but removed", setup: then(started, w.renewAllBut(idW), []fsm.Command{{At: renewAt, RemoveNode: &fsm.RemoveNode{NodeID: idW}}}),
			cmd: w.complete(), check: func(t *testing.T, before, after *fsm.State) {
				w.completed()(t, before, after)
				if !after.IsRemoved(idW) || after.WasSkipped(idW) {
					t.Errorf("IsRemoved(%s), WasSkipped(%s) = %v, %v, want true, false", idW, idW, after.IsRemoved(idW), after.WasSkipped(idW))
				}
			}},
		{name: "a node joined during the rotation", setup: then(all, []fsm.Command{joinedNew}), cmd: w.complete(), check: w.completed()},
		{name: "after the secrets were rotated meanwhile", setup: then(all, []fsm.Command{{At: renewAt, RotateSecret: &fsm.RotateSecret{Role: ca.RoleWorker, Secret: newSecret}}}),
			cmd: w.complete(), check: w.completed()},
		{name: "the chain recorded at the start", setup: then([]fsm.Command{withChain}, w.renewAllBut()), cmd: w.complete(), check: func(t *testing.T, before, after *fsm.State) {
			w.completed()(t, before, after)
			if string(after.CA.Chain) != "the new CA's chain" {
				t.Errorf("CA.Chain = %q, want the rotation's chain", after.CA.Chain)
			}
		}},
		{name: "twice", setup: then(all, []fsm.Command{w.complete()}), cmd: w.complete(), want: fsm.ErrStale},
		{name: "no worker secret", setup: all, cmd: w.completeWith("", w.newManager), want: fsm.ErrBadCommand},
		{name: "no manager secret", setup: all, cmd: w.completeWith(w.newWorker, ""), want: fsm.ErrBadCommand},
		{name: "equal secrets", setup: all, cmd: w.completeWith(w.newWorker, w.newWorker), want: fsm.ErrBadCommand},
		{name: "worker secret kept", setup: all, cmd: w.completeWith(w.workerSecret, w.newManager), want: fsm.ErrBadCommand},
		{name: "manager secret kept", setup: all, cmd: w.completeWith(w.newWorker, w.managerSecret), want: fsm.ErrBadCommand},
		{name: "worker secret the current manager secret", setup: all, cmd: w.completeWith(w.managerSecret, w.newManager), want: fsm.ErrBadCommand},
		{name: "manager secret the current worker secret", setup: all, cmd: w.completeWith(w.newWorker, w.workerSecret), want: fsm.ErrBadCommand},
		{name: "secrets swapped", setup: all, cmd: w.completeWith(w.managerSecret, w.workerSecret), want: fsm.ErrBadCommand},
	})
}

// TestRotationKeepsIssuing: the material a rotation leaves in the state
// signs certificates whose TLS status is the state's CAStatus, verifying
// under the old bundle (while it runs) and the new one.
func TestRotationKeepsIssuing(t *testing.T) {
	w := newRotWorld(t)
	mid := apply(t, w.base, w.start())
	done := apply(t, mid, then(w.renewAllBut(), []fsm.Command{w.complete()})...)
	rand := mrand.NewChaCha8([32]byte{'l', 'e', 'a', 'f'})
	key, err := ca.GenerateKey(rand)
	if err != nil {
		t.Fatalf("ca.GenerateKey() = %v", err)
	}
	id := ca.Identity{NodeID: w.managerID, Role: ca.RoleManager, ClusterID: w.clusterID}
	for _, tt := range []struct {
		name    string
		s       *fsm.State
		bundles map[string][]byte
	}{
		{"mid-rotation", mid, map[string][]byte{"old bundle": w.material.Bundle, "new bundle": w.next.Bundle}},
		{"completed", done, map[string][]byte{"new bundle": w.next.Bundle}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			signer, err := ca.NewSigner(tt.s.CA)
			if err != nil {
				t.Fatalf("ca.NewSigner(state CA) = %v", err)
			}
			issued, err := signer.SignKey(rand, renewAt, key.Public(), id, tt.s.CertExpiry)
			if err != nil {
				t.Fatalf("SignKey() = %v", err)
			}
			for name, bundle := range tt.bundles {
				_, status, err := ca.VerifyPEM(issued.PEM, bundle, renewAt)
				if err != nil {
					t.Fatalf("VerifyPEM(leaf, %s) = %v", name, err)
				}
				if !status.Equal(tt.s.CAStatus) {
					t.Errorf("VerifyPEM(leaf, %s) status = %v, want CAStatus %v", name, status, tt.s.CAStatus)
				}
			}
			// Apply takes the certificate so described.
			c := fsm.Command{At: renewAt, Issue: &fsm.Issue{Node: fsm.Node{ID: w.managerID, Role: ca.RoleManager, Cert: fsm.CertInfo{
				Serial: issued.Serial.Text(16), NotBefore: issued.NotBefore, NotAfter: issued.NotAfter, Issuer: verifiedStatus(t, issued.PEM, tt.bundles["new bundle"]),
			}}}}
			if _, err := fsm.Apply(tt.s, tt.s.Index+1, c); err != nil {
				t.Errorf("Apply(renewal signed by the state's CA) = %v, want nil", err)
			}
		})
	}
}

// verifiedStatus is the TLS status ca.VerifyPEM gives a chain at renewAt.
func verifiedStatus(t *testing.T, chainPEM, bundle []byte) ca.TLSStatus {
	t.Helper()
	_, s, err := ca.VerifyPEM(chainPEM, bundle, renewAt)
	if err != nil {
		t.Fatalf("VerifyPEM() = %v", err)
	}
	return s
}

func TestRotationGrace(t *testing.T) {
	w := newRotWorld(t)
	if got := w.base.Grace(); got != fsm.DefaultRotationGrace {
		t.Errorf("Grace() of a new cluster = %s, want DefaultRotationGrace %s", got, fsm.DefaultRotationGrace)
	}
	if got := (&fsm.State{RotationGrace: 3 * time.Minute}).Grace(); got != 3*time.Minute {
		t.Errorf("Grace() with RotationGrace 3m = %s, want 3m", got)
	}
	update := func(expiry, grace time.Duration) fsm.Command {
		return fsm.Command{At: now, UpdateConfig: &fsm.UpdateConfig{CertExpiry: expiry, RotationGrace: grace}}
	}
	graceIs := func(grace, expiry time.Duration) func(t *testing.T, before, after *fsm.State) {
		return func(t *testing.T, before, after *fsm.State) {
			t.Helper()
			if got := after.Grace(); got != grace {
				t.Errorf("Grace() = %s, want %s", got, grace)
			}
			want := withIndex(before, after.Index)
			want.RotationGrace, want.CertExpiry = after.RotationGrace, expiry
			if d := diff(after, want); d != "" {
				t.Errorf("UpdateConfig changed more than it should:\n%s", d)
			}
		}
	}
	runRotCases(t, w, []rotCase{
		{name: "set", cmd: update(0, 30*time.Minute), check: graceIs(30*time.Minute, w.expiry)},
		{name: "the minimum", cmd: update(0, fsm.MinRotationGrace), check: graceIs(fsm.MinRotationGrace, w.expiry)},
		{name: "zero keeps", setup: []fsm.Command{update(0, time.Hour)}, cmd: update(0, 0), check: graceIs(time.Hour, w.expiry)},
		{name: "with the cert expiry", cmd: update(2*time.Hour, 5*time.Minute), check: graceIs(5*time.Minute, 2*time.Hour)},
		{name: "cert expiry alone keeps the grace", setup: []fsm.Command{update(0, time.Hour)}, cmd: update(2*time.Hour, 0), check: graceIs(time.Hour, 2*time.Hour)},
		{name: "during a rotation", setup: []fsm.Command{w.start()}, cmd: update(0, 20*time.Minute), check: graceIs(20*time.Minute, w.expiry)},
		{name: "under the minimum", cmd: update(0, fsm.MinRotationGrace-time.Nanosecond), want: fsm.ErrBadCommand},
		{name: "negative", cmd: update(0, -time.Minute), want: fsm.ErrBadCommand},
		{name: "valid grace, bad cert expiry", cmd: update(time.Minute, time.Hour), want: fsm.ErrBadCommand},
		{name: "valid cert expiry, bad grace", cmd: update(2*time.Hour, time.Millisecond), want: fsm.ErrBadCommand},
	})
}

func TestWasSkipped(t *testing.T) {
	w := newRotWorld(t)
	if w.base.WasSkipped(idW) {
		t.Errorf("WasSkipped(%s) before any rotation = true, want false", idW)
	}
	if (&fsm.State{}).WasSkipped("") {
		t.Errorf("WasSkipped(\"\") of the empty state = true, want false")
	}
	mid := apply(t, w.base, then([]fsm.Command{w.start()}, w.renewAllBut(idW))...)
	if mid.WasSkipped(idW) {
		t.Errorf("WasSkipped(%s) mid-rotation = true, want false", idW)
	}
	done := apply(t, mid, w.complete(idW))
	for _, tt := range []struct {
		id   string
		want bool
	}{{idW, true}, {idS, false}, {idM2, false}, {w.managerID, false}, {idR, false}, {"zz-unknown", false}} {
		if got := done.WasSkipped(tt.id); got != tt.want {
			t.Errorf("WasSkipped(%s) = %v, want %v", tt.id, got, tt.want)
		}
	}
	// The next rotation, completed with nobody skipped, clears it.
	rand := mrand.NewChaCha8([32]byte{'w', 'a', 's'})
	next3, rot3, status3 := rotationTo(t, rand, completeAt, done.CA, w.clusterID)
	at := completeAt.Add(time.Minute)
	cmds := []fsm.Command{
		{At: at, StartRotation: &fsm.StartRotation{CA: rot3, Chain: next3.Chain, Bundle: next3.Bundle}},
		{At: at, RemoveNode: &fsm.RemoveNode{NodeID: idW}},
	}
	for _, n := range done.SortedNodes() {
		if n.ID != idW {
			c := w.renew(n.ID, n.Role, at, w.expiry)
			c.Issue.Node.Cert.Issuer = status3
			cmds = append(cmds, c)
		}
	}
	s3, s4 := mustSecret(t, rand), mustSecret(t, rand)
	cmds = append(cmds, fsm.Command{At: at, CompleteRotation: &fsm.CompleteRotation{WorkerSecret: s3, ManagerSecret: s4}})
	again := apply(t, done, cmds...)
	if again.WasSkipped(idW) || again.LastRotation == nil || len(again.LastRotation.Skipped) != 0 || !again.LastRotation.StartedAt.Equal(at) {
		t.Errorf("after a second rotation: WasSkipped(%s) = %v, LastRotation = %+v; want false and the second rotation's record", idW, again.WasSkipped(idW), again.LastRotation)
	}
}

// rotationStory is a rotation from start to completion, with refusals
// between, for the snapshot and determinism tests.
func (w *rotWorld) rotationStory() []fsm.Command {
	return then(
		[]fsm.Command{w.startWith(func(s *fsm.StartRotation) { s.CertExpiry = 36 * time.Hour })},
		[]fsm.Command{w.start(), w.renew(idW, ca.RoleWorker, renewAt, w.expiry)}, // refused: ErrRotating, ErrStale
		w.renewAllBut(idW),
		[]fsm.Command{
			{At: renewAt, UpdateConfig: &fsm.UpdateConfig{RotationGrace: 2 * time.Minute}},
			w.complete(), // refused: idW not renewed
			w.complete(idW, "zz-unknown", idW),
			w.complete(), // refused: no rotation
		},
	)
}

// TestRotationSnapshot: states mid-rotation and after it survive a
// snapshot, and the same commands give the same states, through Apply and
// through Machines reading the encoded log.
func TestRotationSnapshot(t *testing.T) {
	w := newRotWorld(t)
	story := w.rotationStory()
	run := func() (states []*fsm.State, errs []error) {
		s := w.base
		for _, c := range story {
			next, err := fsm.Apply(s, s.Index+1, c)
			states, errs = append(states, next), append(errs, err)
			s = next
		}
		return states, errs
	}
	states, errs := run()
	states2, errs2 := run()
	sawMid, sawDone := false, false
	for i, s := range states {
		sawMid = sawMid || s.Rotation != nil
		sawDone = sawDone || s.LastRotation != nil
		if d := diff(snapshot(t, s), s); d != "" {
			t.Errorf("step %d (%s): restore(snapshot(s)) differs from s:\n%s", i, describe(story[i]), d)
		}
		if (errs[i] == nil) != (errs2[i] == nil) || !errors.Is(errs2[i], kind(errs[i])) {
			t.Errorf("step %d (%s): results %v and %v, want the same", i, describe(story[i]), errs[i], errs2[i])
		}
		if d := diff(states2[i], s); d != "" {
			t.Errorf("step %d (%s): the same commands gave different states:\n%s", i, describe(story[i]), d)
		}
	}
	if !sawMid || !sawDone {
		t.Fatalf("the story never was mid-rotation (%v) or completed (%v)", sawMid, sawDone)
	}
	last := states[len(states)-1]
	if last.LastRotation == nil || !slices.Equal(last.LastRotation.Skipped, []string{idW}) || last.RotationGrace != 2*time.Minute || last.CertExpiry != 36*time.Hour {
		t.Fatalf("the story ended with %+v, grace %s, expiry %s; want idW skipped, grace 2m, expiry 36h", last.LastRotation, last.RotationGrace, last.CertExpiry)
	}
	wantRefused := map[int]error{1: fsm.ErrRotating, 2: fsm.ErrStale, len(story) - 3: fsm.ErrStale, len(story) - 1: fsm.ErrStale}
	for i, err := range errs {
		if want := wantRefused[i]; !errors.Is(err, want) || (want == nil && err != nil) {
			t.Errorf("step %d (%s) = %v, want %v", i, describe(story[i]), err, want)
		}
	}

	// Through the log: two Machines restored from the base world's
	// snapshot replay the encoded commands.
	m1, m2 := fsm.NewMachine(), fsm.NewMachine()
	for _, m := range []*fsm.Machine{m1, m2} {
		var buf bytes.Buffer
		if _, err := w.base.WriteTo(&buf); err != nil {
			t.Fatalf("WriteTo() = %v", err)
		}
		if err := m.Restore(&buf); err != nil {
			t.Fatalf("Restore() = %v", err)
		}
	}
	for i, c := range story {
		b := encode(t, c)
		dc, err := fsm.Decode(b)
		if err != nil {
			t.Fatalf("step %d: Decode(Encode(%s)) = %v", i, describe(c), err)
		}
		want := c
		want.Version = fsm.Version
		if d := diff(dc, want); d != "" {
			t.Fatalf("step %d: Decode(Encode(%s)) differs:\n%s", i, describe(c), d)
		}
		index := w.base.Index + uint64(i) + 1
		r1, r2 := machineApply(t, m1, index, b), machineApply(t, m2, index, b)
		if !errors.Is(r1.Err, kind(errs[i])) || !errors.Is(r2.Err, kind(errs[i])) || (errs[i] == nil) != (r1.Err == nil) || (errs[i] == nil) != (r2.Err == nil) {
			t.Fatalf("step %d: machines gave %v and %v, Apply %v; want the same", i, r1.Err, r2.Err, errs[i])
		}
		if d := diff(r1.State, states[i]); d != "" {
			t.Fatalf("step %d: machine differs from Apply:\n%s", i, d)
		}
		if d := diff(r1.State, r2.State); d != "" {
			t.Fatalf("step %d: two machines differ:\n%s", i, d)
		}
	}
	if d := diff(snapshot(t, m1.Snapshot()), m2.State()); d != "" {
		t.Errorf("restore(snapshot(machine)) differs from the other machine:\n%s", d)
	}
}

func TestDecodeRotationCommands(t *testing.T) {
	w := newRotWorld(t)
	start := w.start().StartRotation
	complete := w.complete(idW).CompleteRotation
	refused := []fsm.Command{
		{At: now, StartRotation: start, CompleteRotation: complete},
		{At: now, StartRotation: start, Prune: &fsm.Prune{}},
		{At: now, CompleteRotation: complete, Issue: w.renewNew(idW, ca.RoleWorker).Issue},
		{At: now, CompleteRotation: complete, UpdateConfig: &fsm.UpdateConfig{RotationGrace: time.Minute}},
	}
	for _, c := range refused {
		t.Run(describe(c), func(t *testing.T) {
			got, err := fsm.Decode(encode(t, c))
			if !errors.Is(err, fsm.ErrBadCommand) {
				t.Fatalf("Decode(%s) = %+v, %v, want %v", describe(c), got, err, fsm.ErrBadCommand)
			}
		})
	}
	at := `"v":1,"at":"2030-01-01T00:00:00Z"`
	for _, in := range []string{
		`{` + at + `,"start_rotation":{},"complete_rotation":{}}`,
		`{` + at + `,"start_rotation":{"bundle":"eA=="},"complete_rotation":{"worker_secret":"a","manager_secret":"b"}}`,
	} {
		if got, err := fsm.Decode([]byte(in)); !errors.Is(err, fsm.ErrBadCommand) {
			t.Errorf("Decode(%s) = %+v, %v, want %v", in, got, err, fsm.ErrBadCommand)
		}
	}
	// Alone, each decodes to itself; through a Machine the pair is refused
	// like any undecodable entry.
	for _, c := range []fsm.Command{{At: now, StartRotation: start}, {At: now, CompleteRotation: complete}, {At: now, UpdateConfig: &fsm.UpdateConfig{RotationGrace: time.Minute}}} {
		got, err := fsm.Decode(encode(t, c))
		want := c
		want.Version = fsm.Version
		if err != nil {
			t.Errorf("Decode(%s) = %v, want nil", describe(c), err)
		} else if d := diff(got, want); d != "" {
			t.Errorf("Decode(Encode(%s)) differs:\n%s", describe(c), d)
		}
	}
	m := fsm.NewMachine()
	if err := m.Restore(bytes.NewReader(mustJSON(t, w.base))); err != nil {
		t.Fatalf("Restore() = %v", err)
	}
	r := machineApply(t, m, w.base.Index+1, encode(t, refused[0]))
	if !errors.Is(r.Err, fsm.ErrBadCommand) || r.State.Rotation != nil {
		t.Errorf("Machine.Apply(start+complete) = %v, rotation %+v; want %v and no rotation", r.Err, r.State.Rotation, fsm.ErrBadCommand)
	}
	if d := diff(r.State, withIndex(w.base, w.base.Index+1)); d != "" {
		t.Errorf("Machine.Apply(start+complete) changed the state:\n%s", d)
	}
}

func mustJSON(t testing.TB, s *fsm.State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		t.Fatalf("WriteTo() = %v", err)
	}
	return buf.Bytes()
}

// rotGen makes random command sequences around root CA rotations: starts
// (fresh, replayed, of the current CA), renewals and joins under the
// current, the previous or an unrelated CA, completions with a random
// subset of the lagging nodes skipped, and some other commands. It
// predicts each command's outcome.
type rotGen struct {
	t      testing.TB
	f      *fixture
	rng    *mrand.Rand
	src    *mrand.ChaCha8
	at     time.Time
	serial int
	// lastStart is the last StartRotation accepted; preCA the state's CA
	// before it.
	lastStart *fsm.Command
	preCA     ca.Material
	// statuses are every CA status the cluster had, oldest first.
	statuses []ca.TLSStatus
}

func (g *rotGen) chance(percent int) bool { return g.rng.IntN(100) < percent }

func (g *rotGen) secret() string { return mustSecret(g.t, g.src) }

func (g *rotGen) id() string { return mustID(g.t, g.src) }

func (g *rotGen) pickNode(s *fsm.State) fsm.Node {
	nodes := s.SortedNodes()
	return nodes[g.rng.IntN(len(nodes))]
}

// issuer picks the issuer of a certificate: mostly the current CA's.
func (g *rotGen) issuer(s *fsm.State) ca.TLSStatus {
	switch {
	case g.chance(70):
		return s.CAStatus
	case g.chance(10):
		return g.f.other
	case s.Rotation != nil && g.chance(60):
		return s.Rotation.From
	}
	return g.statuses[g.rng.IntN(len(g.statuses))]
}

func (g *rotGen) cert(s *fsm.State) fsm.CertInfo {
	g.serial++
	return fsm.CertInfo{
		Serial:    fmt.Sprintf("%x", g.serial),
		NotBefore: g.at.Add(-time.Hour),
		NotAfter:  g.at.Add(s.CertExpiry).Truncate(time.Second),
		Issuer:    g.issuer(s),
	}
}

// command returns the next command for s and the error Apply must give.
func (g *rotGen) command(s *fsm.State) (fsm.Command, error) {
	g.at = g.at.Add(time.Duration(g.rng.Int64N(int64(time.Hour))))
	c := fsm.Command{At: g.at}
	stale := func(st ca.TLSStatus) error {
		if !st.Equal(s.CAStatus) {
			return fsm.ErrStale
		}
		return nil
	}
	switch w := g.rng.IntN(100); {
	case w < 14: // start a rotation
		switch {
		case g.chance(15) && g.lastStart != nil:
			c = *g.lastStart
			c.At = g.at
			if s.Rotation != nil {
				return c, fsm.ErrRotating
			}
			return c, fsm.ErrStale // the bundle changed when it completed
		case g.chance(10):
			c.StartRotation = &fsm.StartRotation{CA: s.CA, Bundle: s.CA.Bundle}
			if s.Rotation != nil {
				return c, fsm.ErrRotating
			}
			return c, fsm.ErrBadCommand
		}
		from := s.CA
		if s.Rotation != nil {
			from = g.preCA // a second leader's rotation, prepared against the bundle nodes trust
		}
		next, rot, _ := rotationTo(g.t, g.src, g.at, from, g.f.clusterID)
		c.StartRotation = &fsm.StartRotation{CA: rot, Chain: next.Chain, Bundle: next.Bundle}
		if g.chance(20) {
			c.StartRotation.CertExpiry = ca.MinCertExpiry + time.Duration(g.rng.IntN(100))*time.Hour
		}
		if s.Rotation != nil {
			return c, fsm.ErrRotating
		}
		return c, nil
	case w < 50: // renew
		n := g.pickNode(s)
		c.Issue = &fsm.Issue{Node: fsm.Node{ID: n.ID, Role: n.Role, Cert: g.cert(s)}}
		return c, stale(c.Issue.Node.Cert.Issuer)
	case w < 62: // join with the standing secret
		role := ca.RoleWorker
		if g.chance(30) {
			role = ca.RoleManager
		}
		c.Issue = &fsm.Issue{Node: fsm.Node{ID: g.id(), Role: role, Cert: g.cert(s)}, Join: true, SecretHash: fsm.HashSecret(s.Secret(role))}
		return c, stale(c.Issue.Node.Cert.Issuer)
	case w < 82: // complete
		var lagging []string
		for _, n := range s.SortedNodes() {
			if !n.Cert.Issuer.Equal(s.CAStatus) {
				lagging = append(lagging, n.ID)
			}
		}
		var skipped []string
		for _, id := range lagging {
			if g.chance(85) {
				skipped = append(skipped, id)
			}
		}
		if g.chance(20) {
			skipped = append(skipped, g.pickNode(s).ID) // renewed or not, or a duplicate
		}
		if g.chance(10) {
			skipped = append(skipped, "zz-unknown")
		}
		g.rng.Shuffle(len(skipped), func(i, j int) { skipped[i], skipped[j] = skipped[j], skipped[i] })
		in := &fsm.CompleteRotation{Skipped: skipped, WorkerSecret: g.secret(), ManagerSecret: g.secret()}
		badSecrets := false
		if g.chance(8) {
			in.WorkerSecret, badSecrets = s.WorkerSecret, true
		}
		c.CompleteRotation = in
		switch {
		case s.Rotation == nil:
			return c, fsm.ErrStale
		case badSecrets:
			return c, fsm.ErrBadCommand
		}
		for _, id := range lagging {
			if !slices.Contains(skipped, id) {
				return c, fsm.ErrStale
			}
		}
		return c, nil
	case w < 88:
		n := g.pickNode(s)
		c.RemoveNode = &fsm.RemoveNode{NodeID: n.ID}
		if n.Role == ca.RoleManager && len(s.Managers()) <= 1 {
			return c, fsm.ErrLastManager
		}
		return c, nil
	case w < 92:
		d := time.Duration(g.rng.Int64N(int64(time.Hour)))
		c.UpdateConfig = &fsm.UpdateConfig{RotationGrace: d}
		if d != 0 && d < fsm.MinRotationGrace {
			return c, fsm.ErrBadCommand
		}
		return c, nil
	case w < 96:
		c.CreateToken = &fsm.CreateToken{Token: fsm.ExtraToken{ID: "tok-" + g.id(), Role: ca.RoleWorker, SecretHash: fsm.HashSecret(g.secret()), UsesLeft: -1}}
		return c, nil
	}
	role := ca.RoleWorker
	if g.chance(50) {
		role = ca.RoleManager
	}
	c.RotateSecret = &fsm.RotateSecret{Role: role, Secret: g.secret()}
	return c, nil
}

// rotTracker is what the rotation invariants need to know of the past.
type rotTracker struct {
	bundleBefore []byte       // CA.Bundle when the rotation in progress started
	statusBefore ca.TLSStatus // CAStatus then
	retiredKeys  [][]byte     // every CA key a rotation replaced
}

// checkRotationInvariants asserts what every state reachable with
// rotations satisfies.
func checkRotationInvariants(t *testing.T, s *fsm.State, tr *rotTracker) {
	t.Helper()
	if got := certStatus(t, s.CA.Cert); !s.CAStatus.Equal(got) {
		t.Fatalf("state at %d: CAStatus %v is not the status of CA.Cert, %v", s.Index, s.CAStatus, got)
	}
	if _, err := ca.NewSigner(s.CA); err != nil {
		t.Fatalf("state at %d: ca.NewSigner(CA) = %v", s.Index, err)
	}
	if r := s.Rotation; r != nil {
		if !bytes.Equal(s.CA.Bundle, tr.bundleBefore) {
			t.Fatalf("state at %d: CA.Bundle changed during the rotation", s.Index)
		}
		if !r.From.Equal(tr.statusBefore) || r.From.Equal(s.CAStatus) {
			t.Fatalf("state at %d: Rotation.From = %v, want the status before it %v, not the current", s.Index, r.From, tr.statusBefore)
		}
	}
	for _, n := range s.SortedNodes() {
		ok := n.Cert.Issuer.Equal(s.CAStatus) || s.WasSkipped(n.ID) ||
			(s.Rotation != nil && n.Cert.Issuer.Equal(s.Rotation.From))
		if !ok {
			t.Fatalf("state at %d: node %s holds a certificate of %v, neither the current CA, nor the one being rotated from, nor skipped", s.Index, n.ID, n.Cert.Issuer)
		}
	}
	if l := s.LastRotation; l != nil {
		if !slices.IsSorted(l.Skipped) || len(slices.Compact(slices.Clone(l.Skipped))) != len(l.Skipped) {
			t.Fatalf("state at %d: LastRotation.Skipped = %q, want sorted and unique", s.Index, l.Skipped)
		}
		if l.CompletedAt.Before(l.StartedAt) {
			t.Fatalf("state at %d: LastRotation completed before it started: %+v", s.Index, l)
		}
	}
	if s.WorkerSecret == s.ManagerSecret {
		t.Fatalf("state at %d: worker and manager secrets are equal", s.Index)
	}
	if s.Grace() < fsm.MinRotationGrace {
		t.Fatalf("state at %d: Grace() = %s", s.Index, s.Grace())
	}
	// The key a rotation in progress retired stays in Rotation.FromCA, to
	// sign its root's CRL, and nowhere else; every other retired key is
	// gone (DESIGN.md flow 5: erased at completion).
	stripped := s
	if r := s.Rotation; r != nil {
		if len(tr.retiredKeys) == 0 || !bytes.Equal(r.FromCA.Key, tr.retiredKeys[len(tr.retiredKeys)-1]) {
			t.Fatalf("state at %d: Rotation.FromCA does not hold the key the rotation retired", s.Index)
		}
		c, rc := *s, *r
		rc.FromCA = ca.Material{}
		c.Rotation = &rc
		stripped = &c
	}
	keyGone(t, stripped, tr.retiredKeys...)
	if t.Failed() {
		t.FailNow()
	}
}

// TestRotationProperties interleaves rotations with renewals, joins and
// other commands at random, and checks after every Apply: the predicted
// outcome; a refused command changes only Index; Apply leaves its input
// as it was; restore(snapshot(s)) == s; the invariants of
// checkRotationInvariants; what a completion must leave. Then it replays
// the log through Apply and a Machine, which must reach the same states.
func TestRotationProperties(t *testing.T) {
	f := newFixture(t)
	seeds, length := 12, 150
	if testing.Short() {
		seeds = 3
	}
	counts := map[string]int{}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			var key [32]byte
			binary.LittleEndian.PutUint64(key[:], uint64(seed)+1000)
			src := mrand.NewChaCha8(key)
			g := &rotGen{t: t, f: f, rng: mrand.New(src), src: src, at: t0, statuses: []ca.TLSStatus{f.status}}
			tr := &rotTracker{}
			s := apply(t, nil, f.initCmd())
			first := s
			var (
				log    []fsm.Command
				states []*fsm.State
			)
			for i := range length {
				c, want := g.command(s)
				saved := snapshot(t, s)
				index := s.Index + 1
				next, err := fsm.Apply(s, index, c)
				if d := diff(s, saved); d != "" {
					t.Fatalf("step %d: Apply(%s) changed its input:\n%s", i, describe(c), d)
				}
				if !errors.Is(err, want) || (want == nil && err != nil) {
					t.Fatalf("step %d: Apply(%s) = %v, want %v", i, describe(c), err, want)
				}
				if next.Index != index {
					t.Fatalf("step %d: Index = %d, want %d", i, next.Index, index)
				}
				if err != nil {
					if d := diff(next, withIndex(s, index)); d != "" {
						t.Fatalf("step %d: Apply(%s) refused with %v but changed the state:\n%s", i, describe(c), err, d)
					}
				} else {
					counts[describe(c)]++
					switch {
					case c.StartRotation != nil:
						tr.bundleBefore, tr.statusBefore = s.CA.Bundle, s.CAStatus
						tr.retiredKeys = append(tr.retiredKeys, s.CA.Key)
						g.lastStart, g.preCA = &c, s.CA
						g.statuses = append(g.statuses, next.CAStatus)
					case c.CompleteRotation != nil:
						checkCompletion(t, s, next, c)
						if len(next.LastRotation.Skipped) > 0 {
							counts["CompleteRotation with skipped"]++
						}
					}
				}
				checkRotationInvariants(t, next, tr)
				if d := diff(snapshot(t, next), next); d != "" {
					t.Fatalf("step %d: restore(snapshot(s)) differs from s:\n%s", i, d)
				}
				log, states = append(log, c), append(states, next)
				s = next
			}

			// Determinism: the same log gives the same states, through
			// Apply and through a Machine reading it encoded.
			m := fsm.NewMachine()
			if err := m.Restore(bytes.NewReader(mustJSON(t, first))); err != nil {
				t.Fatalf("Restore() = %v", err)
			}
			r := first
			for i, c := range log {
				r, _ = fsm.Apply(r, r.Index+1, c)
				if d := diff(r, states[i]); d != "" {
					t.Fatalf("replay step %d (%s): Apply gave another state:\n%s", i, describe(c), d)
				}
				mr := machineApply(t, m, r.Index, encode(t, c))
				if d := diff(mr.State, states[i]); d != "" {
					t.Fatalf("replay step %d (%s): the machine reached another state:\n%s", i, describe(c), d)
				}
			}
		})
	}
	for _, op := range []string{"StartRotation", "CompleteRotation", "CompleteRotation with skipped", "Issue"} {
		if counts[op] == 0 {
			t.Errorf("no %s accepted in the random sequences; the generator checks little", op)
		}
	}
	t.Logf("accepted: %v", counts)
}

// checkCompletion asserts what an accepted CompleteRotation c must have
// made of before.
func checkCompletion(t *testing.T, before, after *fsm.State, c fsm.Command) {
	t.Helper()
	in := c.CompleteRotation
	var want []string
	for _, id := range in.Skipped {
		if _, ok := before.Nodes.Get(id); ok && !slices.Contains(want, id) {
			want = append(want, id)
		}
	}
	slices.Sort(want)
	l := after.LastRotation
	if l == nil || !l.StartedAt.Equal(before.Rotation.StartedAt) || !l.CompletedAt.Equal(c.At) || !slices.Equal(l.Skipped, want) {
		t.Fatalf("LastRotation = %+v, want started %v, completed %v, skipped %q", l, before.Rotation.StartedAt, c.At, want)
	}
	if after.Rotation != nil || !bytes.Equal(after.CA.Bundle, before.Rotation.Bundle) || !bytes.Equal(after.CA.Chain, before.Rotation.Chain) ||
		!bytes.Equal(after.CA.Key, before.CA.Key) || !bytes.Equal(after.CA.Cert, before.CA.Cert) {
		t.Fatalf("after CompleteRotation: Rotation %+v, CA not {the rotation's cert and key, its new chain and bundle}", after.Rotation)
	}
	if len(after.Tokens) != 0 || after.WorkerSecret != in.WorkerSecret || after.ManagerSecret != in.ManagerSecret {
		t.Fatalf("after CompleteRotation: %d tokens, secrets %q, %q; want none, %q, %q", len(after.Tokens), after.WorkerSecret, after.ManagerSecret, in.WorkerSecret, in.ManagerSecret)
	}
	for _, n := range after.SortedNodes() {
		if !slices.Contains(want, n.ID) && !n.Cert.Issuer.Equal(after.CAStatus) {
			t.Fatalf("after CompleteRotation: node %s, not skipped, holds a certificate of %v, not %v", n.ID, n.Cert.Issuer, after.CAStatus)
		}
	}
}

func TestSetGossipKey(t *testing.T) {
	f := newFixture(t)
	s := apply(t, nil, f.initCmd())
	// A cluster made before gossip existed has no key.
	old := *s
	old.GossipKey = nil
	key := make([]byte, fsm.GossipKeySize)
	key[0] = 7
	got, err := fsm.Apply(&old, 2, fsm.Command{At: now, SetGossipKey: &fsm.SetGossipKey{Key: key}})
	if err != nil || string(got.GossipKey) != string(key) {
		t.Fatalf("SetGossipKey on a keyless cluster = %v, key %x; want the key", err, got.GossipKey)
	}
	for _, tt := range []struct {
		name string
		s    *fsm.State
		key  []byte
		want error
	}{
		{"already keyed", got, key, fsm.ErrStale},
		{"short key", &old, key[:16], fsm.ErrBadCommand},
		{"no key", &old, nil, fsm.ErrBadCommand},
	} {
		after, err := fsm.Apply(tt.s, 3, fsm.Command{At: now, SetGossipKey: &fsm.SetGossipKey{Key: tt.key}})
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: SetGossipKey = %v, want %v", tt.name, err, tt.want)
		}
		if string(after.GossipKey) != string(tt.s.GossipKey) {
			t.Errorf("%s: refused SetGossipKey changed the key", tt.name)
		}
	}
}
