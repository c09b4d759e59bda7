package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// syncWaitMetric is serve's histogram of the waits for a sync of the
// embedded store (NATS_EMBEDDED_SYNC=always with group sync): per 202, per
// enrichment ack.
const syncWaitMetric = "verifeye_bridge_store_sync_wait_seconds"

// syncMetric is serve's histogram of the syncs themselves.
const syncMetric = "verifeye_bridge_store_sync_seconds"

// histogram is a scraped Prometheus histogram: cumulative counts by upper
// bound, ascending.
type histogram struct {
	bounds []float64
	counts []uint64
	total  uint64
}

// scrapeHistogram reads the histogram name from the /metrics of the
// process listening on addr.
func scrapeHistogram(ctx context.Context, addr, name string) (histogram, error) {
	fams, err := scrape(ctx, addr)
	if err != nil {
		return histogram{}, err
	}
	f := fams[name]
	if f == nil || len(f.GetMetric()) != 1 || f.GetMetric()[0].GetHistogram() == nil {
		return histogram{}, fmt.Errorf("%s: no such histogram", name)
	}
	h := f.GetMetric()[0].GetHistogram()
	out := histogram{total: h.GetSampleCount()}
	for _, b := range h.GetBucket() {
		out.bounds = append(out.bounds, b.GetUpperBound())
		out.counts = append(out.counts, b.GetCumulativeCount())
	}
	return out, nil
}

// scrapeGauge reads the gauge name from the /metrics of the process
// listening on addr.
func scrapeGauge(ctx context.Context, addr, name string) (float64, error) {
	fams, err := scrape(ctx, addr)
	if err != nil {
		return 0, err
	}
	f := fams[name]
	if f == nil || len(f.GetMetric()) != 1 || f.GetMetric()[0].GetGauge() == nil {
		return 0, fmt.Errorf("%s: no such gauge", name)
	}
	return f.GetMetric()[0].GetGauge().GetValue(), nil
}

// scrape reads the /metrics of the process listening on addr.
func scrape(ctx context.Context, addr string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// minus returns h less an earlier scrape of the same histogram (zero: none).
func (h histogram) minus(earlier histogram) histogram {
	if len(earlier.counts) != len(h.counts) {
		return h
	}
	out := histogram{bounds: h.bounds, total: h.total - earlier.total}
	for i := range h.counts {
		out.counts = append(out.counts, h.counts[i]-earlier.counts[i])
	}
	return out
}

// quantile estimates the q-quantile as Prometheus' histogram_quantile does:
// linear within the bucket holding it. Zero for an empty histogram.
func (h histogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := q * float64(h.total)
	lower, below := 0.0, uint64(0)
	for i, c := range h.counts {
		if float64(c) >= rank {
			upper := h.bounds[i]
			if math.IsInf(upper, 1) {
				upper = lower
			}
			in := float64(c - below)
			frac := 1.0
			if in > 0 {
				frac = (rank - float64(below)) / in
			}
			return time.Duration((lower + (upper-lower)*frac) * float64(time.Second))
		}
		lower, below = h.bounds[i], c
	}
	return time.Duration(lower * float64(time.Second))
}
