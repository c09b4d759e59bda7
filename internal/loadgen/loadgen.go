// Package loadgen drives HTTP load at the ingest for `make bench`: closed-loop
// over a fixed number of keep-alive connections, or open-loop at a fixed rate,
// recording the latency of every answer. It also reads a process's CPU time from
// /proc, so that cost can be reported per request.
//
// The client is deliberately thin (one net.Conn per connection, requests written
// from a reused buffer, answers parsed with http.ReadResponse): on a small machine
// the load generator shares the CPUs with the server it measures, and every
// microsecond it spends is one the server does not get. Both the server and the
// ceiling it is compared against pay the same tax.
package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure one run. Addr, Duration and Request are required.
type Options struct {
	// Addr is the host:port of the server.
	Addr string
	// Conns is the number of keep-alive connections, which is also the most
	// requests in flight at once; 64 by default.
	Conns int
	// Duration is how long new requests are started; requests in flight at the
	// end are finished and counted.
	Duration time.Duration
	// Rate, when positive, paces requests open-loop at Rate per second: request i
	// is due at start + i/Rate whether or not earlier answers have arrived, and
	// its latency is measured from when it was due, so a stalled server is not
	// hidden by a stalled client (no coordinated omission). Zero runs closed-loop:
	// every connection sends its next request as soon as the previous answer came.
	Rate float64
	// Request appends the seq-th request (a complete HTTP/1.1 request) to dst.
	// seq counts from First and is unique within the run. It is called
	// concurrently.
	Request func(dst []byte, seq uint64) []byte
	// First is the first seq, so that consecutive runs against one server can
	// continue a sequence.
	First uint64
	// WantStatus is the status that counts as a success; 202 by default.
	WantStatus int
	// Timeout bounds one request (write and answer); 10 s by default.
	Timeout time.Duration
}

// Result is what one run measured. Latencies are of successful answers only.
type Result struct {
	// Elapsed is from the first request to the last answer.
	Elapsed time.Duration
	// Sent is the number of requests started.
	Sent int
	// OK is the number of answers with Options.WantStatus.
	OK int
	// Duplicates is the number of OK answers whose body says "duplicate":true.
	Duplicates int
	// Status counts answers with other status codes, by code.
	Status map[int]int
	// Errors is the number of requests that got no answer (connection errors,
	// timeouts); FirstError is the first of them.
	Errors     int
	FirstError error
	// Next is the seq after the last one used.
	Next uint64

	latencies []time.Duration // sorted
}

// Rate returns successful answers per second.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// Percentile returns the latency below which a fraction q (0 < q <= 1) of the
// successful answers fell (nearest rank), or 0 without answers.
func (r *Result) Percentile(q float64) time.Duration {
	n := len(r.latencies)
	if n == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(n))) - 1
	return r.latencies[min(max(i, 0), n-1)]
}

// Failed returns the number of requests that did not get the wanted status.
func (r *Result) Failed() int {
	n := r.Errors
	for _, c := range r.Status {
		n += c
	}
	return n
}

