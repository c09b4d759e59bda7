// Command bench measures the ingest of the built verifeye-bridge binary over
// loopback (`make bench`; docs/performance.md), against a ceiling measured in
// the same run: the same handler, with the same authentication, logging and
// metrics, in a process of the same shape (this binary re-executed with
// -role=ceiling), whose publisher acknowledges at once without any I/O. Every
// figure is printed beside the ceiling's, so a noisy machine moves both.
//
// Phase 1 is closed-loop (every connection sends its next webhook as soon as the
// previous answer arrived): throughput and latency at saturation. The next
// phases are open-loop at fixed rates (-rate, 1000/s by default): latency at a
// steady load, and the cost of NATS_EMBEDDED_SYNC=always (fsync before every
// acknowledgement) against a 1 s sync interval. Each target is a fresh process
// with a fresh DATA_DIR; every request carries a new session ID, so every 202
// is a real publish, and after each run the webhooks stream must hold exactly
// one message per 202, or the command fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/simulator"
	"github.com/realeyes/verifeye-bridge/internal/loadgen"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// config is the command line.
type config struct {
	role     string
	addr     string
	apiKey   string
	logLevel string
	natsURL  string
	dir      string

	bin      string
	duration time.Duration
	warmup   time.Duration
	conns    int
	rates    []float64
	syncs    []string
	keep     bool
	enrich   bool
	spool    bool
	naive    bool
	alone    bool
	memory   string
	backlog  int
	hold     time.Duration
	procs    int
	pairs    int
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	var cfg config
	var syncs, rates string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.bin, "bin", "bin/verifeye-bridge", "the verifeye-bridge binary to measure")
	fs.DurationVar(&cfg.duration, "duration", envDuration("BENCH_DURATION", 10*time.Second), "measured time of each run (env BENCH_DURATION)")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured load before each run")
	fs.IntVar(&cfg.conns, "conns", 64, "keep-alive connections")
	fs.StringVar(&rates, "rate", "1000", "requests per second of the paced (open-loop) phases, comma-separated; empty skips them")
	fs.StringVar(&syncs, "sync", "always,1s", "NATS_EMBEDDED_SYNC settings of serve to measure, comma-separated")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "LOG_LEVEL of the measured processes (info, the default, logs every webhook)")
	fs.BoolVar(&cfg.enrich, "enrich", true, "let serve's enricher work (at VERIFEYE_RATE_LIMIT=50); false makes the fake API refuse the key, which pauses it, so serve's CPU is the ingest's alone")
	fs.BoolVar(&cfg.spool, "spool", true, "also measure `ingest` against an external NATS: SPOOL=off, SPOOL=on, and SPOOL=on with NATS down (answers from the spool alone)")
	fs.BoolVar(&cfg.alone, "alone", true, "also measure serve at NATS_EMBEDDED_SYNC=always with the server syncing each write (NATS_EMBEDDED_GROUP_SYNC=off: atomic batches, and each webhook alone), and ingest with SPOOL=off publishing each webhook alone (INGEST_BATCH=1): the baselines of group commit")
	fs.StringVar(&cfg.memory, "memory", "on", "the memory phase (resident memory of ingest at 1,000 req/s and of serve holding -backlog webhooks with the API paused): on, off, or only")
	fs.IntVar(&cfg.backlog, "backlog", 100_000, "webhooks serve holds in the memory phase")
	fs.DurationVar(&cfg.hold, "hold", 10*time.Second, "how long after the backlog is in the memory phase samples serve holding it (Go collects garbage at least every 2 minutes)")
	fs.IntVar(&cfg.procs, "gomaxprocs", 0, "GOMAXPROCS of the bridge processes measured (ceiling, plain bridge, serve, ingest); 1 is what Go sets in a container limited to one CPU; 0 leaves Go's default")
	fs.IntVar(&cfg.pairs, "pairs", 0, "instead of the phases and the memory phase: measure the plain bridge and ingest alternately this many times (closed loop, then each -rate), and print each pair's ratios and their medians")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (logs and stores)")
	fs.BoolVar(&cfg.naive, "naive", true, "also measure the plain bridge (-role=plain) and `ingest` with default settings, each against a nats-server process of its own with default settings")
	fs.StringVar(&cfg.role, "role", "", "internal: 'ceiling' serves the handler without publishing; 'plain' the plain bridge; 'nats' a nats-server")
	fs.StringVar(&cfg.addr, "addr", "", "internal: listen address of the ceiling")
	fs.StringVar(&cfg.apiKey, "api-key", "", "internal: API key the ceiling checks")
	fs.StringVar(&cfg.natsURL, "nats-url", "", "internal: the NATS server of the plain bridge")
	fs.StringVar(&cfg.dir, "dir", "", "internal: the store directory of the nats-server")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	for s := range strings.SplitSeq(syncs, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.syncs = append(cfg.syncs, s)
		}
	}
	if cfg.procs < 0 {
		fmt.Fprintf(stderr, "bench: -gomaxprocs: %d is negative\n", cfg.procs)
		return 2
	}
	if cfg.pairs < 0 {
		fmt.Fprintf(stderr, "bench: -pairs: %d is negative\n", cfg.pairs)
		return 2
	}
	if cfg.memory != "on" && cfg.memory != "off" && cfg.memory != "only" {
		fmt.Fprintf(stderr, "bench: -memory: %q is not on, off or only\n", cfg.memory)
		return 2
	}
	for r := range strings.SplitSeq(rates, ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		v, err := strconv.ParseFloat(r, 64)
		if err != nil || v <= 0 {
			fmt.Fprintf(stderr, "bench: -rate: %q is not a positive number\n", r)
			return 2
		}
		cfg.rates = append(cfg.rates, v)
	}

	var err error
	switch cfg.role {
	case "ceiling":
		var ln net.Listener
		if ln, err = net.Listen("tcp", cfg.addr); err == nil {
			err = serveCeiling(ctx, ln, cfg.apiKey, cfg.logLevel, os.Stderr)
		}
	case "plain":
		var ln net.Listener
		if ln, err = net.Listen("tcp", cfg.addr); err == nil {
			err = servePlain(ctx, ln, cfg.natsURL, os.Stderr)
		}
	case "nats":
		err = serveNATS(ctx, cfg.dir)
	case "":
		err = orchestrate(ctx, cfg, stdout, stderr)
	default:
		err = fmt.Errorf("unknown -role %q", cfg.role)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// phase is one load shape, run against every target.
type phase struct {
	title string
	rate  float64 // 0: closed loop
}

func orchestrate(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	bin, err := filepath.Abs(cfg.bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("-bin: %w (run `make build` first)", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "verifeye-bench-")
	if err != nil {
		return err
	}
	if cfg.keep {
		fmt.Fprintf(stderr, "bench: keeping %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}

	apiKey := fmt.Sprintf("bench-%016x", rand.Uint64())
	// The enricher in serve needs an API; the simulator answers every session
	// at once. At the default VERIFEYE_RATE_LIMIT (50/s) it is a small, steady
	// background load, as in production.
	sim := simulator.New(apiKey, simulator.Options{})
	defer sim.Close()
	if !cfg.enrich {
		// 401 on every call: the enricher pauses and probes every 30 s.
		sim.SetAPIKey("refuse-" + apiKey)
	}
	api := httptest.NewServer(sim)
	defer api.Close()

	targets := []*target{{name: "ceiling (handler, no publish)", ceiling: true}}
	for _, s := range cfg.syncs {
		targets = append(targets, &target{name: "serve, NATS_EMBEDDED_SYNC=" + s, sync: s})
	}
	if cfg.spool {
		targets = append(targets,
			&target{name: "ingest, SPOOL=off", ingest: true, spool: "off"},
			&target{name: "ingest, SPOOL=on", ingest: true, spool: "on"},
			&target{name: "ingest, SPOOL=on, NATS down", ingest: true, spool: "on", natsDown: true})
	}
	if cfg.naive {
		plain, ingest := naiveTargets()
		targets = append(targets, plain, ingest)
	}
	if cfg.alone {
		targets = append(targets, groupCommitBaselines(targets)...)
	}
	env := benchEnv{bin: bin, self: self, tmp: tmp, apiKey: apiKey, apiURL: api.URL, logLevel: cfg.logLevel, gomaxprocs: cfg.procs}

	printMachine(stdout, cfg, bin)
	phases := []phase{{title: fmt.Sprintf("closed loop, %d keep-alive connections", cfg.conns)}}
	for _, r := range cfg.rates {
		phases = append(phases, phase{title: fmt.Sprintf("open loop, paced at %.0f req/s over up to %d connections (latency from each request's due time)", r, cfg.conns), rate: r})
	}

	var failures []string
	if cfg.memory == "only" {
		phases = nil
	}
	if cfg.pairs > 0 {
		phases = nil
		plain, ingest := naiveTargets()
		for _, r := range append([]float64{0}, cfg.rates...) {
			p, err := naivePairs(ctx, env, cfg, plain, ingest, r, stdout)
			failures = append(failures, p...)
			if err != nil {
				return err
			}
		}
	}
	for i, ph := range phases {
		fmt.Fprintf(stdout, "\nPhase %d: %s, %v per target after a %v warm-up\n", i+1, ph.title, cfg.duration, cfg.warmup)
		printHeader(stdout)
		var all []*measurement
		var disk fsyncStats // the disk's own fsync latency, for the paced sync=always p99
		if ph.rate > 0 {
			if disk, err = fsyncLatency(tmp, min(cfg.duration, 2*time.Second)); err != nil {
				return err
			}
		}
		for _, t := range targets {
			// The disk's own fsync rate, just before: the bound on sync=always,
			// where nats-server fsyncs every stored message in turn.
			fsyncs := 0.0
			if t.sync == "always" && ph.rate == 0 {
				if fsyncs, err = fsyncRate(tmp, min(cfg.duration, 2*time.Second)); err != nil {
					return err
				}
			}
			m, err := measure(ctx, env, t, loadgen.Options{Conns: cfg.conns, Duration: cfg.duration, Rate: ph.rate}, cfg.warmup, uint32(i+1))
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			m.fsyncs = fsyncs
			printRow(stdout, t, m)
			all = append(all, m)
			failures = append(failures, m.problems(t.name)...)
		}
		if ph.rate == 0 {
			printRatios(stdout, targets, all)
		} else {
			printPaced(stdout, targets, all, ph.rate)
			printGroupCommit(stdout, targets, all, ph.rate, disk)
		}
		printSpool(stdout, targets, all, ph.rate)
		printNaive(stdout, targets, all, ph.rate)
	}
	if cfg.memory != "off" && cfg.pairs == 0 {
		p, err := memoryPhase(ctx, cfg, env, cfg.backlog, stdout)
		if err != nil {
			return fmt.Errorf("memory: %w", err)
		}
		failures = append(failures, p...)
	}
	fmt.Fprintf(stdout, "\nLoad average after: %s\n", loadAvg())
	if len(failures) > 0 {
		fmt.Fprintln(stdout, "\nPROBLEMS (the figures above are not valid):")
		for _, f := range failures {
			fmt.Fprintln(stdout, "  "+f)
		}
		return errors.New("the run had problems; see above")
	}
	fmt.Fprintln(stdout, "\nIntegrity: every request was answered 202, none a duplicate, and each serve store held exactly one message per 202.")
	return nil
}

func printMachine(w io.Writer, cfg config, bin string) {
	fmt.Fprintln(w, "verifeye-bridge ingest benchmark (make bench)")
	fmt.Fprintf(w, "Machine: %d CPUs (runtime.NumCPU), %s, %s %s/%s; load average before: %s\n",
		runtime.NumCPU(), cpuModel(), runtime.Version(), runtime.GOOS, runtime.GOARCH, loadAvg())
	enricher := "enricher working against a local fake API at the default VERIFEYE_RATE_LIMIT=50"
	if !cfg.enrich {
		enricher = "enricher paused (the fake API refuses the key)"
	}
	fmt.Fprintf(w, "Binary: %s serve (embedded NATS in-process, DATA_DIR a fresh temp dir on %s,\n", bin, os.TempDir())
	fmt.Fprintf(w, "        %s, LOG_LEVEL=%s to a file); the load generator runs on the same CPUs.\n", enricher, cfg.logLevel)
	if cfg.procs > 0 {
		fmt.Fprintf(w, "GOMAXPROCS=%d for every bridge process measured (ceiling, plain bridge, serve, ingest).\n", cfg.procs)
	}
	if cfg.naive {
		fmt.Fprintln(w, "Plain bridge: echo, json.Unmarshal into a struct, synchronous PublishMsg with Nats-Msg-Id, no auth/logs/metrics/trace;")
		fmt.Fprintln(w, "        it and `ingest` (defaults) each publish to a nats-server process of their own with default settings.")
	}
	fmt.Fprintln(w, "CPU/req: the measured process's user+system CPU (/proc/<pid>/stat) per 202; cores: its CPU time / wall time;")
	fmt.Fprintln(w, "loadgen/req: this process's CPU per 202; outcomes: results the serve process's enricher published meanwhile.")
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func printHeader(w io.Writer) {
	fmt.Fprintf(w, "  %-34s %9s %9s %9s %9s %10s %6s %11s %8s %9s\n",
		"target", "req/s", "p50", "p99", "p99.9", "CPU/req", "cores", "loadgen/req", "not 202", "outcomes")
}

func printRow(w io.Writer, t *target, m *measurement) {
	r := m.res
	outcomes := "-"
	if !t.ceiling && !t.ingest && !t.plain {
		outcomes = strconv.Itoa(m.outcomes)
	}
	fmt.Fprintf(w, "  %-34s %9.0f %9s %9s %9s %10s %6.2f %11s %8d %9s\n",
		t.name, r.Rate(), ms(r.Percentile(0.50)), ms(r.Percentile(0.99)), ms(r.Percentile(0.999)),
		us(m.cpuPerReq()), m.cores(), us(m.genPerReq()), r.Failed(), outcomes)
}

func printRatios(w io.Writer, targets []*target, all []*measurement) {
	ceil := all[0]
	for i := 1; i < len(targets); i++ {
		m := all[i]
		fmt.Fprintf(w, "  %s / ceiling: throughput %.2f (target >= 0.5), CPU/req x%.1f",
			strings.TrimPrefix(targets[i].name, "serve, "), m.res.Rate()/ceil.res.Rate(), float64(m.cpuPerReq())/float64(ceil.cpuPerReq()))
		if m.fsyncs > 0 {
			fmt.Fprintf(w, "\n    (for scale: just before, one writer appending 128 bytes + fsync in the same file system did %.0f fsyncs/s)", m.fsyncs)
		}
		fmt.Fprintln(w)
		printSyncs(w, m)
	}
}

// printSyncs reports serve's group sync during m: syncs, their duration, the
// writes each covered, and how long a write waited for one.
func printSyncs(w io.Writer, m *measurement) {
	if m.syncs.total == 0 {
		return
	}
	fmt.Fprintf(w, "    group sync: %d syncs (%.0f/s), each p50 %s, p99 %s; %.1f waits per sync; wait p50 %s, p99 %s\n",
		m.syncs.total, float64(m.syncs.total)/m.res.Elapsed.Seconds(), ms(m.syncs.quantile(0.5)), ms(m.syncs.quantile(0.99)),
		float64(m.syncWait.total)/float64(m.syncs.total), ms(m.syncWait.quantile(0.5)), ms(m.syncWait.quantile(0.99)))
}

// keptUp reports whether a paced run answered at the offered rate; otherwise
// requests queued in the load generator and its latency is the backlog's.
func keptUp(m *measurement, rate float64) bool { return m.res.Rate() >= 0.99*rate }

// printPaced compares every target with the ceiling, and the first two serve
// targets (sync always, then an interval) with each other, per request.
func printPaced(w io.Writer, targets []*target, all []*measurement, rate float64) {
	ceil := all[0]
	for i := 1; i < len(targets); i++ {
		m := all[i]
		name := strings.TrimPrefix(targets[i].name, "serve, ")
		if !keptUp(m, rate) {
			fmt.Fprintf(w, "  %s did NOT keep up with %.0f req/s: it answered %.0f req/s; the rest queued, so its latency is the backlog's\n", name, rate, m.res.Rate())
			continue
		}
		fmt.Fprintf(w, "  %s vs ceiling, per request: p50 %+.2f ms, p99 %+.2f ms, CPU %+.0f µs\n", name,
			msf(m.res.Percentile(0.5)-ceil.res.Percentile(0.5)), msf(m.res.Percentile(0.99)-ceil.res.Percentile(0.99)),
			usf(m.cpuPerReq()-ceil.cpuPerReq()))
	}
	if len(targets) < 3 || targets[1].sync != "always" || targets[2].sync == "" {
		return
	}
	always, interval := all[1], all[2]
	fmt.Fprintf(w, "  Cost of syncing every write (always vs %s) at %.0f req/s offered, per request: ", targets[2].sync, rate)
	if !keptUp(always, rate) {
		fmt.Fprintf(w, "capacity: always answered only %.0f req/s; CPU %+.0f µs\n", always.res.Rate(), usf(always.cpuPerReq()-interval.cpuPerReq()))
		return
	}
	fmt.Fprintf(w, "p50 %+.2f ms, p99 %+.2f ms, CPU %+.0f µs\n",
		msf(always.res.Percentile(0.5)-interval.res.Percentile(0.5)),
		msf(always.res.Percentile(0.99)-interval.res.Percentile(0.99)),
		usf(always.cpuPerReq()-interval.cpuPerReq()))
}

// printSpool compares ingest with the spool on and off (NATS healthy: the
// fast path must not pay for the spool), and ingest answering from the spool
// alone (NATS down) with serve syncing every write to its embedded store.
func printSpool(w io.Writer, targets []*target, all []*measurement, rate float64) {
	find := func(ok func(*target) bool) *measurement {
		for i, t := range targets {
			if ok(t) {
				return all[i]
			}
		}
		return nil
	}
	off := find(func(t *target) bool { return t.ingest && t.spool == "off" })
	on := find(func(t *target) bool { return t.ingest && t.spool == "on" && !t.natsDown })
	down := find(func(t *target) bool { return t.natsDown })
	always := find(func(t *target) bool { return t.sync == "always" })
	compare := func(what string, a, b *measurement) {
		if a == nil || b == nil {
			return
		}
		fmt.Fprintf(w, "  %s: ", what)
		if rate > 0 && (!keptUp(a, rate) || !keptUp(b, rate)) {
			fmt.Fprintf(w, "not comparable: %.0f and %.0f req/s answered of %.0f offered\n", a.res.Rate(), b.res.Rate(), rate)
			return
		}
		if rate == 0 {
			fmt.Fprintf(w, "throughput x%.2f, ", a.res.Rate()/b.res.Rate())
		}
		fmt.Fprintf(w, "p50 %+.2f ms, p99 %+.2f ms, CPU %+.0f µs per request\n",
			msf(a.res.Percentile(0.5)-b.res.Percentile(0.5)), msf(a.res.Percentile(0.99)-b.res.Percentile(0.99)),
			usf(a.cpuPerReq()-b.cpuPerReq()))
	}
	compare("SPOOL=on vs SPOOL=off, NATS healthy", on, off)
	compare("NATS down (from the spool alone) vs serve NATS_EMBEDDED_SYNC=always", down, always)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", msf(d)) }
func msf(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}
func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", usf(d)) }
func usf(d time.Duration) float64 {
	return float64(d) / float64(time.Microsecond)
}
