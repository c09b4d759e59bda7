package outcome

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Handler handles one outcome. Its return value decides the message's fate:
//
//   - nil: the message is acknowledged and not delivered to this consumer again.
//   - an error: the message is negatively acknowledged with a delay from the
//     backoff (WithBackoff) and delivered again later, to this or another
//     replica of the service. Nothing is held in memory meanwhile.
//   - Permanent(err): the message is terminated: never delivered to this
//     consumer again. Use it for outcomes the service can never handle.
//
// A panic is recovered and counts as an error. ctx is not cancelled when
// Consume's ctx ends (the handler may finish its work); it carries the
// message's W3C trace context (TraceParent, TraceState).
type Handler func(ctx context.Context, ev *Event) error

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent marks err as one that retrying cannot fix: a Handler returning it
// terminates the message. Permanent(nil) is nil. errors.Is and errors.As see
// through it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err was made by Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// DeliveryError is what Consume reports (WithErrorFunc) about a message it did
// not acknowledge: the handler's error (retried, or Terminated after Permanent
// or WithMaxAttempts), or an undecodable message (Err wraps ErrUndecodable;
// always Terminated).
type DeliveryError struct {
	Subject   string
	Sequence  uint64 // stream sequence
	Attempt   uint64 // delivery count, from 1
	SessionID string // empty when undecodable
	// Terminated is true when the message will not be delivered again; else
	// it is retried after RetryIn.
	Terminated bool
	RetryIn    time.Duration
	Err        error
}

func (e *DeliveryError) Error() string {
	action := "terminated"
	if !e.Terminated {
		action = "retry in " + e.RetryIn.String()
	}
	return fmt.Sprintf("outcome: %s seq %d attempt %d (%s): %v", e.Subject, e.Sequence, e.Attempt, action, e.Err)
}

func (e *DeliveryError) Unwrap() error { return e.Err }

// Option configures Consume and Expect. Options that do not apply to a
// function are ignored by it.
type Option func(*options)

type options struct {
	prefix      string
	sources     []string
	outcomes    []string
	concurrency int
	backoff     func(attempt int) time.Duration
	maxAttempts int
	ackWait     time.Duration
	onError     func(error)
	config      func(*jetstream.ConsumerConfig)
}

