package bridge_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

const (
	goodID  = "3f2a9c1e-0000-4000-8000-000000000001"
	otherID = "3f2a9c1e-0000-4000-8000-000000000002"
)

// withField returns a webhook body whose field name has the raw JSON value v.
func withField(name, v string) []byte {
	fields := map[string]string{
		"event":                 `"VerificationCompleted"`,
		"verificationSessionId": `"` + goodID + `"`,
	}
	fields[name] = v
	return []byte(`{"event":` + fields["event"] + `,"verificationSessionId":` + fields["verificationSessionId"] + `}`)
}

// TestWebhookRejected sends every kind of bad request: each gets the
// contract's status and a JSON error body, and nothing reaches the stream.
func TestWebhookRejected(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey)})
	good := webhookBody("VerificationCompleted", goodID)
	tests := []struct {
		name       string
		req        request
		wantStatus int
		wantCode   string
	}{
		// The body is not exactly one JSON object.
		{"invalid JSON", request{body: []byte(`{"event":`)}, 400, "invalid_json"},
		{"invalid JSON value", request{body: []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + goodID + `",}`)}, 400, "invalid_json"},
		{"empty body", request{body: nil}, 400, "invalid_json"},
		{"whitespace body", request{body: []byte(" \r\n\t")}, 400, "invalid_json"},
		{"null", request{body: []byte(`null`)}, 400, "invalid_json"},
		{"array", request{body: []byte(`[` + string(good) + `]`)}, 400, "invalid_json"},
		{"string", request{body: []byte(`"VerificationCompleted"`)}, 400, "invalid_json"},
		{"number", request{body: []byte(`42`)}, 400, "invalid_json"},
		{"second object after it", request{body: append(bytes.Clone(good), good...)}, 400, "invalid_json"},
		{"garbage after it", request{body: append(bytes.Clone(good), " x"...)}, 400, "invalid_json"},
		{"closing bracket after it", request{body: append(bytes.Clone(good), "]"...)}, 400, "invalid_json"},
		{"null after it", request{body: append(bytes.Clone(good), "\nnull"...)}, 400, "invalid_json"},

		// Keys another decoder would read differently: one session stored, another enriched.
		{"session id twice, case variant", request{body: []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + goodID + `","VERIFICATIONSESSIONID":"` + otherID + `"}`)}, 400, "invalid_field"},
		{"session id twice, long s", request{body: []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + goodID + `","verificationSeſſionId":"` + otherID + `"}`)}, 400, "invalid_field"},
		{"event in upper case", request{body: []byte(`{"EVENT":"VerificationCompleted","verificationSessionId":"` + goodID + `"}`)}, 400, "invalid_field"},
		{"session id twice", request{body: []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + goodID + `","verificationSessionId":"` + otherID + `"}`)}, 400, "invalid_json"},

		// Missing or mistyped fields.
		{"missing event", request{body: []byte(`{"verificationSessionId":"` + goodID + `"}`)}, 400, "missing_field"},
		{"missing session id", request{body: []byte(`{"event":"VerificationCompleted"}`)}, 400, "missing_field"},
		{"empty object", request{body: []byte(`{}`)}, 400, "missing_field"},
		{"event is a number", request{body: withField("event", `1`)}, 400, "invalid_field"},
		{"event is null", request{body: withField("event", `null`)}, 400, "invalid_field"},
		{"event is an object", request{body: withField("event", `{"name":"VerificationCompleted"}`)}, 400, "invalid_field"},
		{"event is an array", request{body: withField("event", `["VerificationCompleted"]`)}, 400, "invalid_field"},
		{"event is a bool", request{body: withField("event", `true`)}, 400, "invalid_field"},
		{"session id is a number", request{body: withField("verificationSessionId", `12345678`)}, 400, "invalid_field"},
		{"session id is null", request{body: withField("verificationSessionId", `null`)}, 400, "invalid_field"},
		{"session id is an object", request{body: withField("verificationSessionId", `{"id":"`+goodID+`"}`)}, 400, "invalid_field"},

		// Session IDs that are not strict 8-4-4-4-12 UUIDs.
		{"session id empty", request{body: withField("verificationSessionId", `""`)}, 400, "invalid_session_id"},
		{"session id in braces", request{body: withField("verificationSessionId", `"{`+goodID+`}"`)}, 400, "invalid_session_id"},
		{"session id as URN", request{body: withField("verificationSessionId", `"urn:uuid:`+goodID+`"`)}, 400, "invalid_session_id"},
		{"session id undashed", request{body: withField("verificationSessionId", `"`+strings.ReplaceAll(goodID, "-", "")+`"`)}, 400, "invalid_session_id"},
		{"session id too short", request{body: withField("verificationSessionId", `"`+goodID[:35]+`"`)}, 400, "invalid_session_id"},
		{"session id too long", request{body: withField("verificationSessionId", `"`+goodID+`0"`)}, 400, "invalid_session_id"},
		{"session id not hex", request{body: withField("verificationSessionId", `"`+goodID[:35]+`g"`)}, 400, "invalid_session_id"},
		{"session id with spaces around", request{body: withField("verificationSessionId", `" `+goodID+` "`)}, 400, "invalid_session_id"},
		{"session id with dot", request{body: withField("verificationSessionId", `"`+goodID[:35]+`."`)}, 400, "invalid_session_id"},
		{"session id with star", request{body: withField("verificationSessionId", `"`+goodID[:35]+`*"`)}, 400, "invalid_session_id"},
		{"session id with gt", request{body: withField("verificationSessionId", `"`+goodID[:35]+`>"`)}, 400, "invalid_session_id"},
		{"session id with space", request{body: withField("verificationSessionId", `"`+goodID[:35]+` "`)}, 400, "invalid_session_id"},
		{"session id with NUL", request{body: withField("verificationSessionId", `"`+goodID[:35]+`\u0000"`)}, 400, "invalid_session_id"},
		{"session id with newline", request{body: withField("verificationSessionId", `"`+goodID+`\n"`)}, 400, "invalid_session_id"},

		// Event names that are not one safe NATS token.
		{"event empty", request{body: withField("event", `""`)}, 400, "invalid_event"},
		{"event with dot", request{body: withField("event", `"Verification.Completed"`)}, 400, "invalid_event"},
		{"event with star", request{body: withField("event", `"Verification*"`)}, 400, "invalid_event"},
		{"event is star", request{body: withField("event", `"*"`)}, 400, "invalid_event"},
		{"event with gt", request{body: withField("event", `"Verification>"`)}, 400, "invalid_event"},
		{"event is gt", request{body: withField("event", `">"`)}, 400, "invalid_event"},
		{"event with space", request{body: withField("event", `"Verification Completed"`)}, 400, "invalid_event"},
		{"event with NUL", request{body: withField("event", `"Verification\u0000"`)}, 400, "invalid_event"},
		{"event with tab", request{body: withField("event", `"Verification\tCompleted"`)}, 400, "invalid_event"},
		{"event with non-ASCII", request{body: withField("event", `"Vérification"`)}, 400, "invalid_event"},
		{"event starting with a digit", request{body: withField("event", `"1Verification"`)}, 400, "invalid_event"},
		{"event of 65 characters", request{body: withField("event", `"`+strings.Repeat("E", 65)+`"`)}, 400, "invalid_event"},

		// Bad sources in the path.
		{"source with upper case", request{path: "/webhooks/verifeye/Shop", body: good}, 400, "invalid_source"},
		{"source with dot", request{path: "/webhooks/verifeye/a.b", body: good}, 400, "invalid_source"},
		{"source with star", request{path: "/webhooks/verifeye/a*", body: good}, 400, "invalid_source"},
		{"source with gt", request{path: "/webhooks/verifeye/a%3E", body: good}, 400, "invalid_source"},
		{"source is a space", request{path: "/webhooks/verifeye/%20", body: good}, 400, "invalid_source"},
		{"source with NUL", request{path: "/webhooks/verifeye/a%00", body: good}, 400, "invalid_source"},
		{"source with encoded dot", request{path: "/webhooks/verifeye/a%2Eb", body: good}, 400, "invalid_source"},
		{"source with a slash", request{path: "/webhooks/verifeye/a/b", body: good}, 400, "invalid_source"},
		{"source of 65 characters", request{path: "/webhooks/verifeye/" + strings.Repeat("a", 65), body: good}, 400, "invalid_source"},

		// Size and media type.
		{"1 MiB body", request{body: bytes.Repeat([]byte(" "), 1<<20)}, 413, "payload_too_large"},
		{"64 KiB + 1 body", request{body: append(bytes.Repeat([]byte(" "), streams.MaxWebhookBytes), good...)}, 413, "payload_too_large"},
		{"1 MiB body, chunked", request{body: append(bytes.Repeat([]byte(" "), 1<<20), good...), chunked: true}, 413, "payload_too_large"},
		{"text/plain", request{body: good, header: map[string]string{"Content-Type": "text/plain"}}, 415, "unsupported_media_type"},
		{"form", request{body: good, header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}}, 415, "unsupported_media_type"},
		{"malformed content type", request{body: good, header: map[string]string{"Content-Type": "application/json; ;="}}, 415, "unsupported_media_type"},

		// Methods and routes.
		{"GET", request{method: http.MethodGet, body: nil}, 405, "method_not_allowed"},
		{"PUT", request{method: http.MethodPut, body: good}, 405, "method_not_allowed"},
		{"DELETE with source", request{method: http.MethodDelete, path: "/webhooks/verifeye/shop-1"}, 405, "method_not_allowed"},
		{"POST /healthz", request{path: "/healthz", body: good}, 405, "method_not_allowed"},
		{"unknown route", request{path: "/webhooks/other", body: good}, 404, "not_found"},
		{"trailing slash, no source", request{path: "/webhooks/verifeye/", body: good}, 404, "not_found"},

		// Authentication (api-key mode).
		{"missing X-API-Key", request{body: good, header: map[string]string{"X-API-Key": ""}}, 401, "unauthorized"},
		{"wrong X-API-Key", request{body: good, header: map[string]string{"X-API-Key": "vk-live-wrong"}}, 401, "unauthorized"},
		{"X-API-Key prefix of the key", request{body: good, header: map[string]string{"X-API-Key": testAPIKey[:len(testAPIKey)-1]}}, 401, "unauthorized"},
		{"X-API-Key in upper case", request{body: good, header: map[string]string{"X-API-Key": strings.ToUpper(testAPIKey)}}, 401, "unauthorized"},
		{"key as bearer token", request{body: good, header: map[string]string{"X-API-Key": "", "Authorization": "Bearer " + testAPIKey}}, 401, "unauthorized"},
		{"key as ?token=", request{path: "/webhooks/verifeye?token=" + testAPIKey, body: good, header: map[string]string{"X-API-Key": ""}}, 401, "unauthorized"},
	}
	for _, tc := range tests {
		if tc.req.path == "" {
			tc.req.path = "/webhooks/verifeye"
		}
		a := r.do(t, tc.req)
		checkError(t, tc.name, a, tc.wantStatus, tc.wantCode)
	}
	if got := natstest.Count(t, r.js, streams.Webhooks); got != 0 {
		t.Errorf("after %d rejected requests the stream holds %d messages, want 0", len(tests), got)
	}
}

