package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/outcome/outcometest"
)

// TestKYC runs the example against a real JetStream server holding a passed
// and a failed outcome, published with the bridge's encoding: it approves the
// one and rejects the other, naming the failed check, and stops on cancel.
func TestKYC(t *testing.T) {
	ns := natstest.Start(t)
	t.Setenv("NATS_URL", ns.URL())
	js := ns.JetStream()
	ctx := context.Background()
	if err := outcometest.CreateStream(ctx, js, ""); err != nil {
		t.Fatal(err)
	}
	const passed, failed = "3f2a9c1e-0000-4000-8000-000000000001", "3f2a9c1e-0000-4000-8000-fa11ed000001"
	if err := outcometest.Publish(ctx, js, outcometest.Passed("shop", passed)); err != nil {
		t.Fatal(err)
	}
	if err := outcometest.Publish(ctx, js, outcometest.Failed("shop", failed)); err != nil {
		t.Fatal(err)
	}

	var out natstest.Buffer
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx, &out) }()
	natstest.WaitFor(t, 10*time.Second, func() error {
		s := out.String()
		if !strings.Contains(s, passed+" approved, source shop") || !strings.Contains(s, failed+" rejected, source shop (liveness failed)") {
			return fmt.Errorf("output so far:\n%s", s)
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run() = %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run() did not return after cancel")
	}
}
