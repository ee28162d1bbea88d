package fsm_test

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// cfssl returns external CAs at the given hosts, in order.
func cfssl(hosts ...string) []fsm.ExternalCA {
	out := make([]fsm.ExternalCA, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, fsm.ExternalCA{Protocol: fsm.ProtocolCFSSL, URL: "https://" + h + ":8888"})
	}
	return out
}

// extWorld is the rotation world with clusters signed for by external
// CAs. The external cluster is the fixture's, initialized with its CA's
// certificate but not its key: an external CA holds the key (the tests
// use it to play that CA's part). Apply looks at none of the material's
// cryptography; it is real so that the states are ones a cluster reaches.
type extWorld struct {
	*rotWorld
	// keyless is the fixture's CA without its key.
	keyless ca.Material
	// cas, cas2 and cas3 are lists of external CAs; withCert names one
	// with the PEM bundle of its HTTPS certificate.
	cas, cas2, cas3, withCert []fsm.ExternalCA
	// extSetup makes the external cluster from the empty state: Init with
	// the keyless CA and cas, then idM2 and idW join.
	extSetup []fsm.Command
	extBase  *fsm.State

	// toExt rotates the base world (which signs with its own key) to an
	// external root, toExtNext, whose key the cluster does not hold.
	toExt, toExtNext ca.Material
	toExtStatus      ca.TLSStatus
	// toInt rotates the external cluster to a generated root, toIntNext,
	// that the external CA cross-signed.
	toInt, toIntNext ca.Material
	toIntStatus      ca.TLSStatus
	// toExt2 rotates the external cluster to another external root.
	toExt2, toExt2Next ca.Material
	toExt2Status       ca.TLSStatus
}

func newExtWorld(t testing.TB) *extWorld {
	t.Helper()
	w := &extWorld{rotWorld: newRotWorld(t)}
	w.keyless = w.material
	w.keyless.Key = nil
	w.cas = cfssl("ca1.example.com", "ca2.example.com")
	w.cas2 = cfssl("ca3.example.com")
	w.cas3 = cfssl("ca4.example.com", "ca5.example.com", "ca6.example.com")
	w.withCert = []fsm.ExternalCA{{Protocol: fsm.ProtocolCFSSL, URL: "https://ca.example.com/cfssl", CACert: w.material.Bundle, AuthKey: testAuthKey}}
	w.extSetup = []fsm.Command{
		w.initExt(nil),
		w.join(idM2, ca.RoleManager, w.managerSecret, t0.Add(1*time.Minute)),
		w.join(idW, ca.RoleWorker, w.workerSecret, t0.Add(2*time.Minute)),
	}
	w.extBase = apply(t, nil, w.extSetup...)

	rand := mrand.NewChaCha8([32]byte{'e', 'x', 't', 'e', 'r', 'n', 'a', 'l'})
	newRoot := func() ca.Material {
		t.Helper()
		m, err := ca.GenerateRoot(rand, now, w.clusterID)
		if err != nil {
			t.Fatalf("ca.GenerateRoot() = %v", err)
		}
		return m
	}
	var err error
	// Self-signing to external: the cluster cross-signs the external
	// root with its own key.
	w.toExtNext = newRoot()
	w.toExtNext.Key = nil
	if w.toExt, err = ca.Rotation(rand, now, w.material, w.toExtNext); err != nil {
		t.Fatalf("ca.Rotation(to an external root) = %v", err)
	}
	w.toExtStatus = certStatus(t, w.toExt.Cert)
	// External to self-signing, and external to external: the external
	// CA cross-signs the new root (here with the key it holds).
	oldCert := certsOf(t, w.keyless.Cert)[0]
	oldKey, err := ca.ParseKey(w.material.Key)
	if err != nil {
		t.Fatalf("ca.ParseKey() = %v", err)
	}
	crossSigned := func(next ca.Material) ca.Material {
		t.Helper()
		newRoot, err := ca.CheckNewCA(w.keyless, next)
		if err != nil {
			t.Fatalf("ca.CheckNewCA() = %v", err)
		}
		cross, err := ca.CrossSign(rand, now, oldCert, oldKey, newRoot)
		if err != nil {
			t.Fatalf("ca.CrossSign() = %v", err)
		}
		rot, err := ca.RotationWith(w.keyless, next, cross)
		if err != nil {
			t.Fatalf("ca.RotationWith() = %v", err)
		}
		return rot
	}
	w.toIntNext = newRoot()
	w.toInt = crossSigned(w.toIntNext)
	w.toIntStatus = certStatus(t, w.toInt.Cert)
	w.toExt2Next = newRoot()
	w.toExt2Next.Key = nil
	w.toExt2 = crossSigned(w.toExt2Next)
	w.toExt2Status = certStatus(t, w.toExt2.Cert)
	if len(w.toExt.Key) != 0 || len(w.toExt2.Key) != 0 || len(w.toInt.Key) == 0 {
		t.Fatalf("rotation material: keys %d, %d, %d bytes; want none, none, some", len(w.toExt.Key), len(w.toExt2.Key), len(w.toInt.Key))
	}
	return w
}

