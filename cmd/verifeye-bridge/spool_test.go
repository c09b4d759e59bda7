package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// spoolEnv is the environment of an ingest with the spool on against natsURL,
// storing under dataDir, listening on a port of its own (ingestStart learns it).
func spoolEnv(natsURL, dataDir string, extra ...string) []string {
	sum := sha256.Sum256([]byte(ingestAPIKey))
	return userEnv(append([]string{
		anyPort,
		"NATS_URL=" + natsURL,
		"DATA_DIR=" + dataDir,
		"WEBHOOK_API_KEY_SHA256=" + hex.EncodeToString(sum[:]),
		"SPOOL_AFTER=500ms",
		"SHUTDOWN_GRACE=2s",
		"OTEL_SDK_DISABLED=true",
	}, extra...)...)
}

var spoolKey = map[string]string{"X-API-Key": ingestAPIKey}

// webhookStored waits until the webhooks stream holds exactly the sessions in
// want, once each.
func webhookStored(t *testing.T, js jetstream.JetStream, want map[string]bool, timeout time.Duration) {
	t.Helper()
	natstest.WaitFor(t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, streams.Webhooks)
		if err != nil {
			return err
		}
		if n := st.CachedInfo().State.Msgs; int(n) < len(want) {
			return fmt.Errorf("%s holds %d messages, want %d", streams.Webhooks, n, len(want))
		}
		return nil
	})
	got := map[string]int{}
	for _, m := range natstest.Messages(t, js, streams.Webhooks) {
		_, session, _ := streams.ParseWebhookMsgID(m.Headers().Get(streams.HeaderMsgID))
		got[session]++
	}
	for s := range want {
		if got[s] != 1 {
			t.Errorf("session %s is stored %d times, want once", s, got[s])
		}
	}
	for s, n := range got {
		if !want[s] {
			t.Errorf("session %s is stored %d times but was never accepted", s, n)
		}
	}
}

// TestIngestSpoolWithoutNATS: `ingest` starts, becomes ready and accepts (202,
// "spooled":true) with NATS unreachable from the start; SIGKILLed and started
// again on the same DATA_DIR with NATS still down, it accepts again; SIGTERM
// with a non-empty spool and NATS away exits 0 within SHUTDOWN_GRACE, saying in
// one line that events are left; once NATS is there, the next start forwards
// every event its predecessors accepted, exactly once.
func TestIngestSpoolWithoutNATS(t *testing.T) {
	t.Parallel()
	log := ingestWatchLogs(t, `"message":"webhook"`)
	// Nothing listens here yet; NATS comes up on this address later, so it is
	// named before anything binds it (a closed port, the one use of freeAddr
	// for a server).
	natsAddr := freeAddr(t)
	dataDir := t.TempDir()
	env := spoolEnv("nats://"+natsAddr, dataDir)
	client := &http.Client{Timeout: 5 * time.Second}
	accepted := map[string]bool{}
	post := func(p *ingestProc, n int) {
		t.Helper()
		for range n {
			s := ingestSessionID(t)
			status, body, err := ingestPost(client, p.base, "/webhooks/verifeye", s, spoolKey)
			if err != nil || status != http.StatusAccepted || !strings.Contains(string(body), `"spooled":true`) {
				t.Fatalf("POST with NATS down: %d %s %v; want 202 with \"spooled\":true", status, body, err)
			}
			accepted[s] = true
		}
	}

	first := ingestStart(t, log, env, "ingest")
	post(first, 5)
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.wait(t)

	second := ingestStart(t, log, env, "ingest")
	post(second, 5)
	status, body, err := clusterGet(second.base + "/readyz")
	if err != nil || status != http.StatusOK || !strings.Contains(body, `"messages":10`) {
		t.Errorf("GET /readyz with 10 spooled and NATS down: %d %s %v; want 200 showing 10 messages", status, body, err)
	}
	start := time.Now()
	if code := second.stop(t); code != 0 {
		t.Fatalf("ingest exited %d after SIGTERM with a non-empty spool, want 0; logs:\n%s", code, log)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("SIGTERM took %v with SHUTDOWN_GRACE=2s", took)
	}
	if n := strings.Count(log.String(), "not drained within SHUTDOWN_GRACE"); n != 1 {
		t.Errorf("%d log lines say the spool was left on disk, want 1; logs:\n%s", n, log)
	}

	srv := natstest.StartWith(t, natsembed.Options{StoreDir: t.TempDir(), Addr: natsAddr, SyncInterval: time.Minute})
	third := ingestStart(t, log, env, "ingest")
	webhookStored(t, srv.JetStream(), accepted, 60*time.Second)
	if code := third.stop(t); code != 0 {
		t.Errorf("ingest exited %d after SIGTERM, want 0", code)
	}
}

