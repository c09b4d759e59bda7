package outcome

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Event is one verification outcome: the CloudEvent the bridge publishes on
// StreamResults, decoded. Its JSON form (Marshal) is:
//
//	{"specversion":"1.0","id":"<ID>","type":"ai.realeyes.verifeye.verification.completed",
//	 "source":"verifeye-bridge/<Source>","subject":"<SessionID>","time":"<Time, RFC 3339>",
//	 "datacontenttype":"application/json","verifeyesource":"<Source>",
//	 "verifeyeoutcome":"<Outcome>","verifeyereconciled":true,"data":<Data>}
//
// verifeyereconciled is present only when true. The accessors (Result,
// Liveness, Age, …) read Data tolerantly; Data itself is never rewritten.
type Event struct {
	// ID is the CloudEvent id: the session ID, or <session ID>:replay:<seq> for
	// an outcome re-made by the bridge's replay command.
	ID string
	// SessionID is the verification session (the CloudEvent subject); use it as
	// the idempotency key.
	SessionID string
	// Source is the webhook source (the URL segment of the bridge's webhook),
	// the verifeyesource extension attribute.
	Source string
	// Outcome is the subject token of the result: passed, failed, … or unknown
	// (the verifeyeoutcome extension attribute).
	Outcome string
	// Time is when the bridge received the webhook.
	Time time.Time
	// Reconciled is true when the webhook never came and the bridge fetched the
	// result itself for an expected session (the verifeyereconciled extension).
	Reconciled bool
	// Data is the Get Session Result body, byte for byte as the API returned it
	// (without surrounding whitespace).
	Data json.RawMessage
}

// ErrUndecodable wraps every error of Decode: the bytes are not an outcome.
var ErrUndecodable = errors.New("outcome: not an outcome event")

