// Package outcome is the library for services that consume VerifEye outcomes
// from verifeye-bridge, and the owner of the bridge's NATS contract: the names
// of its streams, subjects and headers, and the encoding of the outcome
// CloudEvent.
//
// A service reads outcomes with Consume, which runs a Handler for each one on
// the service's own durable consumer of StreamResults:
//
//	err := outcome.Consume(ctx, js, "kyc-service", func(ctx context.Context, ev *outcome.Event) error {
//		return store.Record(ctx, ev.SessionID, ev.Outcome) // idempotent on the session ID
//	}, outcome.WithOutcome(outcome.ResultPassed, outcome.ResultFailed), outcome.WithConcurrency(8))
//
// Lookup, Wait and Expect read the bridge's session ledger and announce
// sessions a service started. The package depends on nats.go and the standard
// library only; package outcometest helps a service's own tests.
package outcome
