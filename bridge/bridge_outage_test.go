package bridge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/spool"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// readyz returns the status of GET /readyz and its "nats" check.
func (r *rig) readyz(t testing.TB) (int, string) {
	t.Helper()
	a := r.do(t, request{method: http.MethodGet, path: "/readyz"})
	var b struct {
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal(a.body, &b); err != nil {
		t.Fatalf("GET /readyz body %q: %v", a.body, err)
	}
	return a.status, b.Checks["nats"]
}

func (r *rig) waitReady(t testing.TB, want int) {
	t.Helper()
	natstest.WaitFor(t, 20*time.Second, func() error {
		if got, check := r.readyz(t); got != want {
			return fmt.Errorf("GET /readyz = %d (nats: %s), want %d", got, check, want)
		}
		return nil
	})
}

// outageConn are client settings like natsOptions in cmd/verifeye-bridge:
// reconnect forever, no reconnect buffer, a short wait between attempts.
var outageConn = []nats.Option{
	nats.MaxReconnects(-1),
	nats.RetryOnFailedConnect(true),
	nats.ReconnectBufSize(-1),
	nats.ReconnectWait(50 * time.Millisecond),
	nats.ReconnectJitter(0, 0),
}

// TestIngestNATSOutage stops NATS under a running ingest: webhooks get 503
// (never a false 202) and /readyz turns 503; when NATS comes back on the same
// port and store, the same handler accepts again and /readyz is 200, without
// restarting anything. A webhook refused during the outage is accepted as new
// afterwards, so the 503 did not half-store it.
func TestIngestNATSOutage(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey), publishTimeout: 500 * time.Millisecond, connOpts: outageConn})
	before, during, after := newSessionID(t), newSessionID(t), newSessionID(t)

	if status, check := r.readyz(t); status != http.StatusOK || check != "ok" {
		t.Fatalf("GET /readyz before the outage = %d (nats: %s), want 200 (ok)", status, check)
	}
	if a := r.do(t, request{path: "/webhooks/verifeye", body: webhookBody("VerificationCompleted", before)}); a.status != http.StatusAccepted {
		t.Fatalf("POST before the outage: status = %d, want 202 (body %s)", a.status, a.body)
	}

	r.srv.Shutdown()
	r.waitReady(t, http.StatusServiceUnavailable)
	if _, check := r.readyz(t); check == "" || check == "ok" {
		t.Errorf("GET /readyz during the outage: nats check = %q, want an error", check)
	}
	for i := range 3 {
		a := r.do(t, request{path: "/webhooks/verifeye/shop-1", body: webhookBody("VerificationCompleted", during)})
		checkError(t, fmt.Sprintf("POST %d during the outage", i), a, http.StatusServiceUnavailable, "unavailable")
	}

	r.srv.Restart()
	r.waitReady(t, http.StatusOK)
	for _, id := range []string{during, after} {
		a := r.do(t, request{path: "/webhooks/verifeye/shop-1", body: webhookBody("VerificationCompleted", id)})
		if a.status != http.StatusAccepted {
			t.Fatalf("POST %s after the restart: status = %d, want 202 (body %s)", id, a.status, a.body)
		}
		if b := decodeAccepted(t, a); b.Duplicate != nil {
			t.Errorf("POST %s after the restart: body %s says duplicate, but it was refused before", id, a.body)
		}
	}
	want := map[string]int{}
	for _, id := range []string{before, during, after} {
		want["VerificationCompleted:"+id] = 1
	}
	got := msgIDs(t, r.js)
	if len(got) != len(want) {
		t.Errorf("stream holds %v, want %v", got, want)
	}
	for id, n := range want {
		if got[id] != n {
			t.Errorf("stream holds %s %d times, want %d", id, got[id], n)
		}
	}
}

