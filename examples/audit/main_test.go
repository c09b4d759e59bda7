package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/outcome/outcometest"
)

// TestAudit runs the example against a real JetStream server: every outcome,
// whatever its result, becomes one JSON line in AUDIT_FILE, with the API's
// body byte for byte; it stops on cancel.
func TestAudit(t *testing.T) {
	ns := natstest.Start(t)
	t.Setenv("NATS_URL", ns.URL())
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	t.Setenv("AUDIT_FILE", file)
	js := ns.JetStream()
	ctx := context.Background()
	if err := outcometest.CreateStream(ctx, js, ""); err != nil {
		t.Fatal(err)
	}
	evs := []struct{ id string }{{"3f2a9c1e-0000-4000-8000-000000000001"}, {"3f2a9c1e-0000-4000-8000-fa11ed000001"}, {"3f2a9c1e-0000-4000-8000-7e5700000001"}}
	published := map[string][]byte{}
	for i, e := range evs {
		o := outcometest.Passed("default", e.id)
		switch i {
		case 1:
			o = outcometest.Failed("default", e.id)
		case 2:
			o = outcometest.NotExecuted("default", e.id)
		}
		published[e.id] = o.Data
		if err := outcometest.Publish(ctx, js, o); err != nil {
			t.Fatal(err)
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx) }()
	var lines []entry
	natstest.WaitFor(t, 10*time.Second, func() error {
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		lines = lines[:0]
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			var e entry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				return fmt.Errorf("line %q: %v", sc.Text(), err)
			}
			lines = append(lines, e)
		}
		if len(lines) < len(evs) {
			return fmt.Errorf("%d lines, want %d", len(lines), len(evs))
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
	for _, l := range lines {
		want, ok := published[l.SessionID]
		if !ok || l.EventID != l.SessionID {
			t.Errorf("audit line %+v: not one of the published outcomes", l)
			continue
		}
		var got, exp bytes.Buffer
		_ = json.Compact(&got, l.Result)
		_ = json.Compact(&exp, want)
		if got.String() != exp.String() {
			t.Errorf("audit line of %s: result %s, want %s", l.SessionID, l.Result, want)
		}
	}
}
