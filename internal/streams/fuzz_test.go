package streams_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// FuzzParseWebhook checks properties, not just the absence of panics: whenever
// ParseWebhook accepts a body, the body is one valid JSON value, the webhook
// subject for any valid source is four clean NATS tokens that parse back, and
// the message ID round-trips to the event and the lower-cased session ID.
// Whatever Go's case-insensitive struct decoding (how stored webhooks used to be
// read back) makes of an accepted body, it is the same event and session.
// Whenever it rejects a body, the error is a *ValidationError with a code.
func FuzzParseWebhook(f *testing.F) {
	seeds := []struct{ body, source string }{
		{`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"}`, "default"},
		{` {"verificationSessionId":"3F2A9C1E-ABCD-4000-8000-FA11ED000001","event":"x","extra":[1,{"a":null}]} `, "shop-1"},
		{`{"event":"A_b-9","verificationSessionId":"00000000-0000-0000-0000-000000000000"}`, strings.Repeat("z", 64)},
		{`{"event":"Verification.Completed","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"}`, "default"},
		{`{"event":"VerificationCompleted","verificationSessionId":"{3f2a9c1e-0000-4000-8000-000000000001}"}`, "default"},
		{`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"}{}`, "default"},
		{`{"event":"\u0041","verificationSessionId":"3f2a9c1e-0000-4000-8000-00000000000\u0031"}`, "a_b"},
		{`{"event":"V>","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"}`, "default"},
		{`{"event":null,"verificationSessionId":1}`, "default"},
		{`[]`, "default"},
		{`null`, "Shop"},
		{``, ""},
		{`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001","VERIFICATIONSESSIONID":"3f2a9c1e-0000-4000-8000-000000000002"}`, "default"},
		{`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001","verificationSeſſionId":"3f2a9c1e-0000-4000-8000-000000000002"}`, "default"},
	}
	for _, s := range seeds {
		f.Add([]byte(s.body), s.source)
	}
	subjects, err := streams.NewSubjects("verifeye")
	if err != nil {
		f.Fatalf("NewSubjects: %v", err)
	}
	f.Fuzz(func(t *testing.T, body []byte, source string) {
		w, err := streams.ParseWebhook(body)
		if err != nil {
			var ve *streams.ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, streams.ErrInvalidWebhook) || ve.Code == "" || ve.Message == "" {
				t.Fatalf("ParseWebhook(%q) error = %#v, want a *ValidationError with a code and message wrapping ErrInvalidWebhook", body, err)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("ParseWebhook(%q) accepted a body that is not valid JSON", body)
		}
		var loose struct {
			Event     string `json:"event"`
			SessionID string `json:"verificationSessionId"`
		}
		if err := json.Unmarshal(body, &loose); err != nil || loose.Event != w.Event || loose.SessionID != w.SessionID {
			t.Fatalf("ParseWebhook(%q) = %+v, but struct decoding reads %+v, %v", body, w, loose, err)
		}
		if key, ok := repeatedKey(body); ok {
			t.Fatalf("ParseWebhook(%q) accepted a body that gives the key %q twice, or in two cases", body, key)
		}
		if !streams.ValidSource(source) {
			source = streams.DefaultSource
		}
		subject := subjects.Webhook(source, w.Event)
		tokens := strings.Split(subject, ".")
		if len(tokens) != 4 {
			t.Fatalf("ParseWebhook(%q): subject %q has %d tokens, want 4", body, subject, len(tokens))
		}
		for _, tok := range tokens {
			if tok == "" || strings.ContainsAny(tok, "*>") || strings.IndexFunc(tok, badRune) >= 0 {
				t.Fatalf("ParseWebhook(%q): subject %q has the bad token %q", body, subject, tok)
			}
		}
		kind, gotSource, gotEvent, err := subjects.Parse(subject)
		if err != nil || kind != "webhook" || gotSource != source || gotEvent != w.Event {
			t.Fatalf("Subjects.Parse(%q) = %q, %q, %q, %v; want webhook, %q, %q", subject, kind, gotSource, gotEvent, err, source, w.Event)
		}
		event, id, ok := streams.ParseWebhookMsgID(w.MsgID())
		if !ok || event != w.Event || id != strings.ToLower(w.SessionID) {
			t.Fatalf("ParseWebhookMsgID(%q) = %q, %q, %v; want %q, %q, true", w.MsgID(), event, id, ok, w.Event, strings.ToLower(w.SessionID))
		}
		// The message ID is a header value: it must be one line of printable ASCII.
		if strings.IndexFunc(w.MsgID(), badRune) >= 0 {
			t.Fatalf("MsgID %q has a space, control or non-ASCII character", w.MsgID())
		}
	})
}

// badRune reports whether r may not appear in a subject token or header value
// the bridge builds.
func badRune(r rune) bool {
	return r > unicode.MaxASCII || unicode.IsSpace(r) || unicode.IsControl(r)
}

// repeatedKey reads the top-level keys of an accepted body token by token and
// returns one that is given twice, or a case variant of event or
// verificationSessionId, as Go's case-insensitive decoding folds keys.
func repeatedKey(body []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return "", false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		key, _ := tok.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", false
		}
		for _, c := range []string{"event", "verificationSessionId"} {
			if key != c && strings.EqualFold(key, c) {
				return key, true
			}
		}
		if seen[key] {
			return key, true
		}
		seen[key] = true
	}
	return "", false
}