func newOptions(opts []Option) options {
	o := options{prefix: DefaultPrefix, concurrency: 1, backoff: ExponentialBackoff(time.Second, 5*time.Minute), ackWait: 30 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithPrefix sets the bridge's SUBJECT_PREFIX (default "verifeye").
func WithPrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

// WithSource restricts the consumer to outcomes of these webhook sources.
func WithSource(sources ...string) Option {
	return func(o *options) { o.sources = append(o.sources, sources...) }
}

// WithOutcome restricts the consumer to these outcomes (passed, failed, …).
func WithOutcome(outcomes ...string) Option {
	return func(o *options) { o.outcomes = append(o.outcomes, outcomes...) }
}

// WithConcurrency sets how many handlers run at once (default 1). It is also
// the most messages this process holds: Consume fetches only for idle workers.
func WithConcurrency(n int) Option { return func(o *options) { o.concurrency = max(n, 1) } }

// WithBackoff sets the delay before a message whose handler failed is
// delivered again, from its attempt number (1 for the first delivery). The
// default is ExponentialBackoff(time.Second, 5*time.Minute).
func WithBackoff(f func(attempt int) time.Duration) Option {
	return func(o *options) { o.backoff = f }
}

// WithMaxAttempts terminates (and reports) a message whose handler failed n
// times; 0, the default, retries forever.
func WithMaxAttempts(n int) Option { return func(o *options) { o.maxAttempts = n } }

// WithAckWait sets the consumer's ack wait (default 30s): how long the server
// waits before redelivering a message whose handler's process died. Consume
// extends it while the handler runs.
func WithAckWait(d time.Duration) Option { return func(o *options) { o.ackWait = d } }

// WithErrorFunc sets a function Consume calls with a *DeliveryError for every
// message it did not acknowledge. It must be safe for concurrent use; the
// default does nothing. Hand it to log/slog, for example:
//
//	outcome.WithErrorFunc(func(err error) { logger.Warn("outcome", "err", err) })
func WithErrorFunc(f func(error)) Option { return func(o *options) { o.onError = f } }

// WithConsumerConfig lets f adjust the durable consumer's configuration
// (for example DeliverPolicy for a new consumer) before Consume creates or
// updates it.
func WithConsumerConfig(f func(*jetstream.ConsumerConfig)) Option {
	return func(o *options) { o.config = f }
}

// ExponentialBackoff returns a backoff of initial·2^(attempt-1), capped at
// max, with ±20% jitter so retries of many messages spread out.
func ExponentialBackoff(initial, max time.Duration) func(attempt int) time.Duration {
	return func(attempt int) time.Duration {
		d := initial
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		d = min(d, max)
		return d - d/5 + time.Duration(rand.Int64N(int64(d/5)*2+1))
	}
}

// ConsumerConfig returns the configuration Consume gives the durable consumer
// named durable under opts.
func ConsumerConfig(durable string, opts ...Option) jetstream.ConsumerConfig {
	o := newOptions(opts)
	return o.consumerConfig(durable)
}

func (o *options) consumerConfig(durable string) jetstream.ConsumerConfig {
	sources, outcomes := o.sources, o.outcomes
	if len(sources) == 0 {
		sources = []string{""}
	}
	if len(outcomes) == 0 {
		outcomes = []string{""}
	}
	var filters []string
	for _, s := range sources {
		for _, out := range outcomes {
			filters = append(filters, ResultSubject(o.prefix, s, out))
		}
	}
	cfg := jetstream.ConsumerConfig{
		Durable:        durable,
		Description:    "verifeye outcomes (outcome.Consume)",
		FilterSubjects: filters,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        o.ackWait,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		MaxDeliver:     -1,
	}
	if o.config != nil {
		o.config(&cfg)
	}
	return cfg
}

// Consume runs h for every outcome on the durable consumer named durable of
// StreamResults, creating it (or updating it to the options) if needed, until
// ctx ends. Every service uses its own durable name and gets every outcome;
// replicas of one service use the same name and share the outcomes between
// them (and must pass the same filter options).
//
// Up to WithConcurrency handlers run at once, and Consume fetches a message
// only for an idle worker, so no message waits in a local buffer while its
// ack deadline runs out. While a handler runs, Consume tells the server it is
// still in progress. Delivery is at least once: a crash between the handler's
// success and the acknowledgement delivers the outcome again, so handlers must
// be idempotent (the session ID is the key).
//
// Consume returns nil once ctx has ended and the handlers that were running
// have returned; an error if the consumer cannot be created or h is nil.
// Messages fetched but not yet handled when ctx ends are released for
// redelivery at once.
func Consume(ctx context.Context, js jetstream.JetStream, durable string, h Handler, opts ...Option) error {
	if h == nil {
		return errors.New("outcome: consume: nil handler")
	}
	o := newOptions(opts)
	if !ValidPrefix(o.prefix) {
		return fmt.Errorf("outcome: consume: invalid prefix %q", o.prefix)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, StreamResults, o.consumerConfig(durable))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("outcome: consume: consumer %s on %s: %w", durable, StreamResults, err)
	}
	ackWait := cons.CachedInfo().Config.AckWait
	if ackWait <= 0 {
		ackWait = 30 * time.Second
	}
	r := &runner{h: h, o: &o, progress: newProgress(o.concurrency), handlerCtx: context.WithoutCancel(ctx)}

	// idle counts the workers with nothing to do. The fetcher asks the server
	// for exactly that many messages and subtracts them, so this process never
	// holds more messages than WithConcurrency. Like the library's own
	// Consume, it asks again when a quarter of the workers are idle (or when no
	// request is outstanding), so requests carry batches, not single messages,
	// and workers wake the fetcher only then.
	threshold := int64(max(1, o.concurrency/4))
	var idle, outstanding atomic.Int64
	idle.Store(int64(o.concurrency))
	wake := make(chan struct{}, 1)
	signal := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	release := func(k int64) {
		if idle.Add(k) >= threshold || outstanding.Load() == 0 {
			signal()
		}
	}
	// work never blocks a sender: a message is fetched only for an idle
	// worker. A fixed pool of workers, each with its own progress slot.
	work := make(chan delivery, o.concurrency)
	var workers, wg sync.WaitGroup
	for i := range o.concurrency {
		workers.Go(func() {
			s := &r.progress.slots[i]
			for d := range work {
				r.handle(d, s)
				release(1)
			}
		})
	}
	// Progress goes on while handlers run after ctx ended.
	progressCtx, stopProgress := context.WithCancel(context.WithoutCancel(ctx))
	go r.progress.run(progressCtx, ackWait/6)
	defer func() {
		wg.Wait() // every request has ended: nothing more is sent on work
		close(work)
		workers.Wait()
		stopProgress()
	}()
	// failed is set when a request ended with an error and no message: the
	// connection is away, or someone deleted the consumer.
	var failed atomic.Bool
	for {
		if failed.Swap(false) {
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return nil
			}
			// Bind again, or create the consumer again if it was deleted.
			if c, err := js.CreateOrUpdateConsumer(ctx, StreamResults, o.consumerConfig(durable)); err == nil {
				cons = c
			}
		}
		n := idle.Load()
		if n < threshold && (n == 0 || outstanding.Load() > 0) {
			select {
			case <-wake:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		batch, cancel, err := fetch(ctx, cons, int(n))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failed.Store(true) // try again shortly
			continue
		}
		idle.Add(-n)
		outstanding.Add(1)
		// The batch streams its messages as they arrive: hand each to a
		// worker at once, and give back what it did not use.
		wg.Go(func() {
			defer cancel()
			var got int64
			for msg := range batch.Messages() {
				got++
				if ctx.Err() != nil {
					_ = msg.Nak() // redeliver at once, elsewhere
					release(1)
					continue
				}
				ev, err := Decode(msg.Data())
				if err != nil {
					_ = msg.Term()
					r.report(msg, &DeliveryError{Terminated: true, Err: err})
					release(1)
					continue
				}
				work <- delivery{msg, ev}
			}
			if got == 0 && batch.Error() != nil && ctx.Err() == nil {
				failed.Store(true)
			}
			outstanding.Add(-1)
			release(n - got)
			signal()
		})
	}
}

// fetch asks for n messages with a request that lasts at most 30 s (the
// server then sends heartbeats) or until ctx ends; cancel ends it sooner.
func fetch(ctx context.Context, cons jetstream.Consumer, n int) (jetstream.MessageBatch, context.CancelFunc, error) {
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	batch, err := cons.Fetch(n, jetstream.FetchContext(fctx))
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return batch, cancel, nil
}

type delivery struct {
	msg jetstream.Msg
	ev  *Event
}

type runner struct {
	h          Handler
	o          *options
	progress   *progress
	handlerCtx context.Context
}

// progress tells the server that the workers' messages are still being
// handled. One goroutine ticks every sixth of the ack wait and sends
// InProgress for each message that was already running at the tick before,
// so a message hears from its worker within a third of the ack wait, then
// every sixth; a quick handler costs no timer.
type progress struct {
	tick  atomic.Uint64
	slots []slot
}

// slot is one worker's message, nil while the worker is idle.
type slot struct {
	mu    sync.Mutex
	msg   jetstream.Msg
	since uint64 // the tick at which msg started
}

func newProgress(workers int) *progress {
	return &progress{slots: make([]slot, workers)}
}

// run ticks until ctx ends.
func (p *progress) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		now := p.tick.Add(1)
		for i := range p.slots {
			s := &p.slots[i]
			s.mu.Lock()
			if s.msg != nil && s.since < now-1 {
				_ = s.msg.InProgress()
			}
			s.mu.Unlock()
		}
	}
}

