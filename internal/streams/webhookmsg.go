package streams

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// CopyWebhookHeaders copies to dst the headers a webhook message carries from
// the ingest to the enricher, and that every copy of it keeps (the DLQ entry,
// its redrive, a replay): HeaderReceivedAt, HeaderReplay, HeaderTraceparent and
// HeaderTracestate. Absent or empty headers are not copied; nothing else is.
func CopyWebhookHeaders(dst, src nats.Header) {
	for _, k := range [...]string{HeaderReceivedAt, HeaderReplay, HeaderTraceparent, HeaderTracestate} {
		if v := src.Get(k); v != "" {
			dst.Set(k, v)
		}
	}
}

// CheckWebhookHeaders checks the headers CopyWebhookHeaders carries, as read
// back from a stream: HeaderReceivedAt an RFC 3339 time, HeaderReplay a stream
// sequence (ParseSeq), HeaderTraceparent a W3C traceparent and
// HeaderTracestate printable ASCII. Absent headers are fine. The error names
// the first header at fault.
func CheckWebhookHeaders(h nats.Header) error {
	if v := h.Get(HeaderReceivedAt); v != "" {
		if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
			return fmt.Errorf("%s %s: not an RFC 3339 time", HeaderReceivedAt, quote(v))
		}
	}
	if v := h.Get(HeaderReplay); v != "" {
		if _, ok := ParseSeq(v); !ok {
			return fmt.Errorf("%s %s: not a stream sequence", HeaderReplay, quote(v))
		}
	}
	if v := h.Get(HeaderTraceparent); v != "" && !validTraceparent(v) {
		return fmt.Errorf("%s %s: not a W3C traceparent", HeaderTraceparent, quote(v))
	}
	if v := h.Get(HeaderTracestate); v != "" && !all(v, func(c byte) bool { return c >= 0x20 && c < 0x7f }) {
		return fmt.Errorf("%s %s: not printable ASCII", HeaderTracestate, quote(v))
	}
	return nil
}

// validTraceparent reports whether v is a traceparent of the form the bridge
// writes (version 00): ^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$, the
// version not ff.
func validTraceparent(v string) bool {
	if len(v) != 55 || v[:2] == "ff" {
		return false
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; i {
		case 2, 35, 52:
			if c != '-' {
				return false
			}
		default:
			if !digit(c) && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

// ErrInvalidStoredWebhook is wrapped by every error of DecodeStoredWebhook.
var ErrInvalidStoredWebhook = errors.New("streams: not a valid webhook message")

// DecodeStoredWebhook reads a webhook message read back from the webhooks
// stream (subjects s), as strictly as the ingest read the request: the subject
// is a webhook subject of s, the carried headers pass CheckWebhookHeaders, and
// the body, at most MaxWebhookBytes, is a webhook of the contract for the
// subject's event. It returns the subject's source and event and the body's
// session ID, or an error wrapping ErrInvalidStoredWebhook that names the
// field at fault.
func DecodeStoredWebhook(s Subjects, subject string, h nats.Header, data []byte) (source, event, sessionID string, err error) {
	kind, source, event, err := s.Parse(subject)
	switch {
	case err != nil || kind != "webhook":
		return "", "", "", fmt.Errorf("%w: subject %s: not <prefix>.webhook.<source>.<event>", ErrInvalidStoredWebhook, quote(subject))
	case len(data) > MaxWebhookBytes:
		return "", "", "", fmt.Errorf("%w: body of %d bytes: over %d", ErrInvalidStoredWebhook, len(data), MaxWebhookBytes)
	}
	if err := CheckWebhookHeaders(h); err != nil {
		return "", "", "", fmt.Errorf("%w: %w", ErrInvalidStoredWebhook, err)
	}
	if sessionID = webhookSession(data, event); sessionID == "" {
		return "", "", "", fmt.Errorf("%w: body is not a %s webhook with a session ID", ErrInvalidStoredWebhook, event)
	}
	return source, event, sessionID, nil
}

// webhookSession returns the session ID of the webhook body data when it is a
// webhook of the contract for event, else "".
func webhookSession(data []byte, event string) string {
	wh, err := ParseWebhook(data)
	if err != nil || wh.Event != event {
		return ""
	}
	return wh.SessionID
}

// quote renders a value read from a stream for an error message: Go-quoted
// (control characters escaped) and cut to 80 bytes.
func quote(v string) string {
	if len(v) > 80 {
		return strconv.Quote(v[:80]) + "…"
	}
	return strconv.Quote(v)
}
