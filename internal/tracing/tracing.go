// Package tracing carries W3C Trace Context (the traceparent and tracestate
// headers) from a webhook request through the webhooks stream and the enricher
// to the outcome message, and, when OpenTelemetry export is configured, records
// a span for each hop: the ingest (server), the enrichment (consumer) and the
// Get Session Result call (client).
//
// A nil *Tracing is valid and means tracing is off. Trace context is still
// propagated then, so every log line and downstream consumer can correlate a
// session's path by trace ID, but no span is created and nothing is exported:
// the ingest only parses the incoming traceparent (or draws random IDs) and
// writes one header.
//
// The bridge and the enricher meet here; only cmd decides whether tracing is
// on (Config), from the standard OTEL_* variables.
package tracing

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Header names of W3C Trace Context, as written on NATS messages (exactly these,
// lower-case) and as found on HTTP requests (canonicalised by net/http).
const (
	traceparent     = "traceparent"
	tracestate      = "tracestate"
	httpTraceparent = "Traceparent"
	httpTracestate  = "Tracestate"
)

// instrumentation names the tracer, after the module.
const instrumentation = "github.com/realeyes/verifeye-bridge"

// Config decides whether spans are recorded and exported. Its fields mirror the
// standard OpenTelemetry variables; the zero value means off.
type Config struct {
	// ServiceName and Version describe the process (service.name,
	// service.version); OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, read by
	// the SDK, override them.
	ServiceName string
	Version     string

	// Disabled (OTEL_SDK_DISABLED=true) turns tracing off whatever else is set.
	Disabled bool
	// TracesExporter (OTEL_TRACES_EXPORTER) is "otlp" (on), "none" (off) or
	// empty: then tracing is on only if Endpoint is set.
	TracesExporter string
	// Endpoint is OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
	// it is only tested for emptiness: the exporter reads every
	// OTEL_EXPORTER_OTLP_* variable (endpoint, headers, TLS, timeout) itself.
	Endpoint string
	// Protocol (OTEL_EXPORTER_OTLP_PROTOCOL or the TRACES_ variant) must be empty
	// or "http/protobuf": OTLP over HTTP is the only exporter built in.
	Protocol string

	// SpanExporter, when non-nil, turns tracing on and receives every span as it
	// ends, synchronously. Tests use an in-memory exporter.
	SpanExporter sdktrace.SpanExporter
}

// Enabled reports whether c turns tracing on, or why c is invalid. The error
// names the variable at fault.
func (c Config) Enabled() (bool, error) {
	if c.SpanExporter != nil {
		return true, nil
	}
	if c.Disabled {
		return false, nil
	}
	if p := c.Protocol; p != "" && p != "http/protobuf" {
		return false, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: %q is not supported; only http/protobuf is built in", p)
	}
	switch strings.ToLower(strings.TrimSpace(c.TracesExporter)) {
	case "none":
		return false, nil
	case "otlp":
		return true, nil
	case "":
		return c.Endpoint != "", nil
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER: %q is not supported; use otlp or none", c.TracesExporter)
	}
}

// Tracing records spans through an OpenTelemetry tracer provider. Build it with
// New. A nil *Tracing is off (see the package doc); all methods accept it. It is
// safe for concurrent use.
type Tracing struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
}

// New returns the Tracing that cfg asks for, or nil when cfg leaves tracing off,
// and a shutdown function that flushes and stops the exporter: the caller must
// call it (with a bounded context) once no span is started any more. It is safe
// to call when tracing is off. New returns an error when cfg is invalid or the
// exporter cannot be built; it does not contact the collector.
func New(ctx context.Context, cfg Config) (*Tracing, func(context.Context) error, error) {
	noop := func(context.Context) error { return nil }
	on, err := cfg.Enabled()
	if err != nil || !on {
		return nil, noop, err
	}
	var export sdktrace.TracerProviderOption
	if cfg.SpanExporter != nil {
		export = sdktrace.WithSyncer(cfg.SpanExporter)
	} else {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, noop, fmt.Errorf("tracing: otlp exporter: %w", err)
		}
		export = sdktrace.WithBatcher(exp)
	}
	name := cfg.ServiceName
	if name == "" {
		name = "verifeye-bridge"
	}
	// Later options override earlier ones: OTEL_SERVICE_NAME and
	// OTEL_RESOURCE_ATTRIBUTES win over the built-in name and version.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", name), attribute.String("service.version", cfg.Version)),
		resource.WithFromEnv(),
	)
	if err != nil && res == nil {
		return nil, noop, fmt.Errorf("tracing: resource: %w", err)
	}
	// The sampler is the SDK's: parent-based always-on unless OTEL_TRACES_SAMPLER says otherwise.
	tp := sdktrace.NewTracerProvider(export, sdktrace.WithResource(res))
	return &Tracing{tp: tp, tracer: tp.Tracer(instrumentation)}, tp.Shutdown, nil
}

// Enabled reports whether t records spans.
func (t *Tracing) Enabled() bool { return t != nil }