func certsOf(t testing.TB, certPEM []byte) []*x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificates(certPEM)
	if err != nil {
		t.Fatalf("ca.ParseCertificates() = %v", err)
	}
	return certs
}

// initExt is the external cluster's Init, with change applied.
func (w *extWorld) initExt(change func(*fsm.Init)) fsm.Command {
	return w.initWith(func(in *fsm.Init) {
		in.CA = w.keyless
		in.External = slices.Clone(w.cas)
		if change != nil {
			change(in)
		}
	})
}

func (w *extWorld) update(u fsm.UpdateConfig) fsm.Command {
	return fsm.Command{At: now, UpdateConfig: &u}
}

func (w *extWorld) startTo(rot, next ca.Material, external []fsm.ExternalCA) fsm.Command {
	return fsm.Command{At: now, StartRotation: &fsm.StartRotation{CA: rot, Chain: next.Chain, Bundle: next.Bundle, External: external}}
}

// renewUnder renews the given nodes with certificates of status, at
// renewAt.
func (w *extWorld) renewUnder(status ca.TLSStatus, nodes ...fsm.Node) []fsm.Command {
	cmds := make([]fsm.Command, 0, len(nodes))
	for _, n := range nodes {
		c := w.renew(n.ID, n.Role, renewAt, w.expiry)
		c.Issue.Node.Cert.Issuer = status
		cmds = append(cmds, c)
	}
	return cmds
}

// extNodes are the external cluster's members.
func (w *extWorld) extNodes() []fsm.Node { return w.extBase.SortedNodes() }

// testAuthKey is an auth key of the shortest length CheckExternal takes.
var testAuthKey = bytes.Repeat([]byte{0xa5}, fsm.MinAuthKey)

// bad returns a list of external CAs whose i-th entry is broken by change.
func bad(change func(*fsm.ExternalCA)) []fsm.ExternalCA {
	l := cfssl("ok.example.com", "bad.example.com")
	change(&l[1])
	return l
}

// badLists are lists of external CAs CheckExternal refuses.
func badLists() map[string][]fsm.ExternalCA {
	return map[string][]fsm.ExternalCA{
		"unknown protocol":       bad(func(e *fsm.ExternalCA) { e.Protocol = "acme" }),
		"no protocol":            bad(func(e *fsm.ExternalCA) { e.Protocol = "" }),
		"protocol in capitals":   bad(func(e *fsm.ExternalCA) { e.Protocol = "CFSSL" }),
		"http URL":               bad(func(e *fsm.ExternalCA) { e.URL = "http://ca.example.com:8888" }),
		"URL without a scheme":   bad(func(e *fsm.ExternalCA) { e.URL = "ca.example.com:8888" }),
		"https URL without host": bad(func(e *fsm.ExternalCA) { e.URL = "https:///api/v1/cfssl" }),
		"URL does not parse":     bad(func(e *fsm.ExternalCA) { e.URL = "https://[::1" }),
		"no URL":                 bad(func(e *fsm.ExternalCA) { e.URL = "" }),
		"garbage cacert":         bad(func(e *fsm.ExternalCA) { e.CACert = []byte("not a certificate") }),
		"cacert not DER": bad(func(e *fsm.ExternalCA) {
			e.CACert = []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
		}),
		"cacert a key block": bad(func(e *fsm.ExternalCA) {
			e.CACert = []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
		}),
		"authkey too short": bad(func(e *fsm.ExternalCA) { e.AuthKey = testAuthKey[:fsm.MinAuthKey-1] }),
		"authkey too long":  bad(func(e *fsm.ExternalCA) { e.AuthKey = bytes.Repeat(testAuthKey, 5)[:fsm.MaxAuthKey+1] }),
	}
}

