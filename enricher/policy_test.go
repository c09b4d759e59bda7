package enricher_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
)

// testPolicy has round numbers so the expected delays are easy to read.
var testPolicy = enricher.Policy{
	BackoffBase:      100 * time.Millisecond,
	BackoffMax:       time.Second,
	NotFoundDelay:    10 * time.Second,
	NotFoundAttempts: 3,
	MaxAttempts:      5,
}

func apiErr(status int, retryAfter time.Duration) error {
	// Wrapped as the client's callers may see it, so Decide must use errors.As.
	return fmt.Errorf("enrich: %w", &verifeye.APIError{Status: status, RetryAfter: retryAfter, Body: `{"error":"x"}`})
}

// TestPolicyDecide walks every row of DESIGN.md's "Enricher failure policy".
func TestPolicyDecide(t *testing.T) {
	connRefused := fmt.Errorf("verifeye: get session result: %w",
		&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	timeout := fmt.Errorf("verifeye: get session result: %w", context.DeadlineExceeded)
	notJSON := fmt.Errorf("verifeye: get session result: HTTP 200: body is not a JSON object: %w", verifeye.ErrInvalidResponse)

	tests := []struct {
		name    string
		err     error
		attempt int
		jitter  float64
		want    enricher.Decision
	}{
		{"200", nil, 1, 0.5, enricher.Decision{Action: enricher.Publish, Status: 200}},
		{"200 on the last attempt", nil, 5, 0.5, enricher.Decision{Action: enricher.Publish, Status: 200}},

		{"429 with Retry-After", apiErr(429, 3*time.Second), 1, 0.5,
			enricher.Decision{Action: enricher.Retry, Reason: "http_429", Status: 429, Delay: 3 * time.Second}},
		{"429 with Retry-After over an hour is capped", apiErr(429, 48*time.Hour), 1, 0.5,
			enricher.Decision{Action: enricher.Retry, Reason: "http_429", Status: 429, Delay: time.Hour}},
		{"429 without Retry-After backs off", apiErr(429, 0), 1, 0,
			enricher.Decision{Action: enricher.Retry, Reason: "http_429", Status: 429, Delay: 50 * time.Millisecond}},
		{"500", apiErr(500, 0), 2, 0,
			enricher.Decision{Action: enricher.Retry, Reason: "http_500", Status: 500, Delay: 100 * time.Millisecond}},
		{"502", apiErr(502, 0), 3, 0,
			enricher.Decision{Action: enricher.Retry, Reason: "http_502", Status: 502, Delay: 200 * time.Millisecond}},
		{"503 with Retry-After", apiErr(503, 7*time.Second), 1, 0,
			enricher.Decision{Action: enricher.Retry, Reason: "http_503", Status: 503, Delay: 7 * time.Second}},
		{"408", apiErr(408, 0), 1, 0,
			enricher.Decision{Action: enricher.Retry, Reason: "http_408", Status: 408, Delay: 50 * time.Millisecond}},
		{"timeout", timeout, 1, 0,
			enricher.Decision{Action: enricher.Retry, Reason: "timeout", Delay: 50 * time.Millisecond}},
		{"connection refused", connRefused, 1, 0,
			enricher.Decision{Action: enricher.Retry, Reason: "unavailable", Delay: 50 * time.Millisecond}},

		{"404 before NotFoundAttempts", apiErr(404, 0), 1, 0,
			enricher.Decision{Action: enricher.Retry, Reason: enricher.ReasonNotFound, Status: 404, Delay: 5 * time.Second}},
		{"404 one before NotFoundAttempts", apiErr(404, 0), 2, 0.999,
			enricher.Decision{Action: enricher.Retry, Reason: enricher.ReasonNotFound, Status: 404, Delay: 5*time.Second + time.Duration(float64(5*time.Second)*0.999)}},
		{"404 at NotFoundAttempts", apiErr(404, 0), 3, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonNotFound, Status: 404}},

		{"400", apiErr(400, 0), 1, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonBadRequest, Status: 400}},
		{"200 that is not JSON", notJSON, 1, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonInvalidResponse, Status: 200}},
		{"422", apiErr(422, 0), 1, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonRejected, Status: 422}},
		{"302 is not followed", apiErr(302, 0), 1, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonRedirected, Status: 302}},
		{"307 with Retry-After", apiErr(307, time.Second), 1, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonRedirected, Status: 307}},

		{"401", apiErr(401, 0), 1, 0,
			enricher.Decision{Action: enricher.Pause, Reason: "unauthorized", Status: 401}},
		{"403", apiErr(403, 0), 1, 0,
			enricher.Decision{Action: enricher.Pause, Reason: "unauthorized", Status: 403}},
		{"401 burns no attempt: still a pause on the last one", apiErr(401, 0), 5, 0,
			enricher.Decision{Action: enricher.Pause, Reason: "unauthorized", Status: 401}},

		{"503 on the last attempt", apiErr(503, 0), 5, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonAttemptsExhausted, Status: 503}},
		{"429 with Retry-After on the last attempt", apiErr(429, time.Second), 5, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonAttemptsExhausted, Status: 429}},
		{"timeout on the last attempt", timeout, 5, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonAttemptsExhausted}},
		{"attempts beyond MaxAttempts", connRefused, 9, 0,
			enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonAttemptsExhausted}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := testPolicy.Decide(tt.err, tt.attempt, tt.jitter)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Decide(%v, attempt %d, jitter %v) mismatch (-want +got):\n%s", tt.err, tt.attempt, tt.jitter, diff)
			}
		})
	}
}

