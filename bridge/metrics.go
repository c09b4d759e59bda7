package bridge

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	webhooks *prometheus.CounterVec
	duration *prometheus.HistogramVec
	publish  prometheus.Histogram
	refusing prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verifeye_bridge_webhooks_total",
			Help: "Webhook requests by source (\"\" when refused before authentication), event (VerificationCompleted, other, or \"\") and result (accepted, duplicate, unavailable, or the error code).",
		}, []string{"source", "event", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "verifeye_bridge_ingest_duration_seconds",
			Help:    "Time from receiving a webhook request to answering it, by HTTP status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"code"}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "verifeye_bridge_publish_duration_seconds",
			Help:    "Time to publish a webhook to JetStream and receive its acknowledgement.",
			Buckets: []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 3},
		}),
		refusing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "verifeye_bridge_storage_refusing",
			Help: "1 while JetStream refuses to store webhooks (stream full, store failed, no storage left), else 0.",
		}),
	}
	reg.MustRegister(m.webhooks, m.duration, m.publish, m.refusing)
	return m
}
