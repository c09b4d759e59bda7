package outcome_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/outcome"
	"github.com/realeyes/verifeye-bridge/outcome/outcometest"
)

// ledger starts a server with the session bucket, as the bridge creates it.
func ledger(t *testing.T) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	js := natstest.Start(t).JetStream()
	kv, err := js.CreateKeyValue(context.Background(), outcome.SessionsBucketConfig(time.Hour, 1))
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}

// put writes an entry in the documented JSON form, by hand (not through
// Session.MarshalJSON), the way the bridge's ledger writer must.
func put(t *testing.T, kv jetstream.KeyValue, id, state, outcomeToken string, event []byte) {
	t.Helper()
	ev := json.RawMessage("null")
	if event != nil {
		ev = event
	}
	v, err := json.Marshal(map[string]any{
		"sessionId": id, "source": "default", "state": state, "outcome": outcomeToken,
		"updatedAt": "2026-03-01T12:04:05.5Z", "event": ev, "attempts": 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), outcome.SessionKey(id), v); err != nil {
		t.Fatal(err)
	}
}

func TestLookup(t *testing.T) {
	js, kv := ledger(t)
	ctx := context.Background()
	id := "3F2A9C1E-0000-4000-8000-000000000001"
	ev := outcometest.Passed("default", id)
	evBytes, err := outcome.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outcome.Lookup(ctx, js, id); !errors.Is(err, outcome.ErrNotFound) {
		t.Errorf("Lookup(unknown) error = %v, want ErrNotFound", err)
	}
	put(t, kv, id, outcome.StateEnriched, "passed", evBytes)
	got, err := outcome.Lookup(ctx, js, id)
	if err != nil {
		t.Fatalf("Lookup() error = %v", err)
	}
	want := &outcome.Session{SessionID: id, Source: "default", State: outcome.StateEnriched, Outcome: "passed",
		UpdatedAt: time.Date(2026, 3, 1, 12, 4, 5, 5e8, time.UTC), Event: ev}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Errorf("Lookup() mismatch (-want +got):\n%s", diff)
	}
	if !got.Final() {
		t.Error("enriched session not Final")
	}
	// The lower-cased key finds it whatever the caller's case.
	if _, err := outcome.Lookup(ctx, js, "3f2a9c1e-0000-4000-8000-000000000001"); err != nil {
		t.Errorf("Lookup(lower case) error = %v", err)
	}
	for _, bad := range []string{"", "{3f2a9c1e-0000-4000-8000-000000000001}", "urn:uuid:3f2a9c1e-0000-4000-8000-000000000001", "x.>"} {
		if _, err := outcome.Lookup(ctx, js, bad); !errors.Is(err, outcome.ErrInvalidSessionID) {
			t.Errorf("Lookup(%q) error = %v, want ErrInvalidSessionID", bad, err)
		}
	}
	// The JSON of Session is what the bridge writes: it round-trips.
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var back outcome.Session
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if diff := cmp.Diff(got, &back); diff != "" {
		t.Errorf("Session JSON round trip mismatch (-want +got):\n%s", diff)
	}
}

func TestLookupNoLedger(t *testing.T) {
	js := natstest.Start(t).JetStream()
	_, err := outcome.Lookup(context.Background(), js, "3f2a9c1e-0000-4000-8000-000000000001")
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("Lookup() without a ledger = %v, want ErrBucketNotFound", err)
	}
}

