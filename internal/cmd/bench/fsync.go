package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// fsyncStats is the disk's own fsync latency: one writer appending 128 bytes
// and fsyncing, in turn, in the file system of the targets' DATA_DIR.
type fsyncStats struct {
	n        int
	p50, p99 time.Duration
}

// fsyncRounds appends 128 bytes to a file of its own in dir and fsyncs it,
// round after round until ctx ends: back to back with every 0, else one round
// per every. It returns each round's latency and how long it ran.
func fsyncRounds(ctx context.Context, dir string, every time.Duration) ([]time.Duration, time.Duration, error) {
	f, err := os.CreateTemp(dir, "fsync-")
	if err != nil {
		return nil, 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	buf := make([]byte, 128)
	var lat []time.Duration
	begin := time.Now()
	for ctx.Err() == nil {
		if tick != nil {
			select {
			case <-ctx.Done():
				continue
			case <-tick:
			}
		}
		start := time.Now()
		if _, err := f.Write(buf); err != nil {
			return nil, 0, err
		}
		if err := f.Sync(); err != nil {
			return nil, 0, err
		}
		lat = append(lat, time.Since(start))
	}
	return lat, time.Since(begin), nil
}

// stats summarises fsync latencies; zero for none.
func stats(lat []time.Duration) fsyncStats {
	if len(lat) == 0 {
		return fsyncStats{}
	}
	slices.Sort(lat)
	at := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	return fsyncStats{n: len(lat), p50: at(0.50), p99: at(0.99)}
}

// fsyncLatency measures fsyncStats in dir during d, rounds back to back.
func fsyncLatency(dir string, d time.Duration) (fsyncStats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	lat, _, err := fsyncRounds(ctx, dir, 0)
	return stats(lat), err
}

// fsyncRate measures how many append+fsync rounds per second one writer gets
// in dir during d.
func fsyncRate(dir string, d time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	lat, took, err := fsyncRounds(ctx, dir, 0)
	if err != nil {
		return 0, err
	}
	return float64(len(lat)) / took.Seconds(), nil
}

// fsyncSampler measures the disk's fsync latency while something else works:
// one round every interval until ctx ends. It returns nothing (n 0) when it
// could not write.
func fsyncSampler(ctx context.Context, dir string, interval time.Duration) fsyncStats {
	lat, _, err := fsyncRounds(ctx, dir, interval)
	if err != nil {
		return fsyncStats{}
	}
	return stats(lat)
}

// printGroupCommit compares the p99 of serve syncing every write, paced at
// rate, with the disk's own fsync p99 measured just before: with group commit
// a webhook waits for at most the batch in flight and its own, two fsyncs.
func printGroupCommit(w io.Writer, targets []*target, all []*measurement, rate float64, disk fsyncStats) {
	if disk.n == 0 {
		return
	}
	fmt.Fprintf(w, "  Disk fsync (128 B append + fsync, same file system, %d rounds just before): p50 %s, p99 %s\n", disk.n, ms(disk.p50), ms(disk.p99))
	for i, t := range targets {
		if t.sync != "always" {
			continue
		}
		m := all[i]
		name := strings.TrimPrefix(t.name, "serve, ")
		if !keptUp(m, rate) {
			fmt.Fprintf(w, "  %s p99 vs disk fsync p99: not comparable, %.0f req/s answered of %.0f offered\n", name, m.res.Rate(), rate)
			continue
		}
		fmt.Fprintf(w, "  %s p99 / disk fsync p99 at %.0f req/s: %.2f (whole request, HTTP included)\n", name, rate,
			float64(m.res.Percentile(0.99))/float64(disk.p99))
		if h := m.syncWait; h.total > 0 {
			// Group sync: the wait of each write for a sync covering it,
			// the part of a request that syncing every write adds.
			fmt.Fprintf(w, "  %s, wait for the durable write (%s, %d waits: 202s and enrichment acks): p50 %s, p99 %s = %.2f x disk fsync p99 (target <= 2)\n",
				name, syncWaitMetric, h.total, ms(h.quantile(0.5)), ms(h.quantile(0.99)), float64(h.quantile(0.99))/float64(disk.p99))
			if u := m.diskUnderLoad; u.n > 0 {
				fmt.Fprintf(w, "    the disk's fsync while serve worked (one writer beside it, every 10 ms, %d rounds): p50 %s, p99 %s; wait p99 / that = %.2f\n",
					u.n, ms(u.p50), ms(u.p99), float64(h.quantile(0.99))/float64(u.p99))
			}
			if s := m.syncs; s.total > 0 {
				fmt.Fprintf(w, "    wait p99 / serve's own sync p99 = %.2f (a write waits for at most the sync running and its own)\n",
					float64(h.quantile(0.99))/float64(s.quantile(0.99)))
			}
			printSyncs(w, m)
		}
	}
}

// groupCommitBaselines returns the baselines of group commit: for serve
// sync=always, the server syncing each write itself
// (NATS_EMBEDDED_GROUP_SYNC=off, concurrent webhooks sharing JetStream atomic
// batches), and that with each webhook published alone (INGEST_BATCH=1); for
// ingest SPOOL=off, each webhook alone.
func groupCommitBaselines(targets []*target) []*target {
	var out []*target
	for _, t := range targets {
		if t.batch != "" || len(t.env) > 0 {
			continue
		}
		switch {
		case t.sync == "always":
			b := *t
			b.name, b.env = t.name+", GROUP_SYNC=off", []string{"NATS_EMBEDDED_GROUP_SYNC=off"}
			a := b
			a.name, a.batch = b.name+", INGEST_BATCH=1", "1"
			out = append(out, &b, &a)
		case t.ingest && t.spool == "off" && !t.natsDown:
			b := *t
			b.name, b.batch = t.name+", INGEST_BATCH=1", "1"
			out = append(out, &b)
		}
	}
	return out
}
