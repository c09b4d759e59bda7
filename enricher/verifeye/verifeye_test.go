package verifeye_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// testKey is distinctive so a leak into any error text is easy to spot.
const testKey = "sk-live-7f3c9a1e5b2d4c6f8a0e"

// startFake starts the fake API for the test.
func startFake(t *testing.T) *verifeyetest.Server {
	t.Helper()
	s := verifeyetest.Start(testKey)
	t.Cleanup(s.Close)
	return s
}

// newClient builds a client for baseURL with testKey.
func newClient(t *testing.T, baseURL string, opts verifeye.Options) *verifeye.Client {
	t.Helper()
	c, err := verifeye.New(baseURL, testKey, opts)
	if err != nil {
		t.Fatalf("New(%q, key, %+v) error = %v", baseURL, opts, err)
	}
	return c
}

// sid returns a well-formed session ID, unique per n, whose last group is last.
func sid(n int, last string) string {
	return fmt.Sprintf("%08x-1111-4222-8333-%s", n, last)
}

// checkNoKey fails the test if err's text or, for an APIError, its Body holds any of
// the keys (testKey by default).
func checkNoKey(t *testing.T, err error, keys ...string) {
	t.Helper()
	if err == nil {
		return
	}
	keys = append(keys, testKey)
	var apiErr *verifeye.APIError
	for _, k := range keys {
		if s := fmt.Sprintf("%v %+v %#v", err, err, err); strings.Contains(s, k) {
			t.Errorf("error text %q contains the API key", s)
		}
		if errors.As(err, &apiErr) && strings.Contains(apiErr.Body, k) {
			t.Errorf("APIError.Body %q contains the API key", apiErr.Body)
		}
	}
}

func TestDefaultURL(t *testing.T) {
	tests := []struct {
		region  string
		want    string
		wantErr bool
	}{
		{region: "eu", want: "https://verifeye-service-api-eu.realeyes.ai"},
		{region: "us", want: "https://verifeye-service-api-us.realeyes.ai"},
		{region: "", wantErr: true},
		{region: "ap", wantErr: true},
		{region: "EU", wantErr: true},
	}
	for _, tt := range tests {
		got, err := verifeye.DefaultURL(tt.region)
		if (err != nil) != tt.wantErr {
			t.Errorf("DefaultURL(%q) error = %v, want error: %v", tt.region, err, tt.wantErr)
		}
		if got != tt.want {
			t.Errorf("DefaultURL(%q) = %q, want %q", tt.region, got, tt.want)
		}
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	tests := []struct {
		name, baseURL, key string
	}{
		{"empty URL", "", testKey},
		{"relative URL", "verifeye.example.com", testKey},
		{"path only", "/v1", testKey},
		{"ftp scheme", "ftp://verifeye.example.com", testKey},
		{"no host", "https://", testKey},
		{"query", "https://verifeye.example.com?x=1", testKey},
		{"fragment", "https://verifeye.example.com#x", testKey},
		{"unparsable", "http://[::1", testKey},
		{"empty key", "https://verifeye.example.com", ""},
		{"newline in key", "https://verifeye.example.com", testKey + "\nX-Evil: 1"},
	}
	for _, tt := range tests {
		c, err := verifeye.New(tt.baseURL, tt.key, verifeye.Options{})
		if err == nil {
			t.Errorf("New(%q, key) [%s] = %v, nil; want error", tt.baseURL, tt.name, c)
		}
		checkNoKey(t, err)
	}
}

func TestGetSessionResultRequest(t *testing.T) {
	type request struct {
		Method, Path, RawQuery, ID, Authorization, Accept, UserAgent string
	}
	var (
		mu  sync.Mutex
		got []request
	)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, request{
			Method:        r.Method,
			Path:          r.URL.Path,
			RawQuery:      r.URL.RawQuery,
			ID:            r.URL.Query().Get("verificationSessionId"),
			Authorization: r.Header.Get("Authorization"),
			Accept:        r.Header.Get("Accept"),
			UserAgent:     r.Header.Get("User-Agent"),
		})
		mu.Unlock()
		w.Write([]byte(`{}`))
	}))
	defer ts.Close()

	tests := []struct {
		baseURL string
		opts    verifeye.Options
		id      string
		want    request
	}{
		{
			baseURL: ts.URL,
			id:      "3f2a9c1e-0000-4000-8000-000000000001",
			want: request{
				Method: "GET", Path: "/v1/verification/get-session-result",
				RawQuery:      "verificationSessionId=3f2a9c1e-0000-4000-8000-000000000001",
				ID:            "3f2a9c1e-0000-4000-8000-000000000001",
				Authorization: "ApiKey " + testKey, Accept: "application/json", UserAgent: "verifeye-bridge",
			},
		},
		{
			baseURL: ts.URL + "/prefix/",
			opts:    verifeye.Options{UserAgent: "bridge-test/1"},
			id:      "a b&c=d/é",
			want: request{
				Method: "GET", Path: "/prefix/v1/verification/get-session-result",
				RawQuery:      "verificationSessionId=a+b%26c%3Dd%2F%C3%A9",
				ID:            "a b&c=d/é",
				Authorization: "ApiKey " + testKey, Accept: "application/json", UserAgent: "bridge-test/1",
			},
		},
	}
	for _, tt := range tests {
		mu.Lock()
		got = nil
		mu.Unlock()
		c := newClient(t, tt.baseURL, tt.opts)
		if _, err := c.GetSessionResult(context.Background(), tt.id); err != nil {
			t.Fatalf("GetSessionResult(%q) via %q error = %v", tt.id, tt.baseURL, err)
		}
		mu.Lock()
		if diff := cmp.Diff([]request{tt.want}, got); diff != "" {
			t.Errorf("GetSessionResult(%q) via %q sent (-want +got):\n%s", tt.id, tt.baseURL, diff)
		}
		mu.Unlock()
	}
}

