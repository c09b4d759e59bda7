package outcome_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/outcome"
	"github.com/realeyes/verifeye-bridge/outcome/outcometest"
)

// setup starts a JetStream server with the results stream.
func setup(t *testing.T) jetstream.JetStream {
	t.Helper()
	js := natstest.Start(t).JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := outcometest.CreateStream(ctx, js, ""); err != nil {
		t.Fatal(err)
	}
	return js
}

func sessionID(i int) string { return fmt.Sprintf("3f2a9c1e-0000-4000-8000-%012d", i) }

// publishN publishes n outcomes (passed, failed, not executed in turn) and
// returns their session IDs.
func publishN(t *testing.T, js jetstream.JetStream, from, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ids []string
	for i := from; i < from+n; i++ {
		id := sessionID(i)
		ev := [](func(string, string) *outcome.Event){outcometest.Passed, outcometest.Failed, outcometest.NotExecuted}[i%3]("default", id)
		if err := outcometest.Publish(ctx, js, ev); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// consumer runs Consume in the background until stop, which returns its error.
func consumer(t *testing.T, js jetstream.JetStream, durable string, h outcome.Handler, opts ...outcome.Option) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- outcome.Consume(ctx, js, durable, h, opts...) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("Consume did not return within 30s of cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func info(t *testing.T, js jetstream.JetStream, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, outcome.StreamResults, durable)
	if err != nil {
		t.Fatalf("consumer %s: %v", durable, err)
	}
	in, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("consumer %s info: %v", durable, err)
	}
	return in
}

// waitSettled waits until durable has acknowledged or terminated everything.
func waitSettled(t *testing.T, js jetstream.JetStream, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	var in *jetstream.ConsumerInfo
	natstest.WaitFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, outcome.StreamResults, durable)
		if err != nil {
			return err // not created yet
		}
		if in, err = c.Info(ctx); err != nil {
			return err
		}
		if in.NumPending != 0 || in.NumAckPending != 0 {
			return fmt.Errorf("consumer %s: %d pending, %d awaiting ack", durable, in.NumPending, in.NumAckPending)
		}
		return nil
	})
	return in
}

// counter counts handler calls per session.
type counter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *counter) add(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = make(map[string]int)
	}
	c.calls[id]++
	return c.calls[id]
}

func (c *counter) get(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[id]
}

func (c *counter) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.calls)
}

func TestConsumeEveryOutcomeOnce(t *testing.T) {
	js := setup(t)
	ids := publishN(t, js, 0, 60)
	// One more with a trace context, as the enricher writes it.
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	traced := sessionID(1000)
	m, err := outcometest.Msg("", outcometest.Passed("shop", traced))
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Set(outcome.HeaderTraceparent, tp)
	m.Header.Set(outcome.HeaderTracestate, "vendor=1")
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, traced)

	var c counter
	var gotTP, gotTS atomic.Value
	stop := consumer(t, js, "audit", func(ctx context.Context, ev *outcome.Event) error {
		c.add(ev.SessionID)
		if ev.SessionID == traced {
			gotTP.Store(outcome.TraceParent(ctx))
			gotTS.Store(outcome.TraceState(ctx))
		}
		return nil
	}, outcome.WithConcurrency(4))
	in := waitSettled(t, js, "audit")
	if err := stop(); err != nil {
		t.Errorf("Consume() = %v, want nil after cancel", err)
	}
	for _, id := range ids {
		if n := c.get(id); n != 1 {
			t.Errorf("session %s handled %d times, want 1", id, n)
		}
	}
	if in.NumRedelivered != 0 || in.AckFloor.Stream != uint64(len(ids)) {
		t.Errorf("consumer: %d redelivered, ack floor %d; want 0 and %d", in.NumRedelivered, in.AckFloor.Stream, len(ids))
	}
	if gotTP.Load() != tp || gotTS.Load() != "vendor=1" {
		t.Errorf("TraceParent, TraceState = %v, %v; want %s, vendor=1", gotTP.Load(), gotTS.Load(), tp)
	}
}

