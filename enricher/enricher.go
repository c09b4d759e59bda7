// Package enricher turns each VerificationCompleted webhook on the webhooks
// stream into exactly one CloudEvent on the results stream, carrying the Get
// Session Result body fetched with the bridge's own API key (DESIGN.md
// guarantees 2, 3 and 5). What cannot be enriched goes to the DLQ with its reason.
package enricher

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/time/rate"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/internal/tracing"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// APIClient fetches a session's result. *verifeye.Client implements it.
type APIClient interface {
	GetSessionResult(ctx context.Context, sessionID string) (*verifeye.Result, error)
}

// Options tune the enricher; zero fields take the documented defaults.
type Options struct {
	Subjects    streams.Subjects
	Consumer    string  // durable consumer name, "enricher"
	Concurrency int     // workers, hence API calls at once, 16; as many settles (see settle) may run beside them
	RateLimit   float64 // API calls per second, 0 = no cap
	MaxAttempts int     // deliveries before the DLQ, 10
	// AckWait is how long JetStream waits for news of a delivered webhook
	// before it hands it to another replica: the failover time when an
	// enricher dies mid-enrichment. 5 s. It bounds no stage: while a message
	// is held, whatever the stage, the enricher reports progress every
	// AckWait/3.
	AckWait   time.Duration
	AuthRetry time.Duration // retry interval while the API answers 401/403, 30 s
	Policy    Policy        // zero fields take DefaultPolicy's; Policy.MaxAttempts follows MaxAttempts
	// Registerer receives the enricher's collectors; nil means none.
	Registerer prometheus.Registerer
	// Tracing records a span per enrichment and per API call; nil records none.
	// Either way the outcome carries the webhook's trace ID.
	Tracing *tracing.Tracing
	// Publisher publishes the outcomes and DLQ entries; nil means the
	// JetStream context given to New. Tests inject faults here.
	Publisher Publisher
	// Sync, when set, is called before a webhook is acked or terminated, so
	// that what was written for it (its outcome or DLQ entry, the ledger) is
	// on disk before the webhook is given up: the embedded server leaves
	// syncing to its callers at NATS_EMBEDDED_SYNC=always
	// (natsembed.Syncer). When Sync fails, the webhook is not answered and
	// comes back after the ack wait.
	Sync func() error
}

func (o *Options) defaults() {
	if o.Subjects == (streams.Subjects{}) {
		o.Subjects, _ = streams.NewSubjects("verifeye")
	}
	if o.Consumer == "" {
		o.Consumer = "enricher"
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 10
	}
	if o.AckWait <= 0 {
		o.AckWait = DefaultAckWait
	}
	if o.AuthRetry <= 0 {
		o.AuthRetry = 30 * time.Second
	}
	// Field by field: a Policy with only some fields set must not get a zero
	// backoff (an immediate redelivery that burns attempts) or dead-letter
	// every 404 at once.
	def := DefaultPolicy()
	if o.Policy.BackoffBase <= 0 {
		o.Policy.BackoffBase = def.BackoffBase
	}
	if o.Policy.BackoffMax < o.Policy.BackoffBase {
		o.Policy.BackoffMax = max(def.BackoffMax, o.Policy.BackoffBase)
	}
	if o.Policy.NotFoundDelay <= 0 {
		o.Policy.NotFoundDelay = def.NotFoundDelay
	}
	if o.Policy.NotFoundAttempts <= 0 {
		o.Policy.NotFoundAttempts = def.NotFoundAttempts
	}
	o.Policy.MaxAttempts = o.MaxAttempts
}

// DefaultAckWait is Options.AckWait's default. A replica that dies holding
// webhooks delays them by about this much; a live one reports progress three
// times per ack wait, so even a slow connection to NATS has two chances to
// spare before a redelivery (and a second API call) could happen.
const DefaultAckWait = 5 * time.Second

// stageTimeout bounds the outcome's publish, the ledger writes and the ack
// after a decision, however short the ack wait: the lease is kept alive
// meanwhile, so a slow NATS delays the webhook instead of failing it.
const stageTimeout = 10 * time.Second