func TestCheckExternal(t *testing.T) {
	w := newExtWorld(t)
	good := map[string][]fsm.ExternalCA{
		"none":              nil,
		"one":               cfssl("ca.example.com"),
		"three":             w.cas3,
		"with a path":       {{Protocol: fsm.ProtocolCFSSL, URL: "https://ca.example.com/prefix"}},
		"with an IP":        {{Protocol: fsm.ProtocolCFSSL, URL: "https://10.0.0.9:8888"}},
		"with a cacert":     w.withCert,
		"scheme in capital": {{Protocol: fsm.ProtocolCFSSL, URL: "HTTPS://ca.example.com"}},
		"longest authkey":   {{Protocol: fsm.ProtocolCFSSL, URL: "https://ca.example.com", AuthKey: bytes.Repeat([]byte{1}, fsm.MaxAuthKey)}},
	}
	for name, l := range good {
		if err := fsm.CheckExternal(l); err != nil {
			t.Errorf("CheckExternal(%s) = %v, want nil", name, err)
		}
	}
	for name, l := range badLists() {
		err := fsm.CheckExternal(l)
		if !errors.Is(err, fsm.ErrBadCommand) {
			t.Errorf("CheckExternal(%s) = %v, want %v", name, err, fsm.ErrBadCommand)
		} else if !strings.Contains(err.Error(), "external CA 2") {
			t.Errorf("CheckExternal(%s) = %q, want it to name external CA 2", name, err)
		}
	}
}

// TestExternalAuthKeyHidden: neither CheckExternal's refusal of an auth
// key nor the way an ExternalCA prints shows the key.
func TestExternalAuthKeyHidden(t *testing.T) {
	short := []byte("0123456789abcde") // one byte short, printable to be found
	err := fsm.CheckExternal([]fsm.ExternalCA{{Protocol: fsm.ProtocolCFSSL, URL: "https://ca.example.com", AuthKey: short}})
	if !errors.Is(err, fsm.ErrBadCommand) || !strings.Contains(err.Error(), "authkey is 15 bytes") {
		t.Fatalf("CheckExternal(15-byte authkey) = %v, want %v saying authkey is 15 bytes", err, fsm.ErrBadCommand)
	}
	e := fsm.ExternalCA{Protocol: fsm.ProtocolCFSSL, URL: "https://ca.example.com", AuthKey: []byte("0123456789abcdef")}
	for _, s := range []string{err.Error(), e.String(), fmt.Sprintf("%v %+v %+v", e, []fsm.ExternalCA{e}, &fsm.State{External: []fsm.ExternalCA{e}})} {
		if strings.Contains(s, "0123456789abcde") || strings.Contains(s, "3031323334") {
			t.Errorf("%q shows the auth key", s)
		}
	}
	if got, want := e.String(), "cfssl https://ca.example.com (authkey: set)"; got != want {
		t.Errorf("ExternalCA.String() = %q, want %q", got, want)
	}
}

// initedExternal checks the state an accepted external Init leaves.
func (w *extWorld) initedExternal(want []fsm.ExternalCA) func(t *testing.T, before, after *fsm.State) {
	return func(t *testing.T, _, after *fsm.State) {
		t.Helper()
		if len(after.External) != len(want) || diff(after.External, want) != "" {
			t.Errorf("External = %+v, want %+v", after.External, want)
		}
		if after.Signs() {
			t.Errorf("Signs() = true, want false: the cluster holds no key")
		}
		if d := diff(after.CA, w.keyless); d != "" {
			t.Errorf("CA is not the keyless material:\n%s", d)
		}
		if !after.CAStatus.Equal(w.status) {
			t.Errorf("CAStatus = %v, want the external CA's %v", after.CAStatus, w.status)
		}
		keyGone(t, after, w.material.Key)
		if r := snapshot(t, after); len(r.External) != len(want) || diff(r.External, want) != "" || r.Signs() {
			t.Errorf("after a snapshot: External = %+v, Signs() = %v; want %+v, false", r.External, r.Signs(), want)
		}
		if _, err := ca.NewExternal(after.CA); err != nil {
			t.Errorf("ca.NewExternal(state CA) = %v, want nil", err)
		}
	}
}

func TestInitExternal(t *testing.T) {
	w := newExtWorld(t)
	cases := []rotCase{
		{name: "keyless CA with two external CAs", empty: true, cmd: w.initExt(nil), check: w.initedExternal(w.cas)},
		{name: "keyless CA with one external CA and its cacert", empty: true,
			cmd: w.initExt(func(in *fsm.Init) { in.External = slices.Clone(w.withCert) }), check: w.initedExternal(w.withCert)},
		{name: "CA with its key, no external CA", empty: true, cmd: w.initCmd(), check: func(t *testing.T, _, after *fsm.State) {
			if !after.Signs() || len(after.External) != 0 {
				t.Errorf("Signs(), External = %v, %+v; want true, none", after.Signs(), after.External)
			}
		}},
		{name: "keyless CA without an external CA", empty: true, cmd: w.initExt(func(in *fsm.Init) { in.External = nil }), want: fsm.ErrBadCommand},
		{name: "keyless CA with an empty list", empty: true, cmd: w.initExt(func(in *fsm.Init) { in.External = []fsm.ExternalCA{} }), want: fsm.ErrBadCommand},
		{name: "CA with its key and an external CA", empty: true, cmd: w.initExt(func(in *fsm.Init) { in.CA = w.material }), want: fsm.ErrBadCommand},
		{name: "external Init on an initialized cluster", cmd: w.initExt(nil), want: fsm.ErrInitialized},
	}
	for name, l := range badLists() {
		cases = append(cases, rotCase{name: name, empty: true, cmd: w.initExt(func(in *fsm.Init) { in.External = l }), want: fsm.ErrBadCommand, msg: "external CA 2"})
	}
	slices.SortFunc(cases, func(a, b rotCase) int { return strings.Compare(a.name, b.name) })
	runRotCases(t, w.rotWorld, cases)
}

