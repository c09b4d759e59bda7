// Package streams is the NATS half of the external contract: stream names and
// configurations, subjects, header names and message IDs. The ingest (bridge) and
// the enricher meet here and nowhere else.
package streams

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/outcome"
)

// Stream names of the contract.
const (
	Webhooks = outcome.StreamWebhooks
	Results  = outcome.StreamResults
	DLQ      = outcome.StreamDLQ
	// Spool is the ingest's local store-and-forward stream (under
	// DATA_DIR/spool, never on the cluster). A PubAck from it means the
	// webhook was spooled, not yet on Webhooks.
	Spool = "VERIFEYE_SPOOL"
)

// Header names of the contract.
const (
	HeaderMsgID       = outcome.HeaderMsgID // Nats-Msg-Id
	HeaderReceivedAt  = outcome.HeaderReceivedAt
	HeaderError       = outcome.HeaderError
	HeaderErrorDetail = outcome.HeaderErrorDetail
	HeaderLastStatus  = outcome.HeaderLastStatus
	HeaderAttempts    = outcome.HeaderAttempts
	HeaderOrigSubject = outcome.HeaderOrigSubject
	HeaderOrigSeq     = outcome.HeaderOrigSeq
	// HeaderReplay marks a webhook re-published by `verifeye-bridge replay`: its
	// value (the original's stream sequence) makes the outcome a new event,
	// with the ID ReplayOutcomeID, instead of a duplicate of the first one.
	HeaderReplay = outcome.HeaderReplay
	// HeaderSpooledAt is added to a webhook forwarded from the local spool: when
	// it was spooled (RFC 3339).
	HeaderSpooledAt   = outcome.HeaderSpooledAt
	HeaderContentType = outcome.HeaderContentType
	HeaderTraceparent = outcome.HeaderTraceparent
	HeaderTracestate  = outcome.HeaderTracestate
)

// EventCompleted is the one webhook event the enricher enriches.
const EventCompleted = outcome.EventCompleted

// DefaultSource is the source of webhooks posted to the URL without a source segment.
const DefaultSource = outcome.DefaultSource

// MaxWebhookBytes is the largest webhook body accepted, and the stream's MaxMsgSize
// leaves room for it plus headers.
const MaxWebhookBytes = 64 << 10

// MaxWebhookHeaderBytes is the room the webhooks stream's MaxMsgSize leaves for
// the headers of a webhook message beside a MaxWebhookBytes body: the message
// ID, the receive time, traceparent, a tracestate the ingest cuts to 512 bytes,
// and the replay and redrive headers, with room to spare.
const MaxWebhookHeaderBytes = 4096

// The validators below run on every webhook, so they are byte loops rather than
// regular expressions (which cost a tenth of the handler's CPU); the tests hold
// each to the expression in its comment.

// ValidSource reports whether s may be a webhook source (one NATS token):
// ^[a-z0-9_-]{1,64}$. The rule is outcome's, the contract's one owner.
func ValidSource(s string) bool { return outcome.ValidSource(s) }

// ValidEvent reports whether s may be a webhook event name: ^[A-Za-z][A-Za-z0-9_-]{0,63}$.
func ValidEvent(s string) bool {
	return len(s) >= 1 && len(s) <= 64 && letter(s[0]) && all(s, tokenByte)
}

// ValidSessionID reports whether s is a UUID in the strict 8-4-4-4-12 hex form
// (outcome.ValidSessionID). uuid.Parse is deliberately not used: it also
// accepts braces, URNs and undashed forms.
func ValidSessionID(s string) bool { return outcome.ValidSessionID(s) }

// ValidPrefix reports whether s may be the SUBJECT_PREFIX (one NATS token): ^[A-Za-z0-9_-]{1,64}$.
func ValidPrefix(s string) bool { return ValidToken(s) }

// ValidToken reports whether s is a plain token, safe as one NATS subject token,
// a consumer name or a header value read back from a stream (such as the
// HeaderReplay marker): ^[A-Za-z0-9_-]{1,64}$.
func ValidToken(s string) bool { return len(s) >= 1 && len(s) <= 64 && all(s, tokenByte) }

func all(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) bool     { return c >= 'a' && c <= 'z' }
func digit(c byte) bool     { return c >= '0' && c <= '9' }
func letter(c byte) bool    { return lower(c | 0x20) }
func tokenByte(c byte) bool { return letter(c) || digit(c) || c == '_' || c == '-' }