// Publisher publishes to JetStream and waits for the acknowledgement.
type Publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// Enricher consumes webhooks and publishes outcomes. Build it with New and
// start it with Run; Ready may be called concurrently.
type Enricher struct {
	js   jetstream.JetStream
	pub  Publisher
	api  APIClient
	log  zerolog.Logger
	opts Options
	lim  *rate.Limiter
	m    *metrics
	ldg  *Ledger

	settles  chan struct{}  // one per settle running (see settle)
	settling sync.WaitGroup // the settles running

	running   atomic.Bool
	fetchWarn rate.Sometimes // the "fetch failed" line: every worker fails alike while NATS is away
	ledgerErr rate.Sometimes // the "ledger write failed" line

	mu       sync.Mutex
	paused   bool
	pauseCh  chan struct{}   // closed when a pause ends
	pauseLog *rate.Sometimes // the loud "paused" line, once per AuthRetry; new for each pause
	pauseBy  string
}

// New returns an enricher that consumes webhooks from js, calls api for each
// and publishes the outcomes and DLQ entries through opts.Publisher, or js
// when that is nil. It starts nothing: call Run.
func New(js jetstream.JetStream, api APIClient, log zerolog.Logger, opts Options) *Enricher {
	opts.defaults()
	pub := opts.Publisher
	if pub == nil {
		pub = js
	}
	lim := rate.NewLimiter(rate.Inf, 1)
	if opts.RateLimit > 0 {
		lim = rate.NewLimiter(rate.Limit(opts.RateLimit), max(1, int(opts.RateLimit)))
	}
	m := newMetrics(opts.Registerer)
	return &Enricher{
		js: js, pub: pub, api: api, log: log, opts: opts, lim: lim, m: m, ldg: NewLedger(js, m.ledgerFailures),
		settles:   make(chan struct{}, opts.Concurrency),
		fetchWarn: rate.Sometimes{Interval: 10 * time.Second},
		ledgerErr: rate.Sometimes{Interval: 10 * time.Second},
		pauseLog:  &rate.Sometimes{Interval: opts.AuthRetry},
	}
}

// ConsumerConfig is the durable pull consumer the enricher shares with its
// replicas: explicit ack, VerificationCompleted events only.
func (e *Enricher) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       e.opts.Consumer,
		Description:   "verifeye-bridge enricher",
		FilterSubject: e.opts.Subjects.CompletedFilter(),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		// No BackOff: it would replace AckWait for the redeliveries after a
		// timeout, which are exactly the failovers AckWait keeps short.
		AckWait: e.opts.AckWait,
		// One more delivery than attempts: that one dead-letters a crash loop
		// before calling the API; beyond it, the max-deliveries advisory does.
		MaxDeliver: e.opts.MaxAttempts + 1,
		// Not the concurrency bound (each worker holds one message): messages
		// waiting on a delayed retry also count here, so keep room for them, or
		// lagging sessions would block healthy ones.
		MaxAckPending: max(e.opts.Concurrency*4, 1000),
	}
}

// Ready returns nil while the enricher consumes normally, and an error while it
// is not running or is paused because the API refuses the key.
func (e *Enricher) Ready(context.Context) error {
	if !e.running.Load() {
		return errors.New("not running")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.paused {
		return fmt.Errorf("paused: the VerifEye API refuses the API key (%s); retrying every %v", e.pauseBy, e.opts.AuthRetry)
	}
	return nil
}

// Run creates or updates the durable consumer and enriches until ctx is
// cancelled. Then it stops fetching, finishes the enrichments in flight (they
// keep a live context) and returns nil.
func (e *Enricher) Run(ctx context.Context) error {
	create := func() (jetstream.Consumer, error) {
		c, cancel := context.WithTimeout(ctx, streams.AttemptTimeout) // see streams.Ensure: a lost answer to a concurrent create
		defer cancel()
		return e.js.CreateOrUpdateConsumer(c, streams.Webhooks, e.ConsumerConfig())
	}
	// Until it works or ctx ends: a NATS outage at start delays the enricher.
	cons, err := backoff.Retry(ctx, create,
		backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 250 * time.Millisecond, Multiplier: 2, MaxInterval: 10 * time.Second}),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			e.log.Error().Err(err).Dur("retry_in", wait).Msg("cannot create the enricher consumer")
		}))
	if err != nil {
		return nil // ctx ended
	}
	e.running.Store(true)
	defer e.running.Store(false)
	e.log.Info().Str("consumer", e.opts.Consumer).Int("concurrency", e.opts.Concurrency).
		Float64("rate_limit", e.opts.RateLimit).Msg("enricher started")

	var wg sync.WaitGroup
	wg.Go(func() { e.runDeadLetterer(ctx) })
	for range e.opts.Concurrency {
		wg.Go(func() { e.worker(ctx, cons) })
	}
	wg.Wait()
	e.settling.Wait()
	e.log.Info().Msg("enricher stopped")
	return nil
}