// TestWebhookKeepsInvalidUTF8 documents that a body with invalid UTF-8 in an
// unknown field is accepted and stored byte for byte (encoding/json tolerates
// it, and the bridge never re-encodes the body).
func TestWebhookKeepsInvalidUTF8(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey)})
	body := []byte("{\"event\":\"VerificationCompleted\",\"verificationSessionId\":\"" + goodID + "\",\"x\":\"\xff\"}")
	if a := r.do(t, request{path: "/webhooks/verifeye", body: body}); a.status != http.StatusAccepted {
		t.Fatalf("status = %d, want 202 (body %s)", a.status, a.body)
	}
	msgs := natstest.Messages(t, r.js, streams.Webhooks)
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data(), body) {
		t.Fatalf("stored %d messages, want 1 with the body as sent", len(msgs))
	}
}

// TestWebhookAuthModes covers WEBHOOK_AUTH=token and the WEBHOOK_API_KEY_SHA256
// form of api-key: the right credential gets 202, anything else 401 and
// publishes nothing.
func TestWebhookAuthModes(t *testing.T) {
	sum := sha256.Sum256([]byte(testAPIKey))
	hashAuth, err := bridge.APIKeyHashAuth(hex.EncodeToString(sum[:]))
	if err != nil {
		t.Fatalf("APIKeyHashAuth: %v", err)
	}
	upperHashAuth, err := bridge.APIKeyHashAuth(" " + strings.ToUpper(hex.EncodeToString(sum[:])) + "\n")
	if err != nil {
		t.Fatalf("APIKeyHashAuth (upper case, spaces): %v", err)
	}
	type call struct {
		name       string
		path       string
		header     map[string]string
		wantStatus int
	}
	noKey := map[string]string{"X-API-Key": ""}
	tests := []struct {
		mode  string
		auth  bridge.Auth
		calls []call
	}{{
		mode: "token",
		auth: bridge.TokenAuth(testToken),
		calls: []call{
			{"no token", "/webhooks/verifeye", noKey, 401},
			{"API key instead of token", "/webhooks/verifeye", nil, 401},
			{"wrong ?token=", "/webhooks/verifeye?token=wrong", noKey, 401},
			{"empty ?token=", "/webhooks/verifeye?token=", noKey, 401},
			{"wrong bearer", "/webhooks/verifeye", map[string]string{"X-API-Key": "", "Authorization": "Bearer wrong"}, 401},
			{"token as basic auth", "/webhooks/verifeye", map[string]string{"X-API-Key": "", "Authorization": "Basic " + testToken}, 401},
			{"token as X-API-Key", "/webhooks/verifeye", map[string]string{"X-API-Key": testToken}, 401},
			{"right ?token=", "/webhooks/verifeye?token=" + testToken, noKey, 202},
			{"right bearer", "/webhooks/verifeye/shop-1", map[string]string{"X-API-Key": "", "Authorization": "Bearer " + testToken}, 202},
			{"right lower-case bearer", "/webhooks/verifeye/shop-2", map[string]string{"X-API-Key": "", "Authorization": "bearer " + testToken}, 202},
		},
	}, {
		mode: "api-key",
		auth: hashAuth,
		calls: []call{
			{"no key", "/webhooks/verifeye", noKey, 401},
			{"wrong key", "/webhooks/verifeye", map[string]string{"X-API-Key": "wrong"}, 401},
			{"the hash itself as key", "/webhooks/verifeye", map[string]string{"X-API-Key": hex.EncodeToString(sum[:])}, 401},
			{"right key", "/webhooks/verifeye", nil, 202},
		},
	}, {
		mode: "api-key",
		auth: upperHashAuth,
		calls: []call{
			{"wrong key", "/webhooks/verifeye", map[string]string{"X-API-Key": "wrong"}, 401},
			{"right key", "/webhooks/verifeye/shop-1", nil, 202},
		},
	}, {
		mode:  "none",
		auth:  bridge.NoAuth(),
		calls: []call{{"no credentials", "/webhooks/verifeye", noKey, 202}},
	}, {
		mode: "",
		auth: bridge.Auth{},
		calls: []call{
			{"zero Auth, no key", "/webhooks/verifeye", noKey, 401},
			{"zero Auth, a key", "/webhooks/verifeye", nil, 401},
		},
	}}
	for _, tc := range tests {
		t.Run("mode="+tc.mode, func(t *testing.T) {
			if got := tc.auth.Mode(); got != tc.mode {
				t.Errorf("Mode() = %q, want %q", got, tc.mode)
			}
			r := newRig(t, rigOptions{auth: tc.auth})
			accepted := 0
			for _, c := range tc.calls {
				// A fresh session per call, so an accepted one is never a duplicate.
				a := r.do(t, request{path: c.path, body: webhookBody("VerificationCompleted", newSessionID(t)), header: c.header})
				if c.wantStatus == http.StatusAccepted {
					accepted++
					if a.status != c.wantStatus {
						t.Errorf("%s: status = %d, want 202 (body %s)", c.name, a.status, a.body)
					}
					continue
				}
				checkError(t, c.name, a, c.wantStatus, "unauthorized")
			}
			if got := natstest.Count(t, r.js, streams.Webhooks); got != accepted {
				t.Errorf("stream holds %d messages, want %d (one per accepted call)", got, accepted)
			}
		})
	}
}

