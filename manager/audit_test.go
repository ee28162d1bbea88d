package manager

import (
	"reflect"
	"slices"
	"testing"

	"github.com/quorumca/quorumca/authz"
	"github.com/quorumca/quorumca/fsm"
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
