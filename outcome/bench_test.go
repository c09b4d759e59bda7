package outcome_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/outcome"
	"github.com/realeyes/verifeye-bridge/outcome/outcometest"
)

// BenchmarkConsume measures outcomes per second through Consume with a no-op
// handler, against hand-written jetstream Consume loops that decode the event
// and ack each message, all on the same stream in the same run (target ≥ 0.9):
//
//   - ratio: a sequential loop with the library's default buffer
//     (PullMaxMessages 500); at concurrency=500 Consume holds as many;
//   - ratio-same-bound: a sequential loop holding at most concurrency
//     messages (PullMaxMessages(concurrency));
//   - ratio-concurrent: the loop a service writes to run concurrency handlers
//     at once: PullMaxMessages(concurrency), a goroutine per message under a
//     semaphore. It may hold up to twice as many messages as Consume.
//
// With a no-op handler a sequential loop pays no hand-off between goroutines;
// the concurrent loop does the same work as Consume. Each rate is from the
// first message handled to the last, so no side's consumer creation counts.
func BenchmarkConsume(b *testing.B) {
	const n = 10_000
	for _, conc := range []int{64, 500} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			ns := natstest.Start(b)
			js := ns.JetStream()
			ctx := context.Background()
			if err := outcometest.CreateStream(ctx, js, ""); err != nil {
				b.Fatal(err)
			}
			for i := range n {
				m, err := outcometest.Msg("", outcometest.Passed("default", sessionID(i)))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := js.PublishMsgAsync(m); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(30 * time.Second):
				b.Fatal("publish timed out")
			}
			// The machine may be shared: pairs alternate which side runs
			// first, and the medians are reported, so a burst of someone
			// else's load skews one pair, not the figure.
			var libRates, handRates, ratios, boundRatios, concRatios []float64
			round := 0
			for b.Loop() {
				for range 3 {
					round++
					var l, h, hb, hc float64
					hand := func() {
						h = handWritten(b, natstest.JetStreamAt(b, ns.URL()), fmt.Sprintf("hand%d", round), n, 0)
						hb = handWritten(b, natstest.JetStreamAt(b, ns.URL()), fmt.Sprintf("bound%d", round), n, conc)
						hc = handConcurrent(b, natstest.JetStreamAt(b, ns.URL()), fmt.Sprintf("conc%d", round), n, conc)
					}
					lib := func() {
						l = viaConsume(b, natstest.JetStreamAt(b, ns.URL()), fmt.Sprintf("lib%d", round), n, conc)
					}
					if round%2 == 0 {
						hand()
						lib()
					} else {
						lib()
						hand()
					}
					libRates, handRates, ratios = append(libRates, l), append(handRates, h), append(ratios, l/h)
					boundRatios, concRatios = append(boundRatios, l/hb), append(concRatios, l/hc)
				}
			}
			b.ReportMetric(median(libRates), "outcomes/s")
			b.ReportMetric(median(handRates), "hand-outcomes/s")
			b.ReportMetric(median(ratios), "ratio")
			// Against a hand-written loop that also holds at most conc
			// messages (PullMaxMessages(conc)): the library's own cost.
			b.ReportMetric(median(boundRatios), "ratio-same-bound")
			b.ReportMetric(median(concRatios), "ratio-concurrent")
		})
	}
}

// viaConsume returns the rate at which Consume handles n outcomes.
func viaConsume(b testing.TB, js jetstream.JetStream, durable string, n, conc int) float64 {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got atomic.Int64
	done := make(chan error, 1)
	var start atomic.Int64 // unix nanoseconds of the first message
	var elapsed time.Duration
	go func() {
		done <- outcome.Consume(ctx, js, durable, func(context.Context, *outcome.Event) error {
			switch got.Add(1) {
			case 1:
				start.Store(time.Now().UnixNano())
			case int64(n):
				elapsed = time.Duration(time.Now().UnixNano() - start.Load())
				cancel()
			}
			return nil
		}, outcome.WithConcurrency(conc))
	}()
	select {
	case err := <-done:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(5 * time.Minute):
		b.Fatal("Consume did not finish")
	}
	return float64(n-1) / elapsed.Seconds()
}

