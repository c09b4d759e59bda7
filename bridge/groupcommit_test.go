package bridge_test

import (
	"fmt"
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
// port and store once some were refused. Every answer
// is 202 or 503; every 202 is stored exactly once; no webhook is stored twice;
// and each 503 is the honest answer VerifEye retries on: sent again once NATS
// is back, it is answered 202 and stored once in all (a 503 whose batch the
// server had stored before its PubAck was lost is answered as a duplicate,
// exactly as a plain publish whose PubAck was lost). "pipelined" is the same
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
	// Down with batches in flight, and long enough for some webhooks to be
	// refused; then back on the same port and store.
	r.srv.Shutdown()
	natstest.WaitFor(t, 20*time.Second, func() error {
		if n := unavailable.Load(); n < workers {
			return fmt.Errorf("%d webhooks answered 503 during the outage, want %d", n, workers)
		}
		return nil
	})
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
	t.Logf("%d accepted, %d answered 503 (%d of them stored before their PubAck was lost); stats %+v",
		len(ok), len(refused), storedAnyway, st)
}
