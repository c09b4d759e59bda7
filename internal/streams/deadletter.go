package streams

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// UnknownToken stands in a DLQ subject for a source or event that is not a
// valid token, so that the entry still has a subject of the contract.
const UnknownToken = "unknown"

// MaxErrorDetail is the longest HeaderErrorDetail a DeadLetter carries, in bytes.
const MaxErrorDetail = 512

// ErrInvalidDeadLetter is wrapped by every error of DecodeDeadLetter.
var ErrInvalidDeadLetter = errors.New("streams: not a valid DLQ entry")

// DeadLetter is one entry of the DLQ stream: a webhook the enricher could not
// enrich, with the reason. Msg encodes it; DecodeDeadLetter reads it back.
type DeadLetter struct {
	// Source and Event are the webhook's subject tokens; the entry's subject is
	// <prefix>.dlq.<source>.<event>.
	Source, Event string
	// SessionID is read from Data by DecodeDeadLetter: "" when Data is not a
	// webhook of the contract for Event (such an entry cannot be redriven). Msg
	// does not use it.
	SessionID string
	// Reason is the machine-readable cause (not_found, bad_request, ...), Detail
	// the last error's text (at most MaxErrorDetail bytes, on one line).
	Reason, Detail string
	// LastStatus is the last HTTP status of the VerifEye API, 0 if none.
	LastStatus int
	// Attempts is how many times the webhook was delivered to the enricher.
	Attempts int
	// OrigSubject and OrigSeq are the webhook's subject and sequence on the
	// webhooks stream.
	OrigSubject string
	OrigSeq     uint64
	// Header holds the webhook headers the entry carries (CopyWebhookHeaders).
	Header nats.Header
	// Data is the webhook body as received.
	Data []byte
}

// DeadLetterMsgID returns the Nats-Msg-Id of the DLQ entry of the webhook at
// sequence seq of the webhooks stream: dlq:<seq>. A repeat (a redelivery, the
// max-deliveries advisory seen by every replica) adds nothing.
func DeadLetterMsgID(seq uint64) string { return "dlq:" + strconv.FormatUint(seq, 10) }

// Msg encodes d as the message to publish on the DLQ stream of subjects s,
// with its Nats-Msg-Id (DeadLetterMsgID of OrigSeq). A Source or Event that is
// not a valid token becomes UnknownToken in the subject; Detail is cut to
// MaxErrorDetail bytes and to one line.
func (d *DeadLetter) Msg(s Subjects) *nats.Msg {
	source, event := d.Source, d.Event
	if !ValidSource(source) {
		source = UnknownToken
	}
	if !ValidEvent(event) {
		event = UnknownToken
	}
	m := nats.NewMsg(s.DLQ(source, event))
	m.Data = d.Data
	if d.Header != nil {
		CopyWebhookHeaders(m.Header, d.Header)
	}
	m.Header.Set(HeaderMsgID, DeadLetterMsgID(d.OrigSeq))
	m.Header.Set(HeaderError, d.Reason)
	if detail := oneLine(d.Detail, MaxErrorDetail); detail != "" {
		m.Header.Set(HeaderErrorDetail, detail)
	}
	m.Header.Set(HeaderLastStatus, strconv.Itoa(d.LastStatus))
	m.Header.Set(HeaderAttempts, strconv.Itoa(d.Attempts))
	m.Header.Set(HeaderOrigSubject, d.OrigSubject)
	m.Header.Set(HeaderOrigSeq, strconv.FormatUint(d.OrigSeq, 10))
	return m
}

