package main

import (
	"cmp"
	"context"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/internal/ops"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/internal/tracing"
)

// observeConfig is read by the long-running subcommands: how often JetStream
// state is sampled for /metrics, and whether spans are exported. The OTEL_*
// variables listed are the ones that decide on/off; the OpenTelemetry SDK reads
// the rest of the standard ones itself (docs/observability.md).
type observeConfig struct {
	SampleInterval     time.Duration `envconfig:"METRICS_SAMPLE_INTERVAL" default:"10s" desc:"how often stream depths, consumer pending counts and readiness are sampled for /metrics"`
	OTelDisabled       string        `envconfig:"OTEL_SDK_DISABLED" desc:"true: no spans, whatever else is set (trace IDs are still propagated and logged)"`
	OTelExporter       string        `envconfig:"OTEL_TRACES_EXPORTER" desc:"otlp: export spans over OTLP/HTTP; none: do not; empty: export when an OTLP endpoint is set"`
	OTelEndpoint       string        `envconfig:"OTEL_EXPORTER_OTLP_ENDPOINT" desc:"OTLP/HTTP collector base URL, e.g. http://otel-collector:4318; setting it turns span export on"`
	OTelTracesEndpoint string        `envconfig:"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" desc:"full OTLP/HTTP traces URL (instead of the base endpoint); setting it turns span export on"`
	OTelProtocol       string        `envconfig:"OTEL_EXPORTER_OTLP_PROTOCOL" desc:"http/protobuf, the only OTLP protocol built in"`
	OTelTracesProtocol string        `envconfig:"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" desc:"as OTEL_EXPORTER_OTLP_PROTOCOL, for traces"`
}

func (c observeConfig) validate() error {
	if c.SampleInterval != 0 { // 0: the default
		if err := inRange("METRICS_SAMPLE_INTERVAL", c.SampleInterval, 10*time.Millisecond, time.Hour); err != nil {
			return err
		}
	}
	_, err := c.tracing().Enabled()
	return err
}

func (c observeConfig) tracing() tracing.Config {
	endpoint := c.OTelTracesEndpoint
	if endpoint == "" {
		endpoint = c.OTelEndpoint
	}
	protocol := c.OTelTracesProtocol
	if protocol == "" {
		protocol = c.OTelProtocol
	}
	return tracing.Config{
		ServiceName:    "verifeye-bridge",
		Version:        version,
		Disabled:       strings.EqualFold(strings.TrimSpace(c.OTelDisabled), "true"),
		TracesExporter: c.OTelExporter,
		Endpoint:       endpoint,
		Protocol:       protocol,
	}
}

// startTracing builds the tracing that c asks for (nil when off) and returns
// the function that flushes it; call that once the roles have stopped. A
// non-nil exp turns tracing on with it, whatever c says.
func startTracing(ctx context.Context, c observeConfig, exp sdktrace.SpanExporter, log zerolog.Logger) (*tracing.Tracing, func(), error) {
	tc := c.tracing()
	tc.SpanExporter = exp
	tr, shutdown, err := tracing.New(ctx, tc)
	if err != nil {
		return nil, nil, usageError{err}
	}
	if tr.Enabled() {
		log.Info().Msg("tracing on: spans are exported over OTLP/HTTP")
	}
	return tr, func() {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdown(c); err != nil {
			log.Warn().Err(err).Msg("tracing: cannot flush the last spans")
		}
	}, nil
}

// tracedHTTPClient is the Get Session Result client's HTTP client: the
// client's own transport, adding each call's traceparent.
func tracedHTTPClient() *http.Client {
	return &http.Client{Transport: tracing.Transport(verifeye.NewTransport())}
}

// observer samples into gauges what a scrape must not wait for (stream
// depths, the enricher consumer's pending counts, readiness), every interval
// until its run ends; and it exports the NATS connection's state and the build.
type observer struct {
	js       jetstream.JetStream
	consumer string // the enricher's durable consumer; "" to sample none
	checks   []ops.Check
	interval time.Duration
	log      zerolog.Logger

	streamMsgs  *prometheus.GaugeVec
	streamBytes *prometheus.GaugeVec
	pending     *prometheus.GaugeVec
	ackPending  *prometheus.GaugeVec
	ready       *prometheus.GaugeVec
	errors      *prometheus.CounterVec
}

// sampledStreams are the streams whose depth is exported.
var sampledStreams = []string{streams.Webhooks, streams.Results, streams.DLQ}

