package enricher_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/realeyes/verifeye-bridge/enricher"
)

func TestMarshalEvent(t *testing.T) {
	// Whitespace, key order, a non-ASCII string and a big number: json.Marshal
	// of a RawMessage would compact all of it, and a map would reorder it.
	data := []byte("{ \"verificationResult\" : \"passed\",\n  \"zeta\": [1, 2,\t3],\n  \"alpha\": \"n\u00e4me\", \"n\": 12345678901234567890 }")
	cet := time.FixedZone("CET", 3600)
	o := enricher.Outcome{
		SessionID:  "3f2a9c1e-0000-4000-8000-000000000001",
		Source:     "kyc-eu",
		Outcome:    "passed",
		ReceivedAt: time.Date(2026, 3, 1, 13, 4, 5, 123456789, cet),
		Data:       data,
	}
	got, err := enricher.MarshalEvent(o)
	if err != nil {
		t.Fatalf("MarshalEvent() error = %v", err)
	}
	want := `{"specversion":"1.0","id":"3f2a9c1e-0000-4000-8000-000000000001",` +
		`"type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/kyc-eu",` +
		`"subject":"3f2a9c1e-0000-4000-8000-000000000001","time":"2026-03-01T12:04:05.123456789Z",` +
		`"datacontenttype":"application/json","verifeyesource":"kyc-eu","verifeyeoutcome":"passed",` +
		`"data":` + string(data) + `}`
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("MarshalEvent() mismatch (-want +got):\n%s", diff)
	}
	if !json.Valid(got) {
		t.Errorf("MarshalEvent() = %s, not valid JSON", got)
	}

	// A consumer decoding the event with a RawMessage gets the API's bytes back.
	var ev struct {
		SpecVersion     string          `json:"specversion"`
		ID              string          `json:"id"`
		Type            string          `json:"type"`
		Source          string          `json:"source"`
		Subject         string          `json:"subject"`
		Time            time.Time       `json:"time"`
		DataContentType string          `json:"datacontenttype"`
		Data            json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(got, &ev); err != nil {
		t.Fatalf("decode event: %v", err)
	}
	if !bytes.Equal(ev.Data, data) {
		t.Errorf("event data = %q, want %q byte for byte", ev.Data, data)
	}
	if !ev.Time.Equal(o.ReceivedAt) {
		t.Errorf("event time = %v, want %v", ev.Time, o.ReceivedAt)
	}
}

func TestMarshalEventExplicitID(t *testing.T) {
	got, err := enricher.MarshalEvent(enricher.Outcome{ID: "custom", SessionID: "s", Source: "default", Outcome: "failed", Data: []byte(`{}`)})
	if err != nil {
		t.Fatalf("MarshalEvent() error = %v", err)
	}
	var ev struct{ ID, Subject string }
	if err := json.Unmarshal(got, &ev); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if ev.ID != "custom" || ev.Subject != "s" {
		t.Errorf("MarshalEvent(ID custom) id, subject = %q, %q; want custom, s", ev.ID, ev.Subject)
	}
}

func TestMarshalEventInvalidData(t *testing.T) {
	for _, data := range []string{"", "<html>oops</html>", `{"a":`, `{} {}`} {
		if got, err := enricher.MarshalEvent(enricher.Outcome{SessionID: "s", Source: "default", Data: []byte(data)}); err == nil {
			t.Errorf("MarshalEvent(data %q) = %s, want an error", data, got)
		}
	}
}
