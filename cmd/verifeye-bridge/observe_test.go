package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// The observability tests run serve in-process against a test NATS server and
// a verifeyetest API behind a recorder of the traceparent each call carried.
// Their helpers are prefixed obs to stay clear of the other tests of package main.

const (
	obsPass1  = "3f2a9c1e-0000-4000-8000-000000000001"
	obsPass2  = "3f2a9c1e-0000-4000-8000-000000000002"
	obsReject = "3f2a9c1e-0000-4000-8000-0000000000b4" // scripted 400: dead-lettered at once
)

type obsService struct {
	nats *natstest.Server
	js   jetstream.JetStream
	api  *verifeyetest.Server
	key  string
	url  string // the bridge's base URL
	logs *obsLog

	mu         sync.Mutex
	apiParents map[string]string // session ID -> traceparent of its API call
}

type obsOptions struct {
	enrichOnly     bool
	spanExporter   sdktrace.SpanExporter
	sampleInterval time.Duration // 50 ms when zero
	spool          bool          // the store-and-forward spool on, under a temporary DATA_DIR
}

// obsLog collects the service's JSON log lines.
type obsLog = natstest.Buffer

func obsStart(t *testing.T, o obsOptions) *obsService {
	t.Helper()
	s := &obsService{nats: natstest.Start(t), key: "obs-test-key", logs: &obsLog{}, apiParents: map[string]string{}}
	s.js = s.nats.JetStream()
	s.api = verifeyetest.New(s.key)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.apiParents[r.URL.Query().Get("verificationSessionId")] = r.Header.Get("Traceparent")
		s.mu.Unlock()
		s.api.ServeHTTP(w, r)
	}))
	t.Cleanup(api.Close)
	t.Cleanup(s.api.Close)

	cfg := serviceConfig{name: "serve", ingest: &ingestConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}}
	if o.enrichOnly {
		cfg.name, cfg.ingest = "enrich", nil
	}
	if err := process(cfg.specs()...); err != nil { // the defaults
		t.Fatal(err)
	}
	cfg.common.NATSURL = s.nats.URL()
	cfg.common.SubjectPrefix = "verifeye"
	cfg.common.ShutdownGrace = 10 * time.Second
	cfg.observe = observeConfig{SampleInterval: o.sampleInterval}
	if cfg.observe.SampleInterval == 0 {
		cfg.observe.SampleInterval = 50 * time.Millisecond
	}
	if cfg.ingest != nil {
		cfg.ingest.WebhookAuth, cfg.ingest.WebhookKeyHash, cfg.ingest.PublishTimeout = "api-key", "", 3*time.Second
	}
	if o.spool {
		cfg.spool = &spoolConfig{Spool: "on", SpoolAfter: time.Second, SpoolMaxBytes: 1 << 30}
		cfg.dataDir = &dataDirConfig{DataDir: t.TempDir()}
	}
	cfg.api.APIKey, cfg.api.APIURL, cfg.api.APITimeout = secret(s.key), api.URL, 5*time.Second
	e := cfg.enrich
	e.Consumer, e.Concurrency, e.RateLimit, e.MaxAttempts, e.AckWait = "enricher", 2, 0, 3, time.Second
	e.BackoffBase, e.BackoffMax, e.NotFoundDelay, e.NotFoundAttempts = 10*time.Millisecond, 50*time.Millisecond, 10*time.Millisecond, 1
	e.AuthRetry = 100 * time.Millisecond

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("service log:\n%s", s.logs)
		}
	})
	s.url = startServe(t, cfg, serviceDeps{spanExporter: o.spanExporter}, false, zerolog.New(s.logs))
	natstest.WaitFor(t, 15*time.Second, func() error {
		for _, name := range []string{streams.Webhooks, streams.Results, streams.DLQ} {
			if _, err := s.js.Stream(context.Background(), name); err != nil {
				return fmt.Errorf("stream %s: %w", name, err)
			}
		}
		return nil
	})
	return s
}

func (s *obsService) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(s.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// post sends a webhook body with the API key (or key, when not empty) and
// extra headers; it returns the status code.
func (s *obsService) post(t *testing.T, body, key string, header http.Header) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.url+"/webhooks/verifeye", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", obsOr(key, s.key))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST webhook: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func obsOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func obsWebhook(session string) string {
	return `{"event":"VerificationCompleted","verificationSessionId":"` + session + `"}`
}

