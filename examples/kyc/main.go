// Command kyc is an example downstream service: it approves or rejects a
// customer when their verification passed or failed. It reads outcomes with
// its own durable consumer ("kyc-example") on the bridge's results stream, so
// it gets every passed and failed outcome whatever other services do.
//
//	go run ./examples/kyc
//
// It connects to NATS_URL; when that is empty, to the URL the bridge's
// embedded server wrote in DATA_DIR/nats.url (DATA_DIR defaults to ./data);
// else to nats://127.0.0.1:4222.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/realeyes/verifeye-bridge/examples/internal/exampleconn"
	"github.com/realeyes/verifeye-bridge/outcome"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kyc:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	js, closeNATS, err := exampleconn.JetStream("kyc-example")
	if err != nil {
		return err
	}
	defer closeNATS()
	k := &kyc{out: out, decided: map[string]string{}}
	fmt.Fprintln(out, "kyc: waiting for passed and failed outcomes (Ctrl-C to stop)")
	return outcome.Consume(ctx, js, "kyc-example", k.handle,
		outcome.WithOutcome(outcome.ResultPassed, outcome.ResultFailed),
		outcome.WithConcurrency(4))
}

// kyc decides once per session. A real service keeps the decision in its
// database under the session ID (a unique key), so a redelivered outcome
// finds it already decided.
type kyc struct {
	out     io.Writer
	mu      sync.Mutex
	decided map[string]string
}

func (k *kyc) handle(ctx context.Context, ev *outcome.Event) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if d, ok := k.decided[strings.ToLower(ev.SessionID)]; ok {
		fmt.Fprintf(k.out, "kyc: %s already %s\n", ev.SessionID, d)
		return nil // ack: nothing left to do
	}
	decision := "approved"
	why := ""
	if ev.Outcome == outcome.ResultFailed {
		decision = "rejected"
		var failed []string
		for name, f := range map[string]func() (string, bool){
			"liveness": ev.Liveness, "face recognition": ev.FaceRecognition,
			"age": ev.AgeVerification, "gender": ev.GenderVerification,
		} {
			if r, ok := f(); ok && r == outcome.ResultFailed {
				failed = append(failed, name)
			}
		}
		if len(failed) > 0 {
			why = " (" + strings.Join(failed, ", ") + " failed)"
		}
	}
	k.decided[strings.ToLower(ev.SessionID)] = decision
	fmt.Fprintf(k.out, "kyc: %s %s, source %s%s\n", ev.SessionID, decision, ev.Source, why)
	return nil
}