func (e *Enricher) worker(ctx context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		if !e.waitUnpaused(ctx) {
			return
		}
		// Take a rate token before fetching, so no fetched message waits for one
		// while its ack wait runs.
		if err := e.lim.Wait(ctx); err != nil {
			return
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msg, err := cons.Next(jetstream.FetchContext(fctx))
		cancel()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
				e.fetchWarn.Do(func() { e.log.Warn().Err(err).Msg("fetch failed; retrying every second") })
				if consumerGone(err) {
					e.recreateConsumer(ctx)
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		// A fetched message is finished even during shutdown: it gets a live
		// context, bounded by the ack wait.
		e.m.inFlight.Inc()
		e.handle(ctx, msg)
		e.m.inFlight.Dec()
	}
}

// consumerGone reports whether a fetch failed because the durable consumer no
// longer exists (deleted by hand, or its stream re-created): no fetch can
// succeed again until it is re-created.
func consumerGone(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, jetstream.ErrConsumerNotFound)
}

// recreateConsumer creates the durable consumer again, as a restart would.
// Replicas and workers may all do it at once: the call is idempotent.
func (e *Enricher) recreateConsumer(ctx context.Context) {
	c, cancel := context.WithTimeout(ctx, streams.AttemptTimeout)
	defer cancel()
	if _, err := e.js.CreateOrUpdateConsumer(c, streams.Webhooks, e.ConsumerConfig()); err != nil {
		e.log.Error().Err(err).Msg("the enricher consumer is gone and cannot be re-created")
		return
	}
	e.log.Warn().Str("consumer", e.opts.Consumer).Msg("the enricher consumer was gone: re-created")
}

