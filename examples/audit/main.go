// Command audit is an example downstream service: it appends every outcome,
// whatever its result, to an audit log as one JSON line. It has its own
// durable consumer ("audit-example") on the bridge's results stream, beside
// any other service's.
//
//	go run ./examples/audit                 # to stdout
//	AUDIT_FILE=audit.jsonl go run ./examples/audit
//
// It connects to NATS_URL; when that is empty, to the URL the bridge's
// embedded server wrote in DATA_DIR/nats.url (DATA_DIR defaults to ./data);
// else to nats://127.0.0.1:4222.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/realeyes/verifeye-bridge/examples/internal/exampleconn"
	"github.com/realeyes/verifeye-bridge/outcome"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "audit:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var w io.Writer = os.Stdout
	if path := os.Getenv("AUDIT_FILE"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	js, closeNATS, err := exampleconn.JetStream("audit-example")
	if err != nil {
		return err
	}
	defer closeNATS()
	a := &audit{enc: json.NewEncoder(w)}
	fmt.Fprintln(os.Stderr, "audit: writing every outcome (Ctrl-C to stop)")
	return outcome.Consume(ctx, js, "audit-example", a.handle,
		outcome.WithErrorFunc(func(err error) { fmt.Fprintln(os.Stderr, "audit:", err) }))
}

// entry is one audit line. The event ID is unique per outcome, so a reader
// drops repeated lines by it (an outcome can be delivered twice).
type entry struct {
	EventID     string          `json:"eventId"`
	SessionID   string          `json:"sessionId"`
	Source      string          `json:"source"`
	Outcome     string          `json:"outcome"`
	ReceivedAt  time.Time       `json:"receivedAt"`
	Reconciled  bool            `json:"reconciled,omitempty"`
	TraceParent string          `json:"traceparent,omitempty"`
	Result      json.RawMessage `json:"result"`
}

type audit struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (a *audit) handle(ctx context.Context, ev *outcome.Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	// An error here (a full disk) retries the outcome later with backoff.
	return a.enc.Encode(entry{
		EventID: ev.ID, SessionID: ev.SessionID, Source: ev.Source, Outcome: ev.Outcome,
		ReceivedAt: ev.Time, Reconciled: ev.Reconciled, TraceParent: outcome.TraceParent(ctx), Result: ev.Data,
	})
}