func TestAPIKeyHashAuthInvalid(t *testing.T) {
	sum := sha256.Sum256([]byte(testAPIKey))
	full := hex.EncodeToString(sum[:])
	for _, in := range []string{"", "xyz", full[:62], full + "00", "g" + full[1:], testAPIKey} {
		if _, err := bridge.APIKeyHashAuth(in); err == nil {
			t.Errorf("APIKeyHashAuth(%q) = nil error, want an error", in)
		} else if strings.Contains(err.Error(), testAPIKey) {
			t.Errorf("APIKeyHashAuth(%q) error %q repeats its input", in, err)
		}
	}
}

// TestAPIKeyHashAuthRotation: with the old and the new key's sums listed, both
// keys are accepted and any other is refused, so a key rotates without 401s.
func TestAPIKeyHashAuthRotation(t *testing.T) {
	oldSum, newSum := sha256.Sum256([]byte("old-key")), sha256.Sum256([]byte("new-key"))
	auth, err := bridge.APIKeyHashAuth(hex.EncodeToString(oldSum[:]) + ", " + hex.EncodeToString(newSum[:]))
	if err != nil {
		t.Fatalf("APIKeyHashAuth(two sums): %v", err)
	}
	h := bridge.New(nil, zerolog.Nop(), bridge.Options{Auth: auth})
	for key, want := range map[string]int{"old-key": 0, "new-key": 0, "other-key": http.StatusUnauthorized, "": http.StatusUnauthorized} {
		req := httptest.NewRequest(http.MethodPost, "/webhooks/verifeye", strings.NewReader(`not json`))
		req.Header.Set("X-API-Key", key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		// An accepted key gets past authentication to the body check (400).
		if want == 0 {
			want = http.StatusBadRequest
		}
		if rec.Code != want {
			t.Errorf("X-API-Key %q: status %d, want %d", key, rec.Code, want)
		}
	}
	if _, err := bridge.APIKeyHashAuth(hex.EncodeToString(oldSum[:]) + ",nothex"); err == nil {
		t.Errorf("APIKeyHashAuth(a sum, then garbage) = nil error, want an error")
	}
}
