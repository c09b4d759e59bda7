package enricher_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestEnricherSyncsBeforeAck: with Options.Sync (the embedded server leaving
// syncing to its callers), a webhook is acked only after a Sync made once its
// outcome was stored; when Sync fails the webhook is left unanswered, comes
// back after the ack wait, and ends with one outcome, acked after a Sync that
// succeeded.
func TestEnricherSyncsBeforeAck(t *testing.T) {
	r := newRig(t)
	session := sid(41, 1, "")
	_, seq := r.publishWebhook("default", streams.EventCompleted, session)

	var calls atomic.Int64
	var mu sync.Mutex
	var seen []string // what each Sync found: the outcome stored, the webhook unacked
	opts := options()
	opts.Sync = func() error {
		n := calls.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		state := "?"
		if st, err := r.js.Stream(ctx, streams.Results); err == nil {
			if c, err := r.js.Consumer(ctx, streams.Webhooks, "enricher"); err == nil {
				if info, err := c.Info(ctx); err == nil {
					state = fmt.Sprintf("outcomes=%d acked=%v", st.CachedInfo().State.Msgs, info.AckFloor.Stream >= seq)
				}
			}
		}
		mu.Lock()
		seen = append(seen, state)
		mu.Unlock()
		if n == 1 {
			return errors.New("test: the disk failed")
		}
		return nil
	}
	r.startReady(enricher.New(r.js, r.client(time.Second), r.log, opts))

	natstest.WaitFor(t, 15*time.Second, func() error {
		if info := r.consumerInfo("enricher"); info.AckFloor.Stream < seq {
			return fmt.Errorf("webhook %d not acked yet (ack floor %d)", seq, info.AckFloor.Stream)
		}
		return nil
	})
	if c := calls.Load(); c < 2 {
		t.Errorf("Sync called %d times; want the failed one and another before the ack", c)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, s := range seen {
		if s != "outcomes=1 acked=false" {
			t.Errorf("Sync %d found %s; want the outcome stored and the webhook not yet acked", i+1, s)
		}
	}
	if info := r.consumerInfo("enricher"); info.NumRedelivered == 0 && info.Delivered.Consumer < 2 {
		t.Errorf("the webhook was delivered once; want it back after the failed sync")
	}
	if n := natstest.Count(t, r.js, streams.Results); n != 1 {
		t.Errorf("results hold %d outcomes, want 1", n)
	}
}
