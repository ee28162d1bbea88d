package agent

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/quorumca/quorumca/internal/testkit"
)

// TestMain fails the run if goroutines the tests started outlive them.
func TestMain(m *testing.M) {
	base := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		if err := testkit.WaitGoroutines(base, 5*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}
