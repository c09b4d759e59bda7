package bridge_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestWebhookStreamFull: a full webhooks stream refuses new events (discard
// new), so the ingest answers 503 and keeps every event it accepted before,
// instead of evicting unconsumed ones to make room.
func TestWebhookStreamFull(t *testing.T) {
	limits := streams.DefaultLimits()
	limits.WebhooksMaxBytes = 4 << 10 // a few dozen webhooks
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey), limits: &limits})

	var accepted []string
	refused := 0
	for i := 0; i < 200 && refused < 3; i++ {
		id := newSessionID(t)
		a := r.do(t, request{path: "/webhooks/verifeye", body: webhookBody(streams.EventCompleted, id)})
		switch a.status {
		case http.StatusAccepted:
			if refused > 0 {
				t.Fatalf("webhook %d accepted after the stream had refused one", i)
			}
			accepted = append(accepted, id)
		case http.StatusServiceUnavailable:
			var e struct{ Error, Message string }
			if err := json.Unmarshal(a.body, &e); err != nil || e.Error != "unavailable" || e.Message == "" {
				t.Errorf("webhook %d: 503 body %s, want {\"error\":\"unavailable\",\"message\":…}", i, a.body)
			}
			refused++
		default:
			t.Fatalf("webhook %d: status %d %s, want 202 or 503", i, a.status, a.body)
		}
	}
	if len(accepted) == 0 || refused == 0 {
		t.Fatalf("%d accepted, %d refused: want the stream to fill up and refuse", len(accepted), refused)
	}
	msgs := natstest.Messages(t, r.js, streams.Webhooks)
	if len(msgs) != len(accepted) {
		t.Fatalf("stream holds %d messages, want the %d accepted ones", len(msgs), len(accepted))
	}
	for i, m := range msgs {
		if got, want := m.Headers().Get(streams.HeaderMsgID), streams.WebhookMsgID(streams.EventCompleted, accepted[i]); got != want {
			t.Errorf("message %d: Nats-Msg-Id %q, want %q (the first accepted ones, none evicted)", i, got, want)
		}
	}
}
