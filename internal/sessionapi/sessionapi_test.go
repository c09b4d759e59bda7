package sessionapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/sessionapi"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

const token = "test-token-0123456789abcdef"

type rig struct {
	t   *testing.T
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	api *sessionapi.API
	srv *httptest.Server
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigSync(t, nil)
}

// newRigSync is newRig with Options.Sync.
func newRigSync(t *testing.T, sync func() error) *rig {
	t.Helper()
	ns := natstest.Start(t)
	js := ns.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _ := streams.NewSubjects("verifeye")
	if err := streams.Ensure(ctx, js, s, streams.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, outcome.BucketSessions)
	if err != nil {
		t.Fatal(err)
	}
	api := sessionapi.New(js, sessionapi.Options{Token: token, Log: zerolog.New(zerolog.NewTestWriter(t)), Sync: sync})
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = api.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	return &rig{t: t, js: js, kv: kv, api: api, srv: srv}
}

func (r *rig) do(method, path, tok, body string) (int, map[string]any) {
	r.t.Helper()
	req, err := http.NewRequest(method, r.srv.URL+path, strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Errorf("%s %s: %v", method, path, err)
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		r.t.Errorf("%s %s: body %q is not a JSON object", method, path, b)
	}
	return resp.StatusCode, m
}

func (r *rig) put(id, state string) {
	r.t.Helper()
	b, err := json.Marshal(&outcome.Session{SessionID: id, Source: "acme", State: state, UpdatedAt: time.Now()})
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.kv.Put(context.Background(), outcome.SessionKey(id), b); err != nil {
		r.t.Fatal(err)
	}
}

func sid(n int) string { return fmt.Sprintf("5e551011-0000-4000-8000-%012x", n) }

func TestAuth(t *testing.T) {
	r := newRig(t)
	for _, tok := range []string{"", "wrong-token-0123456789abcdef"} {
		if code, body := r.do("GET", "/v1/sessions/"+sid(1), tok, ""); code != 401 || body["error"] != "unauthorized" {
			t.Errorf("token %q: %d %v, want 401 unauthorized", tok, code, body)
		}
		if code, _ := r.do("PUT", "/v1/sessions/"+sid(1)+"/expect", tok, ""); code != 401 {
			t.Errorf("PUT with token %q: %d, want 401", tok, code)
		}
	}
	if code, body := r.do("GET", "/v1/sessions/"+sid(1), token, ""); code != 404 || body["error"] != "not_found" {
		t.Errorf("right token, unknown session: %d %v, want 404 not_found", code, body)
	}
}

func TestBadRequests(t *testing.T) {
	r := newRig(t)
	for _, path := range []string{"/v1/sessions/not-a-uuid", "/v1/sessions/" + sid(1) + "x", "/v1/sessions/%7B" + sid(1) + "%7D"} {
		if code, body := r.do("GET", path, token, ""); code != 400 || body["error"] != "invalid_session_id" {
			t.Errorf("GET %s: %d %v, want 400 invalid_session_id", path, code, body)
		}
	}
	if code, _ := r.do("PUT", "/v1/sessions/nope/expect", token, ""); code != 400 {
		t.Errorf("PUT malformed ID: %d, want 400", code)
	}
	for _, w := range []string{"61s", "-1s", "soon"} {
		if code, body := r.do("GET", "/v1/sessions/"+sid(1)+"?wait="+w, token, ""); code != 400 || body["error"] != "invalid_wait" {
			t.Errorf("wait=%s: %d %v, want 400 invalid_wait", w, code, body)
		}
	}
	if code, _ := r.do("PUT", "/v1/sessions/"+sid(1)+"/expect", token, `{"source":"Bad Source"}`); code != 400 {
		t.Errorf("PUT with a bad source: %d, want 400", code)
	}
	if code, _ := r.do("POST", "/v1/sessions/"+sid(1), token, ""); code != 405 {
		t.Errorf("POST: %d, want 405", code)
	}
	if code, _ := r.do("GET", "/v1/other", token, ""); code != 404 {
		t.Errorf("GET /v1/other: %d, want 404", code)
	}
}

