package bridge_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/groupcommit"
	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/ops"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// The secrets the tests authenticate with. TestMain fails the run if either
// appears in any log line written while the tests ran.
const (
	testAPIKey = "vk-live-7c1d0e55-ingest-test-key"
	testToken  = "wt-4b9f2a71-ingest-test-token"
)

// logs receives every log line of every logger the tests create.
var logs natstest.Buffer

// secretRequests counts requests sent with a secret, so TestMain knows whether
// the absence of secrets in logs means anything.
var secretRequests atomic.Int64

// TestMain runs the tests, then fails the run if a secret reached the logs
// (DESIGN.md: "Secrets never reach a log line").
func TestMain(m *testing.M) {
	code := m.Run()
	out := logs.Bytes()
	for _, s := range []string{testAPIKey, testToken} {
		if i := bytes.Index(out, []byte(s)); i >= 0 {
			line := out[bytes.LastIndexByte(out[:i], '\n')+1:]
			if j := bytes.IndexByte(line, '\n'); j >= 0 {
				line = line[:j]
			}
			fmt.Fprintf(os.Stderr, "FAIL: a secret reached the logs: %s\n", line)
			code = 1
		}
	}
	if n := secretRequests.Load(); n > 0 && !bytes.Contains(out, []byte(`"message":"webhook"`)) {
		fmt.Fprintf(os.Stderr, "FAIL: %d requests carried a secret but no webhook log line was captured: the secret check proves nothing\n", n)
		code = 1
	}
	os.Exit(code)
}

// testLogger returns a logger writing every level to logs.
func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(&logs).Level(zerolog.TraceLevel).With().Str("test", t.Name()).Logger()
}

// rig is one ingest handler on a real JetStream server, served over real HTTP.
type rig struct {
	srv *natstest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	gc  *groupcommit.Publisher // nil with rigOptions.plain
	url string
	reg *prometheus.Registry
}