// ValidOutcome reports whether s may be the outcome token of a result subject:
// ^[a-z][a-z0-9_-]{0,31}$.
func ValidOutcome(s string) bool {
	return len(s) >= 1 && len(s) <= 32 && lower(s[0]) &&
		all(s, func(c byte) bool { return lower(c) || digit(c) || c == '_' || c == '-' })
}

// Outcome maps a verificationResult value to the subject token of the result
// stream: the value trimmed and lower-cased when that satisfies ValidOutcome
// (passed, failed, not_executed, ...), else "unknown" (outcome.Outcome, the
// one place this rule lives). The result is always safe in a NATS subject and
// as a metric label.
func Outcome(verificationResult string) string { return outcome.Outcome(verificationResult) }

// Subjects builds the subjects of one deployment (one SUBJECT_PREFIX).
// The zero value is not usable; use NewSubjects.
type Subjects struct{ prefix string }

// NewSubjects returns the subjects under prefix, which must satisfy ValidPrefix.
func NewSubjects(prefix string) (Subjects, error) {
	if !ValidPrefix(prefix) {
		return Subjects{}, fmt.Errorf("streams: invalid subject prefix %q: want one token of [A-Za-z0-9_-]", prefix)
	}
	return Subjects{prefix: prefix}, nil
}

// Prefix returns the first token of every subject.
func (s Subjects) Prefix() string { return s.prefix }

// Webhook returns <prefix>.webhook.<source>.<event>.
func (s Subjects) Webhook(source, event string) string {
	return outcome.WebhookSubject(s.prefix, source, event)
}

// Result returns <prefix>.result.<source>.<outcome>.
func (s Subjects) Result(source, result string) string {
	return outcome.ResultSubject(s.prefix, source, result)
}

// DLQ returns <prefix>.dlq.<source>.<event>.
func (s Subjects) DLQ(source, event string) string {
	return outcome.DLQSubject(s.prefix, source, event)
}

// WebhooksAll is the wildcard subject of the webhooks stream.
func (s Subjects) WebhooksAll() string { return outcome.WebhooksAll(s.prefix) }

// ResultsAll is the wildcard subject of the results stream.
func (s Subjects) ResultsAll() string { return outcome.ResultsAll(s.prefix) }

// DLQAll is the wildcard subject of the dead-letter stream.
func (s Subjects) DLQAll() string { return outcome.DLQAll(s.prefix) }

// CompletedFilter is the enricher's filter: every source, VerificationCompleted only.
func (s Subjects) CompletedFilter() string { return s.prefix + ".webhook.*." + EventCompleted }

// ErrBadSubject is returned by Parse when a subject is not one of the contract's.
var ErrBadSubject = errors.New("streams: subject is not of the form <prefix>.<kind>.<source>.<name>")

// Parse splits a webhook, result or DLQ subject into its kind ("webhook",
// "result", "dlq"), source and last token (event or outcome). It is as strict
// as the ingest: the source must satisfy ValidSource and the last token
// ValidEvent (ValidOutcome for a result), so a subject read back from a stream
// that no ingest could have written (a wildcard or a stray token in it) is
// refused with ErrBadSubject.
func (s Subjects) Parse(subject string) (kind, source, name string, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0] != s.prefix || !ValidSource(parts[2]) {
		return "", "", "", fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	switch kind, source, name = parts[1], parts[2], parts[3]; kind {
	case "webhook", "dlq":
		if ValidEvent(name) {
			return kind, source, name, nil
		}
	case "result":
		if ValidOutcome(name) {
			return kind, source, name, nil
		}
	}
	return "", "", "", fmt.Errorf("%w: %q", ErrBadSubject, subject)
}

// WebhookMsgID returns the Nats-Msg-Id of a webhook: <event>:<sessionId>, the
// session ID lower-cased so that one session never yields two IDs.
func WebhookMsgID(event, sessionID string) string {
	return event + ":" + strings.ToLower(sessionID)
}

// ParseWebhookMsgID splits an ID made by WebhookMsgID.
func ParseWebhookMsgID(id string) (event, sessionID string, ok bool) {
	event, sessionID, ok = strings.Cut(id, ":")
	if !ok || !ValidEvent(event) || !ValidSessionID(sessionID) {
		return "", "", false
	}
	return event, sessionID, true
}