func TestGetSessionResultBody(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{})

	ids := []string{
		sid(1, "000000000001"), // magic: passed
		sid(2, "fa11ed000002"), // magic: failed
		sid(3, "7e5700000003"), // magic: a verifier not_executed
		"3F2A9C1E-ABCD-4EF0-8123-456789ABCDEF",
	}
	for i := range 20 {
		ids = append(ids, sid(100+i, fmt.Sprintf("%012x", 0x9abc00+i)))
	}
	for _, id := range ids {
		res, err := c.GetSessionResult(context.Background(), id)
		if err != nil {
			t.Fatalf("GetSessionResult(%q) error = %v", id, err)
		}
		if diff := cmp.Diff(string(verifeyetest.BodyFor(id)), string(res.Body)); diff != "" {
			t.Errorf("GetSessionResult(%q).Body (-want +got):\n%s", id, diff)
		}
		want := verifeyetest.OutcomeFor(id)
		if res.VerificationResult != want || res.Status != http.StatusOK {
			t.Errorf("GetSessionResult(%q) = {VerificationResult: %q, Status: %d}, want {%q, 200}",
				id, res.VerificationResult, res.Status, want)
		}
	}

	// A registered body comes back byte for byte, whitespace and escapes included.
	id := sid(4, "abcdefabcdef")
	body := []byte("{ \"verificationResult\" : \"passed\",\n\t\"note\": \"caf\\u00e9 😀\", \"n\": 1.50 }\n")
	s.Register(id, body)
	res, err := c.GetSessionResult(context.Background(), id)
	if err != nil {
		t.Fatalf("GetSessionResult(%q) registered error = %v", id, err)
	}
	if diff := cmp.Diff(body, res.Body); diff != "" {
		t.Errorf("GetSessionResult(%q).Body registered (-want +got):\n%s", id, diff)
	}
}