// TestWaitForUnseenSession: a long poll for a session the ledger does not
// hold yet returns soon after it is enriched.
func TestWaitForUnseenSession(t *testing.T) {
	r := newRig(t)
	id := sid(2)
	done := make(chan map[string]any, 1)
	start := time.Now()
	go func() {
		code, body := r.do("GET", "/v1/sessions/"+id+"?wait=30s", token, "")
		if code != 200 {
			t.Errorf("wait: %d %v, want 200", code, body)
		}
		done <- body
	}()
	natstest.WaitFor(t, 5*time.Second, func() error {
		if r.api.Waiters() != 1 {
			return fmt.Errorf("%d waiters", r.api.Waiters())
		}
		return nil
	})
	r.put(id, outcome.StateReceived) // not final: keeps waiting
	r.put(id, outcome.StateEnriched)
	select {
	case body := <-done:
		if body["state"] != outcome.StateEnriched || body["sessionId"] != id {
			t.Errorf("wait returned %v, want the enriched entry", body)
		}
		if _, ok := body["event"]; !ok {
			t.Errorf("the answer has no \"event\" member: %v", body)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("wait did not return %v after the session was enriched", time.Since(start))
	}
}

// TestWaitEndsWithCurrentState: 404 at the end of a wait for a session that
// never comes; 200 with the state for one that is not final.
func TestWaitEndsWithCurrentState(t *testing.T) {
	r := newRig(t)
	if code, body := r.do("GET", "/v1/sessions/"+sid(3)+"?wait=300ms", token, ""); code != 404 || body["error"] != "not_found" {
		t.Errorf("never seen: %d %v, want 404", code, body)
	}
	r.put(sid(4), outcome.StateReceived)
	if code, body := r.do("GET", "/v1/sessions/"+sid(4)+"?wait=300ms", token, ""); code != 200 || body["state"] != outcome.StateReceived {
		t.Errorf("received: %d %v, want 200 received", code, body)
	}
}

// TestManyWaiters: 500 concurrent long polls are all answered, from the one
// shared watch.
func TestManyWaiters(t *testing.T) {
	r := newRig(t)
	const n = 500
	tr := &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: 0}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", r.srv.URL+"/v1/sessions/"+sid(1000+i%250)+"?wait=50s", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := client.Do(req)
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			var s outcome.Session
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != 200 || s.State != outcome.StateEnriched {
				t.Errorf("waiter %d: %d %+v %v", i, resp.StatusCode, s, err)
				return
			}
			mu.Lock()
			ok++
			mu.Unlock()
		})
	}
	natstest.WaitFor(t, 20*time.Second, func() error {
		if w := r.api.Waiters(); w != n {
			return fmt.Errorf("%d waiters, want %d", w, n)
		}
		return nil
	})
	for i := range 250 {
		r.put(sid(1000+i), outcome.StateEnriched)
	}
	wg.Wait()
	if ok != n {
		t.Errorf("%d of %d waiters answered enriched", ok, n)
	}
	if w := r.api.Waiters(); w != 0 {
		t.Errorf("%d waiters left registered", w)
	}
}

// TestExpect: PUT .../expect publishes one expectation on the stream; a
// repeat is accepted and de-duplicated.
func TestExpect(t *testing.T) {
	r := newRig(t)
	id := strings.ToUpper(sid(5))
	for range 2 {
		if code, body := r.do("PUT", "/v1/sessions/"+id+"/expect", token, `{"source":"acme"}`); code != 202 || body["state"] != outcome.StateExpected {
			t.Errorf("PUT expect: %d %v, want 202", code, body)
		}
	}
	if code, _ := r.do("PUT", "/v1/sessions/"+sid(6)+"/expect", token, ""); code != 202 {
		t.Errorf("PUT expect without a body: %d, want 202", code)
	}
	msgs := natstest.Messages(t, r.js, outcome.StreamExpectations)
	if len(msgs) != 2 {
		t.Fatalf("expectations stream holds %d messages, want 2", len(msgs))
	}
	var e outcome.Expectation
	if err := json.Unmarshal(msgs[0].Data(), &e); err != nil || e.SessionID != id || e.Source != "acme" || msgs[0].Subject() != "verifeye.expect.acme" {
		t.Errorf("expectation = %s on %s, want session %s of acme", msgs[0].Data(), msgs[0].Subject(), id)
	}
	if msgs[1].Subject() != "verifeye.expect.default" {
		t.Errorf("expectation without a body on %s, want verifeye.expect.default", msgs[1].Subject())
	}
}

// TestExpectSyncsBeforeAnswer: with Options.Sync, an expectation is answered
// 202 only after a Sync made once it was stored; a failing Sync answers 503.
func TestExpectSyncsBeforeAnswer(t *testing.T) {
	var r *rig
	var stored []int
	fail := false
	r = newRigSync(t, func() error {
		stored = append(stored, len(natstest.Messages(t, r.js, outcome.StreamExpectations)))
		if fail {
			return errors.New("test: the disk failed")
		}
		return nil
	})
	if code, body := r.do("PUT", "/v1/sessions/"+sid(7)+"/expect", token, ""); code != 202 {
		t.Errorf("PUT expect: %d %v, want 202", code, body)
	}
	fail = true
	if code, body := r.do("PUT", "/v1/sessions/"+sid(8)+"/expect", token, ""); code != 503 || body["error"] != "unavailable" {
		t.Errorf("PUT expect with a failing sync: %d %v, want 503 unavailable", code, body)
	}
	if !slices.Equal(stored, []int{1, 2}) {
		t.Errorf("Sync found %v expectations stored; want [1 2] (each stored before its sync)", stored)
	}
}
