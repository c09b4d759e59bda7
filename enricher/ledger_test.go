package enricher_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// lookup returns the ledger entry of session, failing the test if there is none.
func (r *rig) lookup(session string) *outcome.Session {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := outcome.Lookup(ctx, r.js, session)
	if err != nil {
		r.t.Fatalf("outcome.Lookup(%s) error = %v", session, err)
	}
	return s
}

// waitState waits until session's ledger entry has state.
func (r *rig) waitState(session, state string, timeout time.Duration) *outcome.Session {
	r.t.Helper()
	var got *outcome.Session
	natstest.WaitFor(r.t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := outcome.Lookup(ctx, r.js, session)
		if err != nil {
			return err
		}
		if s.State != state {
			return fmt.Errorf("session %s is %s, want %s", session, s.State, state)
		}
		got = s
		return nil
	})
	return got
}

// TestLedgerExactlyOnceForever: webhooks that come again after the duplicate
// window make no API call and no second outcome; the ledger holds each
// session enriched, with its outcome and result sequence.
func TestLedgerExactlyOnceForever(t *testing.T) {
	l := streams.DefaultLimits()
	l.Duplicates = 300 * time.Millisecond
	r := newRigLimits(t, l)
	r.startReady(enricher.New(r.js, r.client(5*time.Second), r.log, options()))

	var sessions []string
	for i := range 5 {
		s := sid(120, i, "")
		sessions = append(sessions, s)
		r.publishWebhook("acme", streams.EventCompleted, s)
	}
	r.waitCount(streams.Results, 5, 10*time.Second)
	for _, s := range sessions {
		e := r.waitState(s, outcome.StateEnriched, 5*time.Second)
		if e.Event == nil || e.Event.SessionID != s || e.ResultSeq == 0 || e.Source != "acme" || e.Outcome == "" || e.Reconciled {
			t.Errorf("ledger entry of %s = %+v; want enriched with its event, result sequence and source", s, e)
		}
	}
	// Past the duplicate window: the stream takes the same webhooks again.
	for _, s := range sessions {
		natstest.WaitFor(t, 10*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			msg := nats.NewMsg(r.subjects.Webhook("acme", streams.EventCompleted))
			msg.Data = fmt.Appendf(nil, `{"event":"VerificationCompleted","verificationSessionId":%q}`, s)
			ack, err := r.js.PublishMsg(ctx, msg, jetstream.WithMsgID(streams.WebhookMsgID(streams.EventCompleted, s)))
			if err != nil {
				return err
			}
			if ack.Duplicate {
				return errors.New("still inside the duplicate window")
			}
			return nil
		})
	}
	r.waitCount(streams.Webhooks, 10, 5*time.Second)
	r.waitSettled("enricher", 10*time.Second)
	if n := natstest.Count(t, r.js, streams.Results); n != 5 {
		t.Errorf("results stream holds %d outcomes, want 5 (one per session, forever)", n)
	}
	for _, s := range sessions {
		if n := r.api.Calls(s); n != 1 {
			t.Errorf("API calls for %s = %d, want 1", s, n)
		}
	}
}

// TestLedgerReplayStillMakesOutcome: a replayed webhook (header
// Verifeye-Replay) of an enriched session still makes its distinguishable
// outcome; the ledger keeps the first.
func TestLedgerReplayStillMakesOutcome(t *testing.T) {
	r := newRig(t)
	r.startReady(enricher.New(r.js, r.client(5*time.Second), r.log, options()))
	s := sid(121, 1, "")
	_, seq := r.publishWebhook("acme", streams.EventCompleted, s)
	r.waitCount(streams.Results, 1, 10*time.Second)
	first := r.waitState(s, outcome.StateEnriched, 5*time.Second)

	msg := nats.NewMsg(r.subjects.Webhook("acme", streams.EventCompleted))
	msg.Data = fmt.Appendf(nil, `{"event":"VerificationCompleted","verificationSessionId":%q}`, s)
	msg.Header.Set(streams.HeaderReplay, strconv.FormatUint(seq, 10))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.js.PublishMsg(ctx, msg, jetstream.WithMsgID(streams.ReplayMsgID(streams.EventCompleted, s, seq))); err != nil {
		t.Fatal(err)
	}
	r.waitCount(streams.Results, 2, 10*time.Second)
	if got := r.lookup(s); got.ResultSeq != first.ResultSeq || got.State != outcome.StateEnriched {
		t.Errorf("after a replay the ledger holds %+v; want the first outcome (seq %d)", got, first.ResultSeq)
	}
}

// TestLedgerDeadLettered: a webhook dead-lettered leaves the session
// dead_lettered with the reason.
func TestLedgerDeadLettered(t *testing.T) {
	r := newRig(t)
	r.startReady(enricher.New(r.js, r.client(5*time.Second), r.log, options()))
	s := sid(122, 1, "")
	r.api.Script(s, verifeyetest.Status(400))
	r.publishWebhook("acme", streams.EventCompleted, s)
	got := r.waitState(s, outcome.StateDeadLettered, 10*time.Second)
	if got.Reason != enricher.ReasonBadRequest || got.APICalls != 1 || got.LastStatus != 400 {
		t.Errorf("ledger = %+v, want reason %q after 1 attempt with status 400", got, enricher.ReasonBadRequest)
	}

	// Attempts retried are counted, with the last status.
	s2 := sid(122, 2, "")
	r.api.Script(s2, verifeyetest.Status(500), verifeyetest.Status(503))
	r.publishWebhook("acme", streams.EventCompleted, s2)
	got = r.waitState(s2, outcome.StateEnriched, 10*time.Second)
	if got.APICalls != 3 || got.LastStatus != 200 {
		t.Errorf("ledger = %+v, want 3 attempts, the last 200", got)
	}
	var statuses []int
	for _, a := range got.Calls {
		statuses = append(statuses, a.Status)
		if a.At.IsZero() {
			t.Errorf("call %+v has no time", a)
		}
	}
	if want := []int{500, 503, 200}; !slices.Equal(statuses, want) {
		t.Errorf("ledger calls' statuses = %v, want %v", statuses, want)
	}
}