func TestResultOutcome(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{})

	tests := []struct {
		name        string
		body        string
		wantRaw     string
		wantOutcome string
	}{
		{"passed", `{"verificationResult":"passed"}`, "passed", "passed"},
		{"failed", `{"verificationResult":"failed","livenessResult":"failed"}`, "failed", "failed"},
		{"not_executed", `{"verificationResult":"not_executed"}`, "not_executed", "not_executed"},
		{"missing", `{"livenessResult":"passed"}`, "", "unknown"},
		{"empty object", `{}`, "", "unknown"},
		{"null", `{"verificationResult":null}`, "", "unknown"},
		{"capitalised value", `{"verificationResult":"Passed"}`, "Passed", "passed"},
		{"padded value", `{"verificationResult":"  FAILED\n"}`, "  FAILED\n", "failed"},
		{"escaped value", `{"verificationResult":"pa\u0073sed"}`, "passed", "passed"},
		{"number", `{"verificationResult":5}`, "", "unknown"},
		{"bool", `{"verificationResult":true}`, "", "unknown"},
		{"array", `{"verificationResult":["passed"]}`, "", "unknown"},
		{"nested object", `{"verificationResult":{"value":"passed"}}`, "", "unknown"},
		{"only nested deeper", `{"result":{"verificationResult":"passed"}}`, "", "unknown"},
		{"two words", `{"verificationResult":"two words"}`, "two words", "unknown"},
		{"empty string", `{"verificationResult":""}`, "", "unknown"},
		{"leading digit", `{"verificationResult":"1passed"}`, "1passed", "unknown"},
		{"non-ASCII", `{"verificationResult":"passé"}`, "passé", "unknown"},
		{"subject wildcard", `{"verificationResult":"passed.>"}`, "passed.>", "unknown"},
		{"32 chars", `{"verificationResult":"` + strings.Repeat("a", 32) + `"}`, strings.Repeat("a", 32), strings.Repeat("a", 32)},
		{"33 chars", `{"verificationResult":"` + strings.Repeat("a", 33) + `"}`, strings.Repeat("a", 33), "unknown"},
		{"very long", `{"verificationResult":"` + strings.Repeat("x", 100000) + `"}`, strings.Repeat("x", 100000), "unknown"},
		{"PascalCase key", `{"VerificationResult":"passed"}`, "passed", "passed"},
		{"snake_case key", `{"verification_result":"failed"}`, "failed", "failed"},
		{"upper-case key", `{"VERIFICATIONRESULT":"failed"}`, "failed", "failed"},
		{"camelCase wins", `{"verification_result":"failed","verificationResult":"passed"}`, "passed", "passed"},
		{"other keys ignored", `{"livenessResult":"failed","verificationResult":"passed","extra":{"a":[1,2]}}`, "passed", "passed"},
	}
	for i, tt := range tests {
		id := sid(i, "c0ffee000000")
		s.Register(id, []byte(tt.body))
		res, err := c.GetSessionResult(context.Background(), id)
		if err != nil {
			t.Errorf("GetSessionResult [%s] error = %v", tt.name, err)
			continue
		}
		if res.VerificationResult != tt.wantRaw {
			t.Errorf("GetSessionResult [%s].VerificationResult = %.40q, want %.40q", tt.name, res.VerificationResult, tt.wantRaw)
		}
		// The subject token the enricher makes of it (one rule, in streams).
		if got := streams.Outcome(res.VerificationResult); got != tt.wantOutcome {
			t.Errorf("streams.Outcome(GetSessionResult [%s].VerificationResult) = %.40q, want %.40q", tt.name, got, tt.wantOutcome)
		}
		if string(res.Body) != tt.body {
			t.Errorf("GetSessionResult [%s].Body = %.60q, want %.60q", tt.name, res.Body, tt.body)
		}
	}
}