func TestWaitUntilFinal(t *testing.T) {
	js, kv := ledger(t)
	id := "3f2a9c1e-0000-4000-8000-000000000002"
	type result struct {
		s   *outcome.Session
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := outcome.Wait(context.Background(), js, id)
		done <- result{s, err}
	}()
	// Not seen yet, then expected, then received: Wait keeps waiting.
	put(t, kv, id, outcome.StateExpected, "", nil)
	put(t, kv, id, outcome.StateReceived, "", nil)
	select {
	case r := <-done:
		t.Fatalf("Wait() returned %+v, %v before a final state", r.s, r.err)
	default:
	}
	evBytes, _ := outcome.Marshal(outcometest.Failed("default", id))
	put(t, kv, id, outcome.StateEnriched, "failed", evBytes)
	r := <-done
	if r.err != nil || r.s.State != outcome.StateEnriched || r.s.Event == nil || r.s.Event.Outcome != "failed" {
		t.Fatalf("Wait() = %+v, %v; want the enriched failed session", r.s, r.err)
	}
	// Already final: at once.
	s, err := outcome.Wait(context.Background(), js, id)
	if err != nil || s.State != outcome.StateEnriched {
		t.Errorf("Wait(final) = %+v, %v", s, err)
	}
	for _, state := range []string{outcome.StateDeadLettered, outcome.StateAbandoned} {
		other := "3f2a9c1e-0000-4000-8000-00000000000" + map[string]string{outcome.StateDeadLettered: "3", outcome.StateAbandoned: "4"}[state]
		put(t, kv, other, state, "", nil)
		if s, err := outcome.Wait(context.Background(), js, other); err != nil || s.State != state || s.Event != nil {
			t.Errorf("Wait(%s) = %+v, %v", state, s, err)
		}
	}
}

func TestWaitContextEnds(t *testing.T) {
	js, _ := ledger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	s, err := outcome.Wait(ctx, js, "3f2a9c1e-0000-4000-8000-000000000009")
	if !errors.Is(err, context.DeadlineExceeded) || s != nil {
		t.Errorf("Wait() = %+v, %v; want context.DeadlineExceeded", s, err)
	}
}

func TestExpect(t *testing.T) {
	ns := natstest.Start(t)
	js := ns.JetStream()
	ctx := context.Background()
	id := "3f2a9c1e-0000-4000-8000-00000000000A"

	// Without the expectations stream: a plain NATS message.
	nc := ns.Connect()
	sub, err := nc.SubscribeSync(outcome.ExpectAll("verifeye"))
	if err != nil {
		t.Fatal(err)
	}
	// The subscription must reach the server before Expect publishes on
	// another connection, or the message finds no subscriber.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := outcome.Expect(ctx, js, "kyc", id); err != nil {
		t.Fatalf("Expect() without a stream = %v", err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"verificationSessionId":"3f2a9c1e-0000-4000-8000-00000000000A","source":"kyc"}`
	if m.Subject != "verifeye.expect.kyc" || string(m.Data) != want {
		t.Errorf("Expect() published %s %s, want verifeye.expect.kyc %s", m.Subject, m.Data, want)
	}

	// With it: stored, once per session within the duplicate window.
	if _, err := js.CreateStream(ctx, outcome.ExpectationsStreamConfig("acme", 1)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := outcome.Expect(ctx, js, "kyc", id, outcome.WithPrefix("acme")); err != nil {
			t.Fatalf("Expect() = %v", err)
		}
	}
	msgs := natstest.Messages(t, js, outcome.StreamExpectations)
	if len(msgs) != 1 || msgs[0].Subject() != "acme.expect.kyc" || string(msgs[0].Data()) != want ||
		msgs[0].Headers().Get(outcome.HeaderMsgID) != "expect:3f2a9c1e-0000-4000-8000-00000000000a" {
		t.Errorf("expectations stream holds %d messages, want 1 on acme.expect.kyc with the body and message ID", len(msgs))
	}

	for _, tt := range []struct{ source, id string }{
		{"kyc", "{" + id + "}"}, {"kyc", "urn:uuid:" + id}, {"kyc", "3f2a9c1e00004000800000000000000a"},
		{"KYC", id}, {"a.b", id}, {"", id}, {"*", id},
	} {
		err := outcome.Expect(ctx, js, tt.source, tt.id)
		if !errors.Is(err, outcome.ErrInvalidSessionID) && !errors.Is(err, outcome.ErrInvalidSource) {
			t.Errorf("Expect(%q, %q) = %v, want an invalid-argument error", tt.source, tt.id, err)
		}
	}
	if n := len(natstest.Messages(t, js, outcome.StreamExpectations)); n != 1 {
		t.Errorf("invalid Expect calls stored messages: %d, want 1", n)
	}
}