// handEvent is the attributes a handler works with, as a service decodes them.
type handEvent struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Source  string          `json:"source"`
	Subject string          `json:"subject"`
	Time    time.Time       `json:"time"`
	Outcome string          `json:"verifeyeoutcome"`
	Data    json.RawMessage `json:"data"`
}

// handle decodes and acks m as a hand-written service does, and reports
// whether it was acked.
func (ev *handEvent) handle(m jetstream.Msg) bool {
	if err := json.Unmarshal(m.Data(), ev); err != nil {
		_ = m.Term()
		return false
	}
	_ = m.Ack()
	return true
}

// handWritten is what a service writes by hand: the library's Consume with
// explicit acks, decoding each event in the callback; maxMessages > 0 sets
// PullMaxMessages (else the library's default, 500).
func handWritten(b testing.TB, js jetstream.JetStream, durable string, n, maxMessages int) float64 {
	var got int
	var start time.Time
	var opts []jetstream.PullConsumeOpt
	if maxMessages > 0 {
		opts = append(opts, jetstream.PullMaxMessages(maxMessages), boundedExpiry)
	}
	return handLoop(b, js, durable, n, func(finished chan<- time.Duration) jetstream.MessageHandler {
		return func(m jetstream.Msg) {
			var ev handEvent
			if !ev.handle(m) {
				return
			}
			switch got++; got {
			case 1:
				start = time.Now()
			case n:
				finished <- time.Since(start)
			}
		}
	}, opts...)
}

// handConcurrent is what a service writes by hand to run conc handlers at
// once: each message in its own goroutine under a semaphore of conc, and
// PullMaxMessages(conc).
func handConcurrent(b testing.TB, js jetstream.JetStream, durable string, n, conc int) float64 {
	var got, start atomic.Int64
	sem := make(chan struct{}, conc)
	return handLoop(b, js, durable, n, func(finished chan<- time.Duration) jetstream.MessageHandler {
		return func(m jetstream.Msg) {
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				var ev handEvent
				if !ev.handle(m) {
					return
				}
				switch got.Add(1) {
				case 1:
					start.Store(time.Now().UnixNano())
				case int64(n):
					finished <- time.Duration(time.Now().UnixNano() - start.Load())
				}
			}()
		}
	}, jetstream.PullMaxMessages(conc), boundedExpiry)
}

// boundedExpiry is the pull expiry of the hand-written loops with a small
// PullMaxMessages. Now and then such a loop asks for nothing more until its
// pull request expires (30 s by default), with messages left in the stream;
// 3 s bounds that round's stall, and the medians keep it out of the figures.
var boundedExpiry = jetstream.PullExpiry(3 * time.Second)

// handLoop runs a jetstream Consume loop on a new durable with the handler
// from handler, and returns the rate it reports: n-1 messages over the
// duration sent on finished.
func handLoop(b testing.TB, js jetstream.JetStream, durable string, n int, handler func(finished chan<- time.Duration) jetstream.MessageHandler, opts ...jetstream.PullConsumeOpt) float64 {
	ctx := context.Background()
	cons, err := js.CreateOrUpdateConsumer(ctx, outcome.StreamResults, jetstream.ConsumerConfig{
		Durable: durable, FilterSubjects: []string{outcome.ResultsAll(outcome.DefaultPrefix)}, AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		b.Fatal(err)
	}
	finished := make(chan time.Duration, 1)
	cc, err := cons.Consume(handler(finished), opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	select {
	case d := <-finished:
		return float64(n-1) / d.Seconds()
	case <-time.After(5 * time.Minute):
		b.Fatal("hand-written loop did not finish")
	}
	return 0
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
