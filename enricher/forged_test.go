package enricher_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestEnricherForgedWebhooks: webhooks that no ingest could have stored, put
// on the webhooks stream by hand, never yield an outcome that escapes the
// contract: a wildcard source is dead-lettered (not published on
// verifeye.result.*.<outcome>), and a replay marker that is not a stream
// sequence keeps the session ID as the outcome's ID (de-duplication holds).
func TestEnricherForgedWebhooks(t *testing.T) {
	r := newRig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wild, marked := sid(90, 1, "000000"), sid(90, 2, "000000")

	m := nats.NewMsg("verifeye.webhook.*." + streams.EventCompleted)
	m.Data = fmt.Appendf(nil, `{"event":"VerificationCompleted","verificationSessionId":%q}`, wild)
	if _, err := r.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	m = nats.NewMsg(r.subjects.Webhook("kyc", streams.EventCompleted))
	m.Data = fmt.Appendf(nil, `{"event":"VerificationCompleted","verificationSessionId":%q}`, marked)
	m.Header.Set(streams.HeaderReplay, "zz")
	if _, err := r.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}

	r.startReady(enricher.New(r.js, r.client(time.Second), r.log, options()))
	r.waitCount(streams.DLQ, 1, 10*time.Second)
	r.waitCount(streams.Results, 1, 10*time.Second)

	dl := natstest.Messages(t, r.js, streams.DLQ)[0]
	if got, want := dl.Subject(), "verifeye.dlq.unknown.unknown"; got != want {
		t.Errorf("DLQ subject of the wildcard webhook = %q, want %q", got, want)
	}
	if got := dl.Headers().Get(streams.HeaderError); got != enricher.ReasonInvalidWebhook {
		t.Errorf("DLQ reason of the wildcard webhook = %q, want %q", got, enricher.ReasonInvalidWebhook)
	}
	out := natstest.Messages(t, r.js, streams.Results)[0]
	if got := out.Headers().Get(streams.HeaderMsgID); got != marked {
		t.Errorf("outcome of a webhook with replay marker zz: Nats-Msg-Id = %q, want the session ID %s", got, marked)
	}
	if got := r.api.Calls(wild); got != 0 {
		t.Errorf("API calls for the wildcard webhook = %d, want 0", got)
	}
}