// handle enriches one webhook message, holding its lease (see lease) from
// start to finish. Its stages have contexts of their own, each derived from
// live, which outlives shutdown (a fetched message is finished, not
// abandoned) and carries the enrichment's span:
//   - the call stage: each API call is bounded by the API client's own timeout
//     (VERIFEYE_API_TIMEOUT), not by the ack wait;
//   - the pause: while the API refuses the key, the message is held until stop
//     (the Run context) ends, the only thing stop ends;
//   - the settle stage: publishing the outcome, the DLQ entry or the nak, and
//     the ack, get stageTimeout (or the ack wait, if longer) from when the
//     decision is made (settleCtx).
func (e *Enricher) handle(stop context.Context, fetched jetstream.Msg) {
	lm := e.lease(fetched)
	handedOff := false // the outcome's settle runs on and answers msg
	defer func() {
		if !handedOff {
			lm.release()
		}
	}()
	var msg jetstream.Msg = lm
	live, span := e.opts.Tracing.StartConsumer(context.WithoutCancel(stop), "enrich", msg.Headers())
	defer span.End()
	meta, err := msg.Metadata()
	if err != nil {
		e.log.Error().Err(err).Msg("message without metadata: terminated")
		_ = msg.Term()
		return
	}
	attempt := int(meta.NumDelivered)
	_, source, event, err := e.opts.Subjects.Parse(msg.Subject())
	var wh streams.Webhook
	if err == nil {
		wh, err = streams.ParseWebhook(msg.Data())
	}

	var (
		session string
		ledger  *entry // the session's ledger entry as received wrote it; nil if unknown
		res     *verifeye.Result
		d       Decision
		detail  string
		log     = e.log
	)
	switch {
	case err != nil || !streams.ValidSessionID(wh.SessionID):
		d, detail = Decision{Action: DeadLetter, Reason: ReasonInvalidWebhook}, "not a webhook of the contract"
	case attempt > e.opts.MaxAttempts:
		// Delivered more often than attempted: earlier deliveries crashed
		// before deciding. Stop the loop here, without another API call.
		session = wh.SessionID
		d, detail = Decision{Action: DeadLetter, Reason: ReasonMaxDeliveries}, "delivered more times than ENRICH_MAX_ATTEMPTS"
	default:
		session = wh.SessionID
		log = e.log.With().Str("session_id", session).Str("source", source).Int("attempt", attempt).Str("trace_id", tracing.TraceID(live)).Logger()
		if span.IsRecording() {
			span.SetAttributes(attribute.String("verifeye.session_id", session), attribute.String("verifeye.source", source), attribute.Int("verifeye.attempt", attempt))
		}
		var done bool
		if ledger, done = e.received(live, msg, log, source, session); done {
			return // enriched before: acked, no second outcome
		}
		var held bool
		res, d, held, err = e.callStage(stop, live, msg, session, attempt, reconciled(msg))
		if !held {
			return // shutdown during a pause: nakked for later
		}
		if err != nil {
			detail = err.Error()
		}
	}

	settleCtx, cancel := context.WithTimeout(live, max(e.opts.AckWait, stageTimeout))
	defer cancel()
	switch d.Action {
	case Publish:
		handedOff = e.publish(settleCtx, msg, lm.release, meta, log, source, session, res, ledger)
	case Retry:
		e.attempted(settleCtx, log, session, attempt, d.Status)
		e.m.enrichments.WithLabelValues("retried", d.Reason).Inc()
		log.Warn().Err(err).Str("decision", "retry").Int("status", d.Status).Dur("delay", d.Delay).Msg("enrichment will be retried")
		if nerr := msg.NakWithDelay(d.Delay); nerr != nil {
			log.Warn().Err(nerr).Msg("nak failed; the message is redelivered after the ack wait")
		}
	case DeadLetter:
		e.deadLetter(settleCtx, msg, meta, source, event, session, d, attempt, detail)
	case Release:
		e.release(settleCtx, msg, log, session)
	}
}

// reconciled reports whether msg is a webhook the bridge injected for an
// expected session (outcome.HeaderReconciled).
func reconciled(msg jetstream.Msg) bool {
	return msg.Headers().Get(outcome.HeaderReconciled) == "true"
}

// received writes the session's ledger entry received, unless it is enriched
// already: then (for a webhook other than a replay) it acks msg and returns
// done, so a webhook that comes again, however late, makes no API call and
// no second outcome. A ledger that cannot be read or written does not stop
// the enrichment (the results stream's de-duplication still holds inside its
// window); the failure is logged and counted, and the entry returned is nil.
//
// The write first assumes the session is new (the common case: one round
// trip, a create); an existing entry makes that create fail, and the entry
// is then read and updated as usual.
func (e *Enricher) received(ctx context.Context, msg jetstream.Msg, log zerolog.Logger, source, session string) (en *entry, done bool) {
	replay := msg.Headers().Get(streams.HeaderReplay) != ""
	written, err := e.ldg.update(ctx, session, &entry{}, func(cur *outcome.Session) *outcome.Session {
		if cur == nil {
			return &outcome.Session{SessionID: session, Source: source, State: outcome.StateReceived}
		}
		if cur.State == outcome.StateEnriched || cur.State == outcome.StateReceived {
			return nil
		}
		cur.State, cur.Reason = outcome.StateReceived, ""
		if cur.Source == "" {
			cur.Source = source
		}
		return cur
	})
	if err != nil {
		e.ledgerErr.Do(func() { log.Warn().Err(err).Msg("cannot write the session ledger; enriching anyway") })
		return nil, false
	}
	if cur := written.s; cur.State != outcome.StateEnriched || replay {
		return &written, false
	}
	if err := msg.DoubleAck(ctx); err != nil {
		log.Warn().Err(err).Msg("ack of an already enriched session not confirmed")
	}
	e.m.enrichments.WithLabelValues("already_enriched", "").Inc()
	log.Info().Str("decision", "skip").Msg("session already enriched: webhook acknowledged without an API call")
	return nil, true
}