// externalIs checks that a command changed External to want and, but
// for the changes also listed, nothing else.
func externalIs(want []fsm.ExternalCA, expiry, grace time.Duration) func(t *testing.T, before, after *fsm.State) {
	return func(t *testing.T, before, after *fsm.State) {
		t.Helper()
		if len(after.External) != len(want) || diff(after.External, want) != "" {
			t.Errorf("External = %+v, want %+v", after.External, want)
		}
		if after.CertExpiry != expiry || after.RotationGrace != grace {
			t.Errorf("CertExpiry, RotationGrace = %s, %s; want %s, %s", after.CertExpiry, after.RotationGrace, expiry, grace)
		}
		wantState := withIndex(before, after.Index)
		wantState.External, wantState.CertExpiry, wantState.RotationGrace = after.External, expiry, grace
		if d := diff(after, wantState); d != "" {
			t.Errorf("UpdateConfig changed more than it should:\n%s", d)
		}
	}
}

func TestUpdateConfigExternal(t *testing.T) {
	w := newExtWorld(t)
	ext := w.extSetup
	toExt := []fsm.Command{w.startTo(w.toExt, w.toExtNext, w.cas)}
	toExtDone := then(toExt, w.renewUnder(w.toExtStatus, w.base.SortedNodes()...), []fsm.Command{w.complete()})
	toInt := then(ext, []fsm.Command{w.startTo(w.toInt, w.toIntNext, nil)})
	expiry := w.expiry
	cases := []rotCase{
		{name: "self-signing cluster", cmd: w.update(fsm.UpdateConfig{External: w.cas2}), want: fsm.ErrBadCommand, msg: "rotate"},
		{name: "self-signing cluster, with a cert expiry", cmd: w.update(fsm.UpdateConfig{CertExpiry: 2 * time.Hour, External: w.cas2}), want: fsm.ErrBadCommand},
		{name: "self-signing cluster, cert expiry alone", cmd: w.update(fsm.UpdateConfig{CertExpiry: 2 * time.Hour}), check: externalIs(nil, 2*time.Hour, 0)},
		{name: "external cluster: replaced", empty: true, setup: ext, cmd: w.update(fsm.UpdateConfig{External: w.cas2}), check: externalIs(w.cas2, expiry, 0)},
		{name: "external cluster: replaced by a longer list", empty: true, setup: ext, cmd: w.update(fsm.UpdateConfig{External: w.cas3}), check: externalIs(w.cas3, expiry, 0)},
		{name: "external cluster: the same list", empty: true, setup: ext, cmd: w.update(fsm.UpdateConfig{External: w.cas}), check: externalIs(w.cas, expiry, 0)},
		{name: "external cluster: with a cacert", empty: true, setup: ext, cmd: w.update(fsm.UpdateConfig{External: w.withCert}), check: externalIs(w.withCert, expiry, 0)},
		{name: "external cluster: with cert expiry and grace", empty: true, setup: ext,
			cmd: w.update(fsm.UpdateConfig{CertExpiry: 36 * time.Hour, RotationGrace: time.Minute, External: w.cas2}), check: externalIs(w.cas2, 36*time.Hour, time.Minute)},
		{name: "external cluster: cert expiry alone keeps the list", empty: true, setup: ext,
			cmd: w.update(fsm.UpdateConfig{CertExpiry: 36 * time.Hour}), check: externalIs(w.cas, 36*time.Hour, 0)},
		{name: "external cluster: empty list keeps it", empty: true, setup: ext,
			cmd: w.update(fsm.UpdateConfig{External: []fsm.ExternalCA{}}), check: externalIs(w.cas, expiry, 0)},
		{name: "external cluster: valid list, bad cert expiry", empty: true, setup: ext,
			cmd: w.update(fsm.UpdateConfig{CertExpiry: time.Minute, External: w.cas2}), want: fsm.ErrBadCommand},
		{name: "mid-rotation to an external CA", setup: toExt, cmd: w.update(fsm.UpdateConfig{External: w.cas2}), check: externalIs(w.cas2, expiry, 0)},
		{name: "checked against the CA that signs", setup: toExt, cmd: w.update(fsm.UpdateConfig{External: w.cas2, ForCA: &w.toExtStatus}), check: externalIs(w.cas2, expiry, 0)},
		{name: "checked against another CA", setup: toExt, cmd: w.update(fsm.UpdateConfig{External: w.cas2, ForCA: &ca.TLSStatus{}}), want: fsm.ErrStale, msg: "checked against"},
		{name: "after a rotation to an external CA", setup: toExtDone, cmd: w.update(fsm.UpdateConfig{External: w.cas2}), check: externalIs(w.cas2, expiry, 0)},
		{name: "mid-rotation from an external CA to a generated root", empty: true, setup: toInt,
			cmd: w.update(fsm.UpdateConfig{External: w.cas2}), want: fsm.ErrBadCommand, msg: "rotate"},
		{name: "not initialized", empty: true, cmd: w.update(fsm.UpdateConfig{External: w.cas2}), want: fsm.ErrNotInitialized},
	}
	for name, l := range badLists() {
		cases = append(cases, rotCase{name: "external cluster: " + name, empty: true, setup: ext,
			cmd: w.update(fsm.UpdateConfig{External: l}), want: fsm.ErrBadCommand, msg: "external CA 2"})
	}
	slices.SortFunc(cases, func(a, b rotCase) int { return strings.Compare(a.name, b.name) })
	runRotCases(t, w.rotWorld, cases)
}