// scrape fetches /metrics and parses it.
func (s *obsService) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := s.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("GET /metrics: unparsable exposition: %v", err)
	}
	return fams
}

// sample is one expected value: a family name, or a histogram's name with
// _count, and the labels that pick the series (all of its labels).
type sample struct {
	name   string
	labels string // "k=v,k=v" in any order; "" for none
	value  float64
}

// lookup returns the value of the series of name whose labels are exactly
// labels; for name_count, the sample count of a histogram.
func lookup(fams map[string]*dto.MetricFamily, name, labels string) (float64, bool) {
	fam, count := fams[name], false
	if fam == nil && strings.HasSuffix(name, "_count") {
		fam, count = fams[strings.TrimSuffix(name, "_count")], true
	}
	if fam == nil {
		return 0, false
	}
	want := map[string]string{}
	for kv := range strings.SplitSeq(labels, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			want[k] = v
		}
	}
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		if !cmp.Equal(got, want) {
			continue
		}
		switch {
		case count:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// mismatches lists the samples whose value differs from want.
func mismatches(fams map[string]*dto.MetricFamily, want []sample) []string {
	var out []string
	for _, w := range want {
		got, ok := lookup(fams, w.name, w.labels)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s{%s}: missing, want %v", w.name, w.labels, w.value))
		case got != w.value:
			out = append(out, fmt.Sprintf("%s{%s} = %v, want %v", w.name, w.labels, got, w.value))
		}
	}
	return out
}

