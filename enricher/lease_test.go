package enricher_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestEnricherSlowStagesKeepTheLease: an API call taking three ack waits, then
// an outcome publish taking three more, are still one delivery, one API call
// and one outcome. The lease is kept alive through every stage, so a short
// ack wait (a fast failover) costs no redelivery under slow conditions.
func TestEnricherSlowStagesKeepTheLease(t *testing.T) {
	r := newRig(t)
	opts := options()
	opts.AckWait = 500 * time.Millisecond
	opts.Concurrency = 4 // idle workers would take a redelivery at once
	slow := 3 * opts.AckWait
	opts.Publisher = publisherFunc(func(ctx context.Context, msg *nats.Msg, o ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
		select {
		case <-time.After(slow):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return r.js.PublishMsg(ctx, msg, o...)
	})
	session := sid(9, 1, "")
	r.api.Script(session, verifeyetest.Slow(slow))
	r.publishWebhook("default", streams.EventCompleted, session)

	r.startReady(enricher.New(r.js, r.client(10*slow), r.log, opts))
	r.waitCount(streams.Results, 1, 30*time.Second)
	r.waitSettled("enricher", 10*time.Second)

	if got := r.api.Calls(session); got != 1 {
		t.Errorf("API calls = %d, want 1 (a call of 3 ack waits, then a publish of 3 more)", got)
	}
	if info := r.consumerInfo("enricher"); info.NumRedelivered != 0 {
		t.Errorf("consumer: %d redelivered, want 0", info.NumRedelivered)
	}
	if n := natstest.Count(t, r.js, streams.Results); n != 1 {
		t.Errorf("results hold %d messages, want 1", n)
	}
	checkResult(t, r.byMsgID(streams.Results)[session], "default", session)
}

// TestEnricherUpdatesAckWait: a durable consumer left by an older version with
// a 30 s ack wait gets the configured one when the enricher starts; else a
// replica's death would still hold its webhooks for 30 s.
func TestEnricherUpdatesAckWait(t *testing.T) {
	r := newRig(t)
	e := enricher.New(r.js, r.client(time.Second), r.log, enricher.Options{Subjects: r.subjects})
	old := e.ConsumerConfig()
	old.AckWait = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.js.CreateOrUpdateConsumer(ctx, streams.Webhooks, old); err != nil {
		t.Fatalf("create the old consumer: %v", err)
	}
	r.startReady(e)
	info := r.consumerInfo("enricher")
	if info.Config.AckWait != enricher.DefaultAckWait {
		t.Errorf("consumer ack wait = %v after start, want %v", info.Config.AckWait, enricher.DefaultAckWait)
	}
	if len(info.Config.BackOff) != 0 {
		t.Errorf("consumer BackOff = %v, want none (it would override the ack wait)", info.Config.BackOff)
	}
}