// Run sends load as opts say until opts.Duration has passed or ctx ends, then
// waits for the requests in flight. It returns an error only for bad options;
// failed requests are counted in the Result.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Addr == "" || opts.Request == nil || opts.Duration <= 0 {
		return nil, errors.New("loadgen: Addr, Request and a positive Duration are required")
	}
	if opts.Conns <= 0 {
		opts.Conns = 64
	}
	if opts.WantStatus == 0 {
		opts.WantStatus = http.StatusAccepted
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var seq atomic.Uint64
	seq.Store(opts.First)
	start := time.Now()
	deadline := start.Add(opts.Duration)

	// due hands out the start times of paced requests; nil when closed-loop.
	var due chan time.Time
	var wg sync.WaitGroup
	if opts.Rate > 0 {
		due = make(chan time.Time, min(int(opts.Rate*opts.Duration.Seconds())+1, 1<<20))
		wg.Go(func() { pace(ctx, due, start, deadline, opts.Rate) })
	}

	workers := make([]*worker, opts.Conns)
	for i := range workers {
		w := &worker{opts: &opts, status: map[int]int{}}
		workers[i] = w
		wg.Go(func() {
			defer w.close()
			for {
				var t0 time.Time
				if due != nil {
					var ok bool
					select {
					case t0, ok = <-due:
					case <-ctx.Done():
					}
					if !ok {
						return
					}
				} else {
					if ctx.Err() != nil {
						return
					}
					t0 = time.Now()
					if !t0.Before(deadline) {
						return
					}
				}
				w.one(t0, seq.Add(1)-1)
			}
		})
	}
	wg.Wait()

	res := &Result{Elapsed: time.Since(start), Status: map[int]int{}, Next: seq.Load()}
	for _, w := range workers {
		res.Sent += w.sent
		res.OK += len(w.latencies)
		res.Duplicates += w.duplicates
		res.Errors += w.errors
		if res.FirstError == nil {
			res.FirstError = w.firstErr
		}
		for code, n := range w.status {
			res.Status[code] += n
		}
		res.latencies = append(res.latencies, w.latencies...)
	}
	slices.Sort(res.latencies)
	return res, nil
}

// pace sends each request's due time on due, then closes it. When the workers
// fall behind, due times pile up in the channel and their waiting counts as latency.
func pace(ctx context.Context, due chan<- time.Time, start, deadline time.Time, rate float64) {
	defer close(due)
	interval := time.Duration(float64(time.Second) / rate)
	for i := 0; ; i++ {
		t := start.Add(time.Duration(i) * interval)
		if !t.Before(deadline) {
			return
		}
		if d := time.Until(t); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return
			}
		}
		select {
		case due <- t:
		case <-ctx.Done():
			return
		}
	}
}

// worker owns one keep-alive connection; it is used by one goroutine.
type worker struct {
	opts *Options
	conn net.Conn
	br   *bufio.Reader
	req  []byte
	body bytes.Buffer

	sent       int
	latencies  []time.Duration
	duplicates int
	errors     int
	firstErr   error
	status     map[int]int
}

var duplicateMark = []byte(`"duplicate":true`)

// one sends the request seq, due at t0, and records its answer.
func (w *worker) one(t0 time.Time, seq uint64) {
	w.sent++
	w.req = w.opts.Request(w.req[:0], seq)
	status, err := w.roundTrip()
	if err != nil {
		w.errors++
		if w.firstErr == nil {
			w.firstErr = err
		}
		return
	}
	if status != w.opts.WantStatus {
		w.status[status]++
		return
	}
	w.latencies = append(w.latencies, time.Since(t0))
	if bytes.Contains(w.body.Bytes(), duplicateMark) {
		w.duplicates++
	}
}

func (w *worker) roundTrip() (int, error) {
	if w.conn == nil {
		c, err := net.DialTimeout("tcp", w.opts.Addr, w.opts.Timeout)
		if err != nil {
			return 0, fmt.Errorf("loadgen: dial: %w", err)
		}
		w.conn = c
		if w.br == nil {
			w.br = bufio.NewReaderSize(c, 4096)
		} else {
			w.br.Reset(c)
		}
	}
	_ = w.conn.SetDeadline(time.Now().Add(w.opts.Timeout))
	if _, err := w.conn.Write(w.req); err != nil {
		w.close()
		return 0, fmt.Errorf("loadgen: write: %w", err)
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		w.close()
		return 0, fmt.Errorf("loadgen: read answer: %w", err)
	}
	w.body.Reset()
	_, err = w.body.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		w.close()
		return 0, fmt.Errorf("loadgen: read body: %w", err)
	}
	if resp.Close {
		w.close()
	}
	return resp.StatusCode, nil
}

func (w *worker) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}