// release acks a reconciled webhook whose session the API does not know yet,
// without a DLQ entry: the ledger entry goes back to expected, and the
// reconciler tries again later or marks it abandoned.
func (e *Enricher) release(ctx context.Context, msg jetstream.Msg, log zerolog.Logger, session string) {
	_, err := e.ldg.Update(ctx, session, func(cur *outcome.Session) *outcome.Session {
		if cur == nil || cur.Final() {
			return nil
		}
		cur.State = outcome.StateExpected
		if cur.ExpectedAt.IsZero() { // nobody expects it: nothing will try again
			cur.State = outcome.StateAbandoned
		}
		return cur
	})
	if err != nil {
		// Not acked: the webhook is delivered again, and the ledger retried.
		log.Warn().Err(err).Msg("cannot write the session ledger; the reconciled webhook will be retried")
		_ = msg.NakWithDelay(e.opts.Policy.Backoff(1, rand.Float64()))
		return
	}
	if err := msg.DoubleAck(ctx); err != nil {
		log.Warn().Err(err).Msg("ack of a released reconciled webhook not confirmed")
	}
	e.m.enrichments.WithLabelValues("released", ReasonNotFound).Inc()
	log.Info().Str("decision", "release").Msg("reconciled session not known to the API yet; the reconciler tries again later")
}

// callStage calls the API and decides, until the decision is other than Pause.
// While the API refuses the key it pauses fetching and holds msg (it burns no
// attempt), trying again every AuthRetry; held is false when stop ended the
// pause, and msg has then been nakked for later. apiErr is the last call's
// error, which d classifies.
func (e *Enricher) callStage(stop, live context.Context, msg jetstream.Msg, session string, attempt int, reconciled bool) (res *verifeye.Result, d Decision, held bool, apiErr error) {
	for {
		res, apiErr = e.call(live, session)
		d = e.opts.Policy.Decide(apiErr, attempt, rand.Float64())
		if reconciled {
			d = e.opts.Policy.DecideReconciled(apiErr, attempt, rand.Float64())
		}
		if d.Action != Pause {
			e.resume()
			return res, d, true, apiErr
		}
		e.pause(d.Status, apiErr)
		// Honour the rate limit for the probe too.
		if !holdFor(stop, e.opts.AuthRetry) || e.lim.Wait(stop) != nil {
			_ = msg.NakWithDelay(e.opts.AuthRetry)
			return nil, d, false, apiErr
		}
	}
}

// call runs one API call. The API client bounds it (VERIFEYE_API_TIMEOUT);
// the ack wait does not, as the lease is kept alive meanwhile: a call slower
// than the ack wait is still one call.
func (e *Enricher) call(live context.Context, session string) (*verifeye.Result, error) {
	start := time.Now()
	callCtx, span := e.opts.Tracing.StartClient(live, "GET /v1/verification/get-session-result")
	res, err := e.api.GetSessionResult(callCtx, session)
	tracing.End(span, err)
	e.m.observeCall(err, time.Since(start))
	return res, err
}

// holdFor waits d (msg's lease is kept alive meanwhile); false if stop ended
// first.
func holdFor(stop context.Context, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	select {
	case <-stop.Done():
		return false
	case <-deadline.C:
		return true
	}
}

// leasedMsg is a fetched webhook whose ack deadline the enricher keeps from
// running out while it works on it. Its final answers (Ack, DoubleAck, Nak,
// NakWithDelay, Term, TermWithReason) first stop the progress reports, so none
// follows the answer: a progress report after a NakWithDelay would replace
// the delay with a whole ack wait.
type leasedMsg struct {
	jetstream.Msg
	sync func() error // Options.Sync, before an answer that gives the message up
	once sync.Once
	done chan struct{} // closed to stop the reports
	gone chan struct{} // closed when the reporter has returned
}