// startedWith checks the state a StartRotation to rot leaves: the new
// CA, its status and the rotation, with External, and nothing else
// changed.
func (w *extWorld) startedWith(rot, next ca.Material, status ca.TLSStatus, external []fsm.ExternalCA) func(t *testing.T, before, after *fsm.State) {
	return func(t *testing.T, before, after *fsm.State) {
		t.Helper()
		if len(after.External) != len(external) || diff(after.External, external) != "" {
			t.Errorf("External = %+v, want %+v", after.External, external)
		}
		if got, want := after.Signs(), len(rot.Key) > 0; got != want {
			t.Errorf("Signs() = %v, want %v", got, want)
		}
		if d := diff(after.CA, rot); d != "" {
			t.Errorf("CA is not the rotation material:\n%s", d)
		}
		if !after.CAStatus.Equal(status) {
			t.Errorf("CAStatus = %v, want %v", after.CAStatus, status)
		}
		wantRot := &fsm.Rotation{StartedAt: now, From: before.CAStatus, Chain: next.Chain, Bundle: next.Bundle, FromCA: before.CA}
		if d := diff(after.Rotation, wantRot); d != "" {
			t.Errorf("Rotation differs:\n%s", d)
		}
		want := withIndex(before, after.Index)
		want.Rotation, want.CA, want.CAStatus, want.External = after.Rotation, after.CA, after.CAStatus, after.External
		if d := diff(after, want); d != "" {
			t.Errorf("StartRotation changed more than the CA, the rotation and the external CAs:\n%s", d)
		}
		if before.Signs() {
			keyOnlyInRotation(t, after, w.material.Key)
		} else {
			keyGone(t, after, w.material.Key)
		}
		// The material is usable as the state says: signed with, or
		// checked for an external CA.
		var err error
		if after.Signs() {
			_, err = ca.NewSigner(after.CA)
		} else {
			_, err = ca.NewExternal(after.CA)
		}
		if err != nil {
			t.Errorf("state CA (signs: %v) does not check: %v", after.Signs(), err)
		}
	}
}

