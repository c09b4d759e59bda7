package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// BenchmarkWebhookToOutcome measures what the bridge adds between a webhook's
// answer and its outcome: `serve` in-process with its defaults (against an
// external JetStream server, so the spool is on, and VERIFEYE_RATE_LIMIT=0 so
// that the 50/s default cap does not queue the offered 100/s), the fake API
// answering every call after 50 ms. Webhooks are posted over real HTTP at a
// steady 100/s (open loop: each at its due time, whatever the earlier ones
// are doing). For each, overhead = when its outcome reached a core-NATS
// subscriber − when its 202 reached the client − the API's 50 ms: the
// enricher's fetch, ledger writes, HTTP call overhead and outcome publish.
// It reports overhead_p50_ms, overhead_p99_ms, overhead_max_ms and the
// webhook answers' own answer_p99_ms, and checks one outcome per webhook.
// Timings are never asserted.
//
//	go test -run '^$' -bench WebhookToOutcome -benchtime 1000x ./cmd/verifeye-bridge/
func BenchmarkWebhookToOutcome(b *testing.B) {
	const (
		rate       = 100 // webhooks per second
		apiLatency = 50 * time.Millisecond
		key        = "sk-bench-webhook-to-outcome-0042"
	)
	ns := natstest.Start(b)
	api := verifeyetest.Start(key)
	b.Cleanup(api.Close)
	api.SetLatency(apiLatency)
	for k, v := range map[string]string{
		"NATS_URL":            ns.URL(),
		"NATS_EMBEDDED_ADDR":  "-",
		"DATA_DIR":            b.TempDir(),
		"API_ADDR":            "-",
		"VERIFEYE_API_KEY":    key,
		"VERIFEYE_RATE_LIMIT": "0",
		"OTEL_SDK_DISABLED":   "true",
	} {
		b.Setenv(k, v)
	}
	client, err := verifeye.New(api.URL, key, verifeye.Options{})
	if err != nil {
		b.Fatal(err)
	}
	cfg := serviceConfig{name: "serve", embedded: &embeddedConfig{}, ingest: &ingestConfig{}, spool: &spoolConfig{},
		dataDir: &dataDirConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}}
	if err := cfg.load(); err != nil {
		b.Fatalf("load: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- serve(ctx, cfg, serviceDeps{client: client}, ln, zerolog.New(io.Discard).With().Timestamp().Logger())
	}()
	b.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			b.Errorf("serve: %v", err)
		}
	})
	natstest.WaitFor(b, 60*time.Second, func() error {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return io.ErrUnexpectedEOF
		}
		return nil
	})

	var (
		mu       sync.Mutex
		answered = map[string]time.Time{} // session → when its 202 arrived
		outcome  = map[string]time.Time{} // session → when its outcome arrived
		all      = make(chan struct{})
		failed   int
	)
	sub, err := ns.Connect().Subscribe("verifeye.result.>", func(m *nats.Msg) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if _, dup := outcome[m.Header.Get(streams.HeaderMsgID)]; dup {
			return
		}
		outcome[m.Header.Get(streams.HeaderMsgID)] = now
		if len(outcome) == b.N {
			close(all)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	sessions := make([]string, b.N)
	for i := range sessions {
		sessions[i] = ingestSessionID(b)
	}

	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, s := range sessions {
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / rate)))
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/verifeye",
				strings.NewReader(`{"event":"VerificationCompleted","verificationSessionId":"`+s+`"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-API-Key", key)
			resp, err := httpc.Do(req)
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				failed++
				return
			}
			answered[s] = now
		})
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(time.Minute):
	}
	b.StopTimer()

	mu.Lock()
	defer mu.Unlock()
	if failed > 0 || len(outcome) != b.N {
		b.Fatalf("%d webhooks not answered 202; %d outcomes for %d webhooks", failed, len(outcome), b.N)
	}
	overhead := make([]time.Duration, 0, b.N)
	answers := make([]time.Duration, 0, b.N)
	for i, s := range sessions {
		overhead = append(overhead, outcome[s].Sub(answered[s])-apiLatency)
		answers = append(answers, answered[s].Sub(start.Add(time.Duration(i)*time.Second/rate)))
	}
	ms := func(d []time.Duration, q float64) float64 {
		slices.Sort(d)
		i := int(math.Ceil(q*float64(len(d)))) - 1 // nearest rank
		return float64(d[max(i, 0)]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(overhead, 0.50), "overhead_p50_ms")
	b.ReportMetric(ms(overhead, 0.99), "overhead_p99_ms")
	b.ReportMetric(ms(overhead, 1), "overhead_max_ms")
	b.ReportMetric(ms(answers, 0.99), "answer_p99_ms")
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "webhooks/s")
	// The subscriber can see an outcome before the stream has stored it.
	natstest.WaitFor(b, 10*time.Second, func() error {
		if n := natstest.Count(b, ns.JetStream(), streams.Results); n != b.N {
			return fmt.Errorf("%s holds %d outcomes for %d webhooks, want one each", streams.Results, n, b.N)
		}
		return nil
	})
}
