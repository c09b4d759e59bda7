package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

const enrichTestKey = "sk-test-serve-enrich-4242"

// enrichServe runs serve in-process against ns and the fake API with tiny
// enricher settings, and returns the ingest's base URL. serve is stopped, and
// must return nil, when the test ends.
func enrichServe(t *testing.T, ns *natstest.Server, api *verifeyetest.Server) string {
	t.Helper()
	for k, v := range map[string]string{
		"NATS_URL":                  ns.URL(),
		"NATS_EMBEDDED_ADDR":        "-",
		"DATA_DIR":                  t.TempDir(),
		"VERIFEYE_API_KEY":          enrichTestKey,
		"WEBHOOK_AUTH":              "api-key",
		"VERIFEYE_RATE_LIMIT":       "0",
		"ENRICH_ACK_WAIT":           "2s",
		"ENRICH_BACKOFF_BASE":       "20ms",
		"ENRICH_BACKOFF_MAX":        "200ms",
		"ENRICH_NOT_FOUND_DELAY":    "50ms",
		"ENRICH_NOT_FOUND_ATTEMPTS": "3",
		"ENRICH_AUTH_RETRY":         "100ms",
		"SHUTDOWN_GRACE":            "10s",
		"OTEL_SDK_DISABLED":         "true",
	} {
		t.Setenv(k, v)
	}
	client, err := verifeye.New(api.URL, enrichTestKey, verifeye.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("verifeye.New() error = %v", err)
	}
	cfg := serviceConfig{name: "serve", embedded: &embeddedConfig{}, ingest: &ingestConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}}
	return startServe(t, cfg, serviceDeps{client: client}, true, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
}

