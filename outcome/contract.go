package outcome

import (
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream and bucket names of the contract.
const (
	// StreamWebhooks holds the webhooks as received, on WebhookSubject.
	StreamWebhooks = "VERIFEYE_WEBHOOKS"
	// StreamResults holds one outcome CloudEvent per session, on ResultSubject.
	// Services make their own durable consumers on it (see Consume).
	StreamResults = "VERIFEYE_RESULTS"
	// StreamDLQ holds the webhooks that could not be enriched, on DLQSubject.
	StreamDLQ = "VERIFEYE_DLQ"
	// StreamExpectations holds the expectations announced with Expect, on
	// ExpectSubject; see ExpectationsStreamConfig.
	StreamExpectations = "VERIFEYE_EXPECTATIONS"
	// BucketSessions is the key-value bucket of the session ledger: key the
	// lower-cased session ID, value a Session in JSON.
	BucketSessions = "VERIFEYE_SESSIONS"
)

// Header names of the contract.
const (
	HeaderMsgID = jetstream.MsgIDHeader // Nats-Msg-Id
	// HeaderExpectedStream is set by the bridge's publishes so that only the
	// intended stream stores them; JetStream keeps it on the stored message.
	HeaderExpectedStream = jetstream.ExpectedStreamHeader // Nats-Expected-Stream
	HeaderContentType    = "Content-Type"
	// HeaderReceivedAt is when the bridge received the webhook (RFC 3339).
	HeaderReceivedAt = "Verifeye-Received-At"
	// HeaderReconciled is "true" on a webhook the bridge injected itself for an
	// expected session whose webhook never came.
	HeaderReconciled = "Verifeye-Reconciled"
	// HeaderReplay marks a webhook re-published for re-enrichment; its value is
	// the original's stream sequence.
	HeaderReplay = "Verifeye-Replay"
	// HeaderSpooledAt is when an ingest spooled a webhook it could not make
	// durable on the cluster at once (RFC 3339).
	HeaderSpooledAt = "Verifeye-Spooled-At"
	// HeaderError names why a webhook was dead-lettered.
	HeaderError       = "Verifeye-Error"
	HeaderErrorDetail = "Verifeye-Error-Detail"
	HeaderLastStatus  = "Verifeye-Last-Status"
	HeaderAttempts    = "Verifeye-Attempts"
	HeaderOrigSubject = "Verifeye-Original-Subject"
	HeaderOrigSeq     = "Verifeye-Original-Sequence"
	// HeaderTraceparent and HeaderTracestate carry the W3C trace context.
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

// CloudEvent attributes of an outcome.
const (
	// EventType is the CloudEvent type of every outcome.
	EventType = "ai.realeyes.verifeye.verification.completed"
	// ContentType is the Content-Type header of an outcome message: a
	// CloudEvents 1.0 structured-mode JSON event.
	ContentType = "application/cloudevents+json"
	// DataContentType is the datacontenttype of an outcome: data is JSON.
	DataContentType = "application/json"
	// SpecVersion is the CloudEvents version of the outcome.
	SpecVersion = "1.0"
)

// EventCompleted is the webhook event the bridge enriches.
const EventCompleted = "VerificationCompleted"

// DefaultSource is the source of webhooks posted to the URL without a source segment.
const DefaultSource = "default"

// DefaultPrefix is the first token of every subject unless the bridge's
// SUBJECT_PREFIX says otherwise.
const DefaultPrefix = "verifeye"

// Verification results seen in the API's answers, and the outcome subject
// token of a result that is not a plain word.
const (
	ResultPassed      = "passed"
	ResultFailed      = "failed"
	ResultNotExecuted = "not_executed"
	OutcomeUnknown    = "unknown"
)

// WebhookSubject returns <prefix>.webhook.<source>.<event>.
func WebhookSubject(prefix, source, event string) string {
	return prefix + ".webhook." + source + "." + event
}

// ResultSubject returns <prefix>.result.<source>.<outcome>. An empty source or
// outcome becomes the wildcard "*", so ResultSubject(p, "", "passed") filters
// every source's passed outcomes.
func ResultSubject(prefix, source, outcome string) string {
	return prefix + ".result." + star(source) + "." + star(outcome)
}

// DLQSubject returns <prefix>.dlq.<source>.<event>.
func DLQSubject(prefix, source, event string) string {
	return prefix + ".dlq." + source + "." + event
}

// ExpectSubject returns <prefix>.expect.<source>.
func ExpectSubject(prefix, source string) string { return prefix + ".expect." + source }

// WebhooksAll returns <prefix>.webhook.>, the subjects of StreamWebhooks.
func WebhooksAll(prefix string) string { return prefix + ".webhook.>" }

// ResultsAll returns <prefix>.result.>, the subjects of StreamResults.
func ResultsAll(prefix string) string { return prefix + ".result.>" }

// DLQAll returns <prefix>.dlq.>, the subjects of StreamDLQ.
func DLQAll(prefix string) string { return prefix + ".dlq.>" }

// ExpectAll returns <prefix>.expect.>, the subjects of StreamExpectations.
func ExpectAll(prefix string) string { return prefix + ".expect.>" }

func star(s string) string {
	if s == "" {
		return "*"
	}
	return s
}

// SessionKey returns the ledger key of a session: its ID in lower case.
func SessionKey(sessionID string) string { return strings.ToLower(sessionID) }

// ExpectationsStreamConfig returns the configuration of StreamExpectations
// under prefix. The bridge creates it; while it exists, Expect publishes with
// JetStream and waits for the stream's acknowledgement. Expectations of one
// session are de-duplicated inside the duplicate window by their message ID
// (expect:<session ID in lower case>).
func ExpectationsStreamConfig(prefix string, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamExpectations,
		Description: "Sessions services expect an outcome for (verifeye-bridge)",
		Subjects:    []string{ExpectAll(prefix)},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		MaxAge:      7 * 24 * time.Hour,
		Discard:     jetstream.DiscardOld,
		Duplicates:  10 * time.Minute,
		AllowDirect: true,
	}
}

// SessionsBucketConfig returns the configuration of the session ledger's
// bucket, keeping each entry for maxAge (SESSIONS_MAX_AGE).
func SessionsBucketConfig(maxAge time.Duration, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      BucketSessions,
		Description: "verifeye-bridge session ledger",
		TTL:         maxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		History:     1,
	}
}

// The validators below are byte loops, the expressions in their comments.

// ValidSource reports whether s may be a webhook source: ^[a-z0-9_-]{1,64}$.
func ValidSource(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidSessionID reports whether s is a UUID in the strict 8-4-4-4-12 hex form:
// ^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$.
// Braces, URNs and undashed forms are refused.
func ValidSessionID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f') {
				return false
			}
		}
	}
	return true
}

// ValidPrefix reports whether s may be a subject prefix: ^[A-Za-z0-9_-]{1,64}$.
func ValidPrefix(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c|0x20 >= 'a' && c|0x20 <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Outcome maps a verificationResult value to the outcome subject token: the
// lower-cased, trimmed value when it is a plain word (^[a-z][a-z0-9_-]{0,31}$),
// else OutcomeUnknown.
func Outcome(verificationResult string) string {
	o := strings.ToLower(strings.TrimSpace(verificationResult))
	if len(o) == 0 || len(o) > 32 || o[0] < 'a' || o[0] > 'z' {
		return OutcomeUnknown
	}
	for i := 1; i < len(o); i++ {
		c := o[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return OutcomeUnknown
		}
	}
	return o
}
