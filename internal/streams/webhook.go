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
	if w, ok := parseFlatWebhook(body); ok {
		return w, nil
	}
	return parseWebhook(body)
}

// parseWebhook is ParseWebhook without the fast path: every body it is given
// goes through encoding/json, and every error comes from here.
func parseWebhook(body []byte) (Webhook, error) {
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

// parseFlatWebhook is ParseWebhook's fast path, for the bodies VerifEye
// sends: one flat object whose keys and string values are printable ASCII
// without escapes, and whose other values are numbers, true, false or null.
// It reports false for anything else, and for any body ParseWebhook would
// reject, leaving the verdict and the error to parseWebhook; when it reports
// true, parseWebhook returns the same Webhook (FuzzFlatWebhook). It
// allocates only the session ID (decoding into a map of raw values and
// unmarshalling each field was the largest cost of the ingest's own work,
// docs/performance.md).
func parseFlatWebhook(body []byte) (Webhook, bool) {
	const maxKeys = 16 // more keys are rare: leave them to parseWebhook
	var keys [maxKeys][]byte
	var event, session []byte
	n := 0
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return Webhook{}, false
	}
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return Webhook{}, false // no fields: parseWebhook names the missing one
	}
	for {
		key, j, ok := flatString(body, i)
		if !ok {
			return Webhook{}, false
		}
		i = skipSpace(body, j)
		if i >= len(body) || body[i] != ':' {
			return Webhook{}, false
		}
		i = skipSpace(body, i+1)
		var val []byte
		isString := i < len(body) && body[i] == '"'
		if isString {
			val, j, ok = flatString(body, i)
		} else {
			j, ok = flatScalar(body, i)
		}
		if !ok {
			return Webhook{}, false
		}
		i = skipSpace(body, j)
		switch k := string(key); { // no allocation: compared, not kept
		case k == keyEvent || k == keySessionID:
			if !isString {
				return Webhook{}, false
			}
			if k == keyEvent {
				event = val
			} else {
				session = val
			}
		case strings.EqualFold(k, keyEvent) || strings.EqualFold(k, keySessionID):
			return Webhook{}, false
		}
		if n == maxKeys {
			return Webhook{}, false
		}
		for _, prev := range keys[:n] {
			if bytes.Equal(prev, key) {
				return Webhook{}, false
			}
		}
		keys[n] = key
		n++
		if i >= len(body) {
			return Webhook{}, false
		}
		if body[i] == '}' {
			break
		}
		if body[i] != ',' {
			return Webhook{}, false
		}
		i = skipSpace(body, i+1)
	}
	if skipSpace(body, i+1) != len(body) || event == nil || session == nil {
		return Webhook{}, false
	}
	w := Webhook{Event: EventCompleted}
	if string(event) != EventCompleted {
		w.Event = string(event)
	}
	w.SessionID = string(session)
	if !ValidEvent(w.Event) || !ValidSessionID(w.SessionID) {
		return Webhook{}, false
	}
	return w, true
}

// skipSpace returns the index of the first byte of b at or after i that is
// not JSON whitespace.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// flatString reads the JSON string at b[i] when it is printable ASCII
// without escapes, returning its content and the index after its closing
// quote; ok is false for anything else.
func flatString(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c > 0x7e:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// flatScalar reads the JSON number, true, false or null at b[i], returning
// the index after it; ok is false for anything else.
func flatScalar(b []byte, i int) (next int, ok bool) {
	for _, lit := range [...]string{"true", "false", "null"} {
		if bytes.HasPrefix(b[i:], []byte(lit)) {
			return i + len(lit), true
		}
	}
	// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
	digits := func(j int) int {
		for j < len(b) && digit(b[j]) {
			j++
		}
		return j
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(i)
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}