// wire is the structured-mode JSON of an Event. Unknown attributes are ignored.
type wire struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Type            string          `json:"type"`
	Source          string          `json:"source"`
	Subject         string          `json:"subject"`
	Time            string          `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	VerifeyeSource  string          `json:"verifeyesource"`
	VerifeyeOutcome string          `json:"verifeyeoutcome"`
	Reconciled      json.RawMessage `json:"verifeyereconciled,omitempty"`
	Data            json.RawMessage `json:"data"`
}

// cloudEventSourcePrefix starts the CloudEvent source of every outcome.
const cloudEventSourcePrefix = "verifeye-bridge/"

// CloudEventSource returns the CloudEvent source attribute of the outcomes of
// a webhook source: verifeye-bridge/<source>.
func CloudEventSource(source string) string { return cloudEventSourcePrefix + source }

// Decode parses an outcome message body. It tolerates attributes it does not
// know and any shape of data, requires specversion 1.x, the outcome type, an
// id, a subject, a time and a data value, and returns an error wrapping
// ErrUndecodable otherwise. An event without the verifeyesource or
// verifeyeoutcome attributes gets them from source and data.
//
// The bytes Marshal makes (what the bridge publishes) are read by a fast path
// that gives the same Event as the general one (FuzzDecodeExact holds it to
// that); anything else goes through encoding/json.
func Decode(data []byte) (*Event, error) {
	if ev, ok := decodeExact(data); ok {
		return ev, nil
	}
	return decodeJSON(data)
}

// decodeJSON is Decode through encoding/json.
func decodeJSON(data []byte) (*Event, error) {
	// w is wire without the attributes Decode does not read: fewer
	// allocations on every message.
	var w struct {
		SpecVersion     string          `json:"specversion"`
		ID              string          `json:"id"`
		Type            string          `json:"type"`
		Source          string          `json:"source"`
		Subject         string          `json:"subject"`
		Time            string          `json:"time"`
		VerifeyeSource  string          `json:"verifeyesource"`
		VerifeyeOutcome string          `json:"verifeyeoutcome"`
		Reconciled      json.RawMessage `json:"verifeyereconciled"`
		Data            json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUndecodable, err)
	}
	if !strings.HasPrefix(w.SpecVersion, "1.") && w.SpecVersion != "1" {
		return nil, fmt.Errorf("%w: specversion %q", ErrUndecodable, w.SpecVersion)
	}
	if w.Type != EventType {
		return nil, fmt.Errorf("%w: type %q", ErrUndecodable, w.Type)
	}
	if w.ID == "" || w.Subject == "" {
		return nil, fmt.Errorf("%w: no id or subject", ErrUndecodable)
	}
	t, err := time.Parse(time.RFC3339Nano, w.Time)
	if err != nil {
		return nil, fmt.Errorf("%w: time %q", ErrUndecodable, w.Time)
	}
	if len(w.Data) == 0 || string(w.Data) == "null" {
		return nil, fmt.Errorf("%w: no data", ErrUndecodable)
	}
	reconciled := false
	switch string(w.Reconciled) {
	case "true", `"true"`:
		reconciled = true
	}
	return newEvent(w.ID, w.Subject, w.Source, w.VerifeyeSource, w.VerifeyeOutcome, t, reconciled, w.Data), nil
}

// newEvent completes an Event from the attributes Decode read.
func newEvent(id, subject, source, verifeyeSource, verifeyeOutcome string, t time.Time, reconciled bool, data json.RawMessage) *Event {
	ev := &Event{ID: id, SessionID: subject, Source: verifeyeSource, Outcome: verifeyeOutcome, Time: t, Reconciled: reconciled, Data: data}
	if ev.Source == "" {
		ev.Source = strings.TrimPrefix(source, cloudEventSourcePrefix)
	}
	if ev.Outcome == "" {
		r, _ := ev.Result()
		ev.Outcome = Outcome(r)
	}
	return ev
}

// decodeExact reads the exact bytes Marshal makes: the attributes in its
// order, no whitespace outside data, strings of printable ASCII without
// escapes (so their bytes are their values). It reports false for anything
// else, which decodeJSON then reads; where it reports true, decodeJSON gives
// the same Event. It copies what it keeps: the attributes in one string, data
// in a slice of its own.
func decodeExact(b []byte) (*Event, bool) {
	r := exactReader{b: b}
	var at [9][2]int // where each string attribute's value lies in b
	for i, name := range exactNames {
		if !r.literal(name) {
			return nil, false
		}
		v, ok := r.str()
		if !ok {
			return nil, false
		}
		at[i] = v
	}
	reconciled := r.literal(`,"verifeyereconciled":true`)
	if !r.literal(`,"data":`) || len(b) < r.i+2 || b[len(b)-1] != '}' {
		return nil, false
	}
	data := b[r.i : len(b)-1]
	if isSpace(data[0]) || isSpace(data[len(data)-1]) || string(data) == "null" || !json.Valid(data) {
		return nil, false
	}
	// One string holds every attribute; each is a slice of it.
	head := string(b[:r.i])
	attr := func(i int) string { return head[at[i][0]:at[i][1]] }
	spec, typ, dct := attr(0), attr(2), attr(6)
	if (!strings.HasPrefix(spec, "1.") && spec != "1") || typ != EventType || dct != DataContentType {
		return nil, false
	}
	id, subject := attr(1), attr(4)
	if id == "" || subject == "" {
		return nil, false
	}
	t, err := time.Parse(time.RFC3339Nano, attr(5))
	if err != nil {
		return nil, false
	}
	return newEvent(id, subject, attr(3), attr(7), attr(8), t, reconciled, bytes.Clone(data)), true
}

// exactNames are the string attributes Marshal writes, in its order, each
// with what precedes its value.
var exactNames = [9]string{
	`{"specversion":`, `,"id":`, `,"type":`, `,"source":`, `,"subject":`,
	`,"time":`, `,"datacontenttype":`, `,"verifeyesource":`, `,"verifeyeoutcome":`,
}

type exactReader struct {
	b []byte
	i int // the next byte to read
}

// literal consumes s if the input continues with it.
func (r *exactReader) literal(s string) bool {
	if len(r.b)-r.i < len(s) || string(r.b[r.i:r.i+len(s)]) != s {
		return false
	}
	r.i += len(s)
	return true
}

// str consumes a JSON string of printable ASCII without escapes and returns
// where its value lies.
func (r *exactReader) str() ([2]int, bool) {
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return [2]int{}, false
	}
	start := r.i + 1
	for j := start; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			r.i = j + 1
			return [2]int{start, j}, true
		case c == '\\' || c < 0x20 || c >= 0x7f:
			return [2]int{}, false
		}
	}
	return [2]int{}, false
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// Marshal returns the structured-mode CloudEvent of ev, the exact bytes the
// bridge publishes. An empty ID means SessionID. Data is spliced in byte for
// byte (json.Marshal would compact it); it must be valid JSON, else Marshal
// returns an error.
func Marshal(ev *Event) ([]byte, error) {
	data := bytes.TrimSpace(ev.Data)
	if !json.Valid(data) {
		return nil, errors.New("outcome: event data is not valid JSON")
	}
	id := ev.ID
	if id == "" {
		id = ev.SessionID
	}
	var reconciled json.RawMessage
	if ev.Reconciled {
		reconciled = json.RawMessage("true")
	}
	head, err := json.Marshal(wire{
		SpecVersion:     SpecVersion,
		ID:              id,
		Type:            EventType,
		Source:          CloudEventSource(ev.Source),
		Subject:         ev.SessionID,
		Time:            ev.Time.UTC().Format(time.RFC3339Nano),
		DataContentType: DataContentType,
		VerifeyeSource:  ev.Source,
		VerifeyeOutcome: ev.Outcome,
		Reconciled:      reconciled,
	})
	if err != nil {
		return nil, fmt.Errorf("outcome: marshal event: %w", err)
	}
	// head ends with ,"data":null} (Data is nil there): cut that and splice.
	head = head[:len(head)-len(`,"data":null}`)]
	out := make([]byte, 0, len(head)+len(data)+9)
	out = append(out, head...)
	out = append(out, `,"data":`...)
	out = append(out, data...)
	return append(out, '}'), nil
}

// The accessors below read the fields of Data that the VerifEye documentation
// names. Realeyes does not publish the body's shape, so each one reports
// whether the field was there with a usable value (ok) instead of inventing a
// zero value: a missing, null or differently typed field gives ok false. Keys
// match exactly first, then case-insensitively. They parse Data on each call.

// Result returns data.verificationResult, the overall result (passed, failed, …).
func (e *Event) Result() (string, bool) { return e.str("verificationResult") }

// Liveness returns data.livenessResult (passed, failed, not_executed, …).
func (e *Event) Liveness() (string, bool) { return e.str("livenessResult") }

// FaceRecognition returns data.faceRecognitionResult.
func (e *Event) FaceRecognition() (string, bool) { return e.str("faceRecognitionResult") }

// AgeVerification returns data.ageVerificationResult.
func (e *Event) AgeVerification() (string, bool) { return e.str("ageVerificationResult") }

// GenderVerification returns data.genderVerificationResult.
func (e *Event) GenderVerification() (string, bool) { return e.str("genderVerificationResult") }

// Gender returns data.gender as given (male, Male, …).
func (e *Event) Gender() (string, bool) { return e.str("gender") }

// FaceID returns data.faceId.
func (e *Event) FaceID() (string, bool) { return e.str("faceId") }

// Age returns data.age: a JSON number, or a string holding one.
func (e *Event) Age() (float64, bool) {
	raw, ok := e.field("age")
	if !ok {
		return 0, false
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0, false
		}
		n = json.Number(strings.TrimSpace(s))
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		return 0, false
	}
	return f, true
}

// Field returns the raw JSON of a top-level field of Data, for fields the
// accessors do not cover; ok is false when it is missing or null.
func (e *Event) Field(name string) (json.RawMessage, bool) { return e.field(name) }

func (e *Event) str(name string) (string, bool) {
	raw, ok := e.field(name)
	if !ok {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func (e *Event) field(name string) (json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(e.Data, &m) != nil {
		return nil, false
	}
	raw, ok := m[name]
	if !ok {
		for k, v := range m {
			if strings.EqualFold(k, name) {
				raw, ok = v, true
				break
			}
		}
	}
	if !ok || string(raw) == "null" {
		return nil, false
	}
	return raw, true
}
