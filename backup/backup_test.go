package backup

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// newState returns the state of a cluster of one manager and three
// workers, with autolock on under unlockKey.
func newState(t *testing.T, unlockKey string) *fsm.State {
	t.Helper()
	clusterID, _ := ca.NewID(rand.Reader)
	m, err := ca.GenerateRoot(rand.Reader, t0, clusterID)
	if err != nil {
		t.Fatal(err)
	}
	certs, _ := ca.ParseCertificates(m.Cert)
	status := ca.StatusOf(certs[0])
	cert := func(serial string) fsm.CertInfo {
		return fsm.CertInfo{Serial: serial, NotBefore: t0, NotAfter: t0.Add(ca.DefaultCertExpiry), Issuer: status}
	}
	st, err := fsm.Apply(nil, 1, fsm.Command{Version: fsm.Version, At: t0, Init: &fsm.Init{
		ClusterID: clusterID, CertExpiry: ca.DefaultCertExpiry, CA: m,
		WorkerSecret: "w-secret", ManagerSecret: "m-secret", GossipKey: make([]byte, fsm.GossipKeySize),
		UnlockKey: unlockKey,
		Manager:   fsm.Node{ID: "m1", Role: ca.RoleManager, Addr: "10.0.0.1:2377", RaftAddr: "10.0.0.1:2378", Cert: cert("a1")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		st, err = fsm.Apply(st, uint64(i+2), fsm.Command{Version: fsm.Version, At: t0, Issue: &fsm.Issue{
			Join: true, SecretHash: fsm.HashSecret("w-secret"),
			Node: fsm.Node{ID: fmt.Sprintf("w%d", i), Role: ca.RoleWorker, Cert: cert(fmt.Sprintf("b%d", i))},
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func stateJSON(t *testing.T, st *fsm.State) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := st.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func write(t *testing.T, st *fsm.State, secret Secret) []byte {
	t.Helper()
	var b bytes.Buffer
	h := Header{Term: 3, TakenAt: t0, TakenFrom: "m1"}
	if _, err := Write(&b, rand.Reader, h, secret, st); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	return b.Bytes()
}

// TestRoundTrip: a backup keyed by a passphrase, and one keyed by the
// unlock key, give back the state whole, and the header says what it
// holds; neither holds a secret of the state in clear.
func TestRoundTrip(t *testing.T) {
	unlockKey, _ := ca.NewUnlockKey(rand.Reader)
	st := newState(t, unlockKey)
	for name, secret := range map[string]Secret{
		"passphrase": {Passphrase: []byte("correct horse battery staple")},
		"unlock key": {UnlockKey: unlockKey},
	} {
		t.Run(name, func(t *testing.T) {
			file := write(t, st, secret)
			for _, s := range []string{string(st.CA.Key), st.WorkerSecret, st.ManagerSecret, unlockKey} {
				if bytes.Contains(file, []byte(s)) {
					t.Errorf("the backup holds a secret of the state in clear")
				}
			}
			h, got, err := Read(bytes.NewReader(file), secret)
			if err != nil {
				t.Fatalf("Read() = %v", err)
			}
			if d := cmp.Diff(stateJSON(t, st), stateJSON(t, got)); d != "" {
				t.Errorf("state read back differs (-wrote +read):\n%s", d)
			}
			want := Header{Format: Format, ClusterID: st.ClusterID, RootFingerprint: ca.BundleFingerprint(st.CA.Bundle),
				Index: 4, Term: 3, TakenAt: t0, TakenFrom: "m1", Nodes: 4, Managers: 1, Autolock: true}
			h.Key, h.Nonce = KeyInfo{}, nil
			if d := cmp.Diff(want, h); d != "" {
				t.Errorf("header (-want +got):\n%s", d)
			}
		})
	}
}

// TestRefusals: each bad file or key is refused with its own error, and
// no state comes back.
func TestRefusals(t *testing.T) {
	unlockKey, _ := ca.NewUnlockKey(rand.Reader)
	otherKey, _ := ca.NewUnlockKey(rand.Reader)
	st := newState(t, unlockKey)
	pass := Secret{Passphrase: []byte("correct horse battery staple")}
	byPass, byUnlock := write(t, st, pass), write(t, st, Secret{UnlockKey: unlockKey})
	headEnd := bytes.IndexByte(byPass[bytes.IndexByte(byPass, '\n')+1:], '\n') + bytes.IndexByte(byPass, '\n') + 2

	flipped := bytes.Clone(byPass)
	flipped[headEnd+40] ^= 1
	tamperedHead := bytes.Replace(byPass, []byte(`"index":4`), []byte(`"index":5`), 1)
	newer := bytes.Replace(byPass, []byte("quorumca-backup 1\n"), []byte("quorumca-backup 2\n"), 1)
	greedy := bytes.Replace(byPass, []byte(`"argon2_memory_kib":65536`), []byte(`"argon2_memory_kib":4194304`), 1)
	var newerErr *NewerError
	for _, tc := range []struct {
		name   string
		file   []byte
		secret Secret
		want   error
	}{
		{"not a backup", []byte("-----BEGIN CERTIFICATE-----\n"), pass, ErrNotBackup},
		{"empty", nil, pass, ErrNotBackup},
		{"later format", newer, pass, newerErr},
		{"wrong passphrase", byPass, Secret{Passphrase: []byte("Tr0ub4dor&3")}, ErrKey},
		{"no passphrase", byPass, Secret{UnlockKey: unlockKey}, ErrKey},
		{"wrong unlock key", byUnlock, Secret{UnlockKey: otherKey}, ErrKey},
		{"no unlock key", byUnlock, pass, ErrKey},
		{"body changed", flipped, pass, ErrCorrupt},
		{"header changed", tamperedHead, pass, ErrCorrupt},
		{"cut short", byPass[:len(byPass)-10], pass, ErrCorrupt},
		{"cut at the header", byPass[:headEnd-5], pass, ErrCorrupt},
		{"bytes after", append(bytes.Clone(byPass), '\n'), pass, ErrCorrupt},
		{"argon2 asks for 4 GiB", greedy, pass, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, got, err := Read(bytes.NewReader(tc.file), tc.secret)
			if got != nil {
				t.Errorf("Read() returned a state")
			}
			if tc.want == error(newerErr) {
				if !errors.As(err, &newerErr) {
					t.Errorf("Read() = %v, want a *NewerError", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("Read() = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestWriteNeedsAKey: without a passphrase or an unlock key, Write
// refuses and writes nothing.
func TestWriteNeedsAKey(t *testing.T) {
	var b bytes.Buffer
	_, err := Write(&b, rand.Reader, Header{}, Secret{}, newState(t, ""))
	if !errors.Is(err, ErrKey) || b.Len() != 0 {
		t.Fatalf("Write(no key) = %v, wrote %d bytes; want ErrKey and nothing", err, b.Len())
	}
}

// TestHeaderReadableWithoutKey: the header names the unlock key a backup
// wants, with no key given.
func TestHeaderReadableWithoutKey(t *testing.T) {
	unlockKey, _ := ca.NewUnlockKey(rand.Reader)
	file := write(t, newState(t, unlockKey), Secret{UnlockKey: unlockKey})
	h, _, err := Read(bytes.NewReader(file), Secret{})
	kek, _ := ca.ParseUnlockKey(unlockKey)
	if !errors.Is(err, ErrKey) || h.Key.UnlockKeyID != kek.ID || !strings.Contains(err.Error(), kek.ID) {
		t.Fatalf("Read(no key) = %+v, %v; want ErrKey naming unlock key %s", h.Key, err, kek.ID)
	}
	var raw map[string]any
	second := strings.SplitN(string(file), "\n", 3)[1]
	if err := json.Unmarshal([]byte(second), &raw); err != nil {
		t.Fatalf("the header is not one line of JSON: %v", err)
	}
}
