package wait

import (
	"context"
	"testing"
	"time"
)

func TestSleep(t *testing.T) {
	if !Sleep(t.Context(), time.Millisecond) {
		t.Errorf("Sleep(live, 1ms) = false, want true")
	}
	if !Sleep(t.Context(), 0) {
		t.Errorf("Sleep(live, 0) = false, want true")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Errorf("Sleep(cancelled, 1h) = true, want false")
	}
	if Sleep(ctx, 0) {
		t.Errorf("Sleep(cancelled, 0) = true, want false")
	}
}
