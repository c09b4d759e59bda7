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

// fsyncLatency measures fsyncStats in dir during d.
func fsyncLatency(dir string, d time.Duration) (fsyncStats, error) {
	f, err := os.CreateTemp(dir, "fsync-")
	if err != nil {
		return fsyncStats{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 128)
	var lat []time.Duration
	for start := time.Now(); time.Since(start) < d; {
		t := time.Now()
		if _, err := f.Write(buf); err != nil {
			return fsyncStats{}, err
		}
		if err := f.Sync(); err != nil {
			return fsyncStats{}, err
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	at := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	return fsyncStats{n: len(lat), p50: at(0.50), p99: at(0.99)}, nil
}

// fsyncSampler measures the disk's fsync latency while something else works:
// one 128-byte append + fsync in dir every interval until ctx ends. It
// returns nothing (n 0) when it could not write.
func fsyncSampler(ctx context.Context, dir string, interval time.Duration) fsyncStats {
	f, err := os.CreateTemp(dir, "fsync-")
	if err != nil {
		return fsyncStats{}
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 128)
	var lat []time.Duration
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if len(lat) == 0 {
				return fsyncStats{}
			}
			slices.Sort(lat)
			at := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
			return fsyncStats{n: len(lat), p50: at(0.50), p99: at(0.99)}
		case <-t.C:
		}
		start := time.Now()
		if _, err := f.Write(buf); err != nil {
			return fsyncStats{}
		}
		if err := f.Sync(); err != nil {
			return fsyncStats{}
		}
		lat = append(lat, time.Since(start))
	}
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
