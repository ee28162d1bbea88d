package manager

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/fsm"
	"github.com/quorumca/quorumca/internal/audit"
)

// TestAuditActionsCoverEveryMethod: every method the policy knows has its
// audit action, so that a new method cannot change the state unrecorded
// by being forgotten here (a missing one would be recorded always).
func TestAuditActionsCoverEveryMethod(t *testing.T) {
	methods := authz.Methods()
	for _, m := range methods {
		if _, ok := auditActions[m]; !ok {
			t.Errorf("auditActions has no entry for %s", m)
		}
	}
	for m := range auditActions {
		if !slices.Contains(methods, m) {
			t.Errorf("auditActions names %s, which the policy does not know", m)
		}
	}
}

// TestCommandName names each operation of fsm.Command by its JSON field.
func TestCommandName(t *testing.T) {
	typ := reflect.TypeOf(fsm.Command{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Type.Kind() != reflect.Pointer {
			continue
		}
		var cmd fsm.Command
		reflect.ValueOf(&cmd).Elem().Field(i).Set(reflect.New(f.Type.Elem()))
		if got := commandName(cmd); got == "unknown" || got == "" {
			t.Errorf("commandName(Command{%s}) = %q, want its JSON name", f.Name, got)
		}
	}
	if got := commandName(fsm.Command{}); got != "unknown" {
		t.Errorf("commandName(Command{}) = %q, want unknown", got)
	}
}

// TestAuditLogFailureStopsChanges: once the audit log cannot be written,
// a call that changes the state is refused before it runs (nothing
// commits unrecorded), while reads go on; a call without a certificate
// that the API turns away before reading it is recorded as a refusal,
// and a caller's unfit request ID is replaced.
func TestAuditLogFailureStopsChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	log, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m := initManager(t, func(c *Config) { c.Audit = log })
	ctl := local(t, m)

	conn := dial(t, m.Addr(), agent.BundleClientTLS(m.Credentials().Roots(), agent.ManagerName))
	ctx := metadata.AppendToOutgoingContext(t.Context(), audit.RequestIDHeader, "not fit for a log")
	if _, err := api.NewControlClient(conn).ListNodes(ctx, &api.ListNodesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ListNodes() without a certificate = %v, want Unauthenticated", err)
	}
	// (The manager's own gossip fetches its key meanwhile: lines of
	// other calls come between.)
	last := lastLine(t, path, "node.ls")
	if last.Action != "node.ls" || last.Result != audit.ResultRefused || last.Actor.Kind != "anonymous" || last.Code != "Unauthenticated" {
		t.Errorf("last line after an anonymous ListNodes = %+v, want its refusal", last)
	}
	if !audit.ValidRequestID(last.RequestID) || strings.Contains(last.RequestID, "fit") {
		t.Errorf("request ID %q, want one the manager made in place of the caller's", last.RequestID)
	}

	if _, err := ctl.JoinToken(t.Context(), &api.JoinTokenRequest{Role: "worker", Rotate: true}); err != nil {
		t.Fatalf("JoinToken(rotate) = %v", err)
	}
	// A backup (a stream) hands out the whole state: recorded once done.
	if err := drainBackup(t, ctl); err != nil {
		t.Fatalf("Backup() = %v", err)
	}
	if r := lastLine(t, path, "backup"); r.Result != audit.ResultOK || r.Actor.Kind != "host" {
		t.Errorf("backup line = %+v, want the host's backup, ok", r)
	}
	log.Close() // as a failed write leaves it
	if err := drainBackup(t, ctl); status.Code(err) != codes.Unavailable {
		t.Errorf("Backup() with a broken audit log = %v, want Unavailable", err)
	}
	secret := m.State().WorkerSecret
	_, err = ctl.JoinToken(t.Context(), &api.JoinTokenRequest{Role: "worker", Rotate: true})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "audit log") {
		t.Errorf("JoinToken(rotate) with a broken audit log = %v, want Unavailable naming the audit log", err)
	}
	if m.State().WorkerSecret != secret {
		t.Errorf("a rotation committed while the audit log could not record it")
	}
	if _, err := ctl.ListNodes(t.Context(), &api.ListNodesRequest{}); err != nil {
		t.Errorf("ListNodes() with a broken audit log = %v, want an answer: reads are not recorded", err)
	}
}

// drainBackup reads a whole backup from ctl.
func drainBackup(t *testing.T, ctl api.ControlClient) error {
	t.Helper()
	stream, err := ctl.Backup(t.Context(), &api.BackupRequest{})
	if err != nil {
		return err
	}
	for {
		_, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// lastLine returns the last line of action in the audit log at path.
func lastLine(t *testing.T, path, action string) audit.Record {
	t.Helper()
	recs := readAudit(t, path)
	for _, r := range slices.Backward(recs) {
		if r.Action == action {
			return r
		}
	}
	t.Fatalf("the audit log has no %s line: %+v", action, recs)
	return audit.Record{}
}

func readAudit(t *testing.T, path string) []audit.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := audit.Read(f)
	if err != nil || len(recs) == 0 {
		t.Fatalf("audit.Read(%s) = %d records, %v", path, len(recs), err)
	}
	return recs
}
