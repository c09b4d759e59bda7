package tracing

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

const (
	incomingTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	incomingSpan  = "00f067aa0ba902b7"
	incoming      = "00-" + incomingTrace + "-" + incomingSpan + "-01"
)

func TestConfigEnabled(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		want    bool
		wantErr string
	}{
		{"zero", Config{}, false, ""},
		{"endpoint", Config{Endpoint: "http://127.0.0.1:4318"}, true, ""},
		{"exporter otlp", Config{TracesExporter: "otlp"}, true, ""},
		{"exporter OTLP", Config{TracesExporter: " OTLP "}, true, ""},
		{"exporter none beats endpoint", Config{TracesExporter: "none", Endpoint: "http://127.0.0.1:4318"}, false, ""},
		{"disabled beats all", Config{Disabled: true, TracesExporter: "otlp", Endpoint: "x"}, false, ""},
		{"protocol http/protobuf", Config{Endpoint: "x", Protocol: "http/protobuf"}, true, ""},
		{"protocol grpc", Config{Endpoint: "x", Protocol: "grpc"}, false, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"exporter zipkin", Config{TracesExporter: "zipkin"}, false, "OTEL_TRACES_EXPORTER"},
		{"span exporter", Config{Disabled: true, SpanExporter: tracetest.NewInMemoryExporter()}, true, ""},
	}
	for _, tt := range tests {
		got, err := tt.cfg.Enabled()
		if got != tt.want || (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: Config%+v.Enabled() = %v, %v; want %v, error naming %q", tt.name, tt.cfg, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNewOffIsNil(t *testing.T) {
	tr, shutdown, err := New(context.Background(), Config{Endpoint: "http://127.0.0.1:1", Disabled: true})
	if err != nil || tr != nil || tr.Enabled() {
		t.Fatalf("New(disabled) = %v, %v; want nil, nil", tr, err)
	}
	if err := shutdown(context.Background()); err != nil {
		t.Errorf("shutdown of disabled tracing: %v", err)
	}
	if _, _, err := New(context.Background(), Config{TracesExporter: "jaeger"}); err == nil {
		t.Errorf("New(OTEL_TRACES_EXPORTER=jaeger): no error")
	}
}

// traceparentOf parses a traceparent into its trace and parent (span) IDs.
func traceparentOf(t *testing.T, v string) (traceID, spanID, flags string) {
	t.Helper()
	parts := strings.Split(v, "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		t.Fatalf("traceparent %q is not of the W3C form 00-<32 hex>-<16 hex>-<2 hex>", v)
	}
	return parts[1], parts[2], parts[3]
}

func TestOffPropagates(t *testing.T) {
	var off *Tracing
	tests := []struct {
		name       string
		header     http.Header
		wantTrace  string // "" means a new random one
		wantParent string
		wantState  string
	}{
		{"continued", http.Header{"Traceparent": {incoming}}, incomingTrace, incomingSpan, ""},
		{"continued with state", http.Header{"Traceparent": {incoming}, "Tracestate": {"vendor=x"}}, incomingTrace, incomingSpan, "vendor=x"},
		{"absent", http.Header{}, "", "", ""},
		{"invalid", http.Header{"Traceparent": {"00-zz-yy-01"}}, "", "", ""},
		{"all-zero trace ID", http.Header{"Traceparent": {"00-00000000000000000000000000000000-" + incomingSpan + "-01"}}, "", "", ""},
	}
	for _, tt := range tests {
		ctx, span := off.StartServer(context.Background(), "ingest", tt.header)
		if span.IsRecording() {
			t.Errorf("%s: StartServer with tracing off returned a recording span", tt.name)
		}
		span.End()
		h := nats.Header{}
		Inject(ctx, h)
		gotTrace, gotSpan, flags := traceparentOf(t, h.Get(traceparent))
		if tt.wantTrace != "" && (gotTrace != tt.wantTrace || gotSpan != tt.wantParent) {
			t.Errorf("%s: traceparent %q; want trace %s, parent %s", tt.name, h.Get(traceparent), tt.wantTrace, tt.wantParent)
		}
		if tt.wantTrace == "" && (gotTrace == incomingTrace || flags != "01") {
			t.Errorf("%s: traceparent %q; want a new sampled trace", tt.name, h.Get(traceparent))
		}
		if got := h.Get(tracestate); got != tt.wantState {
			t.Errorf("%s: tracestate %q, want %q", tt.name, got, tt.wantState)
		}
		if got := TraceID(ctx); got != gotTrace {
			t.Errorf("%s: TraceID = %q, want the traceparent's %q", tt.name, got, gotTrace)
		}

		// The enricher, also off, continues the message's context unchanged.
		cctx, cspan := off.StartConsumer(context.Background(), "enrich", h)
		cctx, client := off.StartClient(cctx, "call")
		End(client, errors.New("boom"))
		cspan.End()
		out := nats.Header{}
		Inject(cctx, out)
		if out.Get(traceparent) != h.Get(traceparent) || out.Get(tracestate) != h.Get(tracestate) {
			t.Errorf("%s: outcome headers %v, want the webhook's %v", tt.name, out, h)
		}
	}
}

func TestOffNewTracesDiffer(t *testing.T) {
	var off *Tracing
	seen := map[string]bool{}
	for range 100 {
		ctx, _ := off.StartServer(context.Background(), "ingest", nil)
		id := TraceID(ctx)
		if seen[id] {
			t.Fatalf("StartServer drew trace ID %s twice", id)
		}
		seen[id] = true
	}
}

func TestConsumerWithoutTraceparent(t *testing.T) {
	var off *Tracing
	ctx, _ := off.StartConsumer(context.Background(), "enrich", nil)
	h := nats.Header{}
	Inject(ctx, h)
	if len(h) != 0 || TraceID(ctx) != "" {
		t.Errorf("no incoming trace context: Inject wrote %v, TraceID %q; want nothing", h, TraceID(ctx))
	}
	// A canonical-case header written by an HTTP-minded publisher is read too.
	ctx, _ = off.StartConsumer(context.Background(), "enrich", nats.Header{"Traceparent": {incoming}})
	if got := TraceID(ctx); got != incomingTrace {
		t.Errorf("Traceparent header: TraceID = %q, want %q", got, incomingTrace)
	}
}

func newOn(t *testing.T) (*Tracing, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tr, shutdown, err := New(context.Background(), Config{SpanExporter: exp, Version: "test"})
	if err != nil || !tr.Enabled() {
		t.Fatalf("New with a span exporter = %v, %v; want tracing on", tr, err)
	}
	t.Cleanup(func() { _ = shutdown(context.Background()) })
	return tr, exp
}

func TestOnSpansShareTheTrace(t *testing.T) {
	tr, exp := newOn(t)

	// The API, recording the traceparent its request carried.
	var apiHeader string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		apiHeader = r.Header.Get("Traceparent")
	}))
	defer api.Close()
	client := &http.Client{Transport: Transport(nil)}

	ctx, ingest := tr.StartServer(context.Background(), "ingest", http.Header{"Traceparent": {incoming}, "Tracestate": {"vendor=x"}})
	msg := nats.Header{}
	Inject(ctx, msg)
	ingest.End()

	cctx, enrich := tr.StartConsumer(context.Background(), "enrich", msg)
	callCtx, call := tr.StartClient(cctx, "call")
	req, _ := http.NewRequestWithContext(callCtx, http.MethodGet, api.URL, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if req.Header.Get("Traceparent") != "" {
		t.Errorf("Transport modified the caller's request")
	}
	End(call, errors.New("HTTP 500"))
	out := nats.Header{}
	Inject(cctx, out)
	enrich.End()

	spans := map[string]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		spans[s.Name] = s
	}
	if len(spans) != 3 {
		t.Fatalf("exported spans %v, want ingest, enrich and call", exp.GetSpans())
	}
	for name, s := range spans {
		if got := s.SpanContext.TraceID().String(); got != incomingTrace {
			t.Errorf("span %s: trace ID %s, want the request's %s", name, got, incomingTrace)
		}
	}
	check := func(what, header string, want trace.SpanContext) {
		t.Helper()
		tid, sid, _ := traceparentOf(t, header)
		if tid != want.TraceID().String() || sid != want.SpanID().String() {
			t.Errorf("%s traceparent %q, want trace %s parent %s", what, header, want.TraceID(), want.SpanID())
		}
	}
	check("webhook message", msg.Get(traceparent), spans["ingest"].SpanContext)
	check("API request", apiHeader, spans["call"].SpanContext)
	check("outcome message", out.Get(traceparent), spans["enrich"].SpanContext)
	if got := out.Get(tracestate); got != "vendor=x" {
		t.Errorf("outcome tracestate %q, want the request's vendor=x", got)
	}
	if got := spans["ingest"].Parent.SpanID().String(); got != incomingSpan {
		t.Errorf("ingest span's parent %s, want the request's span %s", got, incomingSpan)
	}
	if spans["enrich"].Parent.SpanID() != spans["ingest"].SpanContext.SpanID() {
		t.Errorf("enrich span's parent %s, want the ingest span %s", spans["enrich"].Parent.SpanID(), spans["ingest"].SpanContext.SpanID())
	}
	if spans["call"].Parent.SpanID() != spans["enrich"].SpanContext.SpanID() {
		t.Errorf("call span's parent %s, want the enrich span", spans["call"].Parent.SpanID())
	}
	wantKinds := map[string]trace.SpanKind{"ingest": trace.SpanKindServer, "enrich": trace.SpanKindConsumer, "call": trace.SpanKindClient}
	for name, kind := range wantKinds {
		if spans[name].SpanKind != kind {
			t.Errorf("span %s kind %v, want %v", name, spans[name].SpanKind, kind)
		}
	}
	if spans["call"].Status.Code.String() != "Error" || spans["enrich"].Status.Code.String() != "Unset" {
		t.Errorf("statuses: call %v, enrich %v; want Error, Unset", spans["call"].Status, spans["enrich"].Status)
	}
}

