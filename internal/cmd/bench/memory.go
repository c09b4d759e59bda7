package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/simulator"
	"github.com/realeyes/verifeye-bridge/internal/loadgen"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// Memory targets (docs/performance.md): ingest at a steady 1,000 req/s, and
// serve holding a backlog while the API is paused, over its own idle figure.
const (
	memIngestRate   = 1000
	memIngestTarget = 40 << 20
	memBacklogDelta = 20 << 20
)

// procMem returns VmRSS (resident now) and VmHWM (the most it was resident)
// of process pid, in bytes, from /proc/<pid>/status.
func procMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	return parseStatusMem(b)
}

// parseStatusMem reads the VmRSS and VmHWM lines ("VmRSS:   12345 kB") of a
// /proc/<pid>/status file.
func parseStatusMem(b []byte) (rss, hwm int64, err error) {
	var found int
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || (string(k) != "VmRSS" && string(k) != "VmHWM") {
			continue
		}
		f := bytes.Fields(v)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, 0, fmt.Errorf("%s: unexpected %q", k, bytes.TrimSpace(v))
		}
		n, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", k, err)
		}
		if string(k) == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("no VmRSS and VmHWM lines")
	}
	return rss, hwm, nil
}

// memSampler samples a process's VmRSS every 100 ms until stopped.
type memSampler struct {
	pid  int
	mu   sync.Mutex
	rss  []int64
	stop chan struct{}
	done chan struct{}
}

func sampleMem(pid int) *memSampler {
	s := &memSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if rss, _, err := procMem(pid); err == nil {
				s.mu.Lock()
				s.rss = append(s.rss, rss)
				s.mu.Unlock()
			}
			select {
			case <-t.C:
			case <-s.stop:
				return
			}
		}
	}()
	return s
}

// end stops the sampler and returns the median and the largest sample.
func (s *memSampler) end() (median, peak int64) {
	close(s.stop)
	<-s.done
	if len(s.rss) == 0 {
		return 0, 0
	}
	v := slices.Clone(s.rss)
	slices.Sort(v)
	return v[len(v)/2], v[len(v)-1]
}

