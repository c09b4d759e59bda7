package main

import (
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/realeyes/verifeye-bridge/internal/loadgen"
)

// naiveTargets returns the plain bridge and `ingest` with default settings,
// each against a NATS server process of its own.
func naiveTargets() (plain, ingest *target) {
	return &target{name: "plain bridge, external NATS", plain: true},
		&target{name: "ingest, external NATS", ingest: true, extNATS: true, spool: "on"}
}

// naivePairs measures the plain bridge and `ingest` (both against a NATS
// server process of their own) n times each, alternating which goes first,
// and prints each pair's ratios and their medians: on a shared machine one
// pair's ratio moves by tens of percent between runs, a median of several
// much less. rate 0 is the closed loop. plain and ingest are the same two
// targets for every call (each run of a target gets a directory of its own).
func naivePairs(ctx context.Context, env benchEnv, cfg config, plain, ingest *target, rate float64, w io.Writer) ([]string, error) {
	n := cfg.pairs
	what := "closed loop"
	if rate > 0 {
		what = fmt.Sprintf("paced at %.0f req/s", rate)
	}
	fmt.Fprintf(w, "\nPairs: the plain bridge and ingest alternated %d times, %s, %d connections, %v each after a %v warm-up\n",
		n, what, cfg.conns, cfg.duration, cfg.warmup)
	printHeader(w)
	var failures []string
	var cpu, thr []float64
	for i := range n {
		order := []*target{plain, ingest}
		if i%2 == 1 {
			order = []*target{ingest, plain}
		}
		got := map[*target]*measurement{}
		for _, t := range order {
			m, err := measure(ctx, env, t, loadgen.Options{Conns: cfg.conns, Duration: cfg.duration, Rate: rate}, cfg.warmup, uint32(100+i))
			if err != nil {
				return failures, fmt.Errorf("%s: %w", t.name, err)
			}
			printRow(w, t, m)
			failures = append(failures, m.problems(t.name)...)
			got[t] = m
		}
		p, g := got[plain], got[ingest]
		if rate > 0 && (!keptUp(p, rate) || !keptUp(g, rate)) {
			fmt.Fprintf(w, "  pair %d: not comparable (%.0f and %.0f req/s answered of %.0f)\n", i+1, g.res.Rate(), p.res.Rate(), rate)
			continue
		}
		c, t := naiveRatios(p, g)
		cpu, thr = append(cpu, c), append(thr, t)
		fmt.Fprintf(w, "  pair %d: ingest / plain CPU/req x%.2f, throughput x%.2f\n", i+1, c, t)
	}
	if len(cpu) > 0 {
		fmt.Fprintf(w, "  ingest / plain over %d pairs: CPU/req median x%.2f (%.2f; target <= 0.75)", len(cpu), median(cpu), cpu)
		if rate == 0 {
			fmt.Fprintf(w, ", throughput median x%.2f (%.2f; target >= 1.2)", median(thr), thr)
		}
		fmt.Fprintln(w)
	}
	return failures, nil
}

// naiveRatios returns ingest's CPU per webhook and throughput as ratios to
// the plain bridge's.
func naiveRatios(plain, ingest *measurement) (cpu, throughput float64) {
	return float64(ingest.cpuPerReq()) / float64(plain.cpuPerReq()), ingest.res.Rate() / plain.res.Rate()
}

// median returns the median of v (the mean of the middle two for an even
// count); v is not modified.
func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
