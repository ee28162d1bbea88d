package manager

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
)

// Files publishTokens writes under Config.PublishTokens.
const (
	WorkerTokenFile  = "worker.token"
	ManagerTokenFile = "manager.token"
)

// publishTokens keeps the cluster's two standing join tokens in files under
// dir (0600, replaced atomically), for nodes that bootstrap unattended from
// a shared volume (docker compose). The files follow every change of the
// tokens: a rotated secret, a rotated root.
func (m *Manager) publishTokens(ctx context.Context, dir string) {
	var last [2]string
	for {
		st, changed := m.machine.Watch()
		if st.Initialized() {
			for i, role := range []ca.Role{ca.RoleWorker, ca.RoleManager} {
				tok, err := st.Token(role)
				if err != nil {
					m.log.Warn("publish join tokens", "err", err)
					continue
				}
				if s := tok.String(); s != last[i] {
					if err := writeToken(dir, role, s); err != nil {
						m.log.Warn("publish join tokens", "dir", dir, "err", err)
						continue
					}
					last[i] = s
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func writeToken(dir string, role ca.Role, token string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	name := WorkerTokenFile
	if role == ca.RoleManager {
		name = ManagerTokenFile
	}
	if err := agent.WriteFileAtomic(filepath.Join(dir, name), []byte(token+"\n"), 0o600); err != nil {
		return fmt.Errorf("write %s token: %w", role.Short(), err)
	}
	return nil
}
