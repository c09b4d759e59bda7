package bridge_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// series counts the series of the metric name that reg gathers.
func series(t testing.TB, reg prometheus.Gatherer, name string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}

// TestMetricSeriesBounded: requests refused before authentication, to as many
// sources as a stranger cares to invent, add no series; the event label of an
// authenticated request is its name when known and "other" otherwise.
func TestMetricSeriesBounded(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey)})
	const name = "verifeye_bridge_webhooks_total"
	good := webhookBody(streams.EventCompleted, goodID)
	// One of each refusal first, so that the fixed series exist.
	r.do(t, request{path: "/webhooks/verifeye/warm-up", body: good, header: map[string]string{"X-API-Key": "wrong"}})
	r.do(t, request{path: "/webhooks/verifeye/Warm.Up", body: good})
	before := series(t, r.reg, name)
	for i := range 200 {
		a := r.do(t, request{path: fmt.Sprintf("/webhooks/verifeye/s%d", i), body: good, header: map[string]string{"X-API-Key": "wrong"}})
		checkError(t, "unauthenticated", a, http.StatusUnauthorized, "unauthorized")
		a = r.do(t, request{path: fmt.Sprintf("/webhooks/verifeye/S%d", i), body: good, header: map[string]string{"X-API-Key": "wrong"}})
		checkError(t, "invalid source", a, http.StatusBadRequest, "invalid_source")
	}
	if after := series(t, r.reg, name); after != before {
		t.Errorf("%s: %d series after 400 refused requests to 400 sources, want %d as before", name, after, before)
	}
	for i := range 20 {
		body := webhookBody(fmt.Sprintf("Event%d", i), newSessionID(t))
		if a := r.do(t, request{path: "/webhooks/verifeye", body: body}); a.status != http.StatusAccepted {
			t.Fatalf("POST event %d: status %d %s, want 202", i, a.status, a.body)
		}
	}
	a := r.do(t, request{method: http.MethodGet, path: "/metrics"})
	for _, want := range []string{
		`verifeye_bridge_webhooks_total{event="other",result="accepted",source="default"} 20`,
		`verifeye_bridge_webhooks_total{event="",result="unauthorized",source=""} 201`,
		`verifeye_bridge_webhooks_total{event="",result="invalid_source",source=""} 201`,
	} {
		if !bytes.Contains(a.body, []byte(want)) {
			t.Errorf("GET /metrics lacks %s; got:\n%s", want, a.body)
		}
	}
}

// webhookLines returns the "webhook" log lines of the test named name.
func webhookLines(t *testing.T, name string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range bytes.Split(logs.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) != nil || m["test"] != name || m["message"] != "webhook" {
			continue
		}
		out = append(out, m)
	}
	return out
}

// TestRemoteAddress: the remote address logged is the peer's, whatever
// X-Forwarded-For or X-Real-IP say, unless the peer is a trusted proxy.
func TestRemoteAddress(t *testing.T) {
	_, loopback, _ := net.ParseCIDR("127.0.0.0/8")
	for _, tc := range []struct {
		name    string
		trusted []*net.IPNet
		header  map[string]string
		want    string
	}{
		{"untrusted XFF", nil, map[string]string{"X-Forwarded-For": "203.0.113.66 totally-not-me"}, "127.0.0.1"},
		{"untrusted XFF list", nil, map[string]string{"X-Forwarded-For": "203.0.113.66, 198.51.100.7"}, "127.0.0.1"},
		{"untrusted X-Real-IP", nil, map[string]string{"X-Real-IP": "203.0.113.66"}, "127.0.0.1"},
		{"trusted XFF", []*net.IPNet{loopback}, map[string]string{"X-Forwarded-For": "203.0.113.66"}, "203.0.113.66"},
		{"trusted X-Real-IP", []*net.IPNet{loopback}, map[string]string{"X-Real-IP": "203.0.113.66"}, "203.0.113.66"},
		{"trusted, no header", []*net.IPNet{loopback}, nil, "127.0.0.1"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey), trustedProxies: tc.trusted})
			if a := r.do(t, request{path: "/webhooks/verifeye", body: webhookBody(streams.EventCompleted, newSessionID(t)), header: tc.header}); a.status != http.StatusAccepted {
				t.Fatalf("POST: status %d %s, want 202", a.status, a.body)
			}
			lines := webhookLines(t, t.Name())
			if len(lines) != 1 || lines[0]["remote"] != tc.want {
				t.Errorf("webhook log lines %v, want one with remote %q", lines, tc.want)
			}
		})
	}
}

// TestLargeTracestate: a webhook of the largest size with an 8 KB tracestate
// is stored, carrying at most bridge.MaxTracestateBytes of whole members of
// the tracestate.
func TestLargeTracestate(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey)})
	id := newSessionID(t)
	head := `{"event":"VerificationCompleted","verificationSessionId":"` + id + `","pad":"`
	body := []byte(head + strings.Repeat("x", streams.MaxWebhookBytes-len(head)-2) + `"}`)
	var members []string
	for i := range 32 {
		members = append(members, fmt.Sprintf("k%02d=%s", i, strings.Repeat(string(rune('a'+i%26)), 250)))
	}
	ts := strings.Join(members, ",")
	if len(body) != streams.MaxWebhookBytes || len(ts) < 8000 {
		t.Fatalf("body %d bytes, tracestate %d: want %d and 8 KB", len(body), len(ts), streams.MaxWebhookBytes)
	}
	a := r.do(t, request{path: "/webhooks/verifeye", body: body, header: map[string]string{
		"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"tracestate":  ts,
	}})
	if a.status != http.StatusAccepted {
		t.Fatalf("POST 64 KiB with an 8 KB tracestate: status %d %s, want 202", a.status, a.body)
	}
	msgs := natstest.Messages(t, r.js, streams.Webhooks)
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data(), body) {
		t.Fatalf("stream holds %d messages, want the webhook byte for byte", len(msgs))
	}
	got := msgs[0].Headers().Get(streams.HeaderTracestate)
	if len(got) > bridge.MaxTracestateBytes || got == "" || !strings.HasPrefix(ts, got) || !strings.HasPrefix(ts[len(got):], ",") {
		t.Errorf("stored tracestate %d bytes %.40q…, want the first whole members of the request's, at most %d bytes", len(got), got, bridge.MaxTracestateBytes)
	}
}
