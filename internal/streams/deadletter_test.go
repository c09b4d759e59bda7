package streams_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

const dlSession = "3f2a9c1e-0000-4000-8000-000000000001"

// validDeadLetter is the entry the enricher writes for a webhook it gave up on.
func validDeadLetter() streams.DeadLetter {
	h := nats.Header{}
	h.Set(streams.HeaderReceivedAt, "2026-11-26T10:00:00.123456789Z")
	h.Set(streams.HeaderTraceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.Set(streams.HeaderTracestate, "vendor=a,other=b")
	h.Set("X-Not-Carried", "x")
	return streams.DeadLetter{
		Source: "kyc", Event: streams.EventCompleted,
		Reason: "bad_request", Detail: "verifeye: HTTP 400", LastStatus: 400, Attempts: 1,
		OrigSubject: "verifeye.webhook.kyc.VerificationCompleted", OrigSeq: 42,
		Header: h,
		Data:   []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + dlSession + `"}`),
	}
}

func TestDeadLetterRoundTrip(t *testing.T) {
	s, _ := streams.NewSubjects("verifeye")
	in := validDeadLetter()
	m := in.Msg(s)
	if want := "verifeye.dlq.kyc.VerificationCompleted"; m.Subject != want {
		t.Errorf("Msg().Subject = %q, want %q", m.Subject, want)
	}
	for k, want := range map[string]string{
		streams.HeaderMsgID: "dlq:42", streams.HeaderError: "bad_request", streams.HeaderErrorDetail: "verifeye: HTTP 400",
		streams.HeaderLastStatus: "400", streams.HeaderAttempts: "1", streams.HeaderOrigSeq: "42",
		streams.HeaderOrigSubject: "verifeye.webhook.kyc.VerificationCompleted", "X-Not-Carried": "",
	} {
		if got := m.Header.Get(k); got != want {
			t.Errorf("Msg() header %s = %q, want %q", k, got, want)
		}
	}
	got, err := streams.DecodeDeadLetter(s, m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatalf("DecodeDeadLetter(Msg()) error = %v", err)
	}
	want := in
	want.SessionID = dlSession
	want.Header = nats.Header{}
	streams.CopyWebhookHeaders(want.Header, in.Header)
	if diff := cmp.Diff(&want, got); diff != "" {
		t.Errorf("DecodeDeadLetter(Msg()) (-want +got):\n%s", diff)
	}
}

func TestDeadLetterMsgSanitises(t *testing.T) {
	s, _ := streams.NewSubjects("verifeye")
	d := validDeadLetter()
	d.Source, d.Event = "*", "A.B"
	d.Detail = "line one\r\nline two\x1b[2J " + strings.Repeat("é", 400)
	m := d.Msg(s)
	if want := "verifeye.dlq.unknown.unknown"; m.Subject != want {
		t.Errorf("Msg() with invalid tokens: subject %q, want %q", m.Subject, want)
	}
	detail := m.Header.Get(streams.HeaderErrorDetail)
	if len(detail) > streams.MaxErrorDetail || strings.ContainsAny(detail, "\r\n\x1b") || !strings.HasPrefix(detail, "line one  line two [2J") {
		t.Errorf("Msg() detail = %q (%d bytes): want one line of at most %d bytes", detail, len(detail), streams.MaxErrorDetail)
	}
	if !strings.HasSuffix(detail, "é") {
		t.Errorf("Msg() detail cut inside a character: ends %q", detail[len(detail)-4:])
	}
}