func TestStartRotationExternal(t *testing.T) {
	w := newExtWorld(t)
	ext := w.extSetup
	cases := []rotCase{
		{name: "self-signing to external", cmd: w.startTo(w.toExt, w.toExtNext, w.cas),
			check: w.startedWith(w.toExt, w.toExtNext, w.toExtStatus, w.cas)},
		{name: "self-signing to external, with a cacert", cmd: w.startTo(w.toExt, w.toExtNext, w.withCert),
			check: w.startedWith(w.toExt, w.toExtNext, w.toExtStatus, w.withCert)},
		{name: "self-signing to external without an external CA", cmd: w.startTo(w.toExt, w.toExtNext, nil), want: fsm.ErrBadCommand},
		{name: "self-signing to a generated root, with an external CA", cmd: w.startTo(w.rot, w.next, w.cas), want: fsm.ErrBadCommand},
		{name: "external to self-signing", empty: true, setup: ext, cmd: w.startTo(w.toInt, w.toIntNext, nil),
			check: w.startedWith(w.toInt, w.toIntNext, w.toIntStatus, nil)},
		{name: "external to self-signing, keeping the external CAs", empty: true, setup: ext, cmd: w.startTo(w.toInt, w.toIntNext, w.cas), want: fsm.ErrBadCommand},
		{name: "external to external", empty: true, setup: ext, cmd: w.startTo(w.toExt2, w.toExt2Next, w.cas2),
			check: w.startedWith(w.toExt2, w.toExt2Next, w.toExt2Status, w.cas2)},
		{name: "external to external, same list", empty: true, setup: ext, cmd: w.startTo(w.toExt2, w.toExt2Next, w.cas),
			check: w.startedWith(w.toExt2, w.toExt2Next, w.toExt2Status, w.cas)},
		{name: "external to external without an external CA", empty: true, setup: ext, cmd: w.startTo(w.toExt2, w.toExt2Next, nil), want: fsm.ErrBadCommand},
		{name: "external, keyless material of another bundle", empty: true, setup: ext, cmd: w.startTo(w.toExtNext, w.toExtNext, w.cas2), want: fsm.ErrStale},
		{name: "external, the current CA again", empty: true, setup: ext, cmd: w.startTo(w.keyless, w.keyless, w.cas2), want: fsm.ErrBadCommand},
		{name: "external, while one runs", empty: true, setup: then(ext, []fsm.Command{w.startTo(w.toInt, w.toIntNext, nil)}),
			cmd: w.startTo(w.toExt2, w.toExt2Next, w.cas2), want: fsm.ErrRotating},
	}
	for name, l := range badLists() {
		cases = append(cases,
			rotCase{name: "self-signing to external, " + name, cmd: w.startTo(w.toExt, w.toExtNext, l), want: fsm.ErrBadCommand, msg: "external CA 2"},
			rotCase{name: "external to external, " + name, empty: true, setup: ext, cmd: w.startTo(w.toExt2, w.toExt2Next, l), want: fsm.ErrBadCommand, msg: "external CA 2"},
		)
	}
	slices.SortFunc(cases, func(a, b rotCase) int { return strings.Compare(a.name, b.name) })
	runRotCases(t, w.rotWorld, cases)
}

// TestExternalRotationCompletes runs rotations into, out of and between
// external CAs to their end: the external CAs stay as the rotation set
// them, and the state's material is what the new CA needs.
func TestExternalRotationCompletes(t *testing.T) {
	w := newExtWorld(t)
	tests := []struct {
		name      string
		from      *fsm.State
		rot, next ca.Material
		status    ca.TLSStatus
		external  []fsm.ExternalCA
	}{
		{"self-signing to external", w.base, w.toExt, w.toExtNext, w.toExtStatus, w.cas},
		{"external to self-signing", w.extBase, w.toInt, w.toIntNext, w.toIntStatus, nil},
		{"external to external", w.extBase, w.toExt2, w.toExt2Next, w.toExt2Status, w.cas2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := apply(t, tt.from, then(
				[]fsm.Command{w.startTo(tt.rot, tt.next, tt.external)},
				w.renewUnder(tt.status, tt.from.SortedNodes()...),
				[]fsm.Command{w.complete()},
			)...)
			if s.Rotation != nil || s.LastRotation == nil {
				t.Fatalf("Rotation, LastRotation = %+v, %+v; want the rotation completed", s.Rotation, s.LastRotation)
			}
			if len(s.External) != len(tt.external) || diff(s.External, tt.external) != "" {
				t.Errorf("External = %+v, want %+v", s.External, tt.external)
			}
			wantCA := ca.Material{Cert: tt.rot.Cert, Key: tt.rot.Key, Chain: tt.next.Chain, Bundle: tt.next.Bundle}
			if d := diff(s.CA, wantCA); d != "" {
				t.Errorf("CA after completion differs:\n%s", d)
			}
			if got, want := s.Signs(), len(tt.rot.Key) > 0; got != want {
				t.Errorf("Signs() = %v, want %v", got, want)
			}
			var err error
			if s.Signs() {
				_, err = ca.NewSigner(s.CA)
			} else {
				_, err = ca.NewExternal(s.CA)
			}
			if err != nil {
				t.Errorf("state CA (signs: %v) does not check: %v", s.Signs(), err)
			}
			keyGone(t, s, w.material.Key)
			// Only a cluster an external CA signs for takes a new list.
			next, err := fsm.Apply(s, s.Index+1, fsm.Command{At: completeAt, UpdateConfig: &fsm.UpdateConfig{External: w.cas3}})
			if s.Signs() {
				if !errors.Is(err, fsm.ErrBadCommand) {
					t.Errorf("UpdateConfig(External) on the self-signing cluster = %v, want %v", err, fsm.ErrBadCommand)
				}
			} else if err != nil || diff(next.External, w.cas3) != "" {
				t.Errorf("UpdateConfig(External) = %v, External %+v; want nil, %+v", err, next.External, w.cas3)
			}
		})
	}
}