// StartServer starts the span of an incoming request whose headers are h,
// continuing the request's trace when it carries a valid traceparent. When
// tracing is off no span is started: the returned context carries the request's
// trace context, or a new random one, so that Inject still writes a traceparent
// with the request's trace ID. The caller must End the span.
func (t *Tracing) StartServer(ctx context.Context, name string, h http.Header) (context.Context, trace.Span) {
	parent := propagation.TraceContext{}.Extract(ctx, httpCarrier(h))
	if t == nil {
		if parent == ctx { // no valid traceparent: start a trace of our own
			parent = trace.ContextWithRemoteSpanContext(ctx, newRoot())
		}
		return parent, trace.SpanFromContext(parent)
	}
	return t.tracer.Start(parent, name, trace.WithSpanKind(trace.SpanKindServer))
}

// StartConsumer starts the span of processing a NATS message whose headers are
// h, as a child of the trace context they carry. When tracing is off the
// context carries h's trace context (if any) and the span does nothing. The
// caller must End the span.
func (t *Tracing) StartConsumer(ctx context.Context, name string, h nats.Header) (context.Context, trace.Span) {
	parent := propagation.TraceContext{}.Extract(ctx, natsCarrier(h))
	if t == nil {
		return parent, trace.SpanFromContext(parent)
	}
	return t.tracer.Start(parent, name, trace.WithSpanKind(trace.SpanKindConsumer))
}

// StartClient starts the span of an outgoing call, a child of ctx's span. When
// tracing is off ctx is returned as is, and the span does nothing. The caller
// must End the span (End does it with the call's error).
func (t *Tracing) StartClient(ctx context.Context, name string) (context.Context, trace.Span) {
	if t == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	return t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient))
}

// End ends span, marking it failed with err when err is non-nil.
func End(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Inject writes ctx's trace context to the NATS headers h as traceparent (and
// tracestate, when there is one). With no valid trace context in ctx it writes
// nothing.
func Inject(ctx context.Context, h nats.Header) {
	propagation.TraceContext{}.Inject(ctx, natsCarrier(h))
}

// TraceID returns ctx's trace ID in lower-case hex, for log lines, or "" when
// ctx has none.
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}

// Transport returns a RoundTripper that adds the trace context of each request's
// context (traceparent, tracestate) to its headers before handing it to base
// (http.DefaultTransport when nil). Requests without trace context pass
// unchanged. It is safe for concurrent use.
func Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return transport{base: base}
}

type transport struct{ base http.RoundTripper }

func (t transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if trace.SpanContextFromContext(req.Context()).IsValid() {
		// A RoundTripper must not modify the caller's request.
		req = req.Clone(req.Context())
		propagation.TraceContext{}.Inject(req.Context(), propagation.HeaderCarrier(req.Header))
	}
	return t.base.RoundTrip(req)
}

// newRoot returns a new sampled span context with random IDs. It is marked
// sampled so that a later hop with tracing on (an enricher replica, a
// downstream consumer with a parent-based sampler) records the trace.
//
// The IDs come from math/rand/v2's runtime generator (ChaCha8, seeded by the
// runtime, per thread), as the OpenTelemetry SDK draws its own from
// math/rand: unguessable enough for trace IDs, which are not secrets, and
// without crypto/rand's system call on every webhook without a traceparent.
func newRoot() trace.SpanContext {
	for {
		var cfg trace.SpanContextConfig
		binary.LittleEndian.PutUint64(cfg.TraceID[:8], rand.Uint64())
		binary.LittleEndian.PutUint64(cfg.TraceID[8:], rand.Uint64())
		binary.LittleEndian.PutUint64(cfg.SpanID[:], rand.Uint64())
		cfg.TraceFlags = trace.FlagsSampled
		if sc := trace.NewSpanContext(cfg); sc.IsValid() {
			return sc
		}
	}
}

// httpCarrier reads trace headers from an http.Header without canonicalising
// the key on every call, as http.Header.Get would (an allocation each).
type httpCarrier http.Header

func (c httpCarrier) Get(key string) string {
	var vs []string
	switch key {
	case traceparent:
		vs = c[httpTraceparent]
	case tracestate:
		vs = c[httpTracestate]
	default:
		vs = http.Header(c).Values(key)
	}
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

func (c httpCarrier) Set(key, value string) { http.Header(c).Set(key, value) }

func (c httpCarrier) Keys() []string { return propagation.HeaderCarrier(c).Keys() }

// natsCarrier reads and writes trace headers on NATS headers, whose keys are
// case-sensitive: the contract's are lower-case; a canonical-case key written
// by an HTTP-minded publisher is read too.
type natsCarrier nats.Header

func (c natsCarrier) Get(key string) string {
	if vs := c[key]; len(vs) > 0 {
		return vs[0]
	}
	if vs := c[http.CanonicalHeaderKey(key)]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

func (c natsCarrier) Set(key, value string) { c[key] = []string{value} }

func (c natsCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// AppendTraceID appends ctx's trace ID (16 bytes, not hex) to dst, or nothing
// when ctx has none: TraceID for a caller that encodes it itself, such as a
// log line's Hex field, without a string per call.
func AppendTraceID(ctx context.Context, dst []byte) []byte {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return dst
	}
	id := sc.TraceID()
	return append(dst, id[:]...)
}
