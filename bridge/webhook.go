package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// ErrInvalidWebhook is wrapped by every error ParseWebhook returns.
var ErrInvalidWebhook = errors.New("invalid webhook")

// ValidationError says why a request was rejected; Code is the contract's
// machine-readable "error" value.
type ValidationError struct {
	Code    string
	Message string
}

func (e *ValidationError) Error() string { return "bridge: " + e.Message }

// Unwrap makes errors.Is(err, ErrInvalidWebhook) true.
func (e *ValidationError) Unwrap() error { return ErrInvalidWebhook }

func invalid(code, format string, args ...any) error {
	return &ValidationError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Webhook is the part of a VerifEye webhook the bridge reads. The body itself is
// kept byte for byte; unknown fields in it are tolerated and stored.
type Webhook struct {
	Event     string
	SessionID string
}

// MsgID returns the webhook's JetStream de-duplication ID.
func (w Webhook) MsgID() string { return streams.WebhookMsgID(w.Event, w.SessionID) }

// ParseWebhook validates body: exactly one JSON object with a string `event`
// that is a safe NATS token and a string `verificationSessionId` in strict UUID
// form. It returns a *ValidationError (wrapping ErrInvalidWebhook) naming the
// problem otherwise.
func ParseWebhook(body []byte) (Webhook, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return Webhook{}, invalid("invalid_json", "request body is empty: want a JSON object")
	}
	if trimmed[0] != '{' {
		return Webhook{}, invalid("invalid_json", "request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil {
		return Webhook{}, invalid("invalid_json", "request body is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Webhook{}, invalid("invalid_json", "request body must be exactly one JSON object: data follows it")
	}
	var w Webhook
	if err := stringField(fields, "event", &w.Event); err != nil {
		return Webhook{}, err
	}
	if !streams.ValidEvent(w.Event) {
		return Webhook{}, invalid("invalid_event", "event %q is not a valid event name: want [A-Za-z][A-Za-z0-9_-]{0,63}", truncate(w.Event))
	}
	if err := stringField(fields, "verificationSessionId", &w.SessionID); err != nil {
		return Webhook{}, err
	}
	if !streams.ValidSessionID(w.SessionID) {
		return Webhook{}, invalid("invalid_session_id", "verificationSessionId %q is not a UUID in 8-4-4-4-12 hex form", truncate(w.SessionID))
	}
	return w, nil
}

func stringField(fields map[string]json.RawMessage, name string, dst *string) error {
	raw, ok := fields[name]
	if !ok {
		return invalid("missing_field", "field %q is required", name)
	}
	if err := json.Unmarshal(raw, dst); err != nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return invalid("invalid_field", "field %q must be a string", name)
	}
	return nil
}

// truncate keeps error messages short whatever the input.
func truncate(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
