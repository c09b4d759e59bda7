package enricher

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// maxDeliveriesAdvisory is the JetStream advisory sent when a message of the
// consumer reached MaxDeliver without being acknowledged.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries int    `json:"deliveries"`
}

// runDeadLetterer copies every webhook that exhausted its deliveries without a
// decision (a crash loop) to the DLQ, from the max-deliveries advisory. Every
// replica does it; the DLQ message ID makes the copies one.
func (e *Enricher) runDeadLetterer(ctx context.Context) {
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + streams.Webhooks + "." + e.opts.Consumer
	ch := make(chan *nats.Msg, 64)
	sub, err := e.js.Conn().ChanSubscribe(subject, ch)
	if err != nil {
		e.log.Error().Err(err).Msg("cannot subscribe to max-deliveries advisories")
		return
	}
	defer sub.Unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-ch:
			var adv maxDeliveriesAdvisory
			if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq == 0 {
				continue
			}
			c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			e.deadLetterSeq(c, adv)
			cancel()
		}
	}
}

func (e *Enricher) deadLetterSeq(ctx context.Context, adv maxDeliveriesAdvisory) {
	st, err := e.js.Stream(ctx, streams.Webhooks)
	if err != nil {
		e.log.Error().Err(err).Uint64("seq", adv.StreamSeq).Msg("max deliveries: cannot read the webhooks stream")
		return
	}
	raw, err := st.GetMsg(ctx, adv.StreamSeq)
	if err != nil {
		e.log.Error().Err(err).Uint64("seq", adv.StreamSeq).Msg("max deliveries: cannot get the message")
		return
	}
	_, source, event, _ := e.opts.Subjects.Parse(raw.Subject)
	dl := streams.DeadLetter{Source: source, Event: event, Reason: ReasonMaxDeliveries,
		Detail: "delivered the maximum number of times without a decision", Attempts: adv.Deliveries,
		OrigSubject: raw.Subject, OrigSeq: raw.Sequence, Header: raw.Header, Data: raw.Data}
	if _, err := e.pub.PublishMsg(ctx, dl.Msg(e.opts.Subjects), jetstream.WithExpectStream(streams.DLQ)); err != nil {
		e.log.Error().Err(err).Uint64("seq", adv.StreamSeq).Msg("max deliveries: cannot publish to the DLQ")
		return
	}
	if wh, err := streams.ParseWebhook(raw.Data); err == nil && streams.ValidSessionID(wh.SessionID) {
		e.deadLettered(ctx, wh.SessionID, source, ReasonMaxDeliveries, adv.Deliveries, 0)
	}
	e.m.enrichments.WithLabelValues("dead_lettered", ReasonMaxDeliveries).Inc()
	e.log.Error().Uint64("seq", raw.Sequence).Str("source", source).Str("decision", "dead_letter").
		Str("reason", ReasonMaxDeliveries).Int("attempt", adv.Deliveries).Msg("webhook dead-lettered")
}