func TestGetSessionResultAPIError(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }

	tests := []struct {
		name           string
		key            string // client key; testKey if empty
		id             string
		script         []verifeyetest.Reply
		wantStatus     int
		wantRetryAfter time.Duration
		wantBodyHas    string
	}{
		{name: "wrong key", key: "sk-wrong-0000111122223333", id: sid(1, "000000000001"), wantStatus: 401},
		{name: "scripted 404", id: sid(2, "000000000002"), script: []verifeyetest.Reply{verifeyetest.Status(404)}, wantStatus: 404},
		{name: "magic 404", id: sid(3, "404404000003"), wantStatus: 404},
		{name: "malformed ID", id: "not-a-uuid", wantStatus: 400},
		{name: "empty ID", id: "", wantStatus: 400},
		{
			name: "429 Retry-After seconds", id: sid(4, "000000000004"),
			script:     []verifeyetest.Reply{verifeyetest.RetryAfter(429, 3*time.Second)},
			wantStatus: 429, wantRetryAfter: 3 * time.Second,
		},
		{
			name: "429 Retry-After HTTP-date", id: sid(5, "000000000005"),
			script: []verifeyetest.Reply{{
				Status: 429,
				Header: http.Header{"Retry-After": {now.Add(90 * time.Second).Format(http.TimeFormat)}},
			}},
			wantStatus: 429, wantRetryAfter: 90 * time.Second,
		},
		{
			name: "503 Retry-After date in the past", id: sid(6, "000000000006"),
			script: []verifeyetest.Reply{{
				Status: 503,
				Header: http.Header{"Retry-After": {now.Add(-time.Minute).Format(http.TimeFormat)}},
			}},
			wantStatus: 503,
		},
		{
			name: "503 Retry-After negative", id: sid(7, "000000000007"),
			script:     []verifeyetest.Reply{{Status: 503, Header: http.Header{"Retry-After": {"-5"}}}},
			wantStatus: 503,
		},
		{
			name: "503 Retry-After garbage", id: sid(8, "000000000008"),
			script:     []verifeyetest.Reply{{Status: 503, Header: http.Header{"Retry-After": {"soon"}}}},
			wantStatus: 503,
		},
		{name: "500", id: sid(9, "000000000009"), script: []verifeyetest.Reply{verifeyetest.Status(500)}, wantStatus: 500},
		{name: "magic 500", id: sid(10, "500500000010"), wantStatus: 500},
		{name: "502", id: sid(11, "000000000011"), script: []verifeyetest.Reply{verifeyetest.Status(502)}, wantStatus: 502},
		{
			name: "body echoes the key", id: sid(12, "000000000012"),
			script: []verifeyetest.Reply{{
				Status: 500,
				// The key starts inside the 512-byte excerpt and ends past it.
				Body: []byte(strings.Repeat("x", 480) + "Authorization: ApiKey " + testKey + " rejected"),
			}},
			wantStatus: 500, wantBodyHas: "[redacted]",
		},
		{
			name: "long body", id: sid(13, "000000000013"),
			script:     []verifeyetest.Reply{{Status: 502, Body: []byte(strings.Repeat("é", 1000))}},
			wantStatus: 502, wantBodyHas: "éé",
		},
	}
	for _, tt := range tests {
		s := startFake(t)
		s.Script(tt.id, tt.script...)
		key := tt.key
		if key == "" {
			key = testKey
		}
		c, err := verifeye.New(s.URL, key, verifeye.Options{Now: clock})
		if err != nil {
			t.Fatalf("New [%s] error = %v", tt.name, err)
		}

		res, err := c.GetSessionResult(context.Background(), tt.id)
		checkNoKey(t, err, key)
		var apiErr *verifeye.APIError
		if !errors.As(err, &apiErr) {
			t.Errorf("GetSessionResult(%q) [%s] = %v, %v; want *APIError", tt.id, tt.name, res, err)
			continue
		}
		if apiErr.Status != tt.wantStatus || apiErr.RetryAfter != tt.wantRetryAfter {
			t.Errorf("GetSessionResult(%q) [%s] = APIError{Status: %d, RetryAfter: %v}, want {%d, %v}",
				tt.id, tt.name, apiErr.Status, apiErr.RetryAfter, tt.wantStatus, tt.wantRetryAfter)
		}
		if len(apiErr.Body) > 512 {
			t.Errorf("GetSessionResult(%q) [%s] APIError.Body is %d bytes, want <= 512", tt.id, tt.name, len(apiErr.Body))
		}
		if !strings.Contains(apiErr.Body, tt.wantBodyHas) {
			t.Errorf("GetSessionResult(%q) [%s] APIError.Body = %q, want it to contain %q", tt.id, tt.name, apiErr.Body, tt.wantBodyHas)
		}
		if want := fmt.Sprintf("verifeye: get session result: HTTP %d", tt.wantStatus); !strings.HasPrefix(err.Error(), want) {
			t.Errorf("GetSessionResult(%q) [%s] error = %q, want prefix %q", tt.id, tt.name, err, want)
		}
		if errors.Is(err, verifeye.ErrInvalidResponse) {
			t.Errorf("GetSessionResult(%q) [%s] error = %v, want not ErrInvalidResponse", tt.id, tt.name, err)
		}
	}
}

