package streams_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

const (
	goodID  = "3f2a9c1e-0000-4000-8000-000000000001"
	otherID = "3f2a9c1e-0000-4000-8000-000000000002"
)

// TestParseWebhook checks the parser directly: what it accepts, and the code
// of each rejection.
func TestParseWebhook(t *testing.T) {
	tests := []struct {
		body     string
		want     streams.Webhook
		wantCode string
	}{
		{`{"event":"VerificationCompleted","verificationSessionId":"` + goodID + `"}`, streams.Webhook{Event: "VerificationCompleted", SessionID: goodID}, ""},
		{" \n{\"verificationSessionId\":\"" + strings.ToUpper(goodID) + "\",\"event\":\"x\",\"more\":{}}\t\n", streams.Webhook{Event: "x", SessionID: strings.ToUpper(goodID)}, ""},
		{`{"\u0065vent":"A","verificationSessionId":"` + goodID + `"}`, streams.Webhook{Event: "A", SessionID: goodID}, ""},
		{`{"event":"A","verificationSessionId":"` + goodID + `","event":"B"}`, streams.Webhook{}, "invalid_json"},
		{`{"event":"A","verificationSessionId":"` + goodID + `","VERIFICATIONSESSIONID":"` + otherID + `"}`, streams.Webhook{}, "invalid_field"},
		{`{"event":"A","verificationSeſſionId":"` + otherID + `","verificationSessionId":"` + goodID + `"}`, streams.Webhook{}, "invalid_field"},
		{`{"Event":"B","event":"A","verificationSessionId":"` + goodID + `"}`, streams.Webhook{}, "invalid_field"},
		{`{"event":"A","verificationSessionId":"` + goodID + `","x":1,"x":2}`, streams.Webhook{}, "invalid_json"},
		{`{"event":"A","verificationSessionId":"` + goodID + `",}`, streams.Webhook{}, "invalid_json"},
		{``, streams.Webhook{}, "invalid_json"},
		{`nul`, streams.Webhook{}, "invalid_json"},
		{`{"event":"A","verificationSessionId":"` + goodID + `"} {}`, streams.Webhook{}, "invalid_json"},
		{`{"event":"A"}`, streams.Webhook{}, "missing_field"},
		{`{"event":1,"verificationSessionId":"` + goodID + `"}`, streams.Webhook{}, "invalid_field"},
		{`{"event":"A","verificationSessionId":null}`, streams.Webhook{}, "invalid_field"},
		{`{"event":"A.B","verificationSessionId":"` + goodID + `"}`, streams.Webhook{}, "invalid_event"},
		{`{"event":"A","verificationSessionId":"{` + goodID + `}"}`, streams.Webhook{}, "invalid_session_id"},
	}
	for _, tc := range tests {
		got, err := streams.ParseWebhook([]byte(tc.body))
		if tc.wantCode == "" {
			if err != nil || got != tc.want {
				t.Errorf("ParseWebhook(%q) = %+v, %v; want %+v, nil", tc.body, got, err, tc.want)
			}
			continue
		}
		var ve *streams.ValidationError
		if !errors.As(err, &ve) || !errors.Is(err, streams.ErrInvalidWebhook) {
			t.Errorf("ParseWebhook(%q) error = %v, want a *ValidationError wrapping ErrInvalidWebhook", tc.body, err)
			continue
		}
		if ve.Code != tc.wantCode || ve.Message == "" {
			t.Errorf("ParseWebhook(%q) = code %q message %q, want code %q and a message", tc.body, ve.Code, ve.Message, tc.wantCode)
		}
	}
}
