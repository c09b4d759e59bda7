package bridge

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

type metrics struct {
	webhooks *prometheus.CounterVec
	duration *prometheus.HistogramVec
	publish  prometheus.Histogram
	refusing prometheus.Gauge

	// The series of every accepted webhook, resolved once (lazily, so that
	// no series appears before its first webhook): WithLabelValues hashes
	// and looks up its labels on every call.
	completed sync.Map                            // source -> *completedCounters
	accepted  atomic.Pointer[prometheus.Observer] // duration, code 202
}

// completedCounters are a source's webhooks_total series for
// VerificationCompleted, accepted and duplicate.
type completedCounters struct{ accepted, duplicate prometheus.Counter }

// count adds one to webhooks_total{source,event,result}.
func (m *metrics) count(source, event, result string) {
	if event == streams.EventCompleted && (result == resultAccepted || result == resultDuplicate) {
		c, ok := m.completed.Load(source)
		if !ok {
			c, _ = m.completed.LoadOrStore(source, &completedCounters{
				accepted:  m.webhooks.WithLabelValues(source, event, resultAccepted),
				duplicate: m.webhooks.WithLabelValues(source, event, resultDuplicate),
			})
		}
		if cc := c.(*completedCounters); result == resultAccepted {
			cc.accepted.Inc()
		} else {
			cc.duplicate.Inc()
		}
		return
	}
	m.webhooks.WithLabelValues(source, event, result).Inc()
}

// observeDuration records the time to answer with status.
func (m *metrics) observeDuration(status int, d time.Duration) {
	if status != http.StatusAccepted {
		m.duration.WithLabelValues(strconv.Itoa(status)).Observe(d.Seconds())
		return
	}
	o := m.accepted.Load()
	if o == nil {
		obs := m.duration.WithLabelValues(strconv.Itoa(status))
		m.accepted.CompareAndSwap(nil, &obs)
		o = &obs
	}
	(*o).Observe(d.Seconds())
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
