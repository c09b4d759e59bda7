package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/outcome"
)

const apiTestToken = "api-token-0123456789abcdef"

// sessionServe runs serve in-process with an embedded NATS server storing
// under dataDir, the internal API on a free loopback port and short
// reconciliation delays. It returns the ingest's and the API's base URLs and
// a stop that returns once serve has.
func sessionServe(t *testing.T, dataDir string, api *verifeyetest.Server) (base, apiBase string, stop func()) {
	t.Helper()
	return sessionServeLog(t, dataDir, api, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
}

// sessionServeLog is sessionServe logging to log.
func sessionServeLog(t *testing.T, dataDir string, api *verifeyetest.Server, log zerolog.Logger) (base, apiBase string, stop func()) {
	t.Helper()
	for k, v := range map[string]string{
		"NATS_URL":            "",
		"NATS_EMBEDDED_ADDR":  "-",
		"NATS_EMBEDDED_SYNC":  "1s",
		"DATA_DIR":            dataDir,
		"VERIFEYE_API_KEY":    enrichTestKey,
		"VERIFEYE_RATE_LIMIT": "0",
		"ENRICH_ACK_WAIT":     "2s",
		"ENRICH_BACKOFF_BASE": "20ms",
		"ENRICH_BACKOFF_MAX":  "200ms",
		"RECONCILE_AFTER":     "2s",
		"RECONCILE_GIVE_UP":   "1m",
		"API_ADDR":            "127.0.0.1:0",
		"API_TOKEN":           apiTestToken,
		"SHUTDOWN_GRACE":      "10s",
		"OTEL_SDK_DISABLED":   "true",
	} {
		t.Setenv(k, v)
	}
	client, err := verifeye.New(api.URL, enrichTestKey, verifeye.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := serviceConfig{name: "serve", embedded: &embeddedConfig{}, ingest: &ingestConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}, internal: &internalAPIConfig{}}
	if err := cfg.load(); err != nil {
		t.Fatalf("load() error = %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiAddr := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	deps := serviceDeps{client: client, onAPIReady: func(a string) { apiAddr <- a }}
	go func() {
		done <- serve(ctx, cfg, deps, ln, log)
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve() = %v, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("serve() did not return within 30 s of cancel")
		}
	}
	t.Cleanup(stop)
	select {
	case a := <-apiAddr:
		apiBase = "http://" + a
	case err := <-done:
		t.Fatalf("serve() returned early: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the internal API did not start")
	}
	return "http://" + ln.Addr().String(), apiBase, stop
}

func apiDo(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Errorf("%s %s: body %q is not JSON", method, url, b)
	}
	return resp.StatusCode, m
}

// waitWhilePosting asks the internal API to wait for session id's outcome,
// posts its webhook meanwhile, and returns what the wait answered (200, else
// the test fails).
func waitWhilePosting(t *testing.T, base, apiBase, id string) map[string]any {
	t.Helper()
	type answer struct {
		code int
		body map[string]any
	}
	waited := make(chan answer, 1)
	go func() {
		code, body := apiDo(t, "GET", apiBase+"/v1/sessions/"+id+"?wait=30s", apiTestToken, "")
		waited <- answer{code, body}
	}()
	enrichPost(t, base, "default", id, false)
	select {
	case a := <-waited:
		if a.code != 200 {
			t.Errorf("wait: %d %v, want 200", a.code, a.body)
		}
		return a.body
	case <-time.After(30 * time.Second):
		t.Fatal("wait did not return")
		return nil
	}
}

// TestFreshStartWarnsOfNothing: serve's first start on an empty DATA_DIR
// logs no warning or error (the internal API's ledger watch waits for the
// ledger to exist), and the watch then wakes a ?wait= with the outcome.
func TestFreshStartWarnsOfNothing(t *testing.T) {
	api := verifeyetest.Start(enrichTestKey)
	t.Cleanup(api.Close)
	var logs ingestLog
	base, apiBase, stop := sessionServeLog(t, t.TempDir(), api, zerolog.New(&logs).Level(zerolog.WarnLevel))
	waitWhilePosting(t, base, apiBase, "5e551011-0000-4000-8000-00000000b001")
	stop()
	if out := logs.String(); out != "" {
		t.Errorf("a fresh start logged warnings or errors:\n%s", out)
	}
}

// TestServeSessionAPI: the internal API on its own listener, behind its
// token; a webhook's session is found there, a ?wait= returns its outcome,
// and an expected session without a webhook is reconciled.
func TestServeSessionAPI(t *testing.T) {
	api := verifeyetest.Start(enrichTestKey)
	t.Cleanup(api.Close)
	base, apiBase, _ := sessionServe(t, t.TempDir(), api)
	id := "5e551011-0000-4000-8000-00000000a001"
	for _, tok := range []string{"", "wrong-token-0123456789abcdef"} {
		if code, _ := apiDo(t, "GET", apiBase+"/v1/sessions/"+id, tok, ""); code != 401 {
			t.Errorf("token %q: %d, want 401", tok, code)
		}
	}
	if code, _ := apiDo(t, "GET", apiBase+"/v1/sessions/nope", apiTestToken, ""); code != 400 {
		t.Errorf("malformed ID: %d, want 400", code)
	}
	// Never on the public listener.
	if resp, err := http.Get(base + "/v1/sessions/" + id); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET /v1/sessions on the ingest listener: %d, want 404", resp.StatusCode)
		}
	}
	body := waitWhilePosting(t, base, apiBase, id)
	if ev, _ := body["event"].(map[string]any); body["state"] != outcome.StateEnriched || ev == nil || ev["subject"] != id {
		t.Errorf("wait returned %v, want the enriched session with its event", body)
	}

	exp := "5e551011-0000-4000-8000-00000000a002"
	if code, body := apiDo(t, "PUT", apiBase+"/v1/sessions/"+exp+"/expect", apiTestToken, `{"source":"acme"}`); code != 202 {
		t.Fatalf("PUT expect: %d %v", code, body)
	}
	code, body := apiDo(t, "GET", apiBase+"/v1/sessions/"+exp+"?wait=30s", apiTestToken, "")
	if code != 200 || body["state"] != outcome.StateEnriched || body["reconciled"] != true {
		t.Errorf("expected session: %d %v, want enriched and reconciled", code, body)
	}
	if ev, _ := body["event"].(map[string]any); ev == nil || ev["verifeyereconciled"] != true {
		t.Errorf("expected session's event = %v, want verifeyereconciled: true", body["event"])
	}
}