// newObserver registers the observer's collectors on reg; it samples the
// enricher's consumer when cfg runs the enricher, and runs checks.
func newObserver(reg prometheus.Registerer, nc *nats.Conn, js jetstream.JetStream, cfg serviceConfig, checks []ops.Check, log zerolog.Logger) *observer {
	consumer, interval := "", cfg.observe.SampleInterval
	if cfg.enrich != nil {
		consumer = cmp.Or(cfg.enrich.Consumer, "enricher")
	}
	if interval <= 0 {
		interval = 10 * time.Second
	}
	o := &observer{
		js: js, consumer: consumer, checks: checks, interval: interval, log: log,
		streamMsgs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verifeye_bridge_stream_messages",
			Help: "Messages stored on each stream of the bridge (sampled every METRICS_SAMPLE_INTERVAL); VERIFEYE_DLQ's is the DLQ depth.",
		}, []string{"stream"}),
		streamBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verifeye_bridge_stream_bytes",
			Help: "Bytes stored on each stream of the bridge (sampled).",
		}, []string{"stream"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verifeye_bridge_consumer_pending_messages",
			Help: "Webhooks on the stream that the enricher's durable consumer has not delivered yet (sampled).",
		}, []string{"consumer"}),
		ackPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verifeye_bridge_consumer_ack_pending_messages",
			Help: "Webhooks delivered to enricher workers (of any replica) and not yet acknowledged (sampled).",
		}, []string{"consumer"}),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verifeye_bridge_ready",
			Help: "1 while the readiness check passes, 0 while it fails (sampled; /readyz runs the checks live).",
		}, []string{"check"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verifeye_bridge_sample_errors_total",
			Help: "Failed samples of JetStream state, by target (a stream name, or consumer); the gauge keeps its last value.",
		}, []string{"target"}),
	}
	for _, s := range sampledStreams {
		o.errors.WithLabelValues(s)
	}
	if consumer != "" {
		o.errors.WithLabelValues("consumer")
	}
	reg.MustRegister(o.streamMsgs, o.streamBytes, o.pending, o.ackPending, o.ready, o.errors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "verifeye_bridge_nats_connected",
			Help: "1 while the NATS connection is connected, else 0.",
		}, func() float64 {
			if nc.IsConnected() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "verifeye_bridge_nats_reconnects_total",
			Help: "Times the NATS connection reconnected.",
		}, func() float64 { return float64(nc.Stats().Reconnects) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "verifeye_bridge_build_info",
			Help:        "Always 1; the labels name the running build.",
			ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
	)
	return o
}

// run samples at once and then every interval until ctx ends; it returns nil.
// After a sample that failed or found a check failing (at start, before the
// streams and the consumer exist; during an outage) it samples again within a
// second, so the gauges catch up quickly.
func (o *observer) run(ctx context.Context) error {
	for {
		wait := o.interval
		if !o.sample(ctx) {
			wait = min(wait, time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// sample updates the gauges; it reports whether every sample succeeded and
// every check passed.
func (o *observer) sample(ctx context.Context) (ok bool) {
	ok = true
	c, cancel := context.WithTimeout(ctx, min(o.interval, 5*time.Second))
	defer cancel()
	for _, name := range sampledStreams {
		st, err := o.js.Stream(c, name)
		if err != nil {
			o.failed(ctx, name, err)
			ok = false
			continue
		}
		info := st.CachedInfo()
		o.streamMsgs.WithLabelValues(name).Set(float64(info.State.Msgs))
		o.streamBytes.WithLabelValues(name).Set(float64(info.State.Bytes))
	}
	if o.consumer != "" {
		if cons, err := o.js.Consumer(c, streams.Webhooks, o.consumer); err != nil {
			o.failed(ctx, "consumer", err)
			ok = false
		} else {
			info := cons.CachedInfo()
			o.pending.WithLabelValues(o.consumer).Set(float64(info.NumPending))
			o.ackPending.WithLabelValues(o.consumer).Set(float64(info.NumAckPending))
		}
	}
	for _, ch := range o.checks {
		v := 1.0
		if ch.Func(c) != nil {
			v, ok = 0, false
		}
		o.ready.WithLabelValues(ch.Name).Set(v)
	}
	return ok
}

// failed counts a failed sample; ctx is the run's context.
func (o *observer) failed(ctx context.Context, target string, err error) {
	if ctx.Err() != nil {
		return // shutting down
	}
	o.errors.WithLabelValues(target).Inc()
	o.log.Debug().Err(err).Str("target", target).Msg("cannot sample JetStream state")
}