// TestIngestSpoolFull: with NATS down, a full spool answers 503 and keeps
// what it holds; once NATS is back, every event it answered 202 arrives.
func TestIngestSpoolFull(t *testing.T) {
	t.Parallel()
	log := ingestWatchLogs(t, `"message":"webhook"`)
	srv := natstest.Start(t)
	p := ingestStart(t, log, spoolEnv(srv.URL(), t.TempDir(), "SPOOL_MAX_BYTES=4096"), "ingest")
	srv.Shutdown()
	client := &http.Client{Timeout: 5 * time.Second}
	accepted := map[string]bool{}
	full := false
	for range 100 {
		s := ingestSessionID(t)
		status, body, err := ingestPost(client, p.base, "/webhooks/verifeye", s, spoolKey)
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		if status == http.StatusServiceUnavailable {
			full = true
			break
		}
		if status != http.StatusAccepted {
			t.Fatalf("POST with NATS down: %d %s, want 202 or 503", status, body)
		}
		accepted[s] = true
	}
	if !full || len(accepted) == 0 {
		t.Fatalf("%d accepted into a 4 KiB spool, full %v; want some, then 503", len(accepted), full)
	}
	status, body, _ := clusterGet(p.base + "/readyz")
	if status != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz with the spool full and NATS down: %d %s, want 503", status, body)
	}
	srv.Restart()
	webhookStored(t, srv.JetStream(), accepted, 60*time.Second)
}

// TestIngestSpoolNotWritable: a spool that cannot be written never yields a
// 202. Tests run as root, which file modes do not stop, so a file stands
// where DATA_DIR/spool should be: ingest refuses to start, exiting non-zero
// with a line naming DATA_DIR. (A spool that fails while running answers 503:
// internal/spool TestSpoolRefusingWrites.)
func TestIngestSpoolNotWritable(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dataDir, "spool"), []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runBin(t, spoolEnv("nats://"+freeAddr(t), dataDir), "ingest")
	if r.code == 0 || !strings.Contains(r.stderr, "DATA_DIR") {
		t.Errorf("ingest with a file as DATA_DIR/spool: exit %d, stderr %q; want non-zero naming DATA_DIR", r.code, r.stderr)
	}
}