// idleMem samples a process that receives nothing for d and returns the
// median VmRSS.
func idleMem(ctx context.Context, pid int, d time.Duration) int64 {
	s := sampleMem(pid)
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	m, _ := s.end()
	return m
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

// memoryPhase measures the resident memory of `ingest` at a steady 1,000
// req/s and of `serve` filling and then holding a backlog of backlog webhooks
// while its VerifEye API refuses every call (the enricher pauses), each beside
// the same process's idle figure from the same run. It returns what makes the
// figures invalid.
func memoryPhase(ctx context.Context, cfg config, env benchEnv, backlog int, w io.Writer) ([]string, error) {
	fmt.Fprintf(w, "\nPhase M: memory (VmRSS from /proc/<pid>/status, sampled every 100 ms; VmHWM: the most the process was ever resident)\n")
	var problems []string

	// ingest, default settings, against the external NATS the bench runs.
	t := &target{name: "ingest (memory)", ingest: true, spool: "on"}
	p, err := start(ctx, env, t, filepath.Join(env.tmp, "memory-ingest"))
	if err != nil {
		return nil, err
	}
	defer p.kill()
	if err := p.waitReady(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("ingest: %w\n%s", err, p.logTail())
	}
	pid := p.cmd.Process.Pid
	idle := idleMem(ctx, pid, 2*time.Second)
	wh := loadgen.Webhooks{Host: p.addr, APIKey: env.apiKey, Run: 0xee<<24 | 1<<16}
	s := sampleMem(pid)
	res, err := loadgen.Run(ctx, loadgen.Options{Addr: p.addr, Request: wh.Append, Conns: cfg.conns, Duration: cfg.duration, Rate: memIngestRate})
	med, peak := s.end()
	if err != nil {
		return nil, err
	}
	_, hwm, _ := procMem(pid)
	if n := res.Failed(); n > 0 {
		problems = append(problems, fmt.Sprintf("memory, ingest: %d of %d requests not answered 202 (%v)", n, res.Sent, res.Status))
	}
	if err := p.stop(30 * time.Second); err != nil {
		problems = append(problems, "memory, ingest: "+err.Error())
	}
	fmt.Fprintf(w, "  ingest (SPOOL=on, external NATS), paced at %d req/s for %v (%.0f req/s answered):\n", memIngestRate, cfg.duration, res.Rate())
	fmt.Fprintf(w, "    idle %s; under load: median %s, max %s; VmHWM %s (target <= %s: %s)\n",
		mb(idle), mb(med), mb(peak), mb(hwm), mb(memIngestTarget), verdict(peak <= memIngestTarget))

	// serve with its API paused: a fake that refuses the key.
	sim := simulator.New(env.apiKey, simulator.Options{})
	defer sim.Close()
	sim.SetAPIKey("refuse-" + env.apiKey)
	api := httptest.NewServer(sim)
	defer api.Close()
	senv := env
	senv.apiURL = api.URL
	for i, window := range []string{"", "1s"} {
		p, err := serveBacklog(ctx, cfg, senv, backlog, window, uint32(i+2), w)
		if err != nil {
			return nil, err
		}
		problems = append(problems, p...)
	}
	return problems, nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// serveBacklog starts serve against senv's paused API, fills it with backlog
// webhooks and reports its memory idle, while filling and holding them.
// window, if set, is STREAM_DUPLICATE_WINDOW: a short one stands for a backlog
// gathered over longer than the default 10 minutes, whose message IDs the
// server no longer remembers.
func serveBacklog(ctx context.Context, cfg config, senv benchEnv, backlog int, window string, run uint32, w io.Writer) ([]string, error) {
	var problems []string
	t := &target{name: "serve (memory)", sync: "1s"}
	what := "default STREAM_DUPLICATE_WINDOW (2m): every message ID remembered"
	if window != "" {
		t.env = []string{"STREAM_DUPLICATE_WINDOW=" + window}
		what = "STREAM_DUPLICATE_WINDOW=" + window + ": as a backlog gathered over more than the default 2 minutes"
	}
	p, err := start(ctx, senv, t, filepath.Join(senv.tmp, fmt.Sprintf("memory-serve-%d", run)))
	if err != nil {
		return nil, err
	}
	defer p.kill()
	if err := p.waitReady(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("serve: %w\n%s", err, p.logTail())
	}
	pid := p.cmd.Process.Pid
	idle := idleMem(ctx, pid, 2*time.Second)
	nc, err := nats.Connect(p.natsURL)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	wh := loadgen.Webhooks{Host: p.addr, APIKey: senv.apiKey, Run: 0xee<<24 | run<<16}
	s := sampleMem(pid)
	fill := time.Now()
	var accepted, failed int
	var next uint64
	for accepted < backlog && ctx.Err() == nil {
		res, err := loadgen.Run(ctx, loadgen.Options{Addr: p.addr, Request: wh.Append, Conns: cfg.conns, Duration: time.Second, First: next})
		if err != nil {
			s.end()
			return nil, err
		}
		next, accepted, failed = res.Next, accepted+res.OK-res.Duplicates, failed+res.Failed()
	}
	fillTime := time.Since(fill)
	_, fillPeak := s.end()
	// Holding the backlog: nothing arrives, the enricher is paused. The
	// first seconds, then the last ones of -hold.
	hold := cfg.hold
	early := idleMem(ctx, pid, min(hold, 5*time.Second))
	if hold > 10*time.Second {
		select {
		case <-time.After(hold - 10*time.Second):
		case <-ctx.Done():
		}
	}
	held := early
	if hold > 5*time.Second {
		held = idleMem(ctx, pid, 5*time.Second)
	}
	_, hwm, _ := procMem(pid)
	heap := goHeap(ctx, p.addr)
	n, err := streamMsgs(ctx, js, streams.Webhooks, streams.Results)
	if err != nil {
		return nil, err
	}
	if failed > 0 {
		problems = append(problems, fmt.Sprintf("memory, serve: %d requests not answered 202", failed))
	}
	if n[0] != accepted || n[1] != 0 {
		problems = append(problems, fmt.Sprintf("memory, serve: the webhooks stream holds %d messages for %d accepted webhooks, results %d (want 0: the API is paused)", n[0], accepted, n[1]))
	}
	if err := p.stop(30 * time.Second); err != nil {
		problems = append(problems, "memory, serve: "+err.Error())
	}
	fmt.Fprintf(w, "  serve (embedded NATS, NATS_EMBEDDED_SYNC=1s), VerifEye API refusing every call (the enricher pauses),\n    %s; %d webhooks accepted in %.0f s:\n", what, accepted, fillTime.Seconds())
	fmt.Fprintf(w, "    idle %s; while filling: max %s; holding the backlog: %s in the first 5 s, %s at %v, %+.1f MB over idle (target < +%s: %s); VmHWM %s\n",
		mb(idle), mb(fillPeak), mb(early), mb(held), hold, float64(held-idle)/(1<<20), mb(memBacklogDelta), verdict(held-idle < memBacklogDelta), mb(hwm))
	if heap != "" {
		fmt.Fprintf(w, "    Go heap at the end: %s\n", heap)
	}
	return problems, nil
}

// goHeap summarises the Go runtime's memory of the process at addr, from its
// /metrics: the live heap against what the runtime holds from the system.
func goHeap(ctx context.Context, addr string) string {
	v := map[string]float64{}
	for _, name := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes", "go_memstats_next_gc_bytes", "go_memstats_sys_bytes"} {
		h, err := scrapeGauge(ctx, addr, name)
		if err != nil {
			return ""
		}
		v[name] = h
	}
	m := func(x float64) string { return fmt.Sprintf("%.1f MB", x/(1<<20)) }
	return fmt.Sprintf("in use %s, idle not yet returned to the system %s, next GC at %s, runtime total from the system %s",
		m(v["go_memstats_heap_inuse_bytes"]), m(v["go_memstats_heap_idle_bytes"]-v["go_memstats_heap_released_bytes"]),
		m(v["go_memstats_next_gc_bytes"]), m(v["go_memstats_sys_bytes"]))
}