// RedriveMsgID returns the Nats-Msg-Id of a dead-lettered webhook re-published
// to the webhooks stream: <event>:<sessionId>:redrive:<DLQ stream sequence>. It
// escapes the first ID's duplicate window, and redriving one DLQ entry twice
// yields one message.
func RedriveMsgID(event, sessionID string, dlqSeq uint64) string {
	return WebhookMsgID(event, sessionID) + ":redrive:" + strconv.FormatUint(dlqSeq, 10)
}

// ReplayMsgID returns the Nats-Msg-Id of a webhook re-published for
// re-enrichment: <event>:<sessionId>:replay:<original stream sequence>, so an
// interrupted replay run again within the duplicate window adds nothing twice.
func ReplayMsgID(event, sessionID string, seq uint64) string {
	return WebhookMsgID(event, sessionID) + ":replay:" + strconv.FormatUint(seq, 10)
}

// ReplayOutcomeID returns the Nats-Msg-Id and CloudEvent id of the outcome of a
// webhook carrying HeaderReplay: <sessionId>:replay:<replay>, or the session ID
// itself when replay is not a stream sequence (ParseSeq): a marker that is not
// one never makes an outcome escape de-duplication.
func ReplayOutcomeID(sessionID, replay string) string {
	if _, ok := ParseSeq(replay); !ok {
		return sessionID
	}
	return sessionID + ":replay:" + replay
}