// TestDecodeDeadLetterForged: every field of a DLQ entry read back is checked
// as strictly as the ingest checks a request; a forged entry is refused with an
// error naming the field.
func TestDecodeDeadLetterForged(t *testing.T) {
	s, _ := streams.NewSubjects("verifeye")
	tests := []struct {
		name  string
		edit  func(m *nats.Msg)
		field string // named in the error
	}{
		{"wildcard original subject", func(m *nats.Msg) {
			m.Header.Set(streams.HeaderOrigSubject, "verifeye.webhook.*.VerificationCompleted")
		}, streams.HeaderOrigSubject},
		{"original subject of another source", func(m *nats.Msg) {
			m.Header.Set(streams.HeaderOrigSubject, "verifeye.webhook.other.VerificationCompleted")
		}, streams.HeaderOrigSubject},
		{"original subject under another prefix", func(m *nats.Msg) {
			m.Header.Set(streams.HeaderOrigSubject, "acme.webhook.kyc.VerificationCompleted")
		}, streams.HeaderOrigSubject},
		{"no original subject", func(m *nats.Msg) { m.Header.Del(streams.HeaderOrigSubject) }, streams.HeaderOrigSubject},
		{"wildcard source in the subject", func(m *nats.Msg) {
			m.Subject = "verifeye.dlq.*.VerificationCompleted"
			m.Header.Set(streams.HeaderOrigSubject, "verifeye.webhook.*.VerificationCompleted")
		}, "subject"},
		{"result subject", func(m *nats.Msg) { m.Subject = "verifeye.result.kyc.passed" }, "subject"},
		{"replay marker not a sequence", func(m *nats.Msg) { m.Header.Set(streams.HeaderReplay, "zz") }, streams.HeaderReplay},
		{"replay marker with a sign", func(m *nats.Msg) { m.Header.Set(streams.HeaderReplay, "+7") }, streams.HeaderReplay},
		{"replay marker zero", func(m *nats.Msg) { m.Header.Set(streams.HeaderReplay, "0") }, streams.HeaderReplay},
		{"received-at not a time", func(m *nats.Msg) { m.Header.Set(streams.HeaderReceivedAt, "yesterday") }, streams.HeaderReceivedAt},
		{"traceparent malformed", func(m *nats.Msg) { m.Header.Set(streams.HeaderTraceparent, "00-xyz") }, streams.HeaderTraceparent},
		{"tracestate with an escape", func(m *nats.Msg) { m.Header.Set(streams.HeaderTracestate, "a=\x1b[2J") }, streams.HeaderTracestate},
		{"reason with an escape", func(m *nats.Msg) { m.Header.Set(streams.HeaderError, "not_found\x1b]0;pwned\x07") }, streams.HeaderError},
		{"no reason", func(m *nats.Msg) { m.Header.Del(streams.HeaderError) }, streams.HeaderError},
		{"status a word", func(m *nats.Msg) { m.Header.Set(streams.HeaderLastStatus, "ok") }, streams.HeaderLastStatus},
		{"status out of range", func(m *nats.Msg) { m.Header.Set(streams.HeaderLastStatus, "999") }, streams.HeaderLastStatus},
		{"attempts negative", func(m *nats.Msg) { m.Header.Set(streams.HeaderAttempts, "-1") }, streams.HeaderAttempts},
		{"attempts in exponent form", func(m *nats.Msg) { m.Header.Set(streams.HeaderAttempts, "1e3") }, streams.HeaderAttempts},
		{"original sequence zero", func(m *nats.Msg) { m.Header.Set(streams.HeaderOrigSeq, "0") }, streams.HeaderOrigSeq},
		{"original sequence with a leading zero", func(m *nats.Msg) { m.Header.Set(streams.HeaderOrigSeq, "042") }, streams.HeaderOrigSeq},
		{"original sequence missing", func(m *nats.Msg) { m.Header.Del(streams.HeaderOrigSeq) }, streams.HeaderOrigSeq},
		{"detail too long", func(m *nats.Msg) { m.Header.Set(streams.HeaderErrorDetail, strings.Repeat("x", 513)) }, streams.HeaderErrorDetail},
		{"body too large", func(m *nats.Msg) { m.Data = make([]byte, streams.MaxWebhookBytes+1) }, "body"},
	}
	for _, tt := range tests {
		d := validDeadLetter()
		m := d.Msg(s)
		tt.edit(m)
		got, err := streams.DecodeDeadLetter(s, m.Subject, m.Header, m.Data)
		if !errors.Is(err, streams.ErrInvalidDeadLetter) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("DecodeDeadLetter [%s] error = %v, want ErrInvalidDeadLetter naming %s", tt.name, err, tt.field)
		}
		if got == nil {
			t.Errorf("DecodeDeadLetter [%s] returned no partial entry for reporting", tt.name)
		}
	}
}

