package bridge_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

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

// TestStorageRefusalReported: when JetStream refuses to store webhooks (here a
// stream full by MaxBytes), the refusal is answered 503 as soon as the server
// says so, not after the publish timeout; /readyz turns 503 naming storage and
// verifeye_bridge_storage_refusing is 1, until the stream has room again.
func TestStorageRefusalReported(t *testing.T) {
	limits := streams.DefaultLimits()
	limits.WebhooksMaxBytes = 4 << 10
	// Longer than the client's timeout: a 503 that waited for it never arrives.
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey), limits: &limits, publishTimeout: time.Hour})
	if got := gaugeValue(t, r, "verifeye_bridge_storage_refusing"); got != 0 {
		t.Fatalf("verifeye_bridge_storage_refusing = %v before any refusal, want 0", got)
	}
	refused := false
	for i := 0; i < 200 && !refused; i++ {
		a := r.do(t, request{path: "/webhooks/verifeye", body: webhookBody(streams.EventCompleted, newSessionID(t))})
		switch a.status {
		case http.StatusAccepted:
		case http.StatusServiceUnavailable:
			refused = true
		default:
			t.Fatalf("webhook %d: status %d %s, want 202 or 503", i, a.status, a.body)
		}
	}
	if !refused {
		t.Fatal("the stream never refused a webhook")
	}
	status, checks := readyChecks(t, r)
	if status != http.StatusServiceUnavailable || !strings.Contains(checks["storage"], "stream full") || checks["nats"] != "ok" {
		t.Errorf("GET /readyz while the stream is full = %d %v, want 503 with storage naming the full stream and nats ok", status, checks)
	}
	if got := gaugeValue(t, r, "verifeye_bridge_storage_refusing"); got != 1 {
		t.Errorf("verifeye_bridge_storage_refusing = %v while the stream is full, want 1", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stream(t, r.js).Purge(ctx); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if status, checks := readyChecks(t, r); status != http.StatusOK || checks["storage"] != "ok" {
		t.Errorf("GET /readyz once the stream has room = %d %v, want 200 with storage ok", status, checks)
	}
	if got := gaugeValue(t, r, "verifeye_bridge_storage_refusing"); got != 0 {
		t.Errorf("verifeye_bridge_storage_refusing = %v once the stream has room, want 0", got)
	}
	if a := r.do(t, request{path: "/webhooks/verifeye", body: webhookBody(streams.EventCompleted, newSessionID(t))}); a.status != http.StatusAccepted {
		t.Errorf("webhook after the purge: status %d %s, want 202", a.status, a.body)
	}
}

func readyChecks(t *testing.T, r *rig) (int, map[string]string) {
	t.Helper()
	a := r.do(t, request{method: http.MethodGet, path: "/readyz"})
	var b struct {
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal(a.body, &b); err != nil {
		t.Fatalf("GET /readyz body %q: %v", a.body, err)
	}
	return a.status, b.Checks
}

func gaugeValue(t *testing.T, r *rig, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}