func (s *slot) start(p *progress, msg jetstream.Msg) {
	s.mu.Lock()
	s.msg, s.since = msg, p.tick.Load()
	s.mu.Unlock()
}

// done returns once no InProgress for the message can follow.
func (s *slot) done() {
	s.mu.Lock()
	s.msg = nil
	s.mu.Unlock()
}

// handle runs the handler for one message and settles the message.
func (r *runner) handle(d delivery, s *slot) {
	msg, ev := d.msg, d.ev
	ctx := r.handlerCtx
	if h := msg.Headers(); h != nil {
		if tp := h.Get(HeaderTraceparent); tp != "" {
			ctx = context.WithValue(ctx, traceKey{}, trace{parent: tp, state: h.Get(HeaderTracestate)})
		}
	}
	s.start(r.progress, msg)
	err := r.call(ctx, ev)
	s.done()
	if err == nil {
		_ = msg.Ack()
		return
	}
	var attempt uint64 = 1
	if md, mdErr := msg.Metadata(); mdErr == nil {
		attempt = md.NumDelivered
	}
	if IsPermanent(err) || (r.o.maxAttempts > 0 && attempt >= uint64(r.o.maxAttempts)) {
		_ = msg.Term()
		r.report(msg, &DeliveryError{SessionID: ev.SessionID, Terminated: true, Err: err})
		return
	}
	delay := r.o.backoff(int(min(attempt, 1<<20)))
	_ = msg.NakWithDelay(delay)
	r.report(msg, &DeliveryError{SessionID: ev.SessionID, RetryIn: delay, Err: err})
}

func (r *runner) call(ctx context.Context, ev *Event) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("outcome: handler panic: %v", p)
		}
	}()
	return r.h(ctx, ev)
}

// report completes err with the message's place in the stream and hands it
// to the error function.
func (r *runner) report(msg jetstream.Msg, err *DeliveryError) {
	if r.o.onError == nil {
		return
	}
	err.Subject = msg.Subject()
	if md, mdErr := msg.Metadata(); mdErr == nil {
		err.Sequence, err.Attempt = md.Sequence.Stream, md.NumDelivered
	}
	r.o.onError(err)
}

type traceKey struct{}

type trace struct{ parent, state string }

// TraceParent returns the W3C traceparent of the outcome message a Handler's
// ctx belongs to, or "" when the message carries none. With OpenTelemetry,
// continue the trace with
//
//	carrier := propagation.MapCarrier{"traceparent": outcome.TraceParent(ctx), "tracestate": outcome.TraceState(ctx)}
//	ctx = propagation.TraceContext{}.Extract(ctx, carrier)
func TraceParent(ctx context.Context) string {
	t, _ := ctx.Value(traceKey{}).(trace)
	return t.parent
}

// TraceState returns the W3C tracestate that came with TraceParent, or "".
func TraceState(ctx context.Context) string {
	t, _ := ctx.Value(traceKey{}).(trace)
	return t.state
}
