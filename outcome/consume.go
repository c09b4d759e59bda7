package outcome

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
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
// the most messages this process holds: Consume asks the server only for as
// many as there are idle workers.
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
// Up to WithConcurrency handlers run at once, and Consume asks the server only
// for messages an idle worker can take at once, so no message waits in a
// local buffer while its ack deadline runs out. While a handler runs, Consume
// tells the server it is still in progress. Delivery is at least once: a crash
// between the handler's success and the acknowledgement delivers the outcome
// again, so handlers must be idempotent (the session ID is the key).
//
// Consume returns nil once ctx has ended and the handlers that were running
// have returned; an error if the consumer cannot be created or h is nil.
// Messages received but not yet handled when ctx ends are released for
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
	nc := js.Conn()
	p := &puller{
		nc:        nc,
		subject:   apiPrefix(js.Options()) + "CONSUMER.MSG.NEXT." + StreamResults + "." + cons.CachedInfo().Name,
		inbox:     nc.NewInbox(),
		threshold: int64(max(1, o.concurrency/4)),
		wake:      make(chan struct{}, 1),
	}
	p.free.Store(int64(o.concurrency))
	// Room for every message the accounting allows, and for stale ones a
	// reset may let through; a full channel would drop a message (it would
	// then come again after the ack wait).
	msgs := make(chan *nats.Msg, 4*o.concurrency+64)
	sub, err := nc.ChanSubscribe(p.inbox, msgs)
	if err != nil {
		return fmt.Errorf("outcome: consume: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
	connected := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(connected)

	r := &runner{h: h, o: &o, handlerCtx: context.WithoutCancel(ctx), inFlight: make([]atomic.Pointer[nats.Msg], o.concurrency)}
	var workers sync.WaitGroup
	for i := range o.concurrency {
		workers.Go(func() { r.work(ctx, p, msgs, &r.inFlight[i]) })
	}
	defer func() {
		// Stop deliveries first: no request is answered any more.
		_ = sub.Unsubscribe()
		workers.Wait()
		for {
			select {
			case msg := <-msgs:
				if p.userMsg(msg) {
					_ = msg.Nak() // redeliver at once, elsewhere
				}
			default:
				return
			}
		}
	}()

	// One ticker for every message in flight: progress for the handlers
	// still running, and a check that an outstanding request is alive (the
	// server sends heartbeats while it waits).
	every := min(ackWait/3, 2*pullHeartbeat)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var seen uint64
	var quiet int
	for {
		if p.failed.Swap(false) {
			p.reset()
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return nil
			}
			// Bind again, or create the consumer again if it was deleted.
			_, _ = js.CreateOrUpdateConsumer(ctx, StreamResults, o.consumerConfig(durable))
		}
		if err := p.request(); err != nil {
			p.failed.Store(true)
			continue
		}
		select {
		case <-p.wake:
		case <-connected:
			// Requests do not survive a reconnect: ask again.
			p.reset()
		case <-tick.C:
			for i := range r.inFlight {
				if msg := r.inFlight[i].Load(); msg != nil {
					_ = msg.InProgress()
				}
			}
			// Nothing at all, not even a heartbeat, for two ticks while
			// requests are outstanding: they are gone.
			if n := p.received.Load(); n != seen || p.outstanding.Load() <= 0 {
				seen, quiet = n, 0
			} else if quiet++; quiet >= 2 {
				quiet = 0
				p.reset()
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// pullExpires and pullHeartbeat shape every pull request: it waits up to
// pullExpires for messages, and the server sends a heartbeat every
// pullHeartbeat meanwhile.
const (
	pullExpires   = 30 * time.Second
	pullHeartbeat = 5 * time.Second
)

// apiPrefix returns the JetStream API prefix js sends its requests to.
func apiPrefix(o jetstream.JetStreamOptions) string {
	switch {
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	}
	return jetstream.DefaultAPIPrefix
}

// puller keeps pull requests outstanding on one inbox for exactly the
// workers that are free, so this process never holds more messages than
// WithConcurrency: free + outstanding + running handlers = concurrency.
// Requests are pipelined: the next goes out when a quarter of the workers
// are free (or none is outstanding), while the others still work.
type puller struct {
	nc        *nats.Conn
	subject   string
	inbox     string
	threshold int64

	free        atomic.Int64 // workers neither busy nor covered by a request; below 0 after stale deliveries
	outstanding atomic.Int64 // messages requested and not yet received
	received    atomic.Uint64
	failed      atomic.Bool
	wake        chan struct{}
}

func (p *puller) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// request asks for the free workers' messages, if enough are free. Workers
// call it as they finish, so the next request is on its way while the
// others still work; it is safe for concurrent use.
func (p *puller) request() error {
	for {
		n := p.free.Load()
		if n <= 0 || (n < p.threshold && p.outstanding.Load() > 0) {
			return nil
		}
		if !p.free.CompareAndSwap(n, 0) {
			continue
		}
		// Counted before it is sent: the first message may arrive before
		// PublishRequest returns.
		p.outstanding.Add(n)
		body := fmt.Appendf(nil, `{"batch":%d,"expires":%d,"idle_heartbeat":%d}`, n, pullExpires.Nanoseconds(), pullHeartbeat.Nanoseconds())
		if err := p.nc.PublishRequest(p.subject, p.inbox, body); err != nil {
			p.reset()
			return err
		}
		return nil
	}
}

// reset forgets every outstanding request (expired, lost in a reconnect, or
// made void): their messages count as free again.
func (p *puller) reset() { p.free.Add(p.outstanding.Swap(0)) }

// settle takes k messages off the outstanding count (at most what is
// outstanding) and returns how many it took.
func (p *puller) settle(k int64) int64 {
	for {
		o := p.outstanding.Load()
		d := min(o, k)
		if d <= 0 {
			return 0
		}
		if p.outstanding.CompareAndSwap(o, o-d) {
			return d
		}
	}
}

// userMsg reports whether msg is an outcome; a status message from the
// server (heartbeat, a request's end) is accounted for and gives false.
func (p *puller) userMsg(msg *nats.Msg) bool {
	p.received.Add(1)
	status := ""
	if len(msg.Data) == 0 && msg.Header != nil {
		status = msg.Header.Get("Status")
	}
	if status == "" {
		// A worker takes it: from the outstanding request, or from the
		// free ones for a delivery the accounting no longer expected.
		if p.settle(1) == 0 {
			p.free.Add(-1)
		}
		return true
	}
	switch pending := msg.Header.Get("Nats-Pending-Messages"); {
	case status == "100": // heartbeat or flow control
		if msg.Reply != "" {
			_ = msg.Respond(nil)
		}
	case pending != "":
		// The request ended (expired, or cut short) with this many
		// messages undelivered: ask for them again.
		if k, err := strconv.ParseInt(pending, 10, 64); err == nil && k > 0 {
			p.free.Add(p.settle(k))
		}
		p.signal()
	default:
		// Consumer deleted, leadership change, no responders, a refused
		// request: bind again and start over.
		p.failed.Store(true)
		p.signal()
	}
	return false
}

// done returns a finished worker to the free ones, and asks for messages
// when enough are free.
func (p *puller) done() {
	p.free.Add(1)
	if p.request() != nil {
		p.failed.Store(true)
		p.signal()
	}
}

type runner struct {
	h          Handler
	o          *options
	handlerCtx context.Context
	// inFlight holds each worker's message while its handler runs, for the
	// progress ticker.
	inFlight []atomic.Pointer[nats.Msg]
}

// work handles messages from msgs until ctx ends; slot holds the message
// being handled.
func (r *runner) work(ctx context.Context, p *puller, msgs <-chan *nats.Msg, slot *atomic.Pointer[nats.Msg]) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-msgs:
			if !p.userMsg(msg) {
				continue
			}
			if ctx.Err() != nil {
				_ = msg.Nak() // redeliver at once, elsewhere
			} else {
				r.handle(msg, slot)
			}
			p.done()
		}
	}
}

// handle runs the handler for one message and settles the message.
func (r *runner) handle(msg *nats.Msg, slot *atomic.Pointer[nats.Msg]) {
	ev, err := Decode(msg.Data)
	if err != nil {
		_ = msg.Term()
		r.report(msg, &DeliveryError{Terminated: true, Err: err})
		return
	}
	ctx := r.handlerCtx
	if tp := msg.Header.Get(HeaderTraceparent); tp != "" {
		ctx = context.WithValue(ctx, traceKey{}, trace{parent: tp, state: msg.Header.Get(HeaderTracestate)})
	}
	slot.Store(msg)
	err = r.call(ctx, ev)
	slot.Store(nil)
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
func (r *runner) report(msg *nats.Msg, err *DeliveryError) {
	if r.o.onError == nil {
		return
	}
	err.Subject = msg.Subject
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
