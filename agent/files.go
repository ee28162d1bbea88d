package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/quorumca/quorumca/internal/atomicfile"
)

// WriteFileAtomic writes data to path so that a reader (or a crash) sees
// either the old file or the whole new one (atomicfile.Write).
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := atomicfile.Write(path, data, perm); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// tokenFileMax bounds what ReadTokenFile reads: a token is under
// 100 bytes, and a path like /dev/zero must not make join read forever.
const tokenFileMax = 4096

// ReadTokenFile returns the join token in path: its first line, trimmed.
// Its errors never hold the token.
func ReadTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("--token-file %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, tokenFileMax))
	if err != nil {
		return "", fmt.Errorf("--token-file %s: %w", path, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	token := strings.TrimSpace(line)
	if token == "" {
		return "", fmt.Errorf("--token-file %s is empty: its first line must hold the token (`quorumca join-token -q worker` on a manager prints one)", path)
	}
	return token, nil
}