func TestOnStartsATraceWithoutTraceparent(t *testing.T) {
	tr, exp := newOn(t)
	ctx, span := tr.StartServer(context.Background(), "ingest", http.Header{})
	span.End()
	spans := exp.GetSpans()
	if len(spans) != 1 || spans[0].Parent.IsValid() {
		t.Fatalf("spans %v, want one root span", spans)
	}
	if got, want := TraceID(ctx), spans[0].SpanContext.TraceID().String(); got != want {
		t.Errorf("TraceID %s, want the root span's %s", got, want)
	}
}

var sinkHeader nats.Header

// TestOffAllocations keeps the off path of the ingest cheap: parsing the
// request's traceparent, writing the message's and the trace ID of the log
// line. Allocation counts, unlike timings, are deterministic.
func TestOffAllocations(t *testing.T) {
	var off *Tracing
	for _, tt := range []struct {
		h    http.Header
		want float64
	}{
		// context value + span + traceparent string + header value slice +
		// trace ID string + the header map's growth (a real message has one).
		{http.Header{"Traceparent": {incoming}}, 7},
		// ... and the random bytes of a new trace.
		{http.Header{}, 8},
	} {
		h := tt.h
		allocs := testing.AllocsPerRun(200, func() {
			ctx, span := off.StartServer(context.Background(), "ingest", h)
			sinkHeader = nats.Header{}
			Inject(ctx, sinkHeader)
			_ = TraceID(ctx)
			span.End()
		})
		if allocs > tt.want {
			t.Errorf("off path with header %v: %.0f allocations per request, want at most %.0f", h, allocs, tt.want)
		}
	}
}

func BenchmarkOffIngest(b *testing.B) {
	var off *Tracing
	h := http.Header{"Traceparent": {incoming}}
	b.ReportAllocs()
	for b.Loop() {
		ctx, span := off.StartServer(context.Background(), "ingest", h)
		sinkHeader = nats.Header{}
		Inject(ctx, sinkHeader)
		_ = TraceID(ctx)
		span.End()
	}
}

func BenchmarkOnIngest(b *testing.B) {
	tr, shutdown, err := New(context.Background(), Config{SpanExporter: tracetest.NewNoopExporter()})
	if err != nil {
		b.Fatal(err)
	}
	defer shutdown(context.Background())
	h := http.Header{"Traceparent": {incoming}}
	b.ReportAllocs()
	for b.Loop() {
		ctx, span := tr.StartServer(context.Background(), "ingest", h)
		sinkHeader = nats.Header{}
		Inject(ctx, sinkHeader)
		_ = TraceID(ctx)
		span.End()
	}
}

var _ sdktrace.SpanExporter = (*tracetest.InMemoryExporter)(nil)