// TestDecodeDeadLetterBody: a body that is not a webhook of the entry's event
// leaves the entry valid but without a session ID (not redrivable).
func TestDecodeDeadLetterBody(t *testing.T) {
	s, _ := streams.NewSubjects("verifeye")
	for _, body := range []string{
		`not json`,
		`{"event":"VerificationCompleted"}`,
		`{"event":"Other","verificationSessionId":"` + dlSession + `"}`,
		`{"event":"VerificationCompleted","verificationSessionId":"*"}`,
	} {
		d := validDeadLetter()
		d.Data = []byte(body)
		m := d.Msg(s)
		got, err := streams.DecodeDeadLetter(s, m.Subject, m.Header, m.Data)
		if err != nil || got.SessionID != "" {
			t.Errorf("DecodeDeadLetter(body %s) = session %q, %v; want \"\", nil", body, got.SessionID, err)
		}
	}
}

func TestReplayOutcomeID(t *testing.T) {
	for _, tt := range []struct{ replay, want string }{
		{"", dlSession},
		{"7", dlSession + ":replay:7"},
		{"18446744073709551615", dlSession + ":replay:18446744073709551615"},
		{"18446744073709551616", dlSession},
		{"zz", dlSession},
		{"0", dlSession},
		{"07", dlSession},
		{"-1", dlSession},
		{"7 ", dlSession},
	} {
		if got := streams.ReplayOutcomeID(dlSession, tt.replay); got != tt.want {
			t.Errorf("ReplayOutcomeID(%q) = %q, want %q", tt.replay, got, tt.want)
		}
	}
}

func TestCopyWebhookHeaders(t *testing.T) {
	src := nats.Header{}
	for _, k := range []string{streams.HeaderReceivedAt, streams.HeaderReplay, streams.HeaderTraceparent, streams.HeaderTracestate, streams.HeaderMsgID, streams.HeaderError} {
		src.Set(k, "v-"+k)
	}
	dst := nats.Header{}
	streams.CopyWebhookHeaders(dst, src)
	want := nats.Header{}
	for _, k := range []string{streams.HeaderReceivedAt, streams.HeaderReplay, streams.HeaderTraceparent, streams.HeaderTracestate} {
		want.Set(k, "v-"+k)
	}
	if diff := cmp.Diff(want, dst); diff != "" {
		t.Errorf("CopyWebhookHeaders (-want +got):\n%s", diff)
	}
}

func TestDecodeStoredWebhook(t *testing.T) {
	s, _ := streams.NewSubjects("verifeye")
	body := []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + dlSession + `"}`)
	h := nats.Header{}
	h.Set(streams.HeaderReceivedAt, "2026-11-26T10:00:00Z")
	source, event, session, err := streams.DecodeStoredWebhook(s, "verifeye.webhook.kyc.VerificationCompleted", h, body)
	if err != nil || source != "kyc" || event != streams.EventCompleted || session != dlSession {
		t.Errorf("DecodeStoredWebhook(valid) = %q, %q, %q, %v", source, event, session, err)
	}
	bad := nats.Header{}
	bad.Set(streams.HeaderReplay, "zz")
	for _, tt := range []struct {
		name, subject string
		h             nats.Header
		body          []byte
	}{
		{"wildcard source", "verifeye.webhook.*.VerificationCompleted", h, body},
		{"DLQ subject", "verifeye.dlq.kyc.VerificationCompleted", h, body},
		{"bad replay marker", "verifeye.webhook.kyc.VerificationCompleted", bad, body},
		{"event differs from the subject's", "verifeye.webhook.kyc.Other", h, body},
		{"no session", "verifeye.webhook.kyc.VerificationCompleted", h, []byte(`{"event":"VerificationCompleted"}`)},
	} {
		if _, _, _, err := streams.DecodeStoredWebhook(s, tt.subject, tt.h, tt.body); !errors.Is(err, streams.ErrInvalidStoredWebhook) {
			t.Errorf("DecodeStoredWebhook [%s] error = %v, want ErrInvalidStoredWebhook", tt.name, err)
		}
	}
}
