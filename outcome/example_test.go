package outcome_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/outcome"
	"github.com/realeyes/verifeye-bridge/outcome/outcometest"
)

func ExampleDecode() {
	body := []byte(`{"specversion":"1.0","id":"3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4",` +
		`"type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/shop",` +
		`"subject":"3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4","time":"2026-11-26T09:14:03.512Z",` +
		`"datacontenttype":"application/json","verifeyesource":"shop","verifeyeoutcome":"passed",` +
		`"data":{"verificationResult":"passed","livenessResult":"passed","ageVerificationResult":"not_executed","gender":"male"}}`)
	ev, err := outcome.Decode(body)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(ev.SessionID, ev.Source, ev.Outcome, ev.Time.Format(time.RFC3339))
	liveness, _ := ev.Liveness()
	ageCheck, _ := ev.AgeVerification()
	fmt.Println("liveness:", liveness, "age verification:", ageCheck)
	if _, ok := ev.Age(); !ok {
		fmt.Println("no age in the result")
	}
	// Output:
	// 3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4 shop passed 2026-11-26T09:14:03Z
	// liveness: passed age verification: not_executed
	// no age in the result
}

func ExampleConsume() {
	// A test server with three outcomes on the results stream. A service
	// connects to the bridge's NATS instead: nats.Connect(url), jetstream.New(nc).
	js, stop := exampleJetStream()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ev := range []*outcome.Event{
		outcometest.Passed("shop", "3f2a9c1e-0000-4000-8000-000000000001"),
		outcometest.Failed("shop", "3f2a9c1e-0000-4000-8000-000000000002"),
		outcometest.Passed("default", "3f2a9c1e-0000-4000-8000-000000000003"),
	} {
		if err := outcometest.Publish(ctx, js, ev); err != nil {
			fmt.Println(err)
			return
		}
	}

	var handled atomic.Int32
	err := outcome.Consume(ctx, js, "kyc-service", func(ctx context.Context, ev *outcome.Event) error {
		// Make this idempotent on ev.SessionID: an outcome may come twice.
		switch ev.Outcome {
		case outcome.ResultPassed:
			fmt.Println("approve", ev.SessionID)
		case outcome.ResultFailed:
			fmt.Println("reject", ev.SessionID)
		}
		if handled.Add(1) == 2 {
			cancel() // a service runs until it is told to stop
		}
		return nil // ack; an error retries later; outcome.Permanent(err) gives up
	}, outcome.WithSource("shop"))
	fmt.Println("Consume returned", err)
	// Output:
	// approve 3f2a9c1e-0000-4000-8000-000000000001
	// reject 3f2a9c1e-0000-4000-8000-000000000002
	// Consume returned <nil>
}

// exampleJetStream starts an in-process JetStream server with the results
// stream and returns a client for it.
func exampleJetStream() (jetstream.JetStream, func()) {
	dir, err := os.MkdirTemp("", "outcome-example")
	if err != nil {
		panic(err)
	}
	ns, err := natsembed.Start(natsembed.Options{StoreDir: dir, SyncInterval: time.Minute})
	if err != nil {
		panic(err)
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		panic(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	if err := outcometest.CreateStream(context.Background(), js, ""); err != nil {
		panic(err)
	}
	return js, func() {
		nc.Close()
		natsembed.Shutdown(ns)
		_ = os.RemoveAll(dir)
	}
}