// DecodeDeadLetter reads the DLQ entry stored under subject with headers h and
// body data, as strictly as the ingest reads a request: the subject is a DLQ
// subject of s; the reason is a token; the status, attempts and original
// sequence are plain decimals; the original subject is the webhook subject the
// DLQ subject names; the carried headers pass CheckWebhookHeaders; the body is
// at most MaxWebhookBytes. A forged or damaged entry yields an error wrapping
// ErrInvalidDeadLetter that names the field at fault; the DeadLetter returned
// with it holds what could be read, for reporting only: never redrive it.
func DecodeDeadLetter(s Subjects, subject string, h nats.Header, data []byte) (*DeadLetter, error) {
	d := &DeadLetter{
		Reason:      h.Get(HeaderError),
		Detail:      h.Get(HeaderErrorDetail),
		OrigSubject: h.Get(HeaderOrigSubject),
		Header:      nats.Header{},
		Data:        data,
	}
	CopyWebhookHeaders(d.Header, h)
	var bad []string
	fail := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }

	kind, source, event, err := s.Parse(subject)
	switch {
	case err != nil || kind != "dlq":
		// The tokens are still worth showing, as long as they are not the
		// wildcards or stray bytes that made the subject invalid.
		if parts := strings.Split(subject, "."); len(parts) == 4 && ValidSource(parts[2]) && ValidEvent(parts[3]) {
			d.Source, d.Event = parts[2], parts[3]
		}
		fail("subject %s: not <prefix>.dlq.<source>.<event>", quote(subject))
	default:
		d.Source, d.Event = source, event
	}
	if d.Event != "" {
		d.SessionID = webhookSession(data, d.Event)
	}
	if !validReason(d.Reason) {
		fail("%s %s: want [a-z][a-z0-9_]{0,63}", HeaderError, quote(d.Reason))
	}
	if len(d.Detail) > MaxErrorDetail {
		fail("%s: longer than %d bytes", HeaderErrorDetail, MaxErrorDetail)
	}
	if n, ok := parseDecimal(h.Get(HeaderLastStatus)); !ok || (n != 0 && (n < 100 || n > 599)) {
		fail("%s %s: want 0 or an HTTP status", HeaderLastStatus, quote(h.Get(HeaderLastStatus)))
	} else {
		d.LastStatus = int(n)
	}
	if n, ok := parseDecimal(h.Get(HeaderAttempts)); !ok || n > 1<<31-1 {
		fail("%s %s: want a count", HeaderAttempts, quote(h.Get(HeaderAttempts)))
	} else {
		d.Attempts = int(n)
	}
	if seq, ok := ParseSeq(h.Get(HeaderOrigSeq)); ok {
		d.OrigSeq = seq
	} else {
		fail("%s %s: not a stream sequence", HeaderOrigSeq, quote(h.Get(HeaderOrigSeq)))
	}
	// The subject to redrive to is never taken from the header as written:
	// it must be the one webhook subject the DLQ subject names.
	if d.Source == "" || d.OrigSubject != s.Webhook(d.Source, d.Event) {
		fail("%s %s: not the webhook subject of this entry", HeaderOrigSubject, quote(d.OrigSubject))
	}
	if err := CheckWebhookHeaders(h); err != nil {
		fail("%v", err)
	}
	if len(data) > MaxWebhookBytes {
		fail("body of %d bytes: over %d", len(data), MaxWebhookBytes)
	}
	if len(bad) > 0 {
		return d, fmt.Errorf("%w: %s", ErrInvalidDeadLetter, strings.Join(bad, "; "))
	}
	return d, nil
}

// validReason reports whether s may be a DLQ reason: ^[a-z][a-z0-9_]{0,63}$.
func validReason(s string) bool {
	return len(s) >= 1 && len(s) <= 64 && lower(s[0]) && all(s, func(c byte) bool { return lower(c) || digit(c) || c == '_' })
}

// parseDecimal reads a plain non-negative decimal: digits only, no leading
// zero but in "0".
func parseDecimal(v string) (uint64, bool) {
	if v == "0" {
		return 0, true
	}
	return ParseSeq(v)
}

// oneLine returns s with control characters replaced by spaces (a header value
// must not break the line it is on), cut to at most n bytes on a rune boundary.
func oneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
