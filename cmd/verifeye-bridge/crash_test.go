package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
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
// enrichments cut short are redone without a second outcome. The ack wait is
// the default (ENRICH_ACK_WAIT), so the reported time from the kill to the
// last outcome is the failover time of a restarted process.
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
	killedAt := time.Now()
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
	allIn := time.Since(killedAt)
	lastAt := lastStored(t, js, streams.Results)
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
	t.Logf("failover (SIGKILL, restart on the same DATA_DIR, default ENRICH_ACK_WAIT): last outcome stored %v after the kill; all seen by the test after %v",
		lastAt.Sub(killedAt).Round(10*time.Millisecond), allIn.Round(10*time.Millisecond))
}

// lastStored returns when the last message of stream was stored.
func lastStored(t *testing.T, js jetstream.JetStream, stream string) time.Time {
	t.Helper()
	var last time.Time
	for _, m := range natstest.Messages(t, js, stream) {
		if md, err := m.Metadata(); err == nil && md.Timestamp.After(last) {
			last = md.Timestamp
		}
	}
	return last
}

var inFlightRE = regexp.MustCompile(`(?m)^verifeye_bridge_enricher_in_flight (\S+)$`)

// enrichInFlight returns how many webhooks the enricher at base holds now.
func enrichInFlight(base string) (int, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	m := inFlightRE.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("GET %s/metrics: no in-flight gauge", base)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	return int(v), err
}

// TestEnrichReplicaKilledMidEnrichment runs two `enrich` replicas on one
// durable consumer with the default ENRICH_ACK_WAIT, and SIGKILLs one while it
// holds enrichments (its API calls are under way). The other enriches them
// once the ack wait has passed: every session ends with exactly one outcome.
// The time from the kill to the last outcome is the failover time; it is
// reported, not asserted (expected: about the ack wait plus one API call).
func TestEnrichReplicaKilledMidEnrichment(t *testing.T) {
	t.Parallel()
	log := ingestWatchLogs(t, "enricher started")
	ns := natstest.Start(t)
	api := verifeyetest.Start(ingestAPIKey)
	t.Cleanup(api.Close)
	const latency = 500 * time.Millisecond
	api.SetLatency(latency)
	env := userEnv(
		"NATS_URL="+ns.URL(),
		"VERIFEYE_API_URL="+api.URL,
		"VERIFEYE_API_KEY="+ingestAPIKey,
		"VERIFEYE_RATE_LIMIT=0",
		"ENRICH_CONCURRENCY=4",
		"OTEL_SDK_DISABLED=true",
	)
	replicas := []*ingestProc{ingestStart(t, log, env, "enrich"), ingestStart(t, log, env, "enrich")}

	// Three webhooks per worker: the replicas are busy when the kill comes,
	// and the survivor has finished its own share before the victim's come
	// back.
	js := ns.JetStream()
	const n = 24
	sessions := make([]string, n)
	for i := range sessions {
		sessions[i] = ingestSessionID(t)
		msg := nats.NewMsg("verifeye.webhook.default." + streams.EventCompleted)
		msg.Data = []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + sessions[i] + `"}`)
		msg.Header.Set(streams.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(streams.WebhookMsgID(streams.EventCompleted, sessions[i])),
			jetstream.WithExpectStream(streams.Webhooks))
		cancel()
		if err != nil {
			t.Fatalf("publish webhook: %v", err)
		}
	}
	victim, survivor := replicas[0], replicas[1]
	var held int
	// Kill once every worker of both replicas has called the API: a message
	// the victim holds is then in its 500 ms API call but for a few
	// milliseconds, so the kill cuts enrichments short (a replica that has
	// only fetched its first messages holds them before the call).
	natstest.WaitFor(t, 30*time.Second, func() (err error) {
		held, err = enrichInFlight(victim.base)
		if err == nil && held < 2 {
			err = fmt.Errorf("the victim holds %d enrichments, want 2 or more", held)
		}
		if calls := api.TotalCalls(); err == nil && calls < 8 {
			err = fmt.Errorf("%d API calls so far, want the 8 workers' first ones", calls)
		}
		return err
	})
	killedAt := time.Now()
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	<-victim.done

	natstest.WaitFor(t, 60*time.Second, func() error {
		if got, err := crashCount(js, streams.Results); err != nil || got < n {
			return fmt.Errorf("%d outcomes (%v), want %d", got, err, n)
		}
		return nil
	})
	allIn := time.Since(killedAt)
	outcomes := map[string]int{}
	for _, m := range natstest.Messages(t, js, streams.Results) {
		outcomes[m.Headers().Get(streams.HeaderMsgID)]++
	}
	redone := 0
	for _, s := range sessions {
		if got := outcomes[s]; got != 1 {
			t.Errorf("session %s has %d outcomes, want 1", s, got)
		}
		if api.Calls(s) > 1 {
			redone++
		}
	}
	if len(outcomes) != n {
		t.Errorf("%d sessions have outcomes, want %d", len(outcomes), n)
	}
	if redone == 0 {
		t.Errorf("no session was called twice: the kill cut no enrichment short, so the test proves nothing")
	}
	if got := natstest.Count(t, js, streams.DLQ); got != 0 {
		t.Errorf("DLQ holds %d messages, want 0", got)
	}
	if code := survivor.stop(t); code != 0 {
		t.Errorf("survivor exit code after SIGTERM = %d, want 0", code)
	}
	t.Logf("failover (one of two enrich replicas SIGKILLed holding %d enrichments, %d redone by the other; default ENRICH_ACK_WAIT, API latency %v): last outcome stored %v after the kill; all seen by the test after %v",
		held, redone, latency, lastStored(t, js, streams.Results).Sub(killedAt).Round(10*time.Millisecond), allIn.Round(10*time.Millisecond))
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