// TestServeRestartKeepsExpectations: expectations open when serve stops are
// all reconciled after it starts again.
func TestServeRestartKeepsExpectations(t *testing.T) {
	api := verifeyetest.Start(enrichTestKey)
	t.Cleanup(api.Close)
	dataDir := t.TempDir()
	_, apiBase, stop := sessionServe(t, dataDir, api)
	var ids []string
	for i := range 5 {
		id := fmt.Sprintf("5e551011-0000-4000-8000-00000000b%03d", i)
		ids = append(ids, id)
		if code, body := apiDo(t, "PUT", apiBase+"/v1/sessions/"+id+"/expect", apiTestToken, ""); code != 202 {
			t.Fatalf("PUT expect: %d %v", code, body)
		}
	}
	stop()
	_, apiBase, _ = sessionServe(t, dataDir, api)
	for _, id := range ids {
		// Up to the reconciler's ack wait, then RECONCILE_AFTER.
		natstest.WaitFor(t, 60*time.Second, func() error {
			code, body := apiDo(t, "GET", apiBase+"/v1/sessions/"+id+"?wait=10s", apiTestToken, "")
			if code != 200 || body["state"] != outcome.StateEnriched {
				return fmt.Errorf("%s: %d %v", id, code, body)
			}
			return nil
		})
	}
}

