package verifeyetest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
)

const testKey = "sk-test-0123456789abcdef"

func startFake(t *testing.T) *verifeyetest.Server {
	t.Helper()
	s := verifeyetest.Start(testKey)
	t.Cleanup(s.Close)
	return s
}

// answer is what a raw request got back.
type answer struct {
	Status      int
	ContentType string
	Body        string
}

// do sends a request to the fake and returns its answer.
func do(t *testing.T, ctx context.Context, method, rawURL, auth string) (answer, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{resp.StatusCode, resp.Header.Get("Content-Type"), string(body)}, nil
}

// get fetches the result of id with the right key and fails the test on a transport
// error.
func get(t *testing.T, s *verifeyetest.Server, id string) answer {
	t.Helper()
	a, err := do(t, context.Background(), http.MethodGet, resultURL(s, id), "ApiKey "+testKey)
	if err != nil {
		t.Fatalf("GET result of %q: %v", id, err)
	}
	return a
}

func resultURL(s *verifeyetest.Server, id string) string {
	return s.URL + verifeyetest.ResultPath + "?verificationSessionId=" + url.QueryEscape(id)
}

func sid(n int, last string) string {
	return fmt.Sprintf("%08x-1111-4222-8333-%s", n, last)
}

// checkFor polls f until it returns nil or the timeout passes.
func checkFor(t *testing.T, timeout, interval time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(interval)
	}
}

func TestServeHTTPRouting(t *testing.T) {
	s := startFake(t)
	id := sid(1, "000000000001")
	good := "ApiKey " + testKey

	tests := []struct {
		name, method, url, auth string
		want                    int
	}{
		{"ok", "GET", resultURL(s, id), good, 200},
		{"upper-case ID", "GET", resultURL(s, strings.ToUpper(id)), good, 200},
		{"no Authorization", "GET", resultURL(s, id), "", 401},
		{"wrong key", "GET", resultURL(s, id), "ApiKey sk-wrong", 401},
		{"Bearer scheme", "GET", resultURL(s, id), "Bearer " + testKey, 401},
		{"key alone", "GET", resultURL(s, id), testKey, 401},
		{"lower-case scheme", "GET", resultURL(s, id), "apikey " + testKey, 401},
		{"missing ID", "GET", s.URL + verifeyetest.ResultPath, good, 400},
		{"empty ID", "GET", resultURL(s, ""), good, 400},
		{"malformed ID", "GET", resultURL(s, "not-a-uuid"), good, 400},
		{"ID without dashes", "GET", resultURL(s, strings.ReplaceAll(id, "-", "")), good, 400},
		{"ID with non-hex", "GET", resultURL(s, sid(1, "00000000000g")), good, 400},
		{"POST", "POST", resultURL(s, id), good, 405},
		{"other path", "GET", s.URL + "/v1/verification/other?verificationSessionId=" + id, good, 404},
		{"root", "GET", s.URL + "/", good, 404},
	}
	for _, tt := range tests {
		got, err := do(t, context.Background(), tt.method, tt.url, tt.auth)
		if err != nil {
			t.Fatalf("%s %s [%s]: %v", tt.method, tt.url, tt.name, err)
		}
		if got.Status != tt.want {
			t.Errorf("%s %s [%s] status = %d, want %d (body %s)", tt.method, tt.url, tt.name, got.Status, tt.want, got.Body)
		}
		if got.ContentType != "application/json" || !isJSONObject(got.Body) {
			t.Errorf("%s %s [%s] = %s %q, want a JSON object", tt.method, tt.url, tt.name, got.ContentType, got.Body)
		}
	}
	if got, want := s.TotalCalls(), len(tests); got != want {
		t.Errorf("TotalCalls() = %d, want %d", got, want)
	}
}

func isJSONObject(s string) bool {
	var m map[string]any
	return json.Unmarshal([]byte(s), &m) == nil && m != nil
}