type rigOptions struct {
	auth           bridge.Auth
	publishTimeout time.Duration
	connOpts       []nats.Option
	limits         *streams.Limits // nil: streams.DefaultLimits()
	trustedProxies []*net.IPNet
	spool          bool // publish through a store-and-forward spool
	plain          bool // publish each webhook alone, without group commit
	syncAlways     bool // the server fsyncs every write, as embedded serve does by default
	batch          int  // group commit's MaxBatch; 0 the default, 1 pipelined publishes alone
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	sync := time.Minute
	if o.syncAlways {
		sync = 0
	}
	srv := natstest.StartWith(t, natsembed.Options{
		StoreDir:     t.TempDir(),
		SyncInterval: sync,
		Log:          testLogger(t).Level(zerolog.WarnLevel),
	})
	nc := srv.Connect(o.connOpts...)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	subjects, err := streams.NewSubjects("verifeye")
	if err != nil {
		t.Fatalf("NewSubjects: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	limits := streams.DefaultLimits()
	if o.limits != nil {
		limits = *o.limits
	}
	if err := streams.Ensure(ctx, js, subjects, limits); err != nil {
		t.Fatalf("streams.Ensure: %v", err)
	}
	// Group commit as the command wires it: the spool, when on, wraps it.
	var pub bridge.Publisher = js
	var gc *groupcommit.Publisher
	if !o.plain {
		gc, err = groupcommit.New(js, groupcommit.Options{Stream: streams.Webhooks, MaxBatch: o.batch, Log: testLogger(t)})
		if err != nil {
			t.Fatalf("groupcommit.New: %v", err)
		}
		pub = gc
	}
	checks := []ops.Check{{Name: "nats", Critical: !o.spool, Func: func(ctx context.Context) error {
		return streams.Ready(ctx, nc, js)
	}}}
	if o.spool {
		sp := startSpool(t, pub)
		pub = sp
		checks = append(checks, ops.Check{Name: "spool", Critical: true, Func: sp.Ready,
			State: func(ctx context.Context) any { st, _ := sp.State(ctx); return st }})
	}
	reg := prometheus.NewRegistry()
	in := bridge.New(pub, testLogger(t), bridge.Options{
		Auth:           o.auth,
		Subjects:       subjects,
		PublishTimeout: o.publishTimeout,
		Registerer:     reg,
		TrustedProxies: o.trustedProxies,
		Probe:          func(ctx context.Context) error { return streams.HasRoom(ctx, js) },
	})
	// Served as the command serves it: health, readiness and metrics beside
	// the webhook routes.
	h := ops.New(ops.Options{
		Checks:   append(checks, ops.Check{Name: "storage", Critical: true, Func: in.Ready}),
		Gatherer: reg,
		Next:     in,
	})
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return &rig{srv: srv, nc: nc, js: js, gc: gc, url: ts.URL, reg: reg}
}

// answer is an HTTP response, read in full.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// request is one HTTP request to the rig. Header values replace the defaults
// (X-API-Key: testAPIKey, Content-Type: application/json); an empty value
// removes the header.
type request struct {
	method  string
	path    string
	body    []byte
	header  map[string]string
	chunked bool // send the body without a Content-Length
}

var client = &http.Client{Timeout: 15 * time.Second}

func (r *rig) do(t testing.TB, req request) answer {
	t.Helper()
	a, err := r.try(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.method, req.path, err)
	}
	return a
}

// try is do without failing the test, for goroutines.
func (r *rig) try(req request) (answer, error) {
	if req.method == "" {
		req.method = http.MethodPost
	}
	var body io.Reader = bytes.NewReader(req.body)
	if req.chunked {
		body = io.MultiReader(bytes.NewReader(req.body)) // unknown length: chunked
	}
	hr, err := http.NewRequest(req.method, r.url+req.path, body)
	if err != nil {
		return answer{}, err
	}
	hr.Header.Set("X-API-Key", testAPIKey)
	hr.Header.Set("Content-Type", "application/json")
	for k, v := range req.header {
		if v == "" {
			hr.Header.Del(k)
			continue
		}
		hr.Header.Set(k, v)
	}
	if carriesSecret(hr) {
		secretRequests.Add(1)
	}
	resp, err := client.Do(hr)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

func carriesSecret(r *http.Request) bool {
	s := r.URL.RawQuery + r.Header.Get("X-API-Key") + r.Header.Get("Authorization")
	return strings.Contains(s, testAPIKey) || strings.Contains(s, testToken)
}

// acceptedBody is the 202 answer.
type acceptedBody struct {
	Status    string `json:"status"`
	SessionID string `json:"verificationSessionId"`
	Duplicate *bool  `json:"duplicate"`
}

func decodeAccepted(t testing.TB, a answer) acceptedBody {
	t.Helper()
	var b acceptedBody
	if err := json.Unmarshal(a.body, &b); err != nil {
		t.Fatalf("202 body %q is not JSON: %v", a.body, err)
	}
	return b
}

// checkError checks an error answer: the status, a JSON body with a non-empty
// message and the error code.
func checkError(t testing.TB, name string, a answer, wantStatus int, wantCode string) {
	t.Helper()
	if a.status != wantStatus {
		t.Errorf("%s: status = %d, want %d (body %s)", name, a.status, wantStatus, a.body)
	}
	if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type = %q, want application/json", name, ct)
	}
	var e map[string]any
	if err := json.Unmarshal(a.body, &e); err != nil {
		t.Fatalf("%s: error body %q is not a JSON object: %v", name, a.body, err)
	}
	code, _ := e["error"].(string)
	msg, _ := e["message"].(string)
	if code != wantCode {
		t.Errorf("%s: error = %q, want %q (body %s)", name, code, wantCode, a.body)
	}
	if strings.TrimSpace(msg) == "" {
		t.Errorf("%s: message is empty (body %s)", name, a.body)
	}
	if len(e) != 2 {
		t.Errorf("%s: error body has keys %v, want exactly error and message", name, e)
	}
}

// newSessionID returns a random UUID in 8-4-4-4-12 form.
func newSessionID(t testing.TB) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("rand: %v", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func webhookBody(event, sessionID string) []byte {
	return []byte(`{"event":"` + event + `","verificationSessionId":"` + sessionID + `"}`)
}

func stream(t testing.TB, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, streams.Webhooks)
	if err != nil {
		t.Fatalf("stream %s: %v", streams.Webhooks, err)
	}
	return s
}

// msgIDs returns the Nats-Msg-Id of every message on the webhooks stream, with
// how often each occurs.
func msgIDs(t testing.TB, js jetstream.JetStream) map[string]int {
	t.Helper()
	ids := make(map[string]int)
	for _, m := range natstest.Messages(t, js, streams.Webhooks) {
		ids[m.Headers().Get(streams.HeaderMsgID)]++
	}
	return ids
}

// TestWebhookAccepted proves that a 202 means the event is already on the
// stream: right after each 202 the message is read back and must carry the
// request body byte for byte, the contract's subject and headers.
func TestWebhookAccepted(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey)})
	st := stream(t, r.js)
	start := time.Now().Add(-time.Minute)

	// A body of exactly the size limit, padded with an unknown field.
	maxID := newSessionID(t)
	maxBody := []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + maxID + `","pad":"`)
	maxBody = append(maxBody, bytes.Repeat([]byte("x"), streams.MaxWebhookBytes-len(maxBody)-2)...)
	maxBody = append(maxBody, '"', '}')

	upperID := strings.ToUpper(newSessionID(t))
	oddID := newSessionID(t)
	shopID := newSessionID(t)
	longID := newSessionID(t)
	tests := []struct {
		name        string
		path        string
		body        []byte
		header      map[string]string
		wantSubject string
		wantMsgID   string
		wantSession string
	}{{
		name: "extra fields and odd whitespace",
		path: "/webhooks/verifeye",
		body: []byte("\r\n\t { \"extra\" : [1, {\"nested\": true}, null],\n  \"event\":\"VerificationCompleted\" ,\t\"verificationSessionId\" :  \"" +
			oddID + "\", \"note\": \"h\\u00e9llo ✓ \\\"quoted\\\"\", \"n\": 1.50e+3 }\n\n  "),
		wantSubject: "verifeye.webhook.default.VerificationCompleted",
		wantMsgID:   "VerificationCompleted:" + oddID,
		wantSession: oddID,
	}, {
		name:        "source routing",
		path:        "/webhooks/verifeye/shop-1",
		body:        webhookBody("VerificationCompleted", shopID),
		wantSubject: "verifeye.webhook.shop-1.VerificationCompleted",
		wantMsgID:   "VerificationCompleted:" + shopID,
		wantSession: shopID,
	}, {
		name:        "other event is accepted and kept",
		path:        "/webhooks/verifeye/shop-1",
		body:        webhookBody("VerificationStarted", oddID),
		wantSubject: "verifeye.webhook.shop-1.VerificationStarted",
		wantMsgID:   "VerificationStarted:" + oddID,
		wantSession: oddID,
	}, {
		name:        "upper-case session id gets a lower-case msg id",
		path:        "/webhooks/verifeye/a_b-9",
		body:        webhookBody("Verification_completed-2", upperID),
		header:      map[string]string{"Content-Type": "application/json; charset=utf-8"},
		wantSubject: "verifeye.webhook.a_b-9.Verification_completed-2",
		wantMsgID:   "Verification_completed-2:" + strings.ToLower(upperID),
		wantSession: upperID,
	}, {
		name:        "no content type, longest source",
		path:        "/webhooks/verifeye/" + strings.Repeat("z", 64),
		body:        webhookBody("VerificationCompleted", longID),
		header:      map[string]string{"Content-Type": ""},
		wantSubject: "verifeye.webhook." + strings.Repeat("z", 64) + ".VerificationCompleted",
		wantMsgID:   "VerificationCompleted:" + longID,
		wantSession: longID,
	}, {
		name:        "body of exactly 64 KiB, chunked",
		path:        "/webhooks/verifeye",
		body:        maxBody,
		wantSubject: "verifeye.webhook.default.VerificationCompleted",
		wantMsgID:   "VerificationCompleted:" + maxID,
		wantSession: maxID,
	}}
	for i, tc := range tests {
		a := r.do(t, request{path: tc.path, body: tc.body, header: tc.header, chunked: i == len(tests)-1})
		if a.status != http.StatusAccepted {
			t.Fatalf("%s: POST %s: status = %d, want 202 (body %s)", tc.name, tc.path, a.status, a.body)
		}
		got := decodeAccepted(t, a)
		if diff := cmp.Diff(acceptedBody{Status: "accepted", SessionID: tc.wantSession}, got); diff != "" {
			t.Errorf("%s: 202 body mismatch (-want +got):\n%s", tc.name, diff)
		}

		// No polling: the message must be there when the 202 arrives.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		m, err := st.GetLastMsgForSubject(ctx, tc.wantSubject)
		cancel()
		if err != nil {
			t.Fatalf("%s: after 202, GetLastMsgForSubject(%q): %v", tc.name, tc.wantSubject, err)
		}
		if !bytes.Equal(m.Data, tc.body) {
			t.Errorf("%s: stored body differs from the request body:\n got %q\nwant %q", tc.name, m.Data, tc.body)
		}
		if got := m.Header.Get(streams.HeaderMsgID); got != tc.wantMsgID {
			t.Errorf("%s: Nats-Msg-Id = %q, want %q", tc.name, got, tc.wantMsgID)
		}
		ra := m.Header.Get(streams.HeaderReceivedAt)
		at, err := time.Parse(time.RFC3339, ra)
		if err != nil {
			t.Errorf("%s: %s = %q does not parse as RFC 3339: %v", tc.name, streams.HeaderReceivedAt, ra, err)
		} else if at.Before(start) {
			t.Errorf("%s: %s = %q is before the test started", tc.name, streams.HeaderReceivedAt, ra)
		}
	}
	if got, want := natstest.Count(t, r.js, streams.Webhooks), len(tests); got != want {
		t.Errorf("stream holds %d messages, want %d", got, want)
	}
}

