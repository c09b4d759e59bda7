// Package outcometest helps the tests of a service that consumes outcomes: it
// creates the results stream in a test JetStream server and publishes
// realistic outcomes with the bridge's exact encoding, subject and headers.
// It depends on nats.go and the standard library only; start the server the
// way your tests already do.
package outcometest

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/outcome"
)

// CreateStream creates (or updates) StreamResults on js for the subjects under
// prefix ("" means outcome.DefaultPrefix), the way the bridge does, with a
// memory store for speed.
func CreateStream(ctx context.Context, js jetstream.JetStream, prefix string) error {
	if prefix == "" {
		prefix = outcome.DefaultPrefix
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       outcome.StreamResults,
		Subjects:   []string{outcome.ResultsAll(prefix)},
		Retention:  jetstream.LimitsPolicy,
		Storage:    jetstream.MemoryStorage,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("outcometest: create %s: %w", outcome.StreamResults, err)
	}
	return nil
}

// Passed returns the outcome of a session whose every verifier passed.
func Passed(source, sessionID string) *outcome.Event {
	return event(source, sessionID, outcome.ResultPassed, fmt.Sprintf(
		`{"verificationSessionId":%q,"verificationResult":"passed","livenessResult":"passed","faceRecognitionResult":"passed","ageVerificationResult":"passed","genderVerificationResult":"passed","faceId":"c0bda32831ecb2b253189f92211125b5","age":47,"gender":"male","totalFaceCount":1}`,
		sessionID))
}

// Failed returns the outcome of a session that failed liveness.
func Failed(source, sessionID string) *outcome.Event {
	return event(source, sessionID, outcome.ResultFailed, fmt.Sprintf(
		`{"verificationSessionId":%q,"verificationResult":"failed","livenessResult":"failed","faceRecognitionResult":"passed","ageVerificationResult":"passed","genderVerificationResult":"passed","faceId":"5b9e0f7c1d2a43e8b6c7d8e9f0a1b2c3","age":31,"gender":"female","totalFaceCount":1,"failedReason":"liveness_failed"}`,
		sessionID))
}

// NotExecuted returns the outcome of a session that passed with the age
// verifier not executed (so it carries no age).
func NotExecuted(source, sessionID string) *outcome.Event {
	return event(source, sessionID, outcome.ResultPassed, fmt.Sprintf(
		`{"verificationSessionId":%q,"verificationResult":"passed","livenessResult":"passed","faceRecognitionResult":"passed","ageVerificationResult":"not_executed","genderVerificationResult":"passed","faceId":"9a8b7c6d5e4f40312233445566778899","gender":"male","totalFaceCount":1,"processingTimeMs":812}`,
		sessionID))
}

func event(source, sessionID, result, data string) *outcome.Event {
	return &outcome.Event{
		ID:        sessionID,
		SessionID: sessionID,
		Source:    source,
		Outcome:   result,
		Time:      time.Now().UTC(),
		Data:      []byte(data),
	}
}

// Msg returns ev as the bridge publishes it under prefix ("" means
// outcome.DefaultPrefix): subject <prefix>.result.<source>.<outcome>, headers
// Nats-Msg-Id and Content-Type, body outcome.Marshal(ev).
func Msg(prefix string, ev *outcome.Event) (*nats.Msg, error) {
	if prefix == "" {
		prefix = outcome.DefaultPrefix
	}
	body, err := outcome.Marshal(ev)
	if err != nil {
		return nil, err
	}
	id := ev.ID
	if id == "" {
		id = ev.SessionID
	}
	m := nats.NewMsg(outcome.ResultSubject(prefix, ev.Source, ev.Outcome))
	m.Data = body
	m.Header.Set(outcome.HeaderMsgID, id)
	m.Header.Set(outcome.HeaderContentType, outcome.ContentType)
	return m, nil
}

// Publish publishes ev on StreamResults (default prefix) and waits for the
// acknowledgement. Publishing the same event ID twice within the duplicate
// window stores it once, as on the bridge.
func Publish(ctx context.Context, js jetstream.JetStream, ev *outcome.Event) error {
	m, err := Msg("", ev)
	if err != nil {
		return err
	}
	if _, err := js.PublishMsg(ctx, m, jetstream.WithExpectStream(outcome.StreamResults)); err != nil {
		return fmt.Errorf("outcometest: publish %s: %w", ev.SessionID, err)
	}
	return nil
}