func TestMagicSessionIDs(t *testing.T) {
	s := startFake(t)
	tests := []struct {
		id          string
		wantStatus  int
		wantOutcome string // verificationResult of the body, for 200
		wantNotExec bool   // one verifier not_executed
	}{
		{sid(1, "fa11ed000001"), 200, "failed", false},
		{sid(2, "FA11ED000002"), 200, "failed", false},
		{sid(3, "000000000003"), 200, "passed", false},
		{sid(4, "7e5700000004"), 200, "passed", true},
		{sid(5, "404404000005"), 404, "", false},
		{sid(6, "500500000006"), 500, "", false},
	}
	for _, tt := range tests {
		for call := range 2 { // the rules hold on every call
			got := get(t, s, tt.id)
			if got.Status != tt.wantStatus {
				t.Errorf("GET %q call %d status = %d, want %d", tt.id, call, got.Status, tt.wantStatus)
				continue
			}
			if got.Status != 200 {
				continue
			}
			if got.Body != string(verifeyetest.BodyFor(tt.id)) {
				t.Errorf("GET %q body = %s, want BodyFor(%q) = %s", tt.id, got.Body, tt.id, verifeyetest.BodyFor(tt.id))
			}
			b := parseBody(t, []byte(got.Body))
			if b["verificationResult"] != tt.wantOutcome || verifeyetest.OutcomeFor(tt.id) != tt.wantOutcome {
				t.Errorf("GET %q verificationResult = %v, OutcomeFor = %q, want %q", tt.id, b["verificationResult"], verifeyetest.OutcomeFor(tt.id), tt.wantOutcome)
			}
			if got := notExecuted(b); (got == 1) != tt.wantNotExec {
				t.Errorf("GET %q has %d verifiers not_executed, want one: %v", tt.id, got, tt.wantNotExec)
			}
		}
	}
}

func parseBody(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		t.Fatalf("body %s is not a JSON object: %v", body, err)
	}
	return m
}

var verifiers = []string{"livenessResult", "faceRecognitionResult", "ageVerificationResult", "genderVerificationResult"}

func notExecuted(b map[string]any) int {
	n := 0
	for _, k := range verifiers {
		if b[k] == "not_executed" {
			n++
		}
	}
	return n
}

// TestBodyForProperties checks the generated bodies over many IDs: each is a flat
// JSON object that agrees with OutcomeFor, and the mix is realistic.
func TestBodyForProperties(t *testing.T) {
	const n = 4000
	faceID := regexp.MustCompile(`^[0-9a-f]{32}$`)
	counts := map[string]int{}
	for i := range n {
		id := fmt.Sprintf("%08x-%04x-4abc-9def-%012x", i*7919, i%65536, uint64(i)*0x9e3779b97f4a7c15>>16)
		body := verifeyetest.BodyFor(id)
		if string(body) != string(verifeyetest.BodyFor(id)) {
			t.Fatalf("BodyFor(%q) is not deterministic", id)
		}
		b := parseBody(t, body)
		outcome := verifeyetest.OutcomeFor(id)
		if b["verificationSessionId"] != id || b["verificationResult"] != outcome {
			t.Fatalf("BodyFor(%q) = %s, want verificationSessionId %q and verificationResult %q", id, body, id, outcome)
		}
		for _, k := range verifiers {
			if v := b[k]; v != "passed" && v != "failed" && v != "not_executed" {
				t.Fatalf("BodyFor(%q)[%q] = %v, want passed, failed or not_executed", id, k, v)
			}
		}
		if v, ok := b["faceId"]; ok && !faceID.MatchString(fmt.Sprint(v)) {
			t.Errorf("BodyFor(%q).faceId = %v, want 32 hex digits", id, v)
		}
		switch {
		case outcome == "failed":
			if b["livenessResult"] != "failed" || b["failedReason"] == nil {
				t.Errorf("BodyFor(%q) = %s, want livenessResult failed and a failedReason", id, body)
			}
			counts["failed"]++
		case notExecuted(b) == 1:
			counts["not_executed"]++
		case notExecuted(b) == 0:
			counts["passed"]++
		default:
			t.Errorf("BodyFor(%q) = %s, want at most one verifier not_executed", id, body)
		}
		for _, k := range []string{"correlationId", "externalId"} {
			if _, ok := b[k]; !ok {
				counts["no "+k]++
			}
		}
		if _, ok := b["processingTimeMs"]; ok {
			counts["extra key"]++
		}
	}
	// Wide bounds: the IDs are fixed, so this is deterministic, not a flaky sample.
	bounds := map[string][2]int{
		"passed":           {n * 75 / 100, n * 85 / 100},
		"failed":           {n * 11 / 100, n * 19 / 100},
		"not_executed":     {n * 2 / 100, n * 8 / 100},
		"no correlationId": {n / 10, n * 4 / 10},
		"no externalId":    {n / 10, n / 2},
		"extra key":        {n / 10, n * 3 / 10},
	}
	for k, b := range bounds {
		if counts[k] < b[0] || counts[k] > b[1] {
			t.Errorf("BodyFor over %d IDs: %s in %d bodies, want %d..%d", n, k, counts[k], b[0], b[1])
		}
	}
}

