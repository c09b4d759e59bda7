package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestServeSurvivesKill kills `serve` (SIGKILL: no shutdown at all) while
// webhooks stream in and enrichments are in flight, then starts it again on
// the same DATA_DIR. Every webhook answered 202 must be in the store and end
// as exactly one outcome: nothing accepted is lost to a crash, and the
// enrichments cut short are redone without a second outcome.
func TestServeSurvivesKill(t *testing.T) {
	t.Parallel()
	log := ingestWatchLogs(t, `"message":"webhook"`)
	api := verifeyetest.Start(ingestAPIKey)
	t.Cleanup(api.Close)
	// 4 workers at 100 ms enrich 40 webhooks/s, far fewer than the ingest
	// accepts: at the kill some enrichments are in flight and more wait.
	api.SetLatency(100 * time.Millisecond)
	dataDir := t.TempDir()
	env := userEnv(
		"NATS_EMBEDDED_ADDR=127.0.0.1:0",
		"DATA_DIR="+dataDir,
		"VERIFEYE_API_URL="+api.URL,
		"VERIFEYE_API_KEY="+ingestAPIKey,
		"VERIFEYE_RATE_LIMIT=0",
		"ENRICH_CONCURRENCY=4",
		"ENRICH_ACK_WAIT=2s",
		"ENRICH_BACKOFF_BASE=10ms",
		"ENRICH_BACKOFF_MAX=100ms",
	)
	p := ingestStart(t, log, env, "serve")
	key := map[string]string{"X-API-Key": ingestAPIKey}

	var (
		mu       sync.Mutex
		accepted []string
		wg       sync.WaitGroup
	)
	p.load(t, &wg, key, func(session string, status int, err error) bool {
		if status == http.StatusAccepted {
			mu.Lock()
			accepted = append(accepted, session)
			mu.Unlock()
		}
		return err != nil // killed
	})
	js := natstest.JetStreamAt(t, embeddedURL(t, dataDir))
	natstest.WaitFor(t, 30*time.Second, func() error {
		mu.Lock()
		n := len(accepted)
		mu.Unlock()
		if n < 100 {
			return fmt.Errorf("%d webhooks accepted, want 100 before the kill", n)
		}
		if got, err := crashCount(js, streams.Results); err != nil || got < 8 {
			return fmt.Errorf("%d outcomes (%v), want some enrichments finished before the kill", got, err)
		}
		return nil
	})
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	<-p.done
	wg.Wait()
	mu.Lock()
	want := append([]string(nil), accepted...)
	mu.Unlock()

	// What the kill left behind, read from the store itself.
	ns, err := natsembed.Start(natsembed.Options{StoreDir: dataDir, Addr: "-"})
	if err != nil {
		t.Fatalf("open the killed bridge's store: %v", err)
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatalf("connect in-process: %v", err)
	}
	store, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	stored, done := natstest.Count(t, store, streams.Webhooks), natstest.Count(t, store, streams.Results)
	nc.Close()
	natsembed.Shutdown(ns)
	if stored < len(want) {
		t.Fatalf("after the kill the store holds %d webhooks, want at least the %d answered 202", stored, len(want))
	}
	if done >= len(want) {
		t.Fatalf("every accepted webhook was already enriched at the kill (%d outcomes): the test proves nothing", done)
	}

	// The same store, new ports: what the first process accepted and did not
	// finish is taken up again (by a faster API, to keep the test short).
	api.SetLatency(0)
	p = ingestStart(t, log, env, "serve")
	js = natstest.JetStreamAt(t, embeddedURL(t, dataDir)) // this process's nats.url
	// Wait for the accepted sessions themselves: webhooks stored while the
	// kill cut their answer off are enriched too, so a count could be reached
	// with an accepted one still waiting for its retry.
	natstest.WaitFor(t, 60*time.Second, func() error {
		if n, err := crashCount(js, streams.Results); err != nil || n < uint64(len(want)) {
			return fmt.Errorf("%d outcomes (%v), want at least %d (one per accepted webhook)", n, err, len(want))
		}
		have := map[string]bool{}
		for _, m := range natstest.Messages(t, js, streams.Results) {
			have[m.Headers().Get(streams.HeaderMsgID)] = true
		}
		for _, s := range want {
			if !have[s] {
				return fmt.Errorf("session %s has no outcome yet", s)
			}
		}
		return nil
	})
	webhooks := map[string]int{}
	for _, m := range natstest.Messages(t, js, streams.Webhooks) {
		webhooks[m.Headers().Get(streams.HeaderMsgID)]++
	}
	outcomes := map[string]int{}
	for _, m := range natstest.Messages(t, js, streams.Results) {
		outcomes[m.Headers().Get(streams.HeaderMsgID)]++
	}
	for _, s := range want {
		if got := webhooks[streams.WebhookMsgID(streams.EventCompleted, s)]; got != 1 {
			t.Errorf("session %s was answered 202 but is %d times in %s, want once", s, got, streams.Webhooks)
		}
		if got := outcomes[s]; got != 1 {
			t.Errorf("session %s has %d outcomes, want 1", s, got)
		}
	}
	for id, n := range outcomes {
		if n != 1 {
			t.Errorf("outcome %s stored %d times, want once", id, n)
		}
	}
	if got := natstest.Count(t, js, streams.DLQ); got != 0 {
		t.Errorf("DLQ holds %d messages, want 0", got)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
	t.Logf("%d webhooks accepted before the kill, %d enriched by then; %d outcomes after the restart", len(want), done, len(outcomes))
}

// crashCount is the number of messages on stream, or the error of a
// connection that is still (re)connecting.
func crashCount(js jetstream.JetStream, stream string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}