// TestExternalSnapshotJSON: the external CAs survive a snapshot, in the
// JSON form below; a cluster that signs itself writes no "external" key,
// so its snapshots read as before.
func TestExternalSnapshotJSON(t *testing.T) {
	w := newExtWorld(t)
	s := apply(t, w.extBase, w.update(fsm.UpdateConfig{External: slices.Concat(w.cas2, w.withCert)}))
	want := slices.Concat(w.cas2, w.withCert)
	var decoded struct {
		External []struct {
			Protocol string `json:"protocol"`
			URL      string `json:"url"`
			CACert   []byte `json:"ca_cert"`
			AuthKey  []byte `json:"auth_key"`
		} `json:"external"`
	}
	js := mustJSON(t, s)
	if err := json.Unmarshal(js, &decoded); err != nil {
		t.Fatalf("json.Unmarshal(state) = %v", err)
	}
	if len(decoded.External) != len(want) {
		t.Fatalf("JSON external = %+v, want %d entries", decoded.External, len(want))
	}
	for i, e := range decoded.External {
		if e.Protocol != want[i].Protocol || e.URL != want[i].URL || !bytes.Equal(e.CACert, want[i].CACert) || !bytes.Equal(e.AuthKey, want[i].AuthKey) {
			t.Errorf("JSON external[%d] = %+v, want %+v", i, e, want[i])
		}
	}
	if r := snapshot(t, s); len(r.External) != len(want) || diff(r, s) != "" {
		t.Errorf("restore(snapshot(s)): External %+v, differences:\n%s", r.External, diff(r, s))
	}
	m := fsm.NewMachine()
	if err := m.Restore(bytes.NewReader(js)); err != nil {
		t.Fatalf("Restore() = %v", err)
	}
	if got := m.State(); len(got.External) != len(want) || diff(got, s) != "" || got.Signs() {
		t.Errorf("Machine.Restore: External %+v, Signs() %v, differences:\n%s", got.External, got.Signs(), diff(got, s))
	}

	self := mustJSON(t, w.base)
	if bytes.Contains(self, []byte(`"external"`)) {
		t.Errorf("a self-signing cluster's snapshot has an \"external\" key: %.200s", self)
	}
	if r := snapshot(t, w.base); r.External != nil || !r.Signs() {
		t.Errorf("self-signing cluster after a snapshot: External %+v, Signs() %v; want nil, true", r.External, r.Signs())
	}
}

func TestEncodeDecodeExternal(t *testing.T) {
	w := newExtWorld(t)
	for _, c := range []fsm.Command{
		w.initExt(func(in *fsm.Init) { in.External = slices.Concat(w.cas, w.withCert) }),
		w.update(fsm.UpdateConfig{CertExpiry: 2 * time.Hour, External: w.withCert}),
		w.startTo(w.toExt, w.toExtNext, w.withCert),
	} {
		t.Run(describe(c), func(t *testing.T) {
			got, err := fsm.Decode(encode(t, c))
			if err != nil {
				t.Fatalf("Decode(Encode(%s)) = %v", describe(c), err)
			}
			want := c
			want.Version = fsm.Version
			if d := diff(got, want); d != "" {
				t.Errorf("Decode(Encode(%s)) differs:\n%s", describe(c), d)
			}
		})
	}
}