// TestIngestNATSOutageUnderLoad keeps requests flowing while NATS stops and
// comes back: every answer is 202 or 503, and every webhook that got 202 is on
// the stream exactly once.
func TestIngestNATSOutageUnderLoad(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey), publishTimeout: 500 * time.Millisecond, connOpts: outageConn})

	type outcome struct {
		id     string
		status int
	}
	var (
		mu        sync.Mutex
		outcomes  []outcome
		unavail   atomic.Int64
		accepted  atomic.Int64
		stop      = make(chan struct{})
		wg        sync.WaitGroup
		transport atomic.Value // first transport error
	)
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := newSessionID(t)
				a, err := r.try(request{path: "/webhooks/verifeye", body: webhookBody("VerificationCompleted", id)})
				if err != nil {
					transport.CompareAndSwap(nil, err)
					return
				}
				switch a.status {
				case http.StatusAccepted:
					accepted.Add(1)
				case http.StatusServiceUnavailable:
					unavail.Add(1)
				}
				mu.Lock()
				outcomes = append(outcomes, outcome{id, a.status})
				mu.Unlock()
			}
		})
	}
	stopped := false
	defer func() {
		if !stopped {
			close(stop)
			wg.Wait()
		}
	}()
	waitCount := func(what string, c *atomic.Int64, atLeast int64) {
		t.Helper()
		natstest.WaitFor(t, 20*time.Second, func() error {
			if err, _ := transport.Load().(error); err != nil {
				return fmt.Errorf("transport error: %w", err)
			}
			if n := c.Load(); n < atLeast {
				return fmt.Errorf("%d %s answers, want at least %d", n, what, atLeast)
			}
			return nil
		})
	}

	waitCount("202", &accepted, 20)
	r.srv.Shutdown()
	waitCount("503", &unavail, 5)
	acceptedBeforeRestart := accepted.Load()
	r.srv.Restart()
	waitCount("202", &accepted, acceptedBeforeRestart+20)
	close(stop)
	wg.Wait()
	stopped = true
	if err, _ := transport.Load().(error); err != nil {
		t.Fatalf("a request got no HTTP answer: %v", err)
	}

	got := msgIDs(t, r.js)
	var n202 int
	for _, o := range outcomes {
		id := "VerificationCompleted:" + o.id
		switch o.status {
		case http.StatusAccepted:
			n202++
			if got[id] != 1 {
				t.Errorf("%s got 202 but is on the stream %d times, want 1", o.id, got[id])
			}
		case http.StatusServiceUnavailable:
			// May or may not be stored (the ack can be lost on the way back):
			// either way never twice.
			if got[id] > 1 {
				t.Errorf("%s got 503 and is on the stream %d times", o.id, got[id])
			}
		default:
			t.Errorf("%s: status %d, want 202 or 503", o.id, o.status)
		}
	}
	t.Logf("%d requests: %d accepted, %d unavailable; %d stored", len(outcomes), n202, unavail.Load(), len(got))
}

// TestIngestPublishTimeout uses a connection that buffers publishes while
// disconnected (the nats.go default, which the bridge turns off): the handler
// still answers 503 once PublishTimeout passes, and VerifEye's retry after
// NATS is back yields a 202 and exactly one stored message, whether or not
// the buffered publish landed first.
func TestIngestPublishTimeout(t *testing.T) {
	r := newRig(t, rigOptions{
		auth:           bridge.APIKeyAuth(testAPIKey),
		publishTimeout: 500 * time.Millisecond,
		connOpts:       []nats.Option{nats.ReconnectBufSize(8 << 20), nats.ReconnectWait(50 * time.Millisecond)},
	})
	id := newSessionID(t)
	body := webhookBody("VerificationCompleted", id)
	r.srv.Shutdown()
	natstest.WaitFor(t, 10*time.Second, func() error {
		if r.nc.IsConnected() {
			return errors.New("client still connected")
		}
		return nil
	})
	a := r.do(t, request{path: "/webhooks/verifeye", body: body})
	checkError(t, "POST while NATS is down (buffered)", a, http.StatusServiceUnavailable, "unavailable")

	r.srv.Restart()
	r.waitReady(t, http.StatusOK)
	a = r.do(t, request{path: "/webhooks/verifeye", body: body})
	if a.status != http.StatusAccepted {
		t.Fatalf("retry after the restart: status = %d, want 202 (body %s)", a.status, a.body)
	}
	if got := natstest.Count(t, r.js, streams.Webhooks); got != 1 {
		t.Errorf("stream holds %d messages, want 1", got)
	}
}

// startSpool opens a store-and-forward spool in front of js and runs its
// forwarder until t ends.
func startSpool(t *testing.T, js spool.Publisher) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(js, spool.Options{Dir: filepath.Join(t.TempDir(), "spool"), After: 300 * time.Millisecond, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("spool.Open: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sp.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; sp.Close() })
	return sp
}

// TestIngestSpoolsDuringOutage: with a spool, a webhook that arrives while NATS
// is down is answered 202 with "spooled":true, /readyz stays 200 and shows the
// spool, and the event reaches the stream once NATS is back.
func TestIngestSpoolsDuringOutage(t *testing.T) {
	r := newRig(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey), publishTimeout: 2 * time.Second, connOpts: outageConn, spool: true})
	session := newSessionID(t)
	r.srv.Shutdown()
	a := r.do(t, request{path: "/webhooks/verifeye", body: webhookBody("VerificationCompleted", session)})
	if a.status != http.StatusAccepted || !strings.Contains(string(a.body), `"spooled":true`) {
		t.Fatalf("POST during the outage: %d %s, want 202 with \"spooled\":true", a.status, a.body)
	}
	ready := r.do(t, request{method: http.MethodGet, path: "/readyz"})
	var body struct {
		State map[string]struct {
			Messages int `json:"messages"`
		} `json:"state"`
	}
	if err := json.Unmarshal(ready.body, &body); err != nil || ready.status != http.StatusOK || body.State["spool"].Messages != 1 {
		t.Errorf("GET /readyz during the outage: %d %s, want 200 showing 1 spooled message", ready.status, ready.body)
	}
	r.srv.Restart()
	js := r.srv.JetStream()
	natstest.WaitFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, streams.Webhooks)
		if err != nil {
			return err
		}
		if n := st.CachedInfo().State.Msgs; n != 1 {
			return fmt.Errorf("%s holds %d messages, want 1", streams.Webhooks, n)
		}
		return nil
	})
}