// ParseSeq reads a stream sequence written by the bridge (HeaderReplay,
// HeaderOrigSeq): a decimal number from 1 to 2^64-1 with no sign, no leading
// zero and nothing around it.
func ParseSeq(v string) (uint64, bool) {
	if v == "" || v[0] == '0' || !all(v, digit) {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil
}

// Limits are the retention settings of the three streams.
type Limits struct {
	Replicas int
	// Duplicates is the de-duplication window of the webhooks and results streams.
	Duplicates       time.Duration
	WebhooksMaxAge   time.Duration
	WebhooksMaxBytes int64
	ResultsMaxAge    time.Duration
	ResultsMaxBytes  int64
	DLQMaxAge        time.Duration
	DLQMaxBytes      int64
	// SessionsMaxAge is how long the session ledger keeps an entry (SESSIONS_MAX_AGE).
	SessionsMaxAge time.Duration
}

// DefaultLimits returns the defaults of the documented settings.
func DefaultLimits() Limits {
	return Limits{
		Replicas:         1,
		Duplicates:       2 * time.Minute,
		WebhooksMaxAge:   7 * 24 * time.Hour,
		WebhooksMaxBytes: 1 << 30,
		ResultsMaxAge:    7 * 24 * time.Hour,
		ResultsMaxBytes:  1 << 30,
		DLQMaxAge:        30 * 24 * time.Hour,
		DLQMaxBytes:      256 << 20,
		SessionsMaxAge:   720 * time.Hour,
	}
}

// Configs returns the stream configurations for subjects s under limits l.
func Configs(s Subjects, l Limits) []jetstream.StreamConfig {
	if l.Replicas < 1 {
		l.Replicas = 1
	}
	dup := func(maxAge time.Duration) time.Duration {
		// The server refuses a duplicate window longer than MaxAge.
		if maxAge > 0 && l.Duplicates > maxAge {
			return maxAge
		}
		return l.Duplicates
	}
	exp := outcome.ExpectationsStreamConfig(s.Prefix(), l.Replicas)
	exp.Duplicates = dup(exp.MaxAge)
	return []jetstream.StreamConfig{{
		Name:        Webhooks,
		Description: "VerifEye webhooks as received (verifeye-bridge)",
		Subjects:    []string{s.WebhooksAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    l.Replicas,
		MaxAge:      l.WebhooksMaxAge,
		MaxBytes:    l.WebhooksMaxBytes,
		// A full stream refuses new webhooks (the ingest answers 503) instead of
		// silently dropping ones not enriched yet.
		Discard:     jetstream.DiscardNew,
		Duplicates:  dup(l.WebhooksMaxAge),
		MaxMsgSize:  MaxWebhookBytes + MaxWebhookHeaderBytes,
		AllowDirect: true,
		// Group commit: the ingest stores concurrent webhooks as one atomic
		// batch, one fsync for all (nats-server 2.12 and later; an older
		// server ignores the setting and the ingest publishes one by one).
		AllowAtomicPublish: true,
	}, {
		Name:        Results,
		Description: "Enriched VerifEye outcomes as CloudEvents (verifeye-bridge)",
		Subjects:    []string{s.ResultsAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    l.Replicas,
		MaxAge:      l.ResultsMaxAge,
		MaxBytes:    l.ResultsMaxBytes,
		Discard:     jetstream.DiscardOld,
		Duplicates:  dup(l.ResultsMaxAge),
		AllowDirect: true,
	}, {
		Name:        DLQ,
		Description: "VerifEye webhooks that could not be enriched (verifeye-bridge)",
		Subjects:    []string{s.DLQAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    l.Replicas,
		MaxAge:      l.DLQMaxAge,
		MaxBytes:    l.DLQMaxBytes,
		Discard:     jetstream.DiscardOld,
		Duplicates:  dup(l.DLQMaxAge),
		AllowDirect: true,
	}, exp}
}

// Expectations and Sessions are the stream of expectations and the key-value
// bucket of the session ledger.
const (
	Expectations = outcome.StreamExpectations
	Sessions     = outcome.BucketSessions
)

// SessionsConfig returns the configuration of the session ledger's bucket.
func SessionsConfig(l Limits) jetstream.KeyValueConfig {
	if l.SessionsMaxAge <= 0 {
		l.SessionsMaxAge = DefaultLimits().SessionsMaxAge
	}
	return outcome.SessionsBucketConfig(l.SessionsMaxAge, max(l.Replicas, 1))
}

// Ensure creates the streams and the session ledger's bucket or updates them
// to the configurations of Configs and SessionsConfig. It is idempotent and safe to call from many replicas at once.
//
// Each stream gets attempts of at most AttemptTimeout: when several replicas
// create the same clustered stream at once, nats-server answers only the one
// whose request won, and the others' requests are never answered. Their next
// attempt finds the stream and succeeds at once.
func Ensure(ctx context.Context, js jetstream.JetStream, s Subjects, l Limits) error {
	for _, cfg := range Configs(s, l) {
		for attempt := 1; ; attempt++ {
			c, cancel := context.WithTimeout(ctx, AttemptTimeout)
			_, err := js.CreateOrUpdateStream(c, cfg)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil || attempt == 3 || !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("streams: create or update %s: %w", cfg.Name, err)
			}
		}
	}
	for attempt := 1; ; attempt++ {
		c, cancel := context.WithTimeout(ctx, AttemptTimeout)
		_, err := js.CreateOrUpdateKeyValue(c, SessionsConfig(l))
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || attempt == 3 || !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("streams: create or update bucket %s: %w", Sessions, err)
		}
	}
}

// AttemptTimeout bounds one create-or-update request of Ensure.
const AttemptTimeout = 3 * time.Second

// Ready reports whether the bridge can make webhooks durable right now: nc is
// connected and the webhooks stream exists. It is the check behind /readyz. It
// returns an error naming what is missing; it is safe for concurrent use.
func Ready(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error {
	if !nc.IsConnected() {
		return fmt.Errorf("streams: nats not connected (%s)", nc.Status())
	}
	if _, err := js.Stream(ctx, Webhooks); err != nil {
		return fmt.Errorf("streams: stream %s: %w", Webhooks, err)
	}
	return nil
}

// ErrNoRoom is wrapped by the errors that say storage has no room for another
// webhook (as opposed to NATS being unreachable).
var ErrNoRoom = errors.New("streams: no room to store webhooks")

// HasRoom reports whether the webhooks stream can take one more webhook of the
// largest size (or, in a stream smaller than twice that, has half its bytes
// free) and the account is that far under its storage limit; the errors that
// say there is no room wrap ErrNoRoom. It is the probe that ends a storage
// refusal of the ingest; it writes nothing. It is safe for concurrent use.
func HasRoom(ctx context.Context, js jetstream.JetStream) error {
	st, err := js.Stream(ctx, Webhooks)
	if err != nil {
		return fmt.Errorf("streams: stream %s: %w", Webhooks, err)
	}
	info := st.CachedInfo()
	need := int64(MaxWebhookBytes + MaxWebhookHeaderBytes)
	if max := info.Config.MaxBytes; max > 0 && int64(info.State.Bytes)+min(need, max/2) > max {
		return fmt.Errorf("%w: stream %s is full (%d of %d bytes)", ErrNoRoom, Webhooks, info.State.Bytes, max)
	}
	acc, err := js.AccountInfo(ctx)
	if err != nil {
		return fmt.Errorf("streams: account info: %w", err)
	}
	if max := acc.Limits.MaxStore; max > 0 && int64(acc.Store)+need > max {
		return fmt.Errorf("%w: account storage is full (%d of %d bytes)", ErrNoRoom, acc.Store, max)
	}
	return nil
}