// enrichPost posts a webhook as VerifEye does and checks the 202.
func enrichPost(t *testing.T, base, source, session string, wantDuplicate bool) {
	t.Helper()
	url := base + "/webhooks/verifeye"
	if source != streams.DefaultSource {
		url += "/" + source
	}
	body := fmt.Sprintf(`{"event":"VerificationCompleted","verificationSessionId":%q}`, session)
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", enrichTestKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	var got struct {
		Status    string `json:"status"`
		SessionID string `json:"verificationSessionId"`
		Duplicate bool   `json:"duplicate"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatalf("POST %s %s: decode answer: %v", url, session, err)
	}
	if resp.StatusCode != http.StatusAccepted || got.Status != "accepted" || got.SessionID != session || got.Duplicate != wantDuplicate {
		t.Fatalf("POST %s %s = %d %+v, want 202 accepted with duplicate %v", url, session, resp.StatusCode, got, wantDuplicate)
	}
}

// TestServeEnrichesEachSessionOnce drives the whole service in-process over
// real HTTP and NATS: 200 sessions, some posted twice as VerifEye's retry
// would, each end as exactly one CloudEvent carrying the API's bytes.
func TestServeEnrichesEachSessionOnce(t *testing.T) {
	ns := natstest.Start(t)
	api := verifeyetest.Start(enrichTestKey)
	t.Cleanup(api.Close)
	base := enrichServe(t, ns, api)

	const n = 200
	sessions := make(map[string]string, n) // session ID → source
	for i := range n {
		id := uuid.NewString()
		if i%10 == 0 {
			id = id[:24] + "fa11ed" + id[30:] // a failed outcome, by the fake's magic suffix
		}
		source := []string{streams.DefaultSource, "kyc-eu", "age_check"}[i%3]
		sessions[id] = source
		enrichPost(t, base, source, id, false)
		if i%20 == 0 {
			enrichPost(t, base, source, id, true) // VerifEye's retry
		}
	}

	js := ns.JetStream()
	natstest.WaitFor(t, 60*time.Second, func() error {
		if got := natstest.Count(t, js, streams.Results); got != n {
			return fmt.Errorf("%s holds %d messages, want %d", streams.Results, got, n)
		}
		return nil
	})
	// Everything consumed and acknowledged: nothing more can arrive.
	natstest.WaitFor(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, streams.Webhooks, "enricher")
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("enricher consumer: %d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		return nil
	})

	receivedAt := make(map[string]time.Time, n)
	for _, m := range natstest.Messages(t, js, streams.Webhooks) {
		var wh struct {
			SessionID string `json:"verificationSessionId"`
		}
		if err := json.Unmarshal(m.Data(), &wh); err != nil {
			t.Fatalf("webhook %s: %v", m.Data(), err)
		}
		at, err := time.Parse(time.RFC3339Nano, m.Headers().Get(streams.HeaderReceivedAt))
		if err != nil {
			t.Fatalf("webhook %s: %s: %v", wh.SessionID, streams.HeaderReceivedAt, err)
		}
		receivedAt[wh.SessionID] = at
	}

	results := natstest.Messages(t, js, streams.Results)
	if len(results) != n {
		t.Fatalf("%s holds %d messages, want %d", streams.Results, len(results), n)
	}
	seen := make(map[string]bool, n)
	for _, m := range results {
		id := m.Headers().Get(streams.HeaderMsgID)
		source, ok := sessions[id]
		if !ok {
			t.Errorf("result with unexpected Nats-Msg-Id %q", id)
			continue
		}
		if seen[id] {
			t.Errorf("session %s has two results", id)
		}
		seen[id] = true
		enrichCheckResult(t, m, source, id, receivedAt[id])
	}
	if got := api.TotalCalls(); got != n {
		t.Errorf("API calls = %d, want %d (one per session, duplicates included)", got, n)
	}
	if got := natstest.Count(t, js, streams.DLQ); got != 0 {
		t.Errorf("%s holds %d messages, want 0", streams.DLQ, got)
	}
}

// enrichCheckResult checks one outcome against the NATS contract of DESIGN.md.
func enrichCheckResult(t *testing.T, m jetstream.Msg, source, session string, receivedAt time.Time) {
	t.Helper()
	if got, want := m.Subject(), "verifeye.result."+source+"."+verifeyetest.OutcomeFor(session); got != want {
		t.Errorf("result %s: subject = %q, want %q", session, got, want)
	}
	if got := m.Headers().Get("Content-Type"); got != "application/cloudevents+json" {
		t.Errorf("result %s: Content-Type = %q, want application/cloudevents+json", session, got)
	}
	var ev struct {
		SpecVersion     *string         `json:"specversion"`
		ID              *string         `json:"id"`
		Type            *string         `json:"type"`
		Source          *string         `json:"source"`
		Subject         *string         `json:"subject"`
		Time            *string         `json:"time"`
		DataContentType *string         `json:"datacontenttype"`
		Data            json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(m.Data(), &ev); err != nil {
		t.Fatalf("result %s: not a JSON CloudEvent: %v: %s", session, err, m.Data())
	}
	str := func(p *string) string {
		if p == nil {
			return "<missing>"
		}
		return *p
	}
	got := []string{str(ev.SpecVersion), str(ev.ID), str(ev.Type), str(ev.Source), str(ev.Subject), str(ev.DataContentType)}
	want := []string{"1.0", session, "ai.realeyes.verifeye.verification.completed", enricher.EventSource(source), session, "application/json"}
	for i, name := range []string{"specversion", "id", "type", "source", "subject", "datacontenttype"} {
		if got[i] != want[i] {
			t.Errorf("result %s: CloudEvent %s = %q, want %q", session, name, got[i], want[i])
		}
	}
	if at, err := time.Parse(time.RFC3339Nano, str(ev.Time)); err != nil || !at.Equal(receivedAt) {
		t.Errorf("result %s: CloudEvent time = %q, want the webhook's receipt time %s", session, str(ev.Time), receivedAt.Format(time.RFC3339Nano))
	}
	if want := verifeyetest.BodyFor(session); !bytes.Equal(ev.Data, want) {
		t.Errorf("result %s: data = %s, want the API's body %s byte for byte", session, ev.Data, want)
	}
}
