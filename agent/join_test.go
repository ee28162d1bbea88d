package agent

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/internal/testkit"
)

// closedAddr returns a 127.0.0.1 address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// validToken returns a well-formed join token for a bundle no manager
// serves.
func validToken(t *testing.T) string {
	t.Helper()
	tok, err := ca.NewToken(testkit.NewCA(t).Bundle(), "0123456789abcdefghijklmno")
	if err != nil {
		t.Fatalf("ca.NewToken() = %v", err)
	}
	return tok.String()
}

// TestJoinMalformedToken: a token that does not parse is refused before
// any network call, with an error that says so.
func TestJoinMalformedToken(t *testing.T) {
	tokens := []struct{ name, token string }{
		{"empty", ""},
		{"too few parts", "SWMTKN-1-abc"},
		{"unknown version", "SWMTKN-2-" + validToken(t)[len("SWMTKN-1-"):]},
		{"long secret", validToken(t) + "x"},
	}
	for _, tt := range tokens {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := t.TempDir()
			_, err := Join(t.Context(), JoinConfig{DataDir: dataDir, Token: tt.token, Remote: closedAddr(t), Timeout: 5 * time.Second})
			if !errors.Is(err, ca.ErrMalformedToken) {
				t.Errorf("Join(%s token) = %v, want %v, not a dial error", tt.name, err, ca.ErrMalformedToken)
			}
			if got := names(readDir(t, dataDir)); len(got) != 0 {
				t.Errorf("Join refused but wrote %v", got)
			}
		})
	}

	// Against a port that listens, no connection is even attempted: a dial
	// would have left one in the accept queue by the time Join returned.
	t.Run("listening port", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("net.Listen() = %v", err)
		}
		defer ln.Close()
		_, err = Join(t.Context(), JoinConfig{DataDir: t.TempDir(), Token: "SWMTKN-1-abc", Remote: ln.Addr().String(), Timeout: 5 * time.Second})
		if !errors.Is(err, ca.ErrMalformedToken) {
			t.Fatalf("Join(malformed token) = %v, want %v", err, ca.ErrMalformedToken)
		}
		if queued(ln.(*net.TCPListener)) {
			t.Errorf("Join(malformed token) connected to the manager, want no network call")
		}
	})
}

// TestJoinDataDirInUse: a data directory that holds a member is refused
// first, before the token is even parsed, and left as it was.
func TestJoinDataDirInUse(t *testing.T) {
	tests := []struct {
		name  string
		token string
		setup func(t *testing.T, dataDir string)
	}{
		{"node.json, malformed token", "SWMTKN-1-abc", func(t *testing.T, dataDir string) {
			if err := SaveNodeConfig(dataDir, NodeConfig{NodeID: "n", ClusterID: "c", Role: ca.RoleWorker}); err != nil {
				t.Fatal(err)
			}
		}},
		{"certificates, valid token", validToken(t), func(t *testing.T, dataDir string) {
			if err := os.Mkdir(CertDir(dataDir), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"raft, valid token", validToken(t), func(t *testing.T, dataDir string) {
			if err := os.Mkdir(filepath.Join(dataDir, "raft"), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := t.TempDir()
			tt.setup(t, dataDir)
			before := readDir(t, dataDir)
			_, err := Join(t.Context(), JoinConfig{DataDir: dataDir, Token: tt.token, Remote: closedAddr(t), Timeout: 5 * time.Second})
			if !errors.Is(err, ErrDataDirInUse) {
				t.Errorf("Join(%s) = %v, want %v", tt.name, err, ErrDataDirInUse)
			}
			if after := readDir(t, dataDir); !sameFiles(before, after) {
				t.Errorf("Join(%s) changed the data directory: %v, want %v", tt.name, names(after), names(before))
			}
		})
	}
}

func TestJoinNoRemote(t *testing.T) {
	dataDir := t.TempDir()
	_, err := Join(t.Context(), JoinConfig{DataDir: dataDir, Token: validToken(t)})
	if err == nil || errors.Is(err, ca.ErrMalformedToken) || errors.Is(err, ErrDataDirInUse) {
		t.Errorf("Join(no remote) = %v, want an error naming the missing manager address", err)
	}
	if got := names(readDir(t, dataDir)); len(got) != 0 {
		t.Errorf("Join refused but wrote %v", got)
	}
}
