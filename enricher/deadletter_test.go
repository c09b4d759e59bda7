package enricher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// noAPI fails the test if the enricher calls the API.
type noAPI struct{ t *testing.T }

func (a noAPI) GetSessionResult(context.Context, string) (*verifeye.Result, error) {
	a.t.Errorf("unexpected API call")
	return nil, errors.New("no API in this test")
}

// TestDeadLettererMaxDeliveries: a webhook whose every delivery crashes before
// a decision (here a raw consumer that never acks) reaches MaxDeliver, and the
// max-deliveries advisory puts it on the DLQ with reason max_deliveries.
func TestDeadLettererMaxDeliveries(t *testing.T) {
	ns := natstest.Start(t)
	js := ns.JetStream()
	subjects, _ := streams.NewSubjects("verifeye")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, subjects, streams.DefaultLimits()); err != nil {
		t.Fatal(err)
	}

	// The dead-letterer gets a connection of its own, so its subscription can be
	// observed before anything is published.
	nc := ns.Connect()
	ejs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	e := New(ejs, noAPI{t}, zerolog.New(zerolog.NewTestWriter(t)), Options{
		Subjects: subjects, MaxAttempts: 2, AckWait: 300 * time.Millisecond,
	})
	cfg := e.ConsumerConfig()
	if cfg.MaxDeliver != 3 {
		t.Fatalf("ConsumerConfig().MaxDeliver = %d, want MaxAttempts+1 = 3", cfg.MaxDeliver)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, streams.Webhooks, cfg)
	if err != nil {
		t.Fatal(err)
	}

	dctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { e.runDeadLetterer(dctx) })
	natstest.WaitFor(t, 5*time.Second, func() error {
		if nc.NumSubscriptions() == 0 {
			return errors.New("not subscribed to the advisory yet")
		}
		return nil
	})
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	session := "3f2a9c1e-0000-4000-8000-000000000001"
	body := fmt.Appendf(nil, `{"event":"VerificationCompleted","verificationSessionId":%q,"extra":1}`, session)
	msg := nats.NewMsg(subjects.Webhook("kyc", streams.EventCompleted))
	msg.Data = body
	msg.Header.Set(streams.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(streams.WebhookMsgID(streams.EventCompleted, session)))
	if err != nil {
		t.Fatal(err)
	}

	// The crash loop: fetch, never decide, let the ack wait run out.
	var deliveries int
	natstest.WaitFor(t, 20*time.Second, func() error {
		if m, err := cons.Next(jetstream.FetchMaxWait(200 * time.Millisecond)); err == nil {
			deliveries++
			if md, _ := m.Metadata(); md != nil && md.NumDelivered > uint64(cfg.MaxDeliver) {
				return fmt.Errorf("delivered %d times, over MaxDeliver %d", md.NumDelivered, cfg.MaxDeliver)
			}
		}
		if n := natstest.Count(t, js, streams.DLQ); n != 1 {
			return fmt.Errorf("DLQ holds %d messages after %d deliveries, want 1", n, deliveries)
		}
		return nil
	})
	if deliveries != cfg.MaxDeliver {
		t.Errorf("the crashing consumer got %d deliveries, want MaxDeliver %d", deliveries, cfg.MaxDeliver)
	}

	m := natstest.Messages(t, js, streams.DLQ)[0]
	h := m.Headers()
	got := map[string]string{
		"subject":                m.Subject(),
		streams.HeaderMsgID:      h.Get(streams.HeaderMsgID),
		streams.HeaderError:      h.Get(streams.HeaderError),
		streams.HeaderLastStatus: h.Get(streams.HeaderLastStatus),
		streams.HeaderAttempts:   h.Get(streams.HeaderAttempts),
		streams.HeaderOrigSeq:    h.Get(streams.HeaderOrigSeq),
		streams.HeaderReceivedAt: h.Get(streams.HeaderReceivedAt),
	}
	want := map[string]string{
		"subject":                "verifeye.dlq.kyc.VerificationCompleted",
		streams.HeaderMsgID:      "dlq:" + strconv.FormatUint(ack.Sequence, 10),
		streams.HeaderError:      ReasonMaxDeliveries,
		streams.HeaderLastStatus: "0",
		streams.HeaderAttempts:   "3",
		streams.HeaderOrigSeq:    strconv.FormatUint(ack.Sequence, 10),
		streams.HeaderReceivedAt: msg.Header.Get(streams.HeaderReceivedAt),
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("DLQ message %s = %q, want %q", k, got[k], w)
		}
	}
	if !bytes.Equal(m.Data(), body) {
		t.Errorf("DLQ body = %q, want the webhook %q", m.Data(), body)
	}

	// Every replica gets the advisory; the DLQ message ID makes the copies one.
	e.deadLetterSeq(ctx, maxDeliveriesAdvisory{Stream: streams.Webhooks, Consumer: cfg.Durable, StreamSeq: ack.Sequence, Deliveries: 3})
	if n := natstest.Count(t, js, streams.DLQ); n != 1 {
		t.Errorf("DLQ holds %d messages after a second replica's copy, want 1", n)
	}
}