// lease starts reporting msg in progress every AckWait/3, until an answer is
// given or release is called. Every stage is covered, not only the API call:
// the ledger writes, a pause, the outcome's publish (and any slow NATS under
// them) hold the message as long as they take, and only a dead process lets
// the ack wait run out. That is what allows a short ack wait, hence a fast
// failover, without a redelivery (a second API call) under load.
func (e *Enricher) lease(msg jetstream.Msg) *leasedMsg {
	lm := &leasedMsg{Msg: msg, sync: e.opts.Sync, done: make(chan struct{}), gone: make(chan struct{})}
	every := max(e.opts.AckWait/3, 100*time.Millisecond)
	go func() {
		defer close(lm.gone)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-lm.done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return lm
}

// release stops the progress reports and waits until none can be sent.
func (m *leasedMsg) release() {
	m.once.Do(func() { close(m.done) })
	<-m.gone
}

// giveUp makes the writes made for the message durable (Options.Sync), still
// holding it, then stops the progress reports. On a failed sync the message is
// left unanswered: it comes back after the ack wait.
func (m *leasedMsg) giveUp() error {
	if m.sync != nil {
		if err := m.sync(); err != nil {
			m.release()
			return err
		}
	}
	m.release()
	return nil
}

func (m *leasedMsg) Ack() error {
	if err := m.giveUp(); err != nil {
		return err
	}
	return m.Msg.Ack()
}

func (m *leasedMsg) DoubleAck(ctx context.Context) error {
	if err := m.giveUp(); err != nil {
		return err
	}
	return m.Msg.DoubleAck(ctx)
}

func (m *leasedMsg) Nak() error { m.release(); return m.Msg.Nak() }

func (m *leasedMsg) NakWithDelay(d time.Duration) error { m.release(); return m.Msg.NakWithDelay(d) }

func (m *leasedMsg) Term() error {
	if err := m.giveUp(); err != nil {
		return err
	}
	return m.Msg.Term()
}

func (m *leasedMsg) TermWithReason(reason string) error {
	if err := m.giveUp(); err != nil {
		return err
	}
	return m.Msg.TermWithReason(reason)
}

// publish builds the outcome of msg and reports whether it handed its
// publish and the rest (the ledger write and the ack, see settle) to a
// goroutine of its own, which then answers msg and calls release.
func (e *Enricher) publish(ctx context.Context, msg jetstream.Msg, release func(), meta *jetstream.MsgMetadata, log zerolog.Logger, source, session string, res *verifeye.Result, ledger *entry) bool {
	received := meta.Timestamp
	if t, err := time.Parse(time.RFC3339Nano, msg.Headers().Get(streams.HeaderReceivedAt)); err == nil {
		received = t
	}
	outcome := streams.Outcome(res.VerificationResult)
	// A replayed webhook (verifeye-bridge replay) yields a new, distinguishable
	// outcome: its ID is not the session ID, so de-duplication keeps it.
	id := streams.ReplayOutcomeID(session, msg.Headers().Get(streams.HeaderReplay))
	rec := reconciled(msg)
	body, err := MarshalEvent(Outcome{ID: id, SessionID: session, Source: source, Outcome: outcome, ReceivedAt: received, Reconciled: rec, Data: res.Body})
	if err != nil { // the client checked the body is JSON; defensive
		e.deadLetter(ctx, msg, meta, source, streams.EventCompleted, session, Decision{Action: DeadLetter, Reason: ReasonInvalidResponse, Status: res.Status}, int(meta.NumDelivered), err.Error())
		return false
	}
	out := nats.NewMsg(e.opts.Subjects.Result(source, outcome))
	out.Data = body
	out.Header.Set(streams.HeaderContentType, EventContentType)
	// The enricher's span context (the webhook's trace ID), or with tracing
	// off the webhook's own traceparent.
	tracing.Inject(ctx, out.Header)
	// The publish, the ledger write and the ack run beside the worker, which
	// fetches its next webhook at once; the message stays leased until then.
	e.settle(ctx, release, func(ctx context.Context) {
		// Guarantee 2: the session ID is the message ID, so a redelivery after
		// a crash between this publish and the ack is dropped by the results
		// stream.
		ack, err := e.pub.PublishMsg(ctx, out, jetstream.WithMsgID(id), jetstream.WithExpectStream(streams.Results))
		if err != nil {
			d := e.opts.Policy.Backoff(int(meta.NumDelivered), rand.Float64())
			e.m.enrichments.WithLabelValues("retried", "publish_failed").Inc()
			log.Error().Err(err).Dur("delay", d).Msg("cannot publish the outcome; will retry")
			_ = msg.NakWithDelay(d)
			return
		}
		if e.enriched(ctx, log, source, session, body, ack.Sequence, rec, int(meta.NumDelivered), ledger) {
			// The ledger holds the session enriched: should this ack be lost,
			// the redelivery is acked without an API call (received), so the
			// ack need not wait for the server's confirmation.
			if err := msg.Ack(); err != nil {
				log.Warn().Err(err).Msg("ack not sent; the redelivery will find the session enriched")
			}
		} else if err := msg.DoubleAck(ctx); err != nil {
			// The outcome is stored; a redelivery is de-duplicated by its ID.
			log.Warn().Err(err).Msg("ack not confirmed; a redelivery will be de-duplicated")
		}
		result := "published"
		if ack.Duplicate {
			result = "duplicate"
		}
		e.m.enrichments.WithLabelValues(result, "").Inc()
		e.m.latency.Observe(time.Since(received).Seconds())
		log.Info().Str("decision", "publish").Str("outcome", outcome).Bool("duplicate", ack.Duplicate).
			Uint64("seq", ack.Sequence).Msg("outcome published")
	})
	return true
}

// settle runs f, what follows an outcome's API answer (its publish, the
// ledger write, then the ack), beside the worker, so that the worker fetches
// its next webhook at once instead of after three more round trips to NATS. ENRICH_CONCURRENCY
// bounds the API calls; the settles running at once are bounded to as many
// again (a worker waits here when they are all busy), and Run waits for them
// before it returns. The message stays leased and counted in flight until f
// is done; release ends its lease if f did not answer it.
func (e *Enricher) settle(ctx context.Context, release func(), f func(context.Context)) {
	e.settles <- struct{}{}
	e.m.inFlight.Inc()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stageTimeout)
	e.settling.Go(func() {
		defer func() {
			cancel()
			release()
			e.m.inFlight.Dec()
			<-e.settles
		}()
		f(sctx)
	})
}