// TestSpoolOutage is the long test of the spool (make test-spool): NATS is
// stopped for SPOOL_TEST_OUTAGE (60 s) while webhooks arrive at a steady rate
// at two ingest processes, with an enricher running. Every request to the
// first is answered 202 within 5 s. The second is SIGKILLed halfway through
// the outage and started again on the same DATA_DIR. Afterwards the webhooks
// stream holds exactly one message per accepted session, and each session
// gets exactly one outcome.
func TestSpoolOutage(t *testing.T) {
	if os.Getenv("VERIFEYE_TEST_SPOOL") == "" {
		t.Skip("stops NATS for a minute under load; run it with `make test-spool` (VERIFEYE_TEST_SPOOL=1)")
	}
	outage := 60 * time.Second
	if d, err := time.ParseDuration(os.Getenv("SPOOL_TEST_OUTAGE")); err == nil {
		outage = d
	}
	const rate = 20 // webhooks per second per ingest
	// LOG_LEVEL=info, not warn: ingestStart reads the "verifeye-bridge
	// started" line (info) for the address.
	log := ingestWatchLogs(t, "spooling until it does")
	srv := natstest.Start(t)
	api := verifeyetest.Start(ingestAPIKey)
	t.Cleanup(api.Close)

	ingestStart(t, log, userEnv(
		"NATS_URL="+srv.URL(), "VERIFEYE_API_KEY="+ingestAPIKey, "VERIFEYE_API_URL="+api.URL,
		"VERIFEYE_RATE_LIMIT=0", "ENRICH_BACKOFF_BASE=100ms", "ENRICH_BACKOFF_MAX=2s", "OTEL_SDK_DISABLED=true",
	), "enrich")
	envA := spoolEnv(srv.URL(), t.TempDir())
	envB := spoolEnv(srv.URL(), t.TempDir())
	a := ingestStart(t, log, envA, "ingest")
	var b atomic.Pointer[ingestProc]
	b.Store(ingestStart(t, log, envB, "ingest"))

	var (
		mu         sync.Mutex
		acceptedA  = map[string]bool{}
		acceptedB  = map[string]bool{}
		failedA    []string
		slowest    time.Duration
		spooledA   int
		stop       = make(chan struct{})
		wg         sync.WaitGroup
		client     = &http.Client{Timeout: 5 * time.Second}
		sentA      atomic.Int64
		sentB      atomic.Int64
		deliveredB = map[string]bool{} // answered 202 by B: must arrive
	)
	// B's address changes when it is started again: its sender asks for
	// the current one on every request.
	send := func(base func() string, sent *atomic.Int64, record func(session string, status int, body []byte, err error, took time.Duration)) {
		defer wg.Done()
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		var inflight sync.WaitGroup
		defer inflight.Wait()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			sent.Add(1)
			inflight.Go(func() {
				s := ingestSessionID(t)
				start := time.Now()
				status, body, err := ingestPost(client, base(), "/webhooks/verifeye", s, spoolKey)
				record(s, status, body, err, time.Since(start))
			})
		}
	}
	wg.Add(2)
	go send(func() string { return a.base }, &sentA, func(s string, status int, body []byte, err error, took time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		slowest = max(slowest, took)
		if err != nil || status != http.StatusAccepted {
			failedA = append(failedA, fmt.Sprintf("%s: %d %s %v after %v", s, status, body, err, took))
			return
		}
		acceptedA[s] = true
		if strings.Contains(string(body), `"spooled":true`) {
			spooledA++
		}
	})
	go send(func() string { return b.Load().base }, &sentB, func(s string, status int, _ []byte, err error, _ time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil && status == http.StatusAccepted {
			acceptedB[s] = true
			deliveredB[s] = true
		}
	})

	time.Sleep(2 * time.Second) // webhooks before the outage
	srv.Shutdown()
	t.Logf("NATS stopped for %v", outage)
	time.Sleep(outage / 2)
	old := b.Load()
	killedAt := time.Now()
	if err := old.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	old.wait(t)
	b.Store(ingestStart(t, log, envB, "ingest"))
	t.Logf("ingest B SIGKILLed and started again on the same DATA_DIR")
	time.Sleep(outage - outage/2)
	srv.Restart()
	backAt := time.Now()
	t.Logf("NATS back")
	time.Sleep(3 * time.Second) // webhooks after the outage
	close(stop)
	wg.Wait()

	mu.Lock()
	t.Logf("ingest A: %d sent, %d accepted (%d spooled), %d not; slowest answer %v", sentA.Load(), len(acceptedA), spooledA, len(failedA), slowest)
	t.Logf("ingest B: %d sent, %d accepted", sentB.Load(), len(acceptedB))
	for _, f := range failedA {
		t.Errorf("ingest A: %s; want 202 within 5 s", f)
	}
	all := map[string]bool{}
	for s := range acceptedA {
		all[s] = true
	}
	for s := range deliveredB {
		all[s] = true
	}
	mu.Unlock()
	if spooledA == 0 {
		t.Errorf("ingest A spooled nothing during a %v outage", outage)
	}

	js := srv.JetStream()
	// B's requests cut by the SIGKILL may have been spooled without an
	// answer: they may arrive too, once.
	natstest.WaitFor(t, 2*time.Minute, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, streams.Results)
		if err != nil {
			return err
		}
		if n := st.CachedInfo().State.Msgs; int(n) < len(all) {
			return fmt.Errorf("%d outcomes for %d accepted webhooks", n, len(all))
		}
		return nil
	})
	t.Logf("all outcomes in %v after ingest B's SIGKILL, %v after NATS came back (the outage bounds it, not the kill)",
		time.Since(killedAt).Round(10*time.Millisecond), time.Since(backAt).Round(10*time.Millisecond))
	stored := map[string]int{}
	for _, m := range natstest.Messages(t, js, streams.Webhooks) {
		_, s, _ := streams.ParseWebhookMsgID(m.Headers().Get(streams.HeaderMsgID))
		stored[s]++
	}
	outcomes := map[string]int{}
	for _, m := range natstest.Messages(t, js, streams.Results) {
		outcomes[m.Headers().Get(streams.HeaderMsgID)]++
	}
	for s := range all {
		if stored[s] != 1 || outcomes[s] != 1 {
			t.Errorf("accepted session %s: %d webhooks stored, %d outcomes; want 1 and 1", s, stored[s], outcomes[s])
		}
	}
	for s, n := range stored {
		if n != 1 || outcomes[s] > 1 {
			t.Errorf("session %s: %d webhooks stored, %d outcomes; want at most 1 each", s, n, outcomes[s])
		}
	}
	t.Logf("%d sessions accepted; %d stored, %d outcomes", len(all), len(stored), len(outcomes))
}