func TestAPIErrorError(t *testing.T) {
	tests := []struct {
		err  verifeye.APIError
		want string
	}{
		{verifeye.APIError{Status: 503}, "verifeye: get session result: HTTP 503"},
		{verifeye.APIError{Status: 429, RetryAfter: 2 * time.Second, Body: `{"error":"slow down"}`},
			`verifeye: get session result: HTTP 429 (retry after 2s): "{\"error\":\"slow down\"}"`},
		{verifeye.APIError{Status: 500, Body: "  \n"}, "verifeye: get session result: HTTP 500"},
		{verifeye.APIError{Status: 502, Body: strings.Repeat("a", 512)},
			`verifeye: get session result: HTTP 502: "` + strings.Repeat("a", 120) + `"`},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("(%+v).Error() = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestGetSessionResultInvalidResponse(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{})

	tests := []struct {
		name  string
		reply verifeyetest.Reply
	}{
		{"HTML", verifeyetest.NonJSON()},
		{"empty body", verifeyetest.Reply{Status: 200, Body: []byte{}}},
		{"truncated JSON", verifeyetest.Reply{Status: 200, Body: []byte(`{"verificationResult":"pa`)}},
		{"array", verifeyetest.Reply{Status: 200, Body: []byte(`[{"verificationResult":"passed"}]`)}},
		{"string", verifeyetest.Reply{Status: 200, Body: []byte(`"passed"`)}},
		{"null", verifeyetest.Reply{Status: 200, Body: []byte(`null`)}},
		{"two objects", verifeyetest.Reply{Status: 200, Body: []byte(`{}{}`)}},
		{"204 No Content", verifeyetest.Status(204)},
		{"over 4 MiB", verifeyetest.Reply{Status: 200, Body: []byte(`{"x":"` + strings.Repeat("a", 4<<20) + `"}`)}},
	}
	for i, tt := range tests {
		id := sid(i, "bad000000000")
		s.Script(id, tt.reply)
		res, err := c.GetSessionResult(context.Background(), id)
		checkNoKey(t, err)
		if !errors.Is(err, verifeye.ErrInvalidResponse) {
			t.Errorf("GetSessionResult(%q) [%s] = %v, %v; want ErrInvalidResponse", id, tt.name, res, err)
		}
		var apiErr *verifeye.APIError
		if errors.As(err, &apiErr) {
			t.Errorf("GetSessionResult(%q) [%s] error = %v, want no *APIError", id, tt.name, err)
		}
	}
}

// checkTimeout fails the test unless err is a timeout by both tests callers use.
func checkTimeout(t *testing.T, what string, err error) {
	t.Helper()
	checkNoKey(t, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%s error = %v, want errors.Is(err, context.DeadlineExceeded)", what, err)
	}
	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Errorf("%s error = %v, want a net.Error with Timeout() true", what, err)
	}
	var apiErr *verifeye.APIError
	if errors.As(err, &apiErr) || errors.Is(err, verifeye.ErrInvalidResponse) {
		t.Errorf("%s error = %v, want a transport error", what, err)
	}
}

func TestGetSessionResultTimeout(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{Timeout: 100 * time.Millisecond})

	id := sid(1, "000000000001")
	s.Script(id, verifeyetest.Slow(time.Minute))
	_, err := c.GetSessionResult(context.Background(), id)
	checkTimeout(t, fmt.Sprintf("GetSessionResult(%q) with Slow(1m) and Timeout 100ms", id), err)

	// The caller's deadline counts too, when it is shorter than Timeout.
	id = sid(2, "000000000002")
	s.Script(id, verifeyetest.Slow(time.Minute))
	slow := newClient(t, s.URL, verifeye.Options{Timeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = slow.GetSessionResult(ctx, id)
	checkTimeout(t, fmt.Sprintf("GetSessionResult(%q) with Slow(1m) and a 100ms context", id), err)
}

func TestGetSessionResultTimeoutReadingBody(t *testing.T) {
	// The headers arrive in time, the body never does.
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"verificationResult":`))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer ts.Close()
	c := newClient(t, ts.URL, verifeye.Options{Timeout: 100 * time.Millisecond})
	_, err := c.GetSessionResult(context.Background(), sid(1, "000000000001"))
	checkTimeout(t, "GetSessionResult with a stalled body", err)
}

func TestGetSessionResultCanceled(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.GetSessionResult(ctx, sid(1, "000000000001"))
	checkNoKey(t, err)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("GetSessionResult with a cancelled context error = %v, want context.Canceled", err)
	}
}

func TestGetSessionResultConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	c := newClient(t, "http://"+addr, verifeye.Options{Timeout: 5 * time.Second})
	res, err := c.GetSessionResult(context.Background(), sid(1, "000000000001"))
	checkNoKey(t, err)
	if err == nil {
		t.Fatalf("GetSessionResult via closed port %s = %v, nil; want error", addr, res)
	}
	var apiErr *verifeye.APIError
	if errors.As(err, &apiErr) || errors.Is(err, verifeye.ErrInvalidResponse) {
		t.Errorf("GetSessionResult via closed port %s error = %v, want a transport error", addr, err)
	}
	if !strings.HasPrefix(err.Error(), "verifeye: get session result: ") {
		t.Errorf("GetSessionResult via closed port %s error = %q, want the package prefix", addr, err)
	}
}

// statusOf returns the HTTP status a call ended with: 200, the APIError's status,
// or -1 for any other error.
func statusOf(res *verifeye.Result, err error) int {
	var apiErr *verifeye.APIError
	switch {
	case err == nil:
		return res.Status
	case errors.As(err, &apiErr):
		return apiErr.Status
	default:
		return -1
	}
}

func TestScriptedNotFoundThenFound(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{})
	id := sid(1, "fa11ed000001")
	s.Script(id, verifeyetest.NotFoundFor(2)...)

	var got []int
	var last *verifeye.Result
	for range 4 {
		res, err := c.GetSessionResult(context.Background(), id)
		checkNoKey(t, err)
		got = append(got, statusOf(res, err))
		last = res
	}
	if diff := cmp.Diff([]int{404, 404, 200, 200}, got); diff != "" {
		t.Errorf("GetSessionResult(%q) x4 after NotFoundFor(2) statuses (-want +got):\n%s", id, diff)
	}
	if last == nil || last.VerificationResult != "failed" {
		t.Errorf("GetSessionResult(%q) last result = %+v, want outcome failed", id, last)
	}
	if got := s.Calls(id); got != 4 {
		t.Errorf("Calls(%q) = %d, want 4", id, got)
	}
}

func TestCallsConcurrent(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{})
	wrong, err := verifeye.New(s.URL, "sk-other-key-5555", verifeye.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, other := sid(1, "000000000001"), sid(2, "000000000002")

	const workers, each = 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, 3*workers*each)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := c.GetSessionResult(context.Background(), id); err != nil {
					errs <- err
				}
				if _, err := c.GetSessionResult(context.Background(), other); err != nil {
					errs <- err
				}
				// Unauthorized calls count too.
				if _, err := wrong.GetSessionResult(context.Background(), id); statusOf(nil, err) != 401 {
					errs <- fmt.Errorf("wrong key: got %v, want 401", err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("GetSessionResult concurrently: %v", err)
	}

	tests := []struct {
		what      string
		got, want int
	}{
		{fmt.Sprintf("Calls(%q)", id), s.Calls(id), 2 * workers * each},
		{fmt.Sprintf("Calls(%q)", strings.ToUpper(id)), s.Calls(strings.ToUpper(id)), 2 * workers * each},
		{fmt.Sprintf("Calls(%q)", other), s.Calls(other), workers * each},
		{"Calls(unused)", s.Calls(sid(3, "000000000003")), 0},
		{"TotalCalls()", s.TotalCalls(), 3 * workers * each},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.what, tt.got, tt.want)
		}
	}
}

func TestFault(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{})
	plain, scripted := sid(1, "000000000001"), sid(2, "000000000002")
	s.Script(scripted, verifeyetest.Status(404))

	call := func(id string) int {
		res, err := c.GetSessionResult(context.Background(), id)
		checkNoKey(t, err)
		return statusOf(res, err)
	}

	s.SetFault(&verifeyetest.Reply{Status: 503})
	during := []int{call(plain), call(scripted), call(plain), call("malformed")}
	s.SetFault(nil)
	after := []int{call(plain), call(scripted), call(scripted)}

	if diff := cmp.Diff([]int{503, 503, 503, 503}, during); diff != "" {
		t.Errorf("GetSessionResult during SetFault(503) statuses (-want +got):\n%s", diff)
	}
	// The script was not consumed by the outage.
	if diff := cmp.Diff([]int{200, 404, 200}, after); diff != "" {
		t.Errorf("GetSessionResult after SetFault(nil) statuses (-want +got):\n%s", diff)
	}
}

func TestStrict(t *testing.T) {
	s := startFake(t)
	c := newClient(t, s.URL, verifeye.Options{})
	unknown, registered, scripted := sid(1, "000000000001"), sid(2, "000000000002"), sid(3, "000000000003")
	s.Register(registered, []byte(`{"verificationResult":"failed"}`))

	s.SetStrict(true)
	s.Script(scripted, verifeyetest.Status(200))
	tests := []struct {
		id   string
		want int
	}{
		{unknown, 404},
		{registered, 200},
		{scripted, 200}, // the scripted reply
		{scripted, 404}, // then strict mode's default
		{sid(4, "500500000004"), 500},
	}
	for _, tt := range tests {
		res, err := c.GetSessionResult(context.Background(), tt.id)
		checkNoKey(t, err)
		if got := statusOf(res, err); got != tt.want {
			t.Errorf("GetSessionResult(%q) in strict mode status = %d (%v), want %d", tt.id, got, err, tt.want)
		}
	}

	s.SetStrict(false)
	if res, err := c.GetSessionResult(context.Background(), unknown); err != nil {
		t.Errorf("GetSessionResult(%q) after SetStrict(false) error = %v, want 200", unknown, err)
	} else if diff := cmp.Diff(string(verifeyetest.BodyFor(unknown)), string(res.Body)); diff != "" {
		t.Errorf("GetSessionResult(%q) after SetStrict(false) body (-want +got):\n%s", unknown, diff)
	}
}

func TestSetAPIKey(t *testing.T) {
	s := startFake(t)
	const rotated = "sk-live-rotated-aaaabbbbcccc"
	c, err := verifeye.New(s.URL, rotated, verifeye.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := sid(1, "000000000001")

	_, err = c.GetSessionResult(context.Background(), id)
	checkNoKey(t, err, rotated)
	if got := statusOf(nil, err); got != 401 {
		t.Errorf("GetSessionResult(%q) before SetAPIKey status = %d (%v), want 401", id, got, err)
	}
	s.SetAPIKey(rotated)
	if _, err := c.GetSessionResult(context.Background(), id); err != nil {
		t.Errorf("GetSessionResult(%q) after SetAPIKey error = %v, want nil", id, err)
	}
}

// TestRedirectNotFollowed checks that a 3xx from the API comes back as an
// APIError and that the location it names receives nothing: neither the key
// nor a request whose answer could be published as the outcome.
func TestRedirectNotFollowed(t *testing.T) {
	for _, status := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			var elsewhere atomic.Int32
			other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				elsewhere.Add(1)
				_, _ = io.WriteString(w, `{"verificationResult":"passed"}`)
			}))
			defer other.Close()
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, other.URL+r.URL.RequestURI(), status)
			}))
			defer api.Close()

			for _, opts := range []verifeye.Options{{}, {HTTPClient: &http.Client{}}} {
				res, err := newClient(t, api.URL, opts).GetSessionResult(context.Background(), sid(1, "000000000001"))
				var apiErr *verifeye.APIError
				if !errors.As(err, &apiErr) || apiErr.Status != status {
					t.Fatalf("GetSessionResult() after HTTP %d = %v, %v; want an APIError with status %d", status, res, err, status)
				}
				checkNoKey(t, err)
			}
			if n := elsewhere.Load(); n != 0 {
				t.Errorf("the redirect's target received %d requests; want 0", n)
			}
		})
	}
}