// deadLetter copies the webhook to the DLQ with the reason and acks it. The
// DLQ message ID is derived from the webhook's stream sequence
// (streams.DeadLetterMsgID), so a repeat (redelivery, advisory) adds nothing.
func (e *Enricher) deadLetter(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, source, event, session string, d Decision, attempt int, detail string) {
	dl := streams.DeadLetter{Source: source, Event: event, Reason: d.Reason, Detail: detail, LastStatus: d.Status, Attempts: attempt,
		OrigSubject: msg.Subject(), OrigSeq: meta.Sequence.Stream, Header: msg.Headers(), Data: msg.Data()}
	if _, err := e.pub.PublishMsg(ctx, dl.Msg(e.opts.Subjects), jetstream.WithExpectStream(streams.DLQ)); err != nil {
		e.log.Error().Err(err).Str("session_id", session).Str("trace_id", tracing.TraceID(ctx)).Msg("cannot publish to the DLQ; will retry")
		_ = msg.NakWithDelay(e.opts.Policy.Backoff(attempt, rand.Float64()))
		return
	}
	if session != "" {
		e.deadLettered(ctx, session, source, d.Reason, attempt, d.Status)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		e.log.Warn().Err(err).Str("session_id", session).Str("trace_id", tracing.TraceID(ctx)).Msg("ack after dead-lettering not confirmed")
	}
	e.m.enrichments.WithLabelValues("dead_lettered", d.Reason).Inc()
	e.log.Error().Str("session_id", session).Str("source", source).Str("trace_id", tracing.TraceID(ctx)).Str("decision", "dead_letter").
		Str("reason", d.Reason).Int("status", d.Status).Int("attempt", attempt).Str("detail", detail).Msg("webhook dead-lettered")
}