// TestMetricsAfterKnownMix drives a known mix of webhooks and enrichments and
// finds every counter at its exact value, the histograms populated and the
// sampled gauges right; then checks the dashboard, the alert rules and the
// docs against the metrics the program really exports.
func TestMetricsAfterKnownMix(t *testing.T) {
	s := obsStart(t, obsOptions{spool: true})
	s.api.Script(obsReject, verifeyetest.Status(http.StatusBadRequest))

	requests := []struct {
		name, body, key string
		want            int
	}{
		{"accepted 1", obsWebhook(obsPass1), "", http.StatusAccepted},
		{"accepted 2", obsWebhook(obsPass2), "", http.StatusAccepted},
		{"accepted, rejected by the API", obsWebhook(obsReject), "", http.StatusAccepted},
		{"duplicate", obsWebhook(obsPass1), "", http.StatusAccepted},
		{"bad JSON", `{"event":`, "", http.StatusBadRequest},
		{"not an object", `[1,2]`, "", http.StatusBadRequest},
		{"unauthorized", obsWebhook(obsPass2), "wrong-key", http.StatusUnauthorized},
	}
	for _, r := range requests {
		if got := s.post(t, r.body, r.key, nil); got != r.want {
			t.Fatalf("POST %s: status %d, want %d", r.name, got, r.want)
		}
	}

	const wh, dflt, vc = "verifeye_bridge_webhooks_total", "source=default", "event=VerificationCompleted"
	want := []sample{
		{wh, dflt + "," + vc + ",result=accepted", 3},
		{wh, dflt + "," + vc + ",result=duplicate", 1},
		{wh, dflt + ",event=,result=invalid_json", 2},
		{wh, "source=,event=,result=unauthorized", 1}, // refused before authentication: no source label
		{"verifeye_bridge_ingest_duration_seconds_count", "code=202", 4},
		{"verifeye_bridge_ingest_duration_seconds_count", "code=400", 2},
		{"verifeye_bridge_ingest_duration_seconds_count", "code=401", 1},
		{"verifeye_bridge_publish_duration_seconds_count", "", 4},
		{"verifeye_bridge_api_calls_total", "class=2xx", 2},
		{"verifeye_bridge_api_calls_total", "class=4xx", 1},
		{"verifeye_bridge_api_call_duration_seconds_count", "", 3},
		{"verifeye_bridge_enrichments_total", "result=published,reason=", 2},
		{"verifeye_bridge_enrichments_total", "result=dead_lettered,reason=bad_request", 1},
		{"verifeye_bridge_outcome_latency_seconds_count", "", 2},
		{"verifeye_bridge_enricher_paused", "", 0},
		{"verifeye_bridge_stream_messages", "stream=" + streams.Webhooks, 3},
		{"verifeye_bridge_stream_messages", "stream=" + streams.Results, 2},
		{"verifeye_bridge_stream_messages", "stream=" + streams.DLQ, 1},
		{"verifeye_bridge_consumer_pending_messages", "consumer=enricher", 0},
		{"verifeye_bridge_consumer_ack_pending_messages", "consumer=enricher", 0},
		{"verifeye_bridge_ready", "check=nats", 1},
		{"verifeye_bridge_ready", "check=enricher", 1},
		{"verifeye_bridge_ready", "check=spool", 1},
		{"verifeye_bridge_spooled_total", "", 0},
		{"verifeye_bridge_spool_forwarded_total", "", 0},
		{"verifeye_bridge_spool_stale_forwards_total", "", 0},
		{"verifeye_bridge_spool_rejected_total", "", 0},
		{"verifeye_bridge_spool_messages", "", 0},
		{"verifeye_bridge_spool_bytes", "", 0},
		{"verifeye_bridge_spool_max_bytes", "", 1 << 30},
		{"verifeye_bridge_spool_oldest_age_seconds", "", 0},
		{"verifeye_bridge_spool_forwarding", "", 1},
		{"verifeye_bridge_nats_connected", "", 1},
		{"verifeye_bridge_nats_reconnects_total", "", 0},
		{"verifeye_bridge_build_info", "version=" + version + ",goversion=" + runtime.Version(), 1},
	}
	var fams map[string]*dto.MetricFamily
	natstest.WaitFor(t, 20*time.Second, func() error {
		fams = s.scrape(t)
		if m := mismatches(fams, want); len(m) > 0 {
			return fmt.Errorf("metrics after the mix:\n%s", strings.Join(m, "\n"))
		}
		return nil
	})
	// Every histogram has its buckets, and the +Inf bucket holds every sample.
	for _, name := range []string{"verifeye_bridge_ingest_duration_seconds", "verifeye_bridge_publish_duration_seconds",
		"verifeye_bridge_api_call_duration_seconds", "verifeye_bridge_outcome_latency_seconds"} {
		for _, m := range fams[name].GetMetric() {
			h := m.GetHistogram()
			if len(h.GetBucket()) == 0 || h.GetSampleCount() == 0 || h.GetSampleSum() <= 0 {
				t.Errorf("%s%v: %d buckets, count %d, sum %v; want populated", name, m.GetLabel(), len(h.GetBucket()), h.GetSampleCount(), h.GetSampleSum())
			}
		}
	}

	// The embedded server's metrics (its restarts; its store sync at
	// NATS_EMBEDDED_SYNC=always) are not part of this run, which uses an
	// external NATS: registered as serve registers them, they join the
	// exposition checked.
	{
		conn := &connection{restarts: newRestartsCounter()}
		if natsembed.GroupSyncSupported {
			syncer, err := natsembed.NewSyncer(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer syncer.Close()
			if err := syncer.Sync(); err != nil {
				t.Fatal(err)
			}
			conn.syncer = syncer
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(conn.collectors()...)
		more, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range more {
			fams[f.GetName()] = f
		}
	}
	exported := exportedNames(fams)
	t.Run("dashboard uses exported metrics", func(t *testing.T) { checkDashboard(t, exported) })
	t.Run("alert rules use exported metrics", func(t *testing.T) { checkAlerts(t, exported) })
	t.Run("docs list exactly the exported metrics", func(t *testing.T) { checkDocs(t, fams, exported) })
}

// exportedNames returns every series name the exposition can hold: family
// names, and a histogram's _bucket, _sum and _count, a summary's _sum and _count.
func exportedNames(fams map[string]*dto.MetricFamily) map[string]bool {
	names := map[string]bool{}
	for name, f := range fams {
		names[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name+"_sum"], names[name+"_count"] = true, true
		}
	}
	return names
}

// notExported are the series of a PromQL expression that are neither exported
// by the program nor made by Prometheus (up). It finds them two ways: every
// verifeye_bridge_ or nats identifier, and every identifier before a { selector.
func notExported(expr string, exported map[string]bool) []string {
	stripped := regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).ReplaceAllString(expr, `""`)
	names := regexp.MustCompile(`\b(?:verifeye_bridge_\w+|nats\w*|up)\b`).FindAllString(stripped, -1)
	for _, m := range regexp.MustCompile(`([A-Za-z_:][A-Za-z0-9_:]*)\s*\{`).FindAllStringSubmatch(stripped, -1) {
		names = append(names, m[1])
	}
	var out []string
	for _, n := range names {
		if !exported[n] && n != "up" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func TestNotExported(t *testing.T) {
	exported := map[string]bool{"verifeye_bridge_a_total": true, "verifeye_bridge_h_bucket": true}
	tests := []struct {
		expr string
		want []string
	}{
		{`sum(rate(verifeye_bridge_a_total{job=~"$job", check="nats"}[5m]))`, nil},
		{`histogram_quantile(0.9, sum by (le) (rate(verifeye_bridge_h_bucket[5m]))) and up == 1`, nil},
		{`rate(verifeye_bridge_typo_total[5m])`, []string{"verifeye_bridge_typo_total"}},
		{`nats_jetstream_pending > 0`, []string{"nats_jetstream_pending"}},
		{`other_metric{x="y"} > 0`, []string{"other_metric"}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, notExported(tt.expr, exported)); diff != "" {
			t.Errorf("notExported(%q) (-want +got):\n%s", tt.expr, diff)
		}
	}
}

func checkDashboard(t *testing.T, exported map[string]bool) {
	raw, err := os.ReadFile("../../deploy/grafana/verifeye-bridge.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("dashboard panel %q has an empty query", p.Title)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	if len(exprs) < 10 {
		t.Fatalf("dashboard %q: %d queries, want the ingest, enrichment, API and JetStream panels", dash.Title, len(exprs))
	}
	used := map[string]bool{}
	for _, e := range exprs {
		if bad := notExported(e, exported); len(bad) > 0 {
			t.Errorf("dashboard query %q uses %v, which the program does not export", e, bad)
		}
		for _, m := range regexp.MustCompile(`verifeye_bridge_\w+`).FindAllString(e, -1) {
			used[m] = true
		}
	}
	// The dashboard shows what the issue asks for.
	for _, m := range []string{"verifeye_bridge_webhooks_total", "verifeye_bridge_ingest_duration_seconds_bucket",
		"verifeye_bridge_enrichments_total", "verifeye_bridge_outcome_latency_seconds_bucket",
		"verifeye_bridge_consumer_pending_messages", "verifeye_bridge_stream_messages", "verifeye_bridge_api_calls_total"} {
		if !used[m] {
			t.Errorf("dashboard: no panel uses %s", m)
		}
	}
}

func checkAlerts(t *testing.T, exported map[string]bool) {
	raw, err := os.ReadFile("../../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	if !regexp.MustCompile(`(?m)^groups:\s*$`).MatchString(text) {
		t.Fatalf("alerts.yaml: no top-level groups:")
	}
	alerts := regexp.MustCompile(`(?m)^\s*- alert:\s*(\S+)\s*$`).FindAllStringSubmatch(text, -1)
	exprs := regexp.MustCompile(`(?m)^\s*expr:\s*(.*)$`).FindAllStringSubmatch(text, -1)
	if len(alerts) == 0 || len(alerts) != len(exprs) {
		t.Fatalf("alerts.yaml: %d alerts and %d exprs, want one expr each", len(alerts), len(exprs))
	}
	for _, key := range []string{"for", "severity", "summary"} {
		if n := len(regexp.MustCompile(`(?m)^\s*`+key+`:`).FindAllString(text, -1)); n != len(alerts) {
			t.Errorf("alerts.yaml: %d %s: keys for %d alerts", n, key, len(alerts))
		}
	}
	for i, m := range exprs {
		e := strings.TrimSpace(m[1])
		if e == "" || e == "|" || e == ">" || strings.HasPrefix(e, "|") || strings.HasPrefix(e, ">") {
			t.Errorf("alert %s: expr must be on one line, got %q", alerts[i][1], e)
			continue
		}
		if bad := notExported(e, exported); len(bad) > 0 {
			t.Errorf("alert %s uses %v, which the program does not export", alerts[i][1], bad)
		}
	}
	var names []string
	for _, a := range alerts {
		names = append(names, a[1])
	}
	for _, want := range []string{"VerifeyeBridgeDLQGrowing", "VerifeyeBridgeBacklogGrowing", "VerifeyeBridgeAPIErrorRatio",
		"VerifeyeBridgeEnricherPaused", "VerifeyeBridgeNotReady", "VerifeyeBridgeDown", "VerifeyeBridgeNoWebhooks"} {
		if !slices.Contains(names, want) {
			t.Errorf("alerts.yaml: no alert %s (have %v)", want, names)
		}
	}
}

// checkDocs keeps docs/observability.md and the program in step: every
// verifeye_bridge_ family exported is documented, and every name documented is
// exported.
func checkDocs(t *testing.T, fams map[string]*dto.MetricFamily, exported map[string]bool) {
	raw, err := os.ReadFile("../../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	var undocumented []string
	for name := range fams {
		if strings.HasPrefix(name, "verifeye_bridge_") && !strings.Contains(doc, "`"+name+"`") {
			undocumented = append(undocumented, name)
		}
	}
	sort.Strings(undocumented)
	if len(undocumented) > 0 {
		t.Errorf("docs/observability.md does not document %v", undocumented)
	}
	for _, m := range regexp.MustCompile(`verifeye_bridge_\w+`).FindAllString(doc, -1) {
		if !exported[m] {
			t.Errorf("docs/observability.md names %s, which the program does not export", m)
		}
	}
}

// traceOf returns the trace and parent IDs of a traceparent header value.
func traceOf(t *testing.T, what, v string) (traceID, parentID string) {
	t.Helper()
	parts := strings.Split(v, "-")
	if len(parts) != 4 || len(parts[1]) != 32 || len(parts[2]) != 16 {
		t.Fatalf("%s: traceparent %q is not W3C", what, v)
	}
	return parts[1], parts[2]
}

// TestTraceIDFollowsTheWebhook sends webhooks with and without a traceparent,
// with tracing off and on, and finds one trace ID on the webhook message, the
// API call, the outcome message and every log line of the session.
func TestTraceIDFollowsTheWebhook(t *testing.T) {
	const (
		reqTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
		reqParent = "00f067aa0ba902b7"
	)
	for _, mode := range []string{"off", "on"} {
		t.Run("tracing "+mode, func(t *testing.T) {
			var exp *tracetest.InMemoryExporter
			o := obsOptions{}
			if mode == "on" {
				exp = tracetest.NewInMemoryExporter()
				o.spanExporter = exp
			}
			s := obsStart(t, o)
			if got := s.post(t, obsWebhook(obsPass1), "", http.Header{"Traceparent": {"00-" + reqTrace + "-" + reqParent + "-01"}}); got != http.StatusAccepted {
				t.Fatalf("POST with traceparent: %d, want 202", got)
			}
			if got := s.post(t, obsWebhook(obsPass2), "", nil); got != http.StatusAccepted {
				t.Fatalf("POST without traceparent: %d, want 202", got)
			}
			natstest.WaitFor(t, 20*time.Second, func() error {
				if n := natstest.Count(t, s.js, streams.Results); n != 2 {
					return fmt.Errorf("%d outcomes, want 2", n)
				}
				return nil
			})
			session := func(m jetstream.Msg) string {
				var v struct {
					A string `json:"verificationSessionId"`
					B string `json:"subject"`
				}
				_ = json.Unmarshal(m.Data(), &v)
				return obsOr(v.A, v.B)
			}
			byID := func(stream string) map[string]nats.Header {
				out := map[string]nats.Header{}
				for _, m := range natstest.Messages(t, s.js, stream) {
					out[session(m)] = m.Headers()
				}
				return out
			}
			webhooks, outcomes := byID(streams.Webhooks), byID(streams.Results)

			for _, id := range []string{obsPass1, obsPass2} {
				whTrace, whParent := traceOf(t, "webhook message "+id, webhooks[id].Get("traceparent"))
				outTrace, outParent := traceOf(t, "outcome message "+id, outcomes[id].Get("traceparent"))
				s.mu.Lock()
				apiHeader := s.apiParents[id]
				s.mu.Unlock()
				apiTrace, apiParent := traceOf(t, "API call "+id, apiHeader)
				if id == obsPass1 && whTrace != reqTrace {
					t.Errorf("webhook message of %s: trace %s, want the request's %s", id, whTrace, reqTrace)
				}
				if outTrace != whTrace || apiTrace != whTrace {
					t.Errorf("%s: trace IDs webhook %s, API call %s, outcome %s; want one", id, whTrace, apiTrace, outTrace)
				}
				// Every log line naming the session names its trace, on both sides.
				var msgs []string
				for line := range strings.SplitSeq(s.logs.String(), "\n") {
					if !strings.Contains(line, id) {
						continue
					}
					var l struct{ Message, Component, TraceID string }
					var raw map[string]any
					_ = json.Unmarshal([]byte(line), &raw)
					l.Message, _ = raw["message"].(string)
					l.Component, _ = raw["component"].(string)
					l.TraceID, _ = raw["trace_id"].(string)
					if l.TraceID != whTrace {
						t.Errorf("log line of %s has trace_id %q, want %s: %s", id, l.TraceID, whTrace, line)
					}
					msgs = append(msgs, l.Component+": "+l.Message)
				}
				for _, want := range []string{"ingest: webhook", "enricher: outcome published"} {
					if !slices.Contains(msgs, want) {
						t.Errorf("grep %s in the log: %q, want a line %q", id, msgs, want)
					}
				}

				switch mode {
				case "off":
					// No spans: the context passes through unchanged.
					if id == obsPass1 && whParent != reqParent {
						t.Errorf("tracing off: webhook message parent %s, want the request's %s", whParent, reqParent)
					}
					if outParent != whParent || apiParent != whParent {
						t.Errorf("tracing off: parents webhook %s, API %s, outcome %s; want one", whParent, apiParent, outParent)
					}
				case "on":
					var spans map[string]tracetest.SpanStub
					natstest.WaitFor(t, 10*time.Second, func() error {
						spans = map[string]tracetest.SpanStub{}
						for _, sp := range exp.GetSpans() {
							if sp.SpanContext.TraceID().String() == whTrace {
								spans[sp.SpanKind.String()] = sp
							}
						}
						if len(spans) != 3 {
							return fmt.Errorf("spans of trace %s: %v, want server, consumer and client", whTrace, spans)
						}
						return nil
					})
					want := map[string]string{"webhook message": spans[trace.SpanKindServer.String()].SpanContext.SpanID().String(),
						"API call": spans[trace.SpanKindClient.String()].SpanContext.SpanID().String(),
						"outcome":  spans[trace.SpanKindConsumer.String()].SpanContext.SpanID().String()}
					got := map[string]string{"webhook message": whParent, "API call": apiParent, "outcome": outParent}
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("%s: traceparent parents are not the spans (-span +header):\n%s", id, diff)
					}
					if p := spans[trace.SpanKindServer.String()].Parent; id == obsPass1 && p.SpanID().String() != reqParent {
						t.Errorf("ingest span's parent %s, want the request's %s", p.SpanID(), reqParent)
					}
				}
			}
		})
	}
}

// readyz returns /readyz's status code and its checks.
func (s *obsService) readyz(t *testing.T) (int, map[string]string) {
	t.Helper()
	code, body := s.get(t, "/readyz")
	var v struct{ Checks map[string]string }
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("GET /readyz: body %q: %v", body, err)
	}
	return code, v.Checks
}

func (s *obsService) waitMetrics(t *testing.T, want ...sample) {
	t.Helper()
	natstest.WaitFor(t, 15*time.Second, func() error {
		if m := mismatches(s.scrape(t), want); len(m) > 0 {
			return fmt.Errorf("%s", strings.Join(m, "; "))
		}
		return nil
	})
}

// TestReadiness shows /readyz and the metrics follow a refused API key (which
// never stops serve from accepting webhooks), the loss of NATS and the loss of
// the webhooks stream, each within seconds.
func TestReadiness(t *testing.T) {
	t.Run("serve: a refused key pauses the enricher, not the ingest", func(t *testing.T) {
		s := obsStart(t, obsOptions{})
		s.api.SetAPIKey("another-key") // the API now answers 401
		if got := s.post(t, obsWebhook(obsPass1), "", nil); got != http.StatusAccepted {
			t.Fatalf("POST: %d, want 202", got)
		}
		natstest.WaitFor(t, 15*time.Second, func() error {
			code, checks := s.readyz(t)
			if code != http.StatusOK || checks["nats"] != "ok" || !strings.Contains(checks["enricher"], "paused") {
				return fmt.Errorf("/readyz %d %v; want 200 with the enricher paused", code, checks)
			}
			return nil
		})
		s.waitMetrics(t, sample{"verifeye_bridge_enricher_paused", "", 1}, sample{"verifeye_bridge_ready", "check=enricher", 0},
			sample{"verifeye_bridge_ready", "check=nats", 1})
		if got := s.post(t, obsWebhook(obsPass2), "", nil); got != http.StatusAccepted {
			t.Errorf("POST while paused: %d, want 202", got)
		}
		if n := natstest.Count(t, s.js, streams.Results); n != 0 {
			t.Errorf("%d outcomes while the key is refused, want 0", n)
		}

		s.api.SetAPIKey(s.key)
		natstest.WaitFor(t, 20*time.Second, func() error {
			if n := natstest.Count(t, s.js, streams.Results); n != 2 {
				return fmt.Errorf("%d outcomes after the key works again, want 2", n)
			}
			return nil
		})
		s.waitMetrics(t, sample{"verifeye_bridge_enricher_paused", "", 0}, sample{"verifeye_bridge_ready", "check=enricher", 1})
		if code, checks := s.readyz(t); code != http.StatusOK || checks["enricher"] != "ok" {
			t.Errorf("/readyz after resuming: %d %v, want 200 and enricher ok", code, checks)
		}
	})

	t.Run("enrich: a refused key makes it unready", func(t *testing.T) {
		s := obsStart(t, obsOptions{enrichOnly: true})
		s.api.SetAPIKey("another-key")
		msg := nats.NewMsg("verifeye.webhook.default.VerificationCompleted")
		msg.Data = []byte(obsWebhook(obsPass1))
		if _, err := s.js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
		natstest.WaitFor(t, 15*time.Second, func() error {
			if code, checks := s.readyz(t); code != http.StatusServiceUnavailable || !strings.Contains(checks["enricher"], "paused") {
				return fmt.Errorf("/readyz %d %v; want 503 with the enricher paused", code, checks)
			}
			return nil
		})
		s.waitMetrics(t, sample{"verifeye_bridge_enricher_paused", "", 1})
		s.api.SetAPIKey(s.key)
		natstest.WaitFor(t, 15*time.Second, func() error {
			if code, checks := s.readyz(t); code != http.StatusOK {
				return fmt.Errorf("/readyz %d %v after the key works again; want 200", code, checks)
			}
			return nil
		})
	})

	t.Run("gauges catch up at start whatever the interval", func(t *testing.T) {
		// The first sample may run before the streams and the consumer exist;
		// an incomplete sample is retried within a second, not an hour later.
		s := obsStart(t, obsOptions{sampleInterval: time.Hour})
		s.waitMetrics(t, sample{"verifeye_bridge_ready", "check=nats", 1}, sample{"verifeye_bridge_ready", "check=enricher", 1},
			sample{"verifeye_bridge_stream_messages", "stream=" + streams.DLQ, 0}, sample{"verifeye_bridge_consumer_pending_messages", "consumer=enricher", 0})
	})

	t.Run("NATS lost and back, then the stream lost", func(t *testing.T) {
		s := obsStart(t, obsOptions{})
		s.nats.Shutdown()
		natstest.WaitFor(t, 10*time.Second, func() error {
			if code, checks := s.readyz(t); code != http.StatusServiceUnavailable || checks["nats"] == "ok" {
				return fmt.Errorf("/readyz %d %v with NATS down; want 503", code, checks)
			}
			return nil
		})
		s.waitMetrics(t, sample{"verifeye_bridge_nats_connected", "", 0}, sample{"verifeye_bridge_ready", "check=nats", 0})
		if got := s.post(t, obsWebhook(obsPass1), "", nil); got != http.StatusServiceUnavailable {
			t.Errorf("POST with NATS down: %d, want 503", got)
		}

		s.nats.Restart()
		natstest.WaitFor(t, 15*time.Second, func() error {
			if code, checks := s.readyz(t); code != http.StatusOK {
				return fmt.Errorf("/readyz %d %v after NATS returned; want 200", code, checks)
			}
			return nil
		})
		s.waitMetrics(t, sample{"verifeye_bridge_nats_connected", "", 1}, sample{"verifeye_bridge_nats_reconnects_total", "", 1},
			sample{"verifeye_bridge_ready", "check=nats", 1})

		if err := s.js.DeleteStream(context.Background(), streams.Webhooks); err != nil {
			t.Fatal(err)
		}
		natstest.WaitFor(t, 10*time.Second, func() error {
			if code, checks := s.readyz(t); code != http.StatusServiceUnavailable || !strings.Contains(checks["nats"], streams.Webhooks) {
				return fmt.Errorf("/readyz %d %v without the webhooks stream; want 503 naming it", code, checks)
			}
			return nil
		})
		s.waitMetrics(t, sample{"verifeye_bridge_ready", "check=nats", 0})
	})
}
