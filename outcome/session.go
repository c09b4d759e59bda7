package outcome

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// States of a session in the ledger.
const (
	StateExpected     = "expected"      // a service announced it (Expect); no webhook yet
	StateReceived     = "received"      // the webhook arrived; not enriched yet
	StateEnriched     = "enriched"      // the outcome is on StreamResults (final)
	StateDeadLettered = "dead_lettered" // the webhook went to StreamDLQ (final)
	StateAbandoned    = "abandoned"     // expected, never found by the API in time (final)
)

// Session is a session's entry in the ledger (BucketSessions, key SessionKey).
// Its JSON form, which the bridge writes, is:
//
//	{"sessionId":"<id>","source":"<source>","state":"enriched","outcome":"passed",
//	 "updatedAt":"<RFC 3339>","event":<the outcome's CloudEvent, or null>,
//	 "resultSeq":<n>,"reconciled":true,"reason":"<DLQ reason>",
//	 "expectedAt":"<RFC 3339>","reconcileAttempts":<n>,"apiCalls":<n>,"lastStatus":<n>}
//
// The fields after event are omitted when empty.
// outcome is "" until the session is enriched; event is null (or absent)
// until then. Unknown fields are ignored when reading.
type Session struct {
	SessionID string
	Source    string
	State     string // StateExpected, StateReceived, StateEnriched, StateDeadLettered, StateAbandoned
	Outcome   string
	UpdatedAt time.Time
	Event     *Event // the outcome, once enriched

	// ResultSeq is the outcome's sequence on StreamResults, once enriched.
	ResultSeq uint64
	// Reconciled reports that the outcome was fetched for an expected session
	// whose webhook never came.
	Reconciled bool
	// Reason is the DLQ reason of a dead_lettered session.
	Reason string
	// ExpectedAt is when a service announced the session (Expect), zero if
	// none did; ReconcileAttempts counts the webhooks the bridge injected for it.
	ExpectedAt        time.Time
	ReconcileAttempts int
	// APICalls counts the enricher's API calls for the session's webhook so
	// far, LastStatus is the last call's HTTP status (0: no answer).
	APICalls   int
	LastStatus int
	// Calls are the enricher's API calls for the session, oldest first: when
	// each answered and with what status (the last MaxCallsKept).
	Calls []Call
}

// Call is one Get Session Result call the enricher made for a session.
type Call struct {
	At     time.Time `json:"at"`
	Status int       `json:"status"` // the HTTP status; 0 when no answer came
}

// MaxCallsKept bounds Session.Calls: the oldest go first.
const MaxCallsKept = 20

// AddCall records the API call number n (1 for the first) of the session
// with its status, unless the entry has it already (a redelivered message
// repeats its number). It keeps APICalls, LastStatus and Calls in step.
func (s *Session) AddCall(n, status int, at time.Time) {
	if n <= s.APICalls {
		return
	}
	s.APICalls, s.LastStatus = n, status
	s.Calls = append(s.Calls, Call{At: at.UTC(), Status: status})
	if len(s.Calls) > MaxCallsKept {
		s.Calls = append([]Call(nil), s.Calls[len(s.Calls)-MaxCallsKept:]...)
	}
}

// Final reports whether the session's state no longer changes by itself:
// enriched, dead_lettered or abandoned.
func (s *Session) Final() bool {
	switch s.State {
	case StateEnriched, StateDeadLettered, StateAbandoned:
		return true
	}
	return false
}

type sessionJSON struct {
	SessionID string          `json:"sessionId"`
	Source    string          `json:"source"`
	State     string          `json:"state"`
	Outcome   string          `json:"outcome"`
	UpdatedAt time.Time       `json:"updatedAt"`
	Event     json.RawMessage `json:"event"`

	ResultSeq         uint64     `json:"resultSeq,omitempty"`
	Reconciled        bool       `json:"reconciled,omitempty"`
	Reason            string     `json:"reason,omitempty"`
	ExpectedAt        *time.Time `json:"expectedAt,omitempty"`
	ReconcileAttempts int        `json:"reconcileAttempts,omitempty"`
	APICalls          int        `json:"apiCalls,omitempty"`
	LastStatus        int        `json:"lastStatus,omitempty"`
	Calls             []Call     `json:"calls,omitempty"`
}