// TestPolicyDecideReconciled: a reconciled webhook's 404 releases it (the
// reconciler retries until RECONCILE_GIVE_UP), on any attempt; every other
// answer follows Decide.
func TestPolicyDecideReconciled(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		attempt int
		want    enricher.Decision
	}{
		{"404", apiErr(404, 0), 1, enricher.Decision{Action: enricher.Release, Reason: enricher.ReasonNotFound, Status: 404}},
		{"404 past NotFoundAttempts", apiErr(404, 0), 5, enricher.Decision{Action: enricher.Release, Reason: enricher.ReasonNotFound, Status: 404}},
		{"200", nil, 1, enricher.Decision{Action: enricher.Publish, Status: 200}},
		{"500", apiErr(500, 0), 2, enricher.Decision{Action: enricher.Retry, Reason: "http_500", Status: 500, Delay: 100 * time.Millisecond}},
		{"400", apiErr(400, 0), 1, enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonBadRequest, Status: 400}},
		{"401", apiErr(401, 0), 1, enricher.Decision{Action: enricher.Pause, Reason: "unauthorized", Status: 401}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := testPolicy.DecideReconciled(tt.err, tt.attempt, 0)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("DecideReconciled(%v, attempt %d) mismatch (-want +got):\n%s", tt.err, tt.attempt, diff)
			}
			if tt.want.Action == enricher.Release && tt.want.Action.String() != "release" {
				t.Errorf("Release.String() = %q", tt.want.Action.String())
			}
		})
	}
}

// TestPolicyDecide404LimitedByMaxAttempts: a 404 never outlives MaxAttempts,
// even when NotFoundAttempts is larger.
func TestPolicyDecide404LimitedByMaxAttempts(t *testing.T) {
	p := testPolicy
	p.NotFoundAttempts, p.MaxAttempts = 10, 2
	got := p.Decide(apiErr(404, 0), 2, 0)
	want := enricher.Decision{Action: enricher.DeadLetter, Reason: enricher.ReasonNotFound, Status: 404}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Decide(404, attempt 2) with MaxAttempts 2 mismatch (-want +got):\n%s", diff)
	}
}

func TestPolicyBackoff(t *testing.T) {
	tests := []struct {
		attempt int
		jitter  float64
		want    time.Duration
	}{
		{1, 0, 50 * time.Millisecond},
		{1, 0.999, 50*time.Millisecond + time.Duration(float64(50*time.Millisecond)*0.999)},
		{2, 0, 100 * time.Millisecond},
		{4, 0, 400 * time.Millisecond},
		{4, 0.999, 400*time.Millisecond + time.Duration(float64(400*time.Millisecond)*0.999)},
		{5, 0, 500 * time.Millisecond}, // 1.6 s capped at BackoffMax
		{5, 0.999, 500*time.Millisecond + time.Duration(float64(500*time.Millisecond)*0.999)},
		{1000, 0, 500 * time.Millisecond}, // no overflow
	}
	for _, tt := range tests {
		if got := testPolicy.Backoff(tt.attempt, tt.jitter); got != tt.want {
			t.Errorf("Backoff(%d, %v) = %v, want %v", tt.attempt, tt.jitter, got, tt.want)
		}
	}
}

// TestPolicyBackoffBounds checks the properties for every attempt: within
// [BackoffBase/2, BackoffMax], never shrinking as attempts grow.
func TestPolicyBackoffBounds(t *testing.T) {
	for _, jitter := range []float64{0, 0.25, 0.5, 0.999} {
		prev := time.Duration(0)
		for attempt := 1; attempt <= 200; attempt++ {
			got := testPolicy.Backoff(attempt, jitter)
			if got < testPolicy.BackoffBase/2 || got > testPolicy.BackoffMax {
				t.Fatalf("Backoff(%d, %v) = %v, want within [%v, %v]", attempt, jitter, got, testPolicy.BackoffBase/2, testPolicy.BackoffMax)
			}
			if got < prev {
				t.Fatalf("Backoff(%d, %v) = %v, shorter than Backoff(%d) = %v", attempt, jitter, got, attempt-1, prev)
			}
			prev = got
		}
	}
}

func TestActionString(t *testing.T) {
	for a, want := range map[enricher.Action]string{
		enricher.Publish: "publish", enricher.Retry: "retry", enricher.DeadLetter: "dead_letter",
		enricher.Pause: "pause", enricher.Action(99): "unknown",
	} {
		if got := a.String(); got != want {
			t.Errorf("Action(%d).String() = %q, want %q", int(a), got, want)
		}
	}
}

// Decide must classify errors by type, never by text.
func TestPolicyDecideIgnoresErrorText(t *testing.T) {
	err := errors.New("HTTP 401 HTTP 404 invalid response")
	got := testPolicy.Decide(err, 1, 0)
	if got.Action != enricher.Retry || got.Reason != "unavailable" {
		t.Errorf("Decide(%q) = %+v, want a retry as unavailable", err, got)
	}
}