// TestExternalDeterminism runs a log of the external CA commands, with
// refusals, twice through Apply and through two Machines reading the
// encoded log: the same states and results every time, each state
// surviving a snapshot, and at every step either the CA's key or external
// CAs to sign, never both.
func TestExternalDeterminism(t *testing.T) {
	w := newExtWorld(t)
	rand := mrand.NewChaCha8([32]byte{'d', 'e', 't'})
	// After the rotation to a generated root, back to an external CA.
	back := completeAt.Add(time.Hour)
	backNext, err := ca.GenerateRoot(rand, back, w.clusterID)
	if err != nil {
		t.Fatalf("ca.GenerateRoot() = %v", err)
	}
	backNext.Key = nil
	backRot, err := ca.Rotation(rand, back, w.toIntNext, backNext)
	if err != nil {
		t.Fatalf("ca.Rotation(back to an external root) = %v", err)
	}
	backStatus := certStatus(t, backRot.Cert)
	nodes := w.extNodes()
	backRenew := w.renewUnder(backStatus, nodes...)
	for i := range backRenew {
		backRenew[i].At = back
	}
	backComplete := w.completeWith("worker-secret-3", "manager-secret-3")
	backComplete.At = back

	story := then(
		w.extSetup,
		[]fsm.Command{
			w.update(fsm.UpdateConfig{External: w.cas2}),
			w.update(fsm.UpdateConfig{External: badLists()["http URL"]}), // refused
			w.initExt(nil),                         // refused: initialized
			w.startTo(w.toInt, w.toIntNext, w.cas), // refused: key and external CAs
			w.startTo(w.toInt, w.toIntNext, nil),
			w.update(fsm.UpdateConfig{External: w.cas}), // refused: the cluster signs now
		},
		w.renewUnder(w.toIntStatus, nodes...),
		[]fsm.Command{w.complete()},
		[]fsm.Command{
			{At: back, StartRotation: &fsm.StartRotation{CA: backRot, Chain: backNext.Chain, Bundle: backNext.Bundle}}, // refused: no external CA
			{At: back, StartRotation: &fsm.StartRotation{CA: backRot, Chain: backNext.Chain, Bundle: backNext.Bundle, External: w.cas3}},
			{At: back, UpdateConfig: &fsm.UpdateConfig{External: w.withCert}},
		},
		backRenew,
		[]fsm.Command{backComplete},
	)
	n := len(w.extSetup)
	wantRefused := map[int]error{
		n + 1: fsm.ErrBadCommand, n + 2: fsm.ErrInitialized, n + 3: fsm.ErrBadCommand, n + 5: fsm.ErrBadCommand,
		n + 6 + len(nodes) + 1: fsm.ErrBadCommand,
	}
	run := func() (states []*fsm.State, errs []error) {
		s := &fsm.State{}
		for _, c := range story {
			next, err := fsm.Apply(s, s.Index+1, c)
			states, errs = append(states, next), append(errs, err)
			s = next
		}
		return states, errs
	}
	states, errs := run()
	states2, errs2 := run()
	for i, s := range states {
		if want := wantRefused[i]; !errors.Is(errs[i], want) || (want == nil && errs[i] != nil) {
			t.Errorf("step %d (%s) = %v, want %v", i, describe(story[i]), errs[i], want)
		}
		if kind(errs[i]) != kind(errs2[i]) {
			t.Errorf("step %d (%s): results %v and %v, want the same", i, describe(story[i]), errs[i], errs2[i])
		}
		if d := diff(states2[i], s); d != "" {
			t.Errorf("step %d (%s): the same commands gave different states:\n%s", i, describe(story[i]), d)
		}
		if d := diff(snapshot(t, s), s); d != "" {
			t.Errorf("step %d (%s): restore(snapshot(s)) differs from s:\n%s", i, describe(story[i]), d)
		}
		if s.Initialized() && s.Signs() == (len(s.External) > 0) {
			t.Errorf("step %d (%s): Signs() = %v with %d external CAs; want exactly one of the key and external CAs", i, describe(story[i]), s.Signs(), len(s.External))
		}
	}
	last := states[len(states)-1]
	if last.Signs() || diff(last.External, w.withCert) != "" || last.Rotation != nil || !last.CAStatus.Equal(backStatus) {
		t.Fatalf("the story ended with Signs() %v, External %+v, rotation %+v; want an external CA %+v, rotation done", last.Signs(), last.External, last.Rotation, w.withCert)
	}

	m1, m2 := fsm.NewMachine(), fsm.NewMachine()
	for i, c := range story {
		b := encode(t, c)
		index := uint64(i + 1)
		r1, r2 := machineApply(t, m1, index, b), machineApply(t, m2, index, b)
		if kind(r1.Err) != kind(errs[i]) || kind(r2.Err) != kind(errs[i]) {
			t.Fatalf("step %d (%s): machines gave %v and %v, Apply %v; want the same", i, describe(c), r1.Err, r2.Err, errs[i])
		}
		if d := diff(r1.State, states[i]); d != "" {
			t.Fatalf("step %d (%s): machine differs from Apply:\n%s", i, describe(c), d)
		}
		if d := diff(r1.State, r2.State); d != "" {
			t.Fatalf("step %d (%s): two machines differ:\n%s", i, describe(c), d)
		}
	}
	if d := diff(snapshot(t, m1.Snapshot()), m2.State()); d != "" {
		t.Errorf("restore(snapshot(machine)) differs from the other machine:\n%s", d)
	}
}
