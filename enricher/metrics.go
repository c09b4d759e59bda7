package enricher

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
)

type metrics struct {
	apiCalls    *prometheus.CounterVec
	apiDuration prometheus.Histogram
	enrichments *prometheus.CounterVec
	latency     prometheus.Histogram
	paused      prometheus.Gauge
	inFlight    prometheus.Gauge

	ledgerFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		apiCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verifeye_bridge_api_calls_total",
			Help: "Get Session Result calls by status class (2xx, 4xx, 5xx, ...; error when no answer came).",
		}, []string{"class"}),
		apiDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "verifeye_bridge_api_call_duration_seconds",
			Help:    "Duration of Get Session Result calls.",
			Buckets: prometheus.DefBuckets,
		}),
		enrichments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verifeye_bridge_enrichments_total",
			Help: "Enrichment decisions by result (published, duplicate, already_enriched, retried, released, dead_lettered) and reason.",
		}, []string{"result", "reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "verifeye_bridge_outcome_latency_seconds",
			Help:    "Time from receiving a webhook to publishing its outcome.",
			Buckets: []float64{.01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "verifeye_bridge_enricher_paused",
			Help: "1 while enrichment is paused because the VerifEye API refuses the API key (401/403).",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "verifeye_bridge_enricher_in_flight",
			Help: "Webhook messages this process has fetched and not yet settled: at most ENRICH_CONCURRENCY in API calls, and as many again writing the ledger and acking after their outcome; the rest wait in JetStream.",
		}),
		ledgerFailures: newLedgerFailures(),
	}
	if reg != nil {
		reg.MustRegister(m.apiCalls, m.apiDuration, m.enrichments, m.latency, m.paused, m.inFlight)
		m.ledgerFailures = registerShared(reg, m.ledgerFailures)
	}
	return m
}

func (m *metrics) observeCall(err error, d time.Duration) {
	class := "2xx"
	var ae *verifeye.APIError
	switch {
	case errors.As(err, &ae):
		class = strconv.Itoa(ae.Status/100) + "xx"
	case errors.Is(err, verifeye.ErrInvalidResponse):
	case err != nil:
		class = "error"
	}
	m.apiCalls.WithLabelValues(class).Inc()
	m.apiDuration.Observe(d.Seconds())
}

func newLedgerFailures() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "verifeye_bridge_ledger_write_failures_total",
		Help: "Writes to the session ledger (VERIFEYE_SESSIONS) that failed, by the enricher or the reconciler.",
	})
}

// registerShared registers c, or returns the counter of the same name
// registered before (the enricher and the reconciler share one).
func registerShared(reg prometheus.Registerer, c prometheus.Counter) prometheus.Counter {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(prometheus.Counter); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}