func TestBodyForIgnoresCase(t *testing.T) {
	id := "3F2A9C1E-ABCD-4EF0-8123-456789ABCDEF"
	upper, lower := parseBody(t, verifeyetest.BodyFor(id)), parseBody(t, verifeyetest.BodyFor(strings.ToLower(id)))
	if upper["verificationSessionId"] != id {
		t.Errorf("BodyFor(%q).verificationSessionId = %v, want the ID as given", id, upper["verificationSessionId"])
	}
	delete(upper, "verificationSessionId")
	delete(lower, "verificationSessionId")
	if diff := cmp.Diff(lower, upper); diff != "" {
		t.Errorf("BodyFor(%q) vs lower case (-lower +upper):\n%s", id, diff)
	}
}

func TestScriptHelpers(t *testing.T) {
	s := startFake(t)
	tests := []struct {
		name       string
		replies    []verifeyetest.Reply
		wantStatus int
		wantHeader http.Header // subset that must be present
		wantBody   string      // "" means: any JSON object
	}{
		{"RetryAfter rounds up", []verifeyetest.Reply{verifeyetest.RetryAfter(429, 1500*time.Millisecond)}, 429, http.Header{"Retry-After": {"2"}}, ""},
		{"RetryAfter 503", []verifeyetest.Reply{verifeyetest.RetryAfter(503, 20*time.Second)}, 503, http.Header{"Retry-After": {"20"}}, ""},
		{"NonJSON", []verifeyetest.Reply{verifeyetest.NonJSON()}, 200, http.Header{"Content-Type": {"text/html; charset=utf-8"}}, "<html>oops</html>"},
		{"Status 502", []verifeyetest.Reply{verifeyetest.Status(502)}, 502, http.Header{"Content-Type": {"application/json"}}, ""},
		{"custom body", []verifeyetest.Reply{{Status: 200, Body: []byte(`{"a":1}`), Header: http.Header{"X-Test": {"yes"}}}}, 200, http.Header{"X-Test": {"yes"}}, `{"a":1}`},
		{"NotFoundFor", verifeyetest.NotFoundFor(1), 404, nil, ""},
	}
	for i, tt := range tests {
		id := sid(i, "000000000000")
		s.Script(id, tt.replies...)
		resp, err := http.DefaultClient.Do(mustRequest(t, resultURL(s, id)))
		if err != nil {
			t.Fatalf("GET %q [%s]: %v", id, tt.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.wantStatus {
			t.Errorf("GET %q [%s] status = %d, want %d", id, tt.name, resp.StatusCode, tt.wantStatus)
		}
		for k, v := range tt.wantHeader {
			if diff := cmp.Diff(v, resp.Header.Values(k)); diff != "" {
				t.Errorf("GET %q [%s] header %s (-want +got):\n%s", id, tt.name, k, diff)
			}
		}
		if tt.wantBody == "" && !isJSONObject(string(body)) || tt.wantBody != "" && string(body) != tt.wantBody {
			t.Errorf("GET %q [%s] body = %q, want %q (or any JSON object if empty)", id, tt.name, body, tt.wantBody)
		}
		// The queue is consumed: the next call gets the default.
		if got := get(t, s, id); got.Status != 200 || got.Body != string(verifeyetest.BodyFor(id)) {
			t.Errorf("GET %q [%s] second call = %d %s, want 200 BodyFor", id, tt.name, got.Status, got.Body)
		}
	}
}

func mustRequest(t *testing.T, rawURL string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "ApiKey "+testKey)
	return req
}

func TestRegister(t *testing.T) {
	s := startFake(t)
	tests := []struct {
		id   string
		body string
	}{
		{sid(1, "000000000001"), `{"verificationResult":"failed"}`},
		{sid(2, "404404000002"), `{"overrides":"the magic rule"}`},
		{sid(3, "abcdefabcdef"), "not even JSON"},
	}
	for _, tt := range tests {
		body := []byte(tt.body)
		s.Register(strings.ToUpper(tt.id), body)
		body[0] = 'X' // Register copies
		if got := get(t, s, tt.id); got.Status != 200 || got.Body != tt.body {
			t.Errorf("GET %q after Register = %d %q, want 200 %q", tt.id, got.Status, got.Body, tt.body)
		}
	}
}

// TestDelaysEndWithTheRequest proves Slow and SetLatency stop waiting when the client
// gives up: Close waits for in-flight handlers, so it would hang for a minute if they
// did not.
func TestDelaysEndWithTheRequest(t *testing.T) {
	s := verifeyetest.Start(testKey)
	defer s.Close()
	s.SetLatency(time.Minute)
	slow, plain, missing := sid(1, "000000000001"), sid(2, "000000000002"), sid(3, "404404000003")
	s.Script(slow, verifeyetest.Slow(time.Minute))

	for _, id := range []string{slow, plain} {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := do(t, ctx, http.MethodGet, resultURL(s, id), "ApiKey "+testKey)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("GET %q with 1m delay and 50ms deadline error = %v, want context.DeadlineExceeded", id, err)
		}
	}
	// Latency applies to 200 answers only.
	if got := get(t, s, missing); got.Status != 404 {
		t.Errorf("GET %q with SetLatency(1m) status = %d, want 404 without delay", missing, got.Status)
	}

	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close still blocked 5s after the clients gave up: delays did not end")
	}
}