// TestSessionAndExpectCLI: expect announces a session; session prints a
// session's path, in text and JSON.
func TestSessionAndExpectCLI(t *testing.T) {
	ns := natstest.Start(t)
	api := verifeyetest.Start(enrichTestKey)
	t.Cleanup(api.Close)
	base := enrichServe(t, ns, api)
	id := "5e551011-0000-4000-8000-00000000c001"
	enrichPost(t, base, "acme", id, false)
	natstest.WaitFor(t, 10*time.Second, func() error {
		s, err := outcome.Lookup(context.Background(), ns.JetStream(), id)
		if err != nil {
			return err
		}
		if s.State != outcome.StateEnriched {
			return fmt.Errorf("state %s", s.State)
		}
		return nil
	})
	t.Setenv("NATS_URL", ns.URL())
	var stdout, stderr strings.Builder
	if code := run(context.Background(), []string{"session", id}, &stdout, &stderr); code != exitOK {
		t.Fatalf("session: exit %d, stderr %q", code, stderr.String())
	}
	for _, want := range []string{"webhook   seq 1 on verifeye.webhook.acme.VerificationCompleted", "outcome   seq 1: passed", "ledger: enriched, outcome passed, result seq 1"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("session output lacks %q:\n%s", want, stdout.String())
		}
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"session", "--json", strings.ToUpper(id)}, &stdout, &stderr); code != exitOK {
		t.Fatalf("session --json: exit %d, stderr %q", code, stderr.String())
	}
	var story struct {
		SessionID string
		Ledger    *outcome.Session
		Webhooks  []map[string]any
		Outcomes  []map[string]any
	}
	if err := json.Unmarshal([]byte(stdout.String()), &story); err != nil {
		t.Fatalf("session --json: %v in %s", err, stdout.String())
	}
	if story.SessionID != id || story.Ledger == nil || story.Ledger.State != outcome.StateEnriched || len(story.Webhooks) != 1 || len(story.Outcomes) != 1 {
		t.Errorf("session --json = %+v", story)
	}

	if code := run(context.Background(), []string{"session", "nope"}, &stdout, &stderr); code != exitUsage {
		t.Errorf("session with a malformed ID: exit %d, want %d", code, exitUsage)
	}
	unknown := "5e551011-0000-4000-8000-00000000c0ff"
	if code := run(context.Background(), []string{"session", unknown}, &stdout, &stderr); code != exitFailure {
		t.Errorf("session never seen: exit %d, want %d", code, exitFailure)
	}

	exp := "5e551011-0000-4000-8000-00000000c002"
	stdout.Reset()
	if code := run(context.Background(), []string{"expect", exp, "--source", "acme"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("expect: exit %d, stderr %q", code, stderr.String())
	}
	msgs := natstest.Messages(t, ns.JetStream(), outcome.StreamExpectations)
	if len(msgs) != 1 || msgs[0].Subject() != "verifeye.expect.acme" {
		t.Errorf("expectations stream: %d messages, want one on verifeye.expect.acme", len(msgs))
	}
	if code := run(context.Background(), []string{"expect", exp, "--source", "Bad"}, &stdout, &stderr); code != exitUsage {
		t.Errorf("expect with a bad source: exit %d, want %d", code, exitUsage)
	}
}

// TestSendForget: send --forget expects sessions without posting their
// webhooks; the bridge reconciles each.
func TestSendForget(t *testing.T) {
	api := verifeyetest.Start(enrichTestKey)
	t.Cleanup(api.Close)
	_, apiBase, _ := sessionServe(t, t.TempDir(), api)
	var stdout, stderr strings.Builder
	if code := run(context.Background(), []string{"send", "--count", "0", "--forget", "2", "--api-url", apiBase, "--api-token", apiTestToken}, &stdout, &stderr); code != exitOK {
		t.Fatalf("send --forget: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "expected" {
			ids = append(ids, strings.TrimSuffix(f[1], ","))
		}
	}
	if len(ids) != 2 {
		t.Fatalf("send --forget 2 printed %q; want two expected sessions", stdout.String())
	}
	for _, id := range ids {
		code, body := apiDo(t, "GET", apiBase+"/v1/sessions/"+id+"?wait=30s", apiTestToken, "")
		if code != 200 || body["state"] != outcome.StateEnriched || body["reconciled"] != true {
			t.Errorf("forgotten session %s: %d %v, want enriched and reconciled", id, code, body)
		}
	}
}
