package outcome_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/realeyes/verifeye-bridge/outcome"
)

func TestMarshalDecodeRoundTrip(t *testing.T) {
	data := []byte("{ \"verificationResult\" : \"passed\",\n  \"zeta\": [1, 2,\t3], \"n\": 12345678901234567890 }")
	for _, reconciled := range []bool{false, true} {
		in := &outcome.Event{
			SessionID:  "3f2a9c1e-0000-4000-8000-000000000001",
			Source:     "kyc-eu",
			Outcome:    "passed",
			Time:       time.Date(2026, 3, 1, 13, 4, 5, 123456789, time.FixedZone("CET", 3600)),
			Reconciled: reconciled,
			Data:       data,
		}
		b, err := outcome.Marshal(in)
		if err != nil {
			t.Fatalf("Marshal() error = %v", err)
		}
		if got := bytes.Contains(b, []byte(`"verifeyereconciled":true`)); got != reconciled {
			t.Errorf("Marshal(Reconciled %v) = %s: verifeyereconciled present %v", reconciled, b, got)
		}
		got, err := outcome.Decode(b)
		if err != nil {
			t.Fatalf("Decode(Marshal()) error = %v", err)
		}
		want := *in
		want.ID = in.SessionID
		if !got.Time.Equal(in.Time) {
			t.Errorf("Decode() time = %v, want %v", got.Time, in.Time)
		}
		got.Time, want.Time = time.Time{}, time.Time{}
		if diff := cmp.Diff(&want, got); diff != "" {
			t.Errorf("Decode(Marshal()) mismatch (-want +got):\n%s", diff)
		}
		if !bytes.Equal(got.Data, data) {
			t.Errorf("Decode() data = %q, want %q byte for byte", got.Data, data)
		}
	}
}

