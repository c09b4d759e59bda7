package bridge_test

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestGroupCommitNATSRestart stops NATS (syncing every write) while many
// webhooks are being stored in shared batches, and starts it again on the same
// port and store once some were refused, within the publish timeout. Every
// answer is 202 or 503; every 202 is stored exactly once; no webhook is stored
// twice; every 503 was not stored (a webhook whose PubAck the restart lost is
// published again once NATS is back: stored then, or answered as the duplicate
// of the copy stored before); and each 503 is the honest answer VerifEye
// retries on: sent again once NATS is back, it is answered 202 and stored once
// in all. Only an outage longer than the publish timeout leaves a webhook in
// flight at the drop unknown, and answered 503. "pipelined" is the same
// with batching off, as ingest runs against a one-replica stream: each
// webhook published alone, those gathered meanwhile pipelined.
func TestGroupCommitNATSRestart(t *testing.T) {
	t.Run("batched", func(t *testing.T) {
		natsRestart(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey), publishTimeout: 2 * time.Second,
			connOpts: outageConn, syncAlways: true})
	})
	t.Run("pipelined", func(t *testing.T) {
		natsRestart(t, rigOptions{auth: bridge.APIKeyAuth(testAPIKey), publishTimeout: 2 * time.Second,
			connOpts: outageConn, batch: 1})
	})
}

func natsRestart(t *testing.T, o rigOptions) {
	r := newRig(t, o)
	const workers, perWorker = 24, 25
	type sent struct {
		id     string
		status int
		body   []byte
	}
	results := make([][]sent, workers)
	var accepted, unavailable atomic.Int64
	restartAt := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range perWorker {
				id := newSessionID(t)
				a, err := r.try(request{path: "/webhooks/verifeye", body: webhookBody("VerificationCompleted", id)})
				if err != nil {
					t.Errorf("POST %s: %v", id, err)
					continue
				}
				results[w] = append(results[w], sent{id, a.status, a.body})
				if a.status == http.StatusServiceUnavailable {
					unavailable.Add(1)
				}
				if a.status == http.StatusAccepted && accepted.Add(1) == workers*perWorker/4 {
					once.Do(func() { close(restartAt) })
				}
			}
		})
	}
	select {
	case <-restartAt:
	case <-time.After(30 * time.Second):
		t.Fatal("a quarter of the webhooks were not accepted within 30 s")
	}
	// Down with batches in flight for a moment, well within the publish
	// timeout (2 s), then back on the same port and store: the webhooks in
	// flight at the drop wait for the connection, not for the timeout. (The
	// outage's length is the fault injected, not a wait for a condition.)
	r.srv.Shutdown()
	<-time.After(300 * time.Millisecond)
	r.srv.Restart()
	wg.Wait()

	var ok, refused []sent
	for _, rs := range results {
		for _, s := range rs {
			switch s.status {
			case http.StatusAccepted:
				ok = append(ok, s)
			case http.StatusServiceUnavailable:
				refused = append(refused, s)
			default:
				t.Errorf("POST %s: status %d (%s), want 202 or 503", s.id, s.status, s.body)
			}
		}
	}
	r.waitReady(t, http.StatusOK)

	count := func() map[string]int {
		n := map[string]int{}
		for _, m := range natstest.Messages(t, r.js, streams.Webhooks) {
			n[m.Headers().Get(streams.HeaderMsgID)]++
		}
		return n
	}
	stored := count()
	for id, n := range stored {
		if n != 1 {
			t.Errorf("message %s stored %d times", id, n)
		}
	}
	for _, s := range ok {
		if n := stored[streams.WebhookMsgID("VerificationCompleted", s.id)]; n != 1 {
			t.Errorf("webhook %s answered 202 (%s) but stored %d times", s.id, s.body, n)
		}
	}
	storedAnyway := 0
	for _, s := range refused {
		if stored[streams.WebhookMsgID("VerificationCompleted", s.id)] > 0 {
			storedAnyway++
		}
		a := r.do(t, request{path: "/webhooks/verifeye", body: webhookBody("VerificationCompleted", s.id)})
		if a.status != http.StatusAccepted {
			t.Errorf("retry of %s after its 503: status %d (%s), want 202", s.id, a.status, a.body)
		}
	}
	after := count()
	for _, s := range append(ok, refused...) {
		if n := after[streams.WebhookMsgID("VerificationCompleted", s.id)]; n != 1 {
			t.Errorf("webhook %s stored %d times after the retries, want once", s.id, n)
		}
	}
	if len(after) != len(ok)+len(refused) {
		t.Errorf("stream holds %d webhooks, want %d", len(after), len(ok)+len(refused))
	}
	st := r.gc.Stats()
	if o.batch != 1 && st.Batches == 0 {
		t.Errorf("group commit stats %+v: no batch, so no batch was interrupted", st)
	}
	if o.batch == 1 && (st.Batches != 0 || st.Singles == 0) {
		t.Errorf("group commit stats %+v: want every webhook published alone", st)
	}
	if storedAnyway > 0 {
		t.Errorf("%d of %d webhooks answered 503 were stored: a 503 must mean not stored", storedAnyway, len(refused))
	}
	// Republished counts the webhooks whose publish the restart interrupted
	// (most runs have some; a run may drop the connection between publishes).
	t.Logf("%d accepted, %d answered 503; stats %+v", len(ok), len(refused), st)

	// An outage longer than the publish timeout: webhooks sent while NATS is
	// away are answered 503 and not stored; sent again once it is back, they
	// are accepted and stored once.
	r.srv.Shutdown()
	down := make([]string, 8)
	var dwg sync.WaitGroup
	for i := range down {
		down[i] = newSessionID(t)
		dwg.Go(func() {
			a, err := r.try(request{path: "/webhooks/verifeye", body: webhookBody("VerificationCompleted", down[i])})
			if err != nil || a.status != http.StatusServiceUnavailable {
				t.Errorf("POST %s while NATS is down: %d %s (%v), want 503", down[i], a.status, a.body, err)
			}
		})
	}
	dwg.Wait()
	r.srv.Restart()
	r.waitReady(t, http.StatusOK)
	stored = count()
	for _, id := range down {
		if n := stored[streams.WebhookMsgID("VerificationCompleted", id)]; n != 0 {
			t.Errorf("webhook %s answered 503 during the outage but stored %d times", id, n)
		}
		if a := r.do(t, request{path: "/webhooks/verifeye", body: webhookBody("VerificationCompleted", id)}); a.status != http.StatusAccepted {
			t.Errorf("retry of %s after its 503: status %d (%s), want 202", id, a.status, a.body)
		}
	}
	after = count()
	for _, id := range down {
		if n := after[streams.WebhookMsgID("VerificationCompleted", id)]; n != 1 {
			t.Errorf("webhook %s stored %d times after its retry, want once", id, n)
		}
	}
}