// MarshalJSON returns the ledger's JSON form of s, with the event in the exact
// bytes of Marshal.
func (s *Session) MarshalJSON() ([]byte, error) {
	j := sessionJSON{SessionID: s.SessionID, Source: s.Source, State: s.State, Outcome: s.Outcome, UpdatedAt: s.UpdatedAt.UTC(),
		ResultSeq: s.ResultSeq, Reconciled: s.Reconciled, Reason: s.Reason, ReconcileAttempts: s.ReconcileAttempts,
		APICalls: s.APICalls, LastStatus: s.LastStatus, Calls: s.Calls}
	if !s.ExpectedAt.IsZero() {
		t := s.ExpectedAt.UTC()
		j.ExpectedAt = &t
	}
	if s.Event != nil {
		ev, err := Marshal(s.Event)
		if err != nil {
			return nil, err
		}
		j.Event = ev
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the ledger's JSON form; an "event" that is present and
// not null must decode (Decode).
func (s *Session) UnmarshalJSON(b []byte) error {
	var j sessionJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("outcome: session: %w", err)
	}
	*s = Session{SessionID: j.SessionID, Source: j.Source, State: j.State, Outcome: j.Outcome, UpdatedAt: j.UpdatedAt,
		ResultSeq: j.ResultSeq, Reconciled: j.Reconciled, Reason: j.Reason, ReconcileAttempts: j.ReconcileAttempts,
		APICalls: j.APICalls, LastStatus: j.LastStatus, Calls: j.Calls}
	if j.ExpectedAt != nil {
		s.ExpectedAt = *j.ExpectedAt
	}
	if len(j.Event) > 0 && string(j.Event) != "null" {
		ev, err := Decode(j.Event)
		if err != nil {
			return fmt.Errorf("outcome: session %s: event: %w", j.SessionID, err)
		}
		s.Event = ev
	}
	return nil
}

// ErrNotFound is returned by Lookup for a session the ledger does not hold.
var ErrNotFound = errors.New("outcome: session not found")

// ErrInvalidSessionID and ErrInvalidSource are returned for arguments that
// cannot be a session ID (8-4-4-4-12 hex) or a source ([a-z0-9_-]{1,64}).
var (
	ErrInvalidSessionID = errors.New("outcome: invalid session ID: want 8-4-4-4-12 hex")
	ErrInvalidSource    = errors.New("outcome: invalid source: want [a-z0-9_-]{1,64}")
)

func sessions(ctx context.Context, js jetstream.JetStream, sessionID string) (jetstream.KeyValue, error) {
	if !ValidSessionID(sessionID) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidSessionID, sessionID)
	}
	kv, err := js.KeyValue(ctx, BucketSessions)
	if err != nil {
		return nil, fmt.Errorf("outcome: session ledger %s: %w", BucketSessions, err)
	}
	return kv, nil
}

// Lookup returns the ledger's entry for sessionID. It returns ErrNotFound for
// a session the ledger does not hold, ErrInvalidSessionID for an ID that
// cannot be one, and an error wrapping jetstream.ErrBucketNotFound when the
// bridge keeps no ledger.
func Lookup(ctx context.Context, js jetstream.JetStream, sessionID string) (*Session, error) {
	kv, err := sessions(ctx, js, sessionID)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, SessionKey(sessionID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, sessionID)
	}
	if err != nil {
		return nil, fmt.Errorf("outcome: lookup %s: %w", sessionID, err)
	}
	var s Session
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Wait returns the session's entry once its state is final (Session.Final),
// watching the ledger (no polling). It waits for a session the ledger does not
// hold yet, too. It returns ctx.Err() if ctx ends first, and the errors of
// Lookup for an invalid ID or a missing ledger.
func Wait(ctx context.Context, js jetstream.JetStream, sessionID string) (*Session, error) {
	kv, err := sessions(ctx, js, sessionID)
	if err != nil {
		return nil, err
	}
	w, err := kv.Watch(ctx, SessionKey(sessionID))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("outcome: wait %s: %w", sessionID, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, fmt.Errorf("outcome: wait %s: watch ended", sessionID)
			}
			// nil marks the end of the current values; deletes carry no value.
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var s Session
			if err := json.Unmarshal(e.Value(), &s); err != nil {
				return nil, err
			}
			if s.Final() {
				return &s, nil
			}
		}
	}
}

// Expect announces that the caller started sessionID with source, so the
// bridge fetches its outcome even if VerifEye's webhook never comes. It
// publishes {"verificationSessionId":"<id>","source":"<source>"} on
// ExpectSubject (WithPrefix applies): with JetStream, waiting for the
// acknowledgement, when StreamExpectations captures the subject, else as a
// plain NATS message (flushed). Announcing a session twice is harmless. It
// returns ErrInvalidSessionID or ErrInvalidSource for bad arguments, without
// publishing.
func Expect(ctx context.Context, js jetstream.JetStream, source, sessionID string, opts ...Option) error {
	o := newOptions(opts)
	if !ValidSessionID(sessionID) {
		return fmt.Errorf("%w: %q", ErrInvalidSessionID, sessionID)
	}
	if !ValidSource(source) {
		return fmt.Errorf("%w: %q", ErrInvalidSource, source)
	}
	if !ValidPrefix(o.prefix) {
		return fmt.Errorf("outcome: expect: invalid prefix %q", o.prefix)
	}
	body, _ := json.Marshal(Expectation{SessionID: sessionID, Source: source})
	msg := nats.NewMsg(ExpectSubject(o.prefix, source))
	msg.Data = body
	// A plain subscriber on the subject would swallow a JetStream publish
	// without answering it: ask which stream captures the subject first.
	_, err := js.StreamNameBySubject(ctx, msg.Subject)
	if err == nil {
		_, err = js.PublishMsg(ctx, msg, jetstream.WithMsgID(ExpectMsgID(sessionID)))
	} else if errors.Is(err, jetstream.ErrStreamNotFound) {
		nc := js.Conn()
		if err = nc.PublishMsg(msg); err == nil {
			if _, ok := ctx.Deadline(); ok {
				err = nc.FlushWithContext(ctx)
			} else {
				err = nc.Flush()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("outcome: expect %s: %w", sessionID, err)
	}
	return nil
}

// Expectation is the body of an expectation message.
type Expectation struct {
	SessionID string `json:"verificationSessionId"`
	Source    string `json:"source"`
}

// ExpectMsgID returns the Nats-Msg-Id of an expectation: expect:<session ID in
// lower case>.
func ExpectMsgID(sessionID string) string { return "expect:" + SessionKey(sessionID) }
