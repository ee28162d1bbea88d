package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
)

// caPoll is how often `ca --rotate` asks for progress.
const caPoll = 500 * time.Millisecond

func newCACmd(g *globals) *cobra.Command {
	var (
		rotate, detach, quiet bool
		caCert, caKey         string
		certExpiry            time.Duration
		externalCAs           []string
	)
	cmd := &cobra.Command{
		Use:   "ca [--rotate [--ca-cert F --ca-key F | --external-ca SPEC [--ca-cert F] [--ca-key F]] [--cert-expiry D] [-d] [-q]]",
		Short: "Print the root CA, or rotate it",
		Long: `Without flags, print the cluster's trust bundle (its root CA).

With --rotate, replace the root CA: a new root is generated (or --ca-cert and
--ca-key are used, with a key the current root does not have), cross-signed by
the current key, and every node renews to a certificate of the new CA. When
every reachable node serves one, the trust bundle becomes the new root alone
and both join tokens change. A node unreachable for longer than the rotation
grace (quorumca update --rotation-grace) is named and left behind: it must
rejoin. The command shows progress until the rotation is done; Ctrl-C stops
watching, not the rotation.

With --external-ca, rotate to an external CA (CFSSL): --ca-cert is its
certificate and chain up to its root (default: ask the CA, whose certificate
must then be a root). If the current CA is external too, it cross-signs the
new root through its "CA" signing profile, which needs the new root's key:
give it with --ca-key; it is used once and not stored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkFormat(); err != nil {
				return err
			}
			// -q wins over --format, as everywhere: the bundle alone.
			asJSON := g.format == "json" && !quiet
			fl := cmd.Flags()
			if !rotate {
				for _, f := range []string{"ca-cert", "ca-key", "cert-expiry", "detach", "external-ca"} {
					if fl.Changed(f) {
						return fmt.Errorf("--%s goes with --rotate", f)
					}
				}
			}
			req := &api.RotateCARequest{}
			if fl.Changed("cert-expiry") {
				if certExpiry < ca.MinCertExpiry {
					return fmt.Errorf("--cert-expiry %s is under the minimum of %s", certExpiry, ca.MinCertExpiry)
				}
				req.CertExpirySeconds = int64(certExpiry / time.Second)
			}
			external, err := parseExternalCAs(externalCAs)
			if err != nil {
				return err
			}
			req.ExternalCa = externalToAPI(external)
			switch {
			case len(external) > 0:
				// The external CA's certificate and chain, and optionally
				// the new root's key, for the current external CA to
				// cross-sign it.
				if caCert != "" {
					if req.CaCert, err = readExternalCert(caCert); err != nil {
						return err
					}
				}
				if caKey != "" {
					if req.CaKey, err = os.ReadFile(caKey); err != nil {
						return fmt.Errorf("--ca-key: %w", err)
					}
					if _, err := ca.ParseKey(req.CaKey); err != nil {
						return fmt.Errorf("--ca-key: %w", err)
					}
				}
			case (caCert == "") != (caKey == ""):
				return errors.New("--ca-cert and --ca-key go together")
			case caCert != "":
				// Check the files here for a clear message; the leader
				// checks them again.
				var err error
				if _, req.CaCert, req.CaKey, err = readCA(caCert, caKey); err != nil {
					return err
				}
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			client := api.NewControlClient(conn)
			w := cmd.OutOrStdout()
			if !rotate {
				ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
				defer cancel()
				resp, err := client.GetCA(ctx, &api.GetCARequest{})
				if err != nil {
					return rpcError(err)
				}
				if asJSON {
					return writeJSON(w, caJSON{Bundle: string(resp.GetBundle()), Rotation: toCARotationJSON(resp.GetRotation())})
				}
				// The bundle alone on stdout (scripts keep it in a file);
				// a running rotation's progress on stderr.
				if rot := resp.GetRotation(); rot.GetInProgress() {
					printRotationInProgress(cmd.ErrOrStderr(), rot)
				}
				_, err = w.Write(resp.GetBundle())
				return err
			}
			// Asking external CAs (their certificate, a trial certificate, a
			// cross-signature) takes a few requests of up to 10s each.
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			started, err := client.RotateCA(ctx, req)
			cancel()
			if err != nil {
				return rpcError(err)
			}
			rot := started.GetRotation()
			if asJSON {
				return printRotateJSON(cmd, client, rot, detach)
			}
			if detach {
				if !quiet {
					fmt.Fprintf(w, "Root rotation started (new root %s); follow it with `quorumca ca`.\n", short(rot.GetNewRootFingerprint()))
				}
				return nil
			}
			if !quiet {
				fmt.Fprintf(w, "Root rotation started: new root %s, %d nodes to renew.\n", short(rot.GetNewRootFingerprint()), rot.GetTotal())
			}
			return watchRotation(cmd.Context(), client, rot.GetStartedAt(), w, quiet)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&rotate, "rotate", false, "replace the root CA")
	f.StringVar(&caCert, "ca-cert", "", "with --rotate: PEM root (or intermediate with its chain) to rotate to")
	f.StringVar(&caKey, "ca-key", "", "with --rotate: PEM key of --ca-cert; with --external-ca, the key of the new root, used once for the current external CA to cross-sign it and not stored")
	f.StringArrayVar(&externalCAs, "external-ca", nil, "with --rotate: rotate to this "+externalCAUsage)
	f.DurationVar(&certExpiry, "cert-expiry", 0, "with --rotate: also change the validity of node certificates (minimum 1h)")
	f.BoolVarP(&detach, "detach", "d", false, "with --rotate: start the rotation and return")
	f.BoolVarP(&quiet, "quiet", "q", false, "print no progress, only the new root at the end (wins over --format)")
	addFormatFlag(cmd, g)
	return cmd
}

// caJSON is the stable --format json shape of ca: the trust bundle and
// the latest rotation, if any; with --rotate, the new bundle and the
// rotation as it ended (or as last seen, when watching stopped first).
type caJSON struct {
	Bundle   string          `json:"bundle,omitempty"`
	Rotation *caRotationJSON `json:"rotation,omitempty"`
	// NodesWaiting (ca --rotate) counts the nodes, skipped ones aside,
	// that have not taken the new root yet: they do at their next
	// heartbeat.
	NodesWaiting uint32 `json:"nodes_waiting,omitempty"`
	// StoppedWatching (ca --rotate): the command stopped before the
	// rotation ended; it goes on in the cluster.
	StoppedWatching bool `json:"stopped_watching,omitempty"`
}

// caRotationJSON is a root rotation in ca's --format json.
type caRotationJSON struct {
	InProgress   bool               `json:"in_progress"`
	StartedAt    time.Time          `json:"started_at"`
	CompletedAt  *time.Time         `json:"completed_at,omitempty"`
	NewRoot      string             `json:"new_root_fingerprint"`
	Total        uint32             `json:"total"`
	Converged    uint32             `json:"converged"`
	Trusting     uint32             `json:"trusting"`
	Skipped      uint32             `json:"skipped"`
	GraceSeconds int64              `json:"grace_seconds"`
	Nodes        []rotationNodeJSON `json:"nodes"`
}

// rotationNodeJSON is a node in a rotation.
type rotationNodeJSON struct {
	ID            string     `json:"id"`
	Role          string     `json:"role"`
	State         string     `json:"state"`
	DownSince     *time.Time `json:"down_since,omitempty"`
	TrustsNewRoot bool       `json:"trusts_new_root"`
}

func toCARotationJSON(rot *api.Rotation) *caRotationJSON {
	if rot == nil {
		return nil
	}
	out := &caRotationJSON{
		InProgress: rot.GetInProgress(), StartedAt: time.Unix(rot.GetStartedAt(), 0).UTC(), NewRoot: rot.GetNewRootFingerprint(),
		Total: rot.GetTotal(), Converged: rot.GetConverged(), Trusting: rot.GetTrusting(), Skipped: rot.GetSkipped(),
		GraceSeconds: rot.GetGraceSeconds(), Nodes: []rotationNodeJSON{},
	}
	if c := rot.GetCompletedAt(); c > 0 {
		t := time.Unix(c, 0).UTC()
		out.CompletedAt = &t
	}
	for _, n := range rot.GetNodes() {
		nj := rotationNodeJSON{ID: n.GetId(), Role: n.GetRole(), State: n.GetState(), TrustsNewRoot: n.GetTrustsNewRoot()}
		if d := n.GetDownSince(); d > 0 {
			t := time.Unix(d, 0).UTC()
			nj.DownSince = &t
		}
		out.Nodes = append(out.Nodes, nj)
	}
	return out
}

// printRotateJSON prints, for ca --rotate --format json, one object: with
// detach, the rotation just started; else, followed without drawing
// progress, the rotation as it ended and the new bundle.
func printRotateJSON(cmd *cobra.Command, client api.ControlClient, started *api.Rotation, detach bool) error {
	w := cmd.OutOrStdout()
	if detach {
		return writeJSON(w, caJSON{Rotation: toCARotationJSON(started)})
	}
	end, err := followRotation(cmd.Context(), client, started.GetStartedAt(), func(*api.Rotation) {})
	if err != nil {
		return err
	}
	rot := end.rot
	if rot == nil {
		rot = started
	}
	if end.stopped {
		fmt.Fprintln(cmd.ErrOrStderr(), stoppedWatching)
	}
	return writeJSON(w, caJSON{Bundle: string(end.bundle), Rotation: toCARotationJSON(rot), NodesWaiting: end.waiting, StoppedWatching: end.stopped})
}

// stoppedWatching is what ca --rotate says when it stops watching first.
const stoppedWatching = "Stopped watching; the rotation goes on. `quorumca ca --rotate` is not needed again: `quorumca status` shows its progress."

// watchRotation shows the progress of the rotation that started at
// startedAt (unix seconds) until it completed and the reachable nodes
// trust the new root, then prints the new root.
func watchRotation(ctx context.Context, client api.ControlClient, startedAt int64, w io.Writer, quiet bool) error {
	p := &progress{w: w, tty: isTerminal(w), quiet: quiet}
	end, err := followRotation(ctx, client, startedAt, p.show)
	if err != nil {
		return err
	}
	if end.stopped {
		fmt.Fprintln(w, stoppedWatching)
		return nil
	}
	if !quiet {
		reportRotation(w, end.rot, end.waiting)
	}
	_, err = w.Write(end.bundle)
	return err
}

// rotationEnd is where followRotation stopped.
type rotationEnd struct {
	// rot is the rotation last seen (nil if none was); bundle the trust
	// bundle once it ended; waiting the nodes, skipped ones aside, that
	// do not trust the new root yet.
	rot     *api.Rotation
	bundle  []byte
	waiting uint32
	// stopped: ctx ended first; the rotation goes on.
	stopped bool
}

// followRotation polls the rotation that started at startedAt (unix
// seconds), calling show with each answer, until it completed and the
// reachable nodes trust the new root (or a minute passed since it
// completed), or ctx ends.
func followRotation(ctx context.Context, client api.ControlClient, startedAt int64, show func(*api.Rotation)) (rotationEnd, error) {
	var last *api.Rotation
	var lastErr error
	failingSince := time.Time{}
	// Once complete, wait this long at most for the nodes to take the new
	// root from their heartbeats.
	const spreadWait = time.Minute
	var completedAt time.Time
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := client.GetCA(cctx, &api.GetCARequest{})
		cancel()
		switch {
		case ctx.Err() != nil:
			return rotationEnd{rot: last, stopped: true}, nil
		case err != nil:
			// A leader change mid-rotation: the new leader carries on.
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			lastErr = err
			if time.Since(failingSince) > time.Minute || status.Code(err) == codes.PermissionDenied {
				return rotationEnd{}, fmt.Errorf("lost track of the rotation (it goes on in the cluster): %w", rpcError(lastErr))
			}
		default:
			failingSince = time.Time{}
			rot := resp.GetRotation()
			if rot == nil || rot.GetStartedAt() != startedAt {
				return rotationEnd{}, errors.New("the rotation is no longer the cluster's latest; see `quorumca ca`")
			}
			last = rot
			show(rot)
			if !rot.GetInProgress() {
				if completedAt.IsZero() {
					completedAt = time.Now()
				}
				waiting := untrusting(rot)
				if waiting == 0 || time.Since(completedAt) > spreadWait {
					return rotationEnd{rot: rot, bundle: resp.GetBundle(), waiting: waiting}, nil
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(caPoll):
		}
	}
}

// printRotationInProgress tells of the rotation rot, in progress: since
// when, to which root, and how far the nodes are.
func printRotationInProgress(w io.Writer, rot *api.Rotation) {
	fmt.Fprintf(w, "Root rotation in progress since %s, to new root %s:\n",
		time.Unix(rot.GetStartedAt(), 0).UTC().Format(time.RFC3339), short(rot.GetNewRootFingerprint()))
	(&progress{w: w}).show(rot)
	fmt.Fprintln(w, "It completes by itself; `quorumca status` shows it too. The trust bundle of now follows.")
}

// untrusting counts the nodes, skipped ones aside, that do not trust the
// new root yet.
func untrusting(rot *api.Rotation) uint32 {
	var n uint32
	for _, node := range rot.GetNodes() {
		if node.GetState() != "skipped" && !node.GetTrustsNewRoot() {
			n++
		}
	}
	return n
}

func reportRotation(w io.Writer, rot *api.Rotation, waiting uint32) {
	took := time.Duration(rot.GetCompletedAt()-rot.GetStartedAt()) * time.Second
	fmt.Fprintf(w, "Root rotation complete in %s: %d of %d nodes on the new root.\n", took, rot.GetTotal()-rot.GetSkipped(), rot.GetTotal())
	for _, n := range rot.GetNodes() {
		if n.GetState() == "skipped" {
			fmt.Fprintf(w, "  skipped %s (%s): unreachable for longer than the rotation grace; it must rejoin with a new token\n", n.GetId(), strings.TrimPrefix(n.GetRole(), "swarm-"))
		}
	}
	if waiting > 0 {
		fmt.Fprintf(w, "  %d nodes have not taken the new root yet; they do at their next heartbeat.\n", waiting)
	}
	fmt.Fprintln(w, "Both join tokens changed: see `quorumca join-token worker|manager`.")
}

// progress draws docker's two bars: nodes on a certificate of the new CA,
// and nodes that trust the new root.
type progress struct {
	w          io.Writer
	tty, quiet bool
	last       string
	drawn      bool
}

func (p *progress) show(rot *api.Rotation) {
	if p.quiet {
		return
	}
	total := rot.GetTotal()
	certs := rot.GetConverged()
	if !rot.GetInProgress() {
		certs = total - rot.GetSkipped()
	}
	lines := []string{
		fmt.Sprintf("rotated TLS certificates:  %s %d/%d nodes", bar(certs, total), certs, total),
		fmt.Sprintf("rotated CA certificates:   %s %d/%d nodes", bar(rot.GetTrusting(), total), rot.GetTrusting(), total),
	}
	for _, n := range rot.GetNodes() {
		switch n.GetState() {
		case "down":
			lines = append(lines, fmt.Sprintf("  waiting for %s: unreachable since %s (skipped after %s)", n.GetId(),
				time.Unix(n.GetDownSince(), 0).Format(time.TimeOnly), time.Duration(rot.GetGraceSeconds())*time.Second))
		case "skipped":
			lines = append(lines, fmt.Sprintf("  skipped %s: unreachable for longer than the grace", n.GetId()))
		}
	}
	text := strings.Join(lines, "\n")
	if text == p.last {
		return
	}
	if p.tty && p.drawn {
		// Move the cursor back over the previous drawing and clear it.
		fmt.Fprintf(p.w, "\x1b[%dA\x1b[J", strings.Count(p.last, "\n")+1)
	}
	fmt.Fprintln(p.w, text)
	p.last, p.drawn = text, true
}

func bar(n, total uint32) string {
	const width = 30
	if total == 0 {
		return "[" + strings.Repeat(" ", width) + "]"
	}
	fill := int(uint64(n) * width / uint64(total))
	s := strings.Repeat("=", fill)
	if fill < width {
		s += ">" + strings.Repeat(" ", width-fill-1)
	}
	return "[" + s + "]"
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