// pause stops fetching until resume; it logs loudly once per AuthRetry.
func (e *Enricher) pause(status int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.paused {
		e.paused = true
		e.pauseCh = make(chan struct{})
		e.m.paused.Set(1)
	}
	e.pauseBy = "HTTP " + strconv.Itoa(status)
	e.pauseLog.Do(func() {
		e.log.Error().Err(err).Int("status", status).Dur("retry_every", e.opts.AuthRetry).
			Msg("VerifEye API refuses the API key: enrichment paused, webhooks wait in JetStream; check VERIFEYE_API_KEY")
	})
}

func (e *Enricher) resume() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.paused {
		e.paused = false
		close(e.pauseCh)
		e.pauseLog = &rate.Sometimes{Interval: e.opts.AuthRetry} // the next pause logs at once
		e.m.paused.Set(0)
		e.log.Info().Msg("VerifEye API accepts the API key again: enrichment resumed")
	}
}

// waitUnpaused blocks while the enricher is paused; false if ctx ended.
func (e *Enricher) waitUnpaused(ctx context.Context) bool {
	e.mu.Lock()
	paused, ch := e.paused, e.pauseCh
	e.mu.Unlock()
	if !paused {
		return true
	}
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// enriched writes the session's ledger entry enriched, with the outcome and
// its sequence on the results stream, after the outcome's PubAck, and reports
// whether the ledger holds the session enriched now. An entry enriched before
// (a replay's second outcome) keeps its first outcome. guess, if not nil, is
// the entry as received wrote it: usually still current, it saves the read.
func (e *Enricher) enriched(ctx context.Context, log zerolog.Logger, source, session string, body []byte, seq uint64, rec bool, attempt int, guess *entry) bool {
	ev, err := outcome.Decode(body)
	if err != nil { // the enricher's own encoding; defensive
		log.Warn().Err(err).Msg("cannot decode the outcome for the session ledger")
		return false
	}
	_, err = e.ldg.update(ctx, session, guess, func(cur *outcome.Session) *outcome.Session {
		if cur == nil {
			cur = &outcome.Session{SessionID: session, Source: source}
		} else if cur.State == outcome.StateEnriched {
			return nil
		}
		cur.State, cur.Outcome, cur.Event, cur.ResultSeq, cur.Reconciled, cur.Reason = outcome.StateEnriched, ev.Outcome, ev, seq, rec, ""
		cur.AddCall(attempt, 200, time.Now())
		return cur
	})
	if err != nil {
		e.ledgerErr.Do(func() { log.Warn().Err(err).Msg("cannot write the session ledger (enriched)") })
		return false
	}
	return true
}

// deadLettered writes the session's ledger entry dead_lettered with the
// reason, unless it is enriched already.
func (e *Enricher) deadLettered(ctx context.Context, session, source, reason string, attempt, status int) {
	_, err := e.ldg.Update(ctx, session, func(cur *outcome.Session) *outcome.Session {
		if cur == nil {
			cur = &outcome.Session{SessionID: session, Source: source}
		} else if cur.State == outcome.StateEnriched {
			return nil
		}
		cur.State, cur.Reason = outcome.StateDeadLettered, reason
		cur.AddCall(attempt, status, time.Now())
		return cur
	})
	if err != nil {
		e.ledgerErr.Do(func() {
			e.log.Warn().Err(err).Str("session_id", session).Msg("cannot write the session ledger (dead_lettered)")
		})
	}
}

// attempted records a failed attempt that will be retried in the session's
// ledger entry (the attempt count and the API's last status), for
// `verifeye-bridge session`. It is skipped for a final entry.
func (e *Enricher) attempted(ctx context.Context, log zerolog.Logger, session string, attempt, status int) {
	_, err := e.ldg.Update(ctx, session, func(cur *outcome.Session) *outcome.Session {
		if cur == nil || cur.Final() {
			return nil
		}
		cur.AddCall(attempt, status, time.Now())
		return cur
	})
	if err != nil {
		e.ledgerErr.Do(func() { log.Warn().Err(err).Msg("cannot write the session ledger (attempt)") })
	}
}