func TestConsumeRetriesErrorWithBackoff(t *testing.T) {
	js := setup(t)
	ids := publishN(t, js, 0, 3)
	flaky := ids[1]
	var c counter
	var reports []*outcome.DeliveryError
	var mu sync.Mutex
	var attempts []int
	stop := consumer(t, js, "kyc", func(ctx context.Context, ev *outcome.Event) error {
		if n := c.add(ev.SessionID); ev.SessionID == flaky && n < 3 {
			return fmt.Errorf("database down (%d)", n)
		}
		return nil
	}, outcome.WithConcurrency(2),
		outcome.WithBackoff(func(attempt int) time.Duration {
			mu.Lock()
			attempts = append(attempts, attempt)
			mu.Unlock()
			return 10 * time.Millisecond
		}),
		outcome.WithErrorFunc(func(err error) {
			var de *outcome.DeliveryError
			if errors.As(err, &de) {
				mu.Lock()
				reports = append(reports, de)
				mu.Unlock()
			}
		}))
	natstest.WaitFor(t, 20*time.Second, func() error {
		if n := c.get(flaky); n < 3 {
			return fmt.Errorf("flaky session handled %d times", n)
		}
		return nil
	})
	waitSettled(t, js, "kyc")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := c.get(flaky); n != 3 {
		t.Errorf("flaky session handled %d times, want 3 (two errors, then success)", n)
	}
	for _, id := range []string{ids[0], ids[2]} {
		if n := c.get(id); n != 1 {
			t.Errorf("session %s handled %d times, want 1", id, n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[1 2]" {
		t.Errorf("backoff called with attempts %v, want [1 2]", attempts)
	}
	if len(reports) != 2 || reports[0].Terminated || reports[0].SessionID != flaky || reports[1].Attempt != 2 {
		t.Errorf("reports = %+v, want two retries of %s", reports, flaky)
	}
}

func TestConsumePermanentStopsRedelivery(t *testing.T) {
	js := setup(t)
	ids := publishN(t, js, 0, 2)
	var c counter
	var terminated atomic.Int32
	stop := consumer(t, js, "kyc", func(ctx context.Context, ev *outcome.Event) error {
		c.add(ev.SessionID)
		if ev.SessionID == ids[0] {
			return outcome.Permanent(errors.New("unknown customer"))
		}
		return nil
	}, outcome.WithAckWait(time.Second), outcome.WithBackoff(func(int) time.Duration { return 0 }),
		outcome.WithErrorFunc(func(err error) {
			var de *outcome.DeliveryError
			if errors.As(err, &de) && de.Terminated && outcome.IsPermanent(de.Err) {
				terminated.Add(1)
			}
		}))
	in := waitSettled(t, js, "kyc")
	// A later outcome is handled after the terminated one had every chance
	// to come back (its ack wait is 1s).
	deadline := time.Now().Add(2 * time.Second)
	natstest.WaitFor(t, 10*time.Second, func() error {
		if time.Now().Before(deadline) {
			return errors.New("waiting past the ack wait")
		}
		return nil
	})
	later := publishN(t, js, 10, 1)[0]
	natstest.WaitFor(t, 10*time.Second, func() error {
		if c.get(later) == 0 {
			return errors.New("later outcome not handled")
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := c.get(ids[0]); n != 1 || terminated.Load() != 1 {
		t.Errorf("permanently failing session handled %d times, reported terminated %d times; want 1, 1", n, terminated.Load())
	}
	if in.NumRedelivered != 0 {
		t.Errorf("consumer redelivered %d, want 0", in.NumRedelivered)
	}
}

func TestConsumeMaxAttempts(t *testing.T) {
	js := setup(t)
	id := publishN(t, js, 0, 1)[0]
	var c counter
	stop := consumer(t, js, "kyc", func(ctx context.Context, ev *outcome.Event) error {
		c.add(ev.SessionID)
		return errors.New("always")
	}, outcome.WithMaxAttempts(3), outcome.WithBackoff(func(int) time.Duration { return 5 * time.Millisecond }))
	waitSettled(t, js, "kyc")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := c.get(id); n != 3 {
		t.Errorf("session handled %d times, want 3 (WithMaxAttempts(3))", n)
	}
}

func TestConsumeUndecodableTerminatedAndReported(t *testing.T) {
	js := setup(t)
	ctx := context.Background()
	for _, body := range []string{`<html>not an event</html>`, `{"specversion":"1.0","type":"something.else","id":"x","subject":"y","time":"2026-01-01T00:00:00Z","data":{}}`} {
		if _, err := js.Publish(ctx, outcome.ResultSubject(outcome.DefaultPrefix, "default", "passed"), []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	good := publishN(t, js, 0, 1)[0]
	var c counter
	var mu sync.Mutex
	var bad []*outcome.DeliveryError
	stop := consumer(t, js, "audit", func(ctx context.Context, ev *outcome.Event) error {
		c.add(ev.SessionID)
		return nil
	}, outcome.WithErrorFunc(func(err error) {
		var de *outcome.DeliveryError
		if errors.As(err, &de) && errors.Is(err, outcome.ErrUndecodable) && de.Terminated {
			mu.Lock()
			bad = append(bad, de)
			mu.Unlock()
		}
	}))
	in := waitSettled(t, js, "audit")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if c.len() != 1 || c.get(good) != 1 {
		t.Errorf("handler calls = %v, want only %s once", c.calls, good)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bad) != 2 || bad[0].Sequence != 1 || bad[1].Sequence != 2 {
		t.Errorf("undecodable reports = %+v, want sequences 1 and 2", bad)
	}
	if in.NumRedelivered != 0 {
		t.Errorf("consumer redelivered %d, want 0", in.NumRedelivered)
	}
}

func TestConsumeBoundedConcurrencyNoPrefetch(t *testing.T) {
	js := setup(t)
	const n, limit = 20, 3
	publishN(t, js, 0, n)
	gate := make(chan struct{})
	var active, peak, handled atomic.Int32
	stop := consumer(t, js, "slow", func(ctx context.Context, ev *outcome.Event) error {
		a := active.Add(1)
		for p := peak.Load(); a > p && !peak.CompareAndSwap(p, a); p = peak.Load() {
		}
		<-gate
		active.Add(-1)
		handled.Add(1)
		return nil
	}, outcome.WithConcurrency(limit))
	natstest.WaitFor(t, 10*time.Second, func() error {
		if a := active.Load(); a != limit {
			return fmt.Errorf("%d handlers running, want %d", a, limit)
		}
		return nil
	})
	// Every worker is busy: the server has handed out exactly that many
	// messages; the rest wait in the stream, not in this process.
	in := info(t, js, "slow")
	if in.NumAckPending != limit || in.NumPending != n-limit {
		t.Errorf("with %d busy workers: %d awaiting ack, %d pending; want %d and %d", limit, in.NumAckPending, in.NumPending, limit, n-limit)
	}
	close(gate)
	waitSettled(t, js, "slow")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p > limit || handled.Load() != n {
		t.Errorf("peak concurrency %d, handled %d; want at most %d and %d", p, handled.Load(), limit, n)
	}
}

func TestConsumeKeepsSlowHandlerAlive(t *testing.T) {
	js := setup(t)
	id := publishN(t, js, 0, 1)[0]
	var c counter
	// A message hears from its worker within a third of the ack wait, so a
	// loaded machine may delay a tick by more than a second without causing
	// a redelivery.
	stop := consumer(t, js, "slow", func(ctx context.Context, ev *outcome.Event) error {
		c.add(ev.SessionID)
		select { // slow work: two and a half times the ack wait
		case <-time.After(5 * time.Second):
		case <-ctx.Done():
		}
		return nil
	}, outcome.WithAckWait(2*time.Second), outcome.WithConcurrency(2))
	in := waitSettled(t, js, "slow")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := c.get(id); n != 1 || in.NumRedelivered != 0 {
		t.Errorf("slow session handled %d times, %d redelivered; want 1 and 0", n, in.NumRedelivered)
	}
}

func TestConsumeCancelFinishesInFlight(t *testing.T) {
	js := setup(t)
	publishN(t, js, 0, 1)
	started := make(chan struct{})
	release := make(chan struct{})
	var finished atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- outcome.Consume(ctx, js, "kyc", func(hctx context.Context, ev *outcome.Event) error {
			close(started)
			<-release
			if hctx.Err() != nil {
				return hctx.Err()
			}
			finished.Store(true)
			return nil
		})
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Consume() returned %v while a handler was running", err)
	default:
	}
	close(release)
	if err := <-done; err != nil {
		t.Errorf("Consume() = %v, want nil", err)
	}
	if !finished.Load() {
		t.Error("handler did not finish with a live context")
	}
	in := waitSettled(t, js, "kyc")
	if in.AckFloor.Stream != 1 {
		t.Errorf("ack floor %d after cancel, want 1: the in-flight outcome was acknowledged", in.AckFloor.Stream)
	}
}

func TestConsumeFanOutTwoDurables(t *testing.T) {
	js := setup(t)
	ids := publishN(t, js, 0, 30)
	var kyc, audit counter
	h := func(c *counter) outcome.Handler {
		return func(ctx context.Context, ev *outcome.Event) error { c.add(ev.SessionID); return nil }
	}
	stopK := consumer(t, js, "kyc", h(&kyc), outcome.WithConcurrency(3))
	stopA := consumer(t, js, "audit", h(&audit), outcome.WithConcurrency(2))
	more := publishN(t, js, 100, 30) // while both run
	waitSettled(t, js, "kyc")
	waitSettled(t, js, "audit")
	if err := errors.Join(stopK(), stopA()); err != nil {
		t.Fatal(err)
	}
	for _, id := range append(ids, more...) {
		if kyc.get(id) != 1 || audit.get(id) != 1 {
			t.Errorf("session %s: kyc %d, audit %d deliveries; want 1 each", id, kyc.get(id), audit.get(id))
		}
	}
}

func TestConsumeFilters(t *testing.T) {
	js := setup(t)
	ctx := context.Background()
	for i, ev := range []*outcome.Event{
		outcometest.Passed("shop", sessionID(1)), outcometest.Failed("shop", sessionID(2)),
		outcometest.Failed("default", sessionID(3)), outcometest.Passed("default", sessionID(4)),
	} {
		if err := outcometest.Publish(ctx, js, ev); err != nil {
			t.Fatal(i, err)
		}
	}
	var c counter
	stop := consumer(t, js, "shop-failed", func(ctx context.Context, ev *outcome.Event) error {
		c.add(ev.SessionID)
		return nil
	}, outcome.WithSource("shop"), outcome.WithOutcome("failed"))
	waitSettled(t, js, "shop-failed")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if c.len() != 1 || c.get(sessionID(2)) != 1 {
		t.Errorf("WithSource(shop), WithOutcome(failed) handled %v, want only %s", c.calls, sessionID(2))
	}
	if got := info(t, js, "shop-failed").Config.FilterSubjects; len(got) != 1 || got[0] != "verifeye.result.shop.failed" {
		t.Errorf("filter subjects = %v", got)
	}
}

func TestConsumeNilHandler(t *testing.T) {
	if err := outcome.Consume(context.Background(), nil, "x", nil); err == nil {
		t.Error("Consume(nil handler) = nil, want an error")
	}
}

func TestConsumeRecreatesDeletedConsumer(t *testing.T) {
	js := setup(t)
	first := publishN(t, js, 0, 2)
	var c counter
	stop := consumer(t, js, "kyc", func(ctx context.Context, ev *outcome.Event) error {
		c.add(ev.SessionID)
		return nil
	}, outcome.WithConcurrency(2))
	waitSettled(t, js, "kyc")
	if err := js.DeleteConsumer(context.Background(), outcome.StreamResults, "kyc"); err != nil {
		t.Fatal(err)
	}
	later := publishN(t, js, 10, 1)[0]
	natstest.WaitFor(t, 20*time.Second, func() error {
		if c.get(later) == 0 {
			return errors.New("outcome published after the consumer was deleted not handled yet")
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The new consumer starts from the beginning of the stream again: the
	// first outcomes come twice, which idempotent handlers absorb.
	if c.get(first[0]) < 1 || c.get(later) != 1 {
		t.Errorf("calls = %v", c.calls)
	}
}

func TestConsumeSurvivesServerRestart(t *testing.T) {
	ns := natstest.Start(t)
	js := ns.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A file-stored stream, so it outlives the restart.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: outcome.StreamResults, Subjects: []string{outcome.ResultsAll(outcome.DefaultPrefix)}}); err != nil {
		t.Fatal(err)
	}
	before := publishN(t, js, 0, 5)
	var c counter
	stop := consumer(t, js, "kyc", func(ctx context.Context, ev *outcome.Event) error {
		c.add(ev.SessionID)
		return nil
	}, outcome.WithConcurrency(2))
	waitSettled(t, js, "kyc")
	ns.Restart()
	var after []string
	natstest.WaitFor(t, 20*time.Second, func() error {
		// The client reconnects by itself; publish once it has.
		if after == nil {
			pctx, pcancel := context.WithTimeout(context.Background(), time.Second)
			defer pcancel()
			ev := outcometest.Passed("default", sessionID(50))
			if err := outcometest.Publish(pctx, js, ev); err != nil {
				return err
			}
			after = []string{ev.SessionID}
		}
		if c.get(after[0]) == 0 {
			return errors.New("outcome published after the restart not handled yet")
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, id := range append(before, after...) {
		if c.get(id) != 1 {
			t.Errorf("session %s handled %d times, want 1", id, c.get(id))
		}
	}
}