func TestCloseEndsPendingDelays(t *testing.T) {
	s := verifeyetest.Start(testKey)
	defer s.Close()
	id := sid(1, "000000000001")
	s.Script(id, verifeyetest.Slow(time.Minute))

	errc := make(chan error, 1)
	go func() {
		_, err := do(t, context.Background(), http.MethodGet, resultURL(s, id), "ApiKey "+testKey)
		errc <- err
	}()
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if s.Calls(id) != 1 {
			return errors.New("request not received yet")
		}
		return nil
	})
	s.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Errorf("GET %q pending during Close error = nil, want the connection dropped", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("GET %q still pending 5s after Close", id)
	}
}

func TestHandlerWithoutStart(t *testing.T) {
	s := verifeyetest.New(testKey)
	defer s.Close()
	id := sid(1, "fa11ed000001")
	req := httptest.NewRequest(http.MethodGet, verifeyetest.ResultPath+"?verificationSessionId="+id, nil)
	req.Header.Set("Authorization", "ApiKey "+testKey)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != 200 || rec.Body.String() != string(verifeyetest.BodyFor(id)) {
		t.Errorf("ServeHTTP(GET %q) = %d %s, want 200 BodyFor", id, rec.Code, rec.Body)
	}
	if s.URL != "" {
		t.Errorf("New(key).URL = %q, want empty", s.URL)
	}
}