// TestWebhookDuplicates posts one webhook 10 times at once and 5 times after:
// every answer is 2xx, exactly one message is stored, and every answer but
// the one that stored it says "duplicate":true.
func TestWebhookDuplicates(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey)})
	id := newSessionID(t)
	body := webhookBody("VerificationCompleted", id)

	const concurrent, after = 10, 5
	answers := make([]answer, concurrent, concurrent+after)
	errs := make([]error, concurrent)
	var wg sync.WaitGroup
	for i := range concurrent {
		wg.Go(func() { answers[i], errs[i] = r.try(request{path: "/webhooks/verifeye", body: body}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent POST %d: %v", i, err)
		}
	}
	for range after {
		answers = append(answers, r.do(t, request{path: "/webhooks/verifeye", body: body}))
	}

	fresh := 0
	for i, a := range answers {
		if a.status != http.StatusAccepted {
			t.Errorf("POST %d: status = %d, want 202 (body %s)", i, a.status, a.body)
			continue
		}
		b := decodeAccepted(t, a)
		if b.Status != "accepted" || b.SessionID != id {
			t.Errorf("POST %d: body = %s, want status accepted and the session id", i, a.body)
		}
		switch {
		case b.Duplicate == nil:
			fresh++
		case !*b.Duplicate:
			t.Errorf("POST %d: body = %s: duplicate is present but false", i, a.body)
		}
		if i >= concurrent && b.Duplicate == nil {
			t.Errorf("POST %d (after the burst): body = %s, want \"duplicate\":true", i, a.body)
		}
	}
	if fresh != 1 {
		t.Errorf("%d answers without \"duplicate\":true, want exactly 1", fresh)
	}
	if got := natstest.Count(t, r.js, streams.Webhooks); got != 1 {
		t.Errorf("stream holds %d messages, want 1", got)
	}
	if diff := cmp.Diff(map[string]int{"VerificationCompleted:" + id: 1}, msgIDs(t, r.js)); diff != "" {
		t.Errorf("stored msg ids (-want +got):\n%s", diff)
	}
}

// TestHealthReadyMetrics checks the probes and that /metrics counts webhooks.
func TestHealthReadyMetrics(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey)})
	if a := r.do(t, request{method: http.MethodPost, path: "/webhooks/verifeye", body: webhookBody("VerificationCompleted", newSessionID(t))}); a.status != http.StatusAccepted {
		t.Fatalf("POST: status = %d, want 202 (body %s)", a.status, a.body)
	}
	a := r.do(t, request{method: http.MethodGet, path: "/healthz"})
	if a.status != http.StatusOK || !json.Valid(a.body) {
		t.Errorf("GET /healthz = %d %s, want 200 and JSON", a.status, a.body)
	}
	a = r.do(t, request{method: http.MethodGet, path: "/readyz"})
	var ready struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal(a.body, &ready); err != nil {
		t.Fatalf("GET /readyz body %q: %v", a.body, err)
	}
	if a.status != http.StatusOK || ready.Status != "ready" || ready.Checks["nats"] != "ok" {
		t.Errorf("GET /readyz = %d %s, want 200, ready, nats ok", a.status, a.body)
	}
	a = r.do(t, request{method: http.MethodGet, path: "/metrics"})
	want := `verifeye_bridge_webhooks_total{event="VerificationCompleted",result="accepted",source="default"} 1`
	if a.status != http.StatusOK || !bytes.Contains(a.body, []byte(want)) {
		t.Errorf("GET /metrics = %d, want 200 with %s; got:\n%s", a.status, want, a.body)
	}
}