func TestMarshalTrimsSurroundingWhitespace(t *testing.T) {
	b, err := outcome.Marshal(&outcome.Event{SessionID: "s", Source: "default", Outcome: "passed", Data: []byte("\n {\"a\": 1}\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := outcome.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if string(ev.Data) != `{"a": 1}` {
		t.Errorf("Decode(Marshal(data with a trailing newline)).Data = %q, want %q", ev.Data, `{"a": 1}`)
	}
}

func TestDecodeTolerant(t *testing.T) {
	// Unknown attributes, a future minor specversion, no extension attributes
	// (source and outcome come from source and data), data of another shape.
	b := []byte(`{"specversion":"1.1","id":"x:replay:7","type":"ai.realeyes.verifeye.verification.completed",
		"source":"verifeye-bridge/shop","subject":"3f2a9c1e-0000-4000-8000-000000000001","time":"2026-03-01T12:04:05Z",
		"somethingnew":{"a":[1]},"verifeyereconciled":"true",
		"data":{"VerificationResult":"Failed","nested":{"livenessResult":"passed"},"age":"42","gender":null,"faceId":7}}`)
	ev, err := outcome.Decode(b)
	if err != nil {
		t.Fatalf("Decode() error = %v", err)
	}
	if ev.ID != "x:replay:7" || ev.Source != "shop" || ev.Outcome != "failed" || !ev.Reconciled {
		t.Errorf("Decode() = id %q source %q outcome %q reconciled %v; want x:replay:7, shop, failed, true", ev.ID, ev.Source, ev.Outcome, ev.Reconciled)
	}
	type strGot struct {
		V  string
		OK bool
	}
	for name, f := range map[string]func() (string, bool){
		"Result": ev.Result, "Liveness": ev.Liveness, "Gender": ev.Gender, "FaceID": ev.FaceID,
		"FaceRecognition": ev.FaceRecognition, "AgeVerification": ev.AgeVerification, "GenderVerification": ev.GenderVerification,
	} {
		v, ok := f()
		want := strGot{}
		if name == "Result" {
			want = strGot{"Failed", true} // key matched case-insensitively, value as given
		}
		if got := (strGot{v, ok}); got != want {
			t.Errorf("%s() = %+v, want %+v", name, got, want)
		}
	}
	if age, ok := ev.Age(); !ok || age != 42 {
		t.Errorf("Age() = %v, %v; want 42, true (a string holding a number)", age, ok)
	}
	if raw, ok := ev.Field("nested"); !ok || !strings.Contains(string(raw), "livenessResult") {
		t.Errorf("Field(nested) = %s, %v", raw, ok)
	}
}

func TestAccessorsReportAbsence(t *testing.T) {
	for _, data := range []string{`{}`, `[]`, `"text"`, `{"age":null,"livenessResult":false,"faceId":{}}`, `{"age":"old"}`} {
		ev := &outcome.Event{Data: []byte(data)}
		if v, ok := ev.Liveness(); ok {
			t.Errorf("data %s: Liveness() = %q, true; want absent", data, v)
		}
		if v, ok := ev.FaceID(); ok {
			t.Errorf("data %s: FaceID() = %q, true; want absent", data, v)
		}
		if v, ok := ev.Age(); ok {
			t.Errorf("data %s: Age() = %v, true; want absent", data, v)
		}
	}
	ev := &outcome.Event{Data: []byte(`{"age":0,"livenessResult":"not_executed"}`)}
	if v, ok := ev.Age(); !ok || v != 0 {
		t.Errorf("Age() of a real 0 = %v, %v; want 0, true", v, ok)
	}
	if v, ok := ev.Liveness(); !ok || v != outcome.ResultNotExecuted {
		t.Errorf("Liveness() = %q, %v; want not_executed, true", v, ok)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := `"id":"i","type":"ai.realeyes.verifeye.verification.completed","source":"verifeye-bridge/default","subject":"s","time":"2026-03-01T12:04:05Z"`
	for _, b := range []string{
		``, `<html>`, `[]`, `{"specversion":"1.0",` + good + `}`, // no data
		`{"specversion":"1.0",` + good + `,"data":null}`,
		`{"specversion":"0.3",` + good + `,"data":{}}`,
		`{"specversion":"1.0",` + strings.Replace(good, "completed", "started", 1) + `,"data":{}}`,
		`{"specversion":"1.0",` + strings.Replace(good, `"subject":"s"`, `"subject":""`, 1) + `,"data":{}}`,
		`{"specversion":"1.0",` + strings.Replace(good, "2026-03-01T12:04:05Z", "yesterday", 1) + `,"data":{}}`,
	} {
		if ev, err := outcome.Decode([]byte(b)); !errors.Is(err, outcome.ErrUndecodable) {
			t.Errorf("Decode(%s) = %+v, %v; want ErrUndecodable", b, ev, err)
		}
	}
}

func TestMarshalInvalidData(t *testing.T) {
	for _, data := range []string{"", "<html>oops</html>", `{"a":`, `{} {}`} {
		if got, err := outcome.Marshal(&outcome.Event{SessionID: "s", Data: []byte(data)}); err == nil {
			t.Errorf("Marshal(data %q) = %s, want an error", data, got)
		}
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("bad")
	if outcome.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	p := outcome.Permanent(base)
	if !errors.Is(p, base) || !outcome.IsPermanent(p) || outcome.IsPermanent(base) {
		t.Errorf("Permanent(%v): Is %v, IsPermanent %v / %v", base, errors.Is(p, base), outcome.IsPermanent(p), outcome.IsPermanent(base))
	}
}

func TestValidators(t *testing.T) {
	for _, tt := range []struct {
		id   string
		want bool
	}{
		{"3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4", true},
		{"3F2A9C1E-5B7D-4E21-9C3A-0000B1C2D3E4", true},
		{"{3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4}", false},
		{"urn:uuid:3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4", false},
		{"3f2a9c1e5b7d4e219c3a0000b1c2d3e4", false},
		{"3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3eg", false},
		{"3f2a9c1e-5b7d-4e21-9c3a_0000b1c2d3e4", false},
	} {
		if got := outcome.ValidSessionID(tt.id); got != tt.want {
			t.Errorf("ValidSessionID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
	for _, tt := range []struct {
		s    string
		want bool
	}{{"default", true}, {"kyc_eu-2", true}, {"", false}, {"Kyc", false}, {"a.b", false}, {"*", false}, {strings.Repeat("a", 64), true}, {strings.Repeat("a", 65), false}} {
		if got := outcome.ValidSource(tt.s); got != tt.want {
			t.Errorf("ValidSource(%q) = %v, want %v", tt.s, got, tt.want)
		}
	}
	for in, want := range map[string]string{"passed": "passed", " Failed ": "failed", "": "unknown", "not ok": "unknown", "1x": "unknown", "not_executed": "not_executed"} {
		if got := outcome.Outcome(in); got != want {
			t.Errorf("Outcome(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSubjects(t *testing.T) {
	for got, want := range map[string]string{
		outcome.WebhookSubject("verifeye", "default", "VerificationCompleted"): "verifeye.webhook.default.VerificationCompleted",
		outcome.ResultSubject("verifeye", "shop", "passed"):                    "verifeye.result.shop.passed",
		outcome.ResultSubject("v", "", "failed"):                               "v.result.*.failed",
		outcome.ResultSubject("v", "shop", ""):                                 "v.result.shop.*",
		outcome.DLQSubject("verifeye", "default", "VerificationCompleted"):     "verifeye.dlq.default.VerificationCompleted",
		outcome.ExpectSubject("verifeye", "kyc"):                               "verifeye.expect.kyc",
		outcome.ExpectAll("x"):                                                 "x.expect.>",
		outcome.SessionKey("3F2A9C1E-5B7D-4E21-9C3A-0000B1C2D3E4"):             "3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4",
	} {
		if got != want {
			t.Errorf("got subject %q, want %q", got, want)
		}
	}
}

func TestExponentialBackoff(t *testing.T) {
	f := outcome.ExponentialBackoff(time.Second, 10*time.Second)
	for attempt, base := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 50: 10 * time.Second} {
		for range 100 {
			if d := f(attempt); d < base-base/5 || d > base+base/5 {
				t.Fatalf("ExponentialBackoff(1s, 10s)(%d) = %v, want %v ± 20%%", attempt, d, base)
			}
		}
	}
}
