package enricher

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
)

// Action is what the enricher does with a webhook message after an API call.
type Action int

// The actions of the failure policy (DESIGN.md, "Enricher failure policy").
const (
	// Publish the outcome, wait for its PubAck, then ack the webhook.
	Publish Action = iota
	// Retry later: NakWithDelay, so the message waits in JetStream, not in memory.
	Retry
	// DeadLetter: copy the webhook to the DLQ with the reason, then ack it.
	DeadLetter
	// Pause consuming: the API key is refused. Hold the message without burning
	// its attempts and try again every Options.AuthRetry.
	Pause
	// Release a reconciled webhook the API does not know yet: ack it without
	// a DLQ entry and put its session back to expected, so the reconciler
	// tries again later (or marks it abandoned after RECONCILE_GIVE_UP).
	Release
)

func (a Action) String() string {
	switch a {
	case Publish:
		return "publish"
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead_letter"
	case Pause:
		return "pause"
	case Release:
		return "release"
	}
	return "unknown"
}

// DLQ reasons, as written in the Verifeye-Error header.
const (
	ReasonNotFound          = "not_found"
	ReasonBadRequest        = "bad_request"
	ReasonRejected          = "rejected"
	ReasonInvalidResponse   = "invalid_response"
	ReasonAttemptsExhausted = "attempts_exhausted"
	ReasonMaxDeliveries     = "max_deliveries"
	ReasonInvalidWebhook    = "invalid_webhook"
	// ReasonRedirected: the API answered 3xx. The redirect is not followed (it
	// would carry the API key elsewhere), and retrying gets the same answer: the
	// webhook waits on the DLQ until VERIFEYE_API_URL is fixed and it is replayed.
	ReasonRedirected = "redirected"
)

// Decision is the result of Policy.Decide.
type Decision struct {
	Action Action
	// Delay is the redelivery delay of Retry.
	Delay time.Duration
	// Reason is the DLQ reason of DeadLetter, or why a Retry or Pause happens.
	Reason string
	// Status is the API's HTTP status, 0 when no answer came.
	Status int
}

// Policy holds the tunables of the failure policy. The zero value is not useful;
// see DefaultPolicy.
type Policy struct {
	// BackoffBase is the first retry delay; it doubles per attempt up to BackoffMax.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// NotFoundDelay spaces the retries of a 404 (the result may lag), and
	// NotFoundAttempts 404 answers end on the DLQ as not_found.
	NotFoundDelay    time.Duration
	NotFoundAttempts int
	// MaxAttempts deliveries of one webhook end on the DLQ.
	MaxAttempts int
}

// DefaultPolicy returns the policy of the documented defaults: 404 retried over
// about a minute, retries from 1 s doubling to 5 min, 10 attempts.
func DefaultPolicy() Policy {
	return Policy{BackoffBase: time.Second, BackoffMax: 5 * time.Minute, NotFoundDelay: 15 * time.Second, NotFoundAttempts: 5, MaxAttempts: 10}
}

// maxRetryAfter caps a Retry-After that would otherwise park a message for days.
const maxRetryAfter = time.Hour

// Decide maps the result of one Get Session Result call (err nil means 200 with
// a JSON body) on the attempt-th delivery (1-based) to an action. jitter, in
// [0,1), spreads retry delays. Decide is pure: it does no I/O.
func (p Policy) Decide(err error, attempt int, jitter float64) Decision {
	if err == nil {
		return Decision{Action: Publish, Status: http.StatusOK}
	}
	if errors.Is(err, verifeye.ErrInvalidResponse) {
		return Decision{Action: DeadLetter, Reason: ReasonInvalidResponse, Status: http.StatusOK}
	}
	var ae *verifeye.APIError
	if !errors.As(err, &ae) {
		reason := "unavailable"
		if errors.Is(err, context.DeadlineExceeded) {
			reason = "timeout"
		}
		return p.retry(reason, 0, 0, attempt, jitter)
	}
	switch s := ae.Status; {
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		return Decision{Action: Pause, Reason: "unauthorized", Status: s}
	case s == http.StatusNotFound:
		if attempt >= p.NotFoundAttempts || attempt >= p.MaxAttempts {
			return Decision{Action: DeadLetter, Reason: ReasonNotFound, Status: s}
		}
		return Decision{Action: Retry, Reason: ReasonNotFound, Status: s, Delay: spread(p.NotFoundDelay, jitter)}
	case s == http.StatusBadRequest:
		return Decision{Action: DeadLetter, Reason: ReasonBadRequest, Status: s}
	case s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500:
		return p.retry("http_"+strconv.Itoa(s), s, ae.RetryAfter, attempt, jitter)
	case s >= 400:
		return Decision{Action: DeadLetter, Reason: ReasonRejected, Status: s}
	case s >= 300:
		return Decision{Action: DeadLetter, Reason: ReasonRedirected, Status: s}
	default: // 1xx: nothing sensible to publish, maybe a proxy hiccup
		return p.retry("http_"+strconv.Itoa(s), s, ae.RetryAfter, attempt, jitter)
	}
}

// DecideReconciled is Decide for a webhook the bridge injected for an expected
// session (header Verifeye-Reconciled): a 404 releases it (the person may
// still be in the flow; the reconciler retries until RECONCILE_GIVE_UP)
// instead of retrying it and dead-lettering it as not_found.
func (p Policy) DecideReconciled(err error, attempt int, jitter float64) Decision {
	var ae *verifeye.APIError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return Decision{Action: Release, Reason: ReasonNotFound, Status: http.StatusNotFound}
	}
	return p.Decide(err, attempt, jitter)
}

func (p Policy) retry(reason string, status int, retryAfter time.Duration, attempt int, jitter float64) Decision {
	if attempt >= p.MaxAttempts {
		return Decision{Action: DeadLetter, Reason: ReasonAttemptsExhausted, Status: status}
	}
	d := p.Backoff(attempt, jitter)
	if retryAfter > 0 {
		d = min(retryAfter, maxRetryAfter)
	}
	return Decision{Action: Retry, Reason: reason, Status: status, Delay: d}
}

// Backoff returns the delay after the attempt-th failure: BackoffBase doubled
// per attempt, capped at BackoffMax, with "equal jitter" (between half and all of it).
func (p Policy) Backoff(attempt int, jitter float64) time.Duration {
	d := p.BackoffBase
	for i := 1; i < attempt && d < p.BackoffMax; i++ {
		d *= 2
	}
	return spread(min(d, p.BackoffMax), jitter)
}

func spread(d time.Duration, jitter float64) time.Duration {
	return d/2 + time.Duration(float64(d/2)*jitter)
}
