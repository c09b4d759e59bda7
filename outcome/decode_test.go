package outcome

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeExact checks that Decode's fast path changes nothing: whenever
// decodeExact accepts a body, encoding/json's path accepts it too, with the
// same Event. (It may decline what that path accepts, which then decides.)
func FuzzDecodeExact(f *testing.F) {
	at := time.Date(2026, 11, 30, 7, 12, 0, 123456789, time.UTC)
	for _, ev := range []*Event{
		{SessionID: "3f2a9c1e-0000-4000-8000-000000000001", Source: "default", Outcome: "passed", Time: at, Data: json.RawMessage(`{"verificationResult":"passed","age":31}`)},
		{ID: "3f2a9c1e-0000-4000-8000-000000000001:replay:7", SessionID: "3f2a9c1e-0000-4000-8000-000000000001", Source: "eu", Outcome: "failed", Time: at, Reconciled: true, Data: json.RawMessage(`{"verificationResult":"failed"}`)},
		{SessionID: "s", Source: "a<b", Outcome: "unknown", Time: at, Data: json.RawMessage(`[1, 2]`)},
	} {
		b, err := Marshal(ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, body := range []string{
		`{"specversion":"1.0","id":"x","type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/d","subject":"x","time":"2026-11-30T07:12:00Z","datacontenttype":"application/json","verifeyesource":"","verifeyeoutcome":"","data":{"verificationResult":"passed"}}`,
		`{"specversion":"1.0","id":"x","type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/d","subject":"x","time":"2026-11-30T07:12:00Z","datacontenttype":"application/json","verifeyesource":"d","verifeyeoutcome":"passed","data":null}`,
		`{"specversion":"1.0","id":"x","type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/d","subject":"x","time":"2026-11-30T07:12:00Z","datacontenttype":"application/json","verifeyesource":"d","verifeyeoutcome":"passed","data":{}} `,
		`{"specversion":"1.0","id":"x","type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/d","subject":"x","time":"2026-11-30T07:12:00Z","datacontenttype":"application/json","verifeyesource":"d","verifeyeoutcome":"passed","data":1}}`,
		`{"specversion":"1.0","id":"","type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/d","subject":"x","time":"2026-11-30T07:12:00Z","datacontenttype":"application/json","verifeyesource":"d","verifeyeoutcome":"passed","data":{}}`,
		`{"specversion":"2.0","id":"x","type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/d","subject":"x","time":"2026-11-30T07:12:00Z","datacontenttype":"application/json","verifeyesource":"d","verifeyeoutcome":"passed","data":{}}`,
	} {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := decodeExact(body)
		if !ok {
			return
		}
		full, err := decodeJSON(body)
		if err != nil || !reflect.DeepEqual(fast, full) {
			t.Fatalf("decodeExact(%q) = %+v, but decodeJSON says %+v, %v", body, fast, full, err)
		}
	})
}

// TestDecodeTakesTheFastPath checks that what Marshal makes goes through
// decodeExact, and that Decode does not keep the caller's buffer.
func TestDecodeTakesTheFastPath(t *testing.T) {
	ev := &Event{SessionID: "3f2a9c1e-0000-4000-8000-000000000001", Source: "default", Outcome: "passed", Time: time.Now().UTC(), Reconciled: true, Data: json.RawMessage(`{"verificationResult":"passed"}`)}
	b, err := Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := decodeExact(b); !ok {
		t.Fatalf("decodeExact declined Marshal's bytes %s", b)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	clear(b)
	if got.SessionID != ev.SessionID || !got.Reconciled || string(got.Data) != string(ev.Data) || got.ID != ev.SessionID {
		t.Errorf("Decode = %+v after the buffer was cleared; want %+v", got, ev)
	}
}
