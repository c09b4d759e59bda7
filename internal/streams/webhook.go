package streams

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrInvalidWebhook is wrapped by every error ParseWebhook returns.
var ErrInvalidWebhook = errors.New("invalid webhook")

// ValidationError says why a webhook body was rejected; Code is the contract's
// machine-readable "error" value.
type ValidationError struct {
	Code    string
	Message string
}

func (e *ValidationError) Error() string { return "streams: " + e.Message }

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
func (w Webhook) MsgID() string { return WebhookMsgID(w.Event, w.SessionID) }

// The contract's keys: matched exactly, never case-insensitively.
const (
	keyEvent     = "event"
	keySessionID = "verificationSessionId"
)

// ParseWebhook validates body: exactly one JSON object with a string `event`
// that is a safe NATS token and a string `verificationSessionId` in strict UUID
// form, no key twice, and no key that differs from one of those two only in
// case (as Go's case-insensitive decoding would match it). It returns a
// *ValidationError (wrapping ErrInvalidWebhook) naming the problem otherwise.
//
// It is the one parser of a webhook body: the ingest validates a request with
// it, and everything that reads a stored webhook back (the enricher, replay,
// the DLQ tools) decodes with it, so all of them see the same session.
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
	// The map keeps one value per key: more keys in the body than in the map
	// means a key was given twice, and readers differ on which value counts.
	if topLevelKeys(body) != len(fields) {
		return Webhook{}, invalid("invalid_json", "a key appears twice in the object")
	}
	for k := range fields {
		if k != keyEvent && k != keySessionID && (strings.EqualFold(k, keyEvent) || strings.EqualFold(k, keySessionID)) {
			// A case variant would be read as the contract's key by a
			// case-insensitive decoder: one reader would see another session.
			return Webhook{}, invalid("invalid_field", "key %q differs from a field of the contract only in case", truncate(k))
		}
	}
	var w Webhook
	if err := stringField(fields, keyEvent, &w.Event); err != nil {
		return Webhook{}, err
	}
	if !ValidEvent(w.Event) {
		return Webhook{}, invalid("invalid_event", "event %q is not a valid event name: want [A-Za-z][A-Za-z0-9_-]{0,63}", truncate(w.Event))
	}
	if err := stringField(fields, keySessionID, &w.SessionID); err != nil {
		return Webhook{}, err
	}
	if !ValidSessionID(w.SessionID) {
		return Webhook{}, invalid("invalid_session_id", "verificationSessionId %q is not a UUID in 8-4-4-4-12 hex form", truncate(w.SessionID))
	}
	return w, nil
}

// topLevelKeys counts the keys of the outermost object of body, which must be
// valid JSON. It allocates nothing.
func topLevelKeys(body []byte) int {
	n, depth, expectKey := 0, 0, false
	for i := 0; i < len(body); i++ {
		switch body[i] {
		case '{', '[':
			depth++
			expectKey = depth == 1
		case '}', ']':
			depth--
		case ',':
			expectKey = depth == 1
		case '"':
			for i++; i < len(body) && body[i] != '"'; i++ {
				if body[i] == '\\' {
					i++
				}
			}
			if expectKey {
				n++
				expectKey = false
			}
		}
	}
	return n
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
