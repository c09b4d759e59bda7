package enricher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// ReconcileOptions tune the Reconciler; zero fields take the defaults.
type ReconcileOptions struct {
	Subjects streams.Subjects
	// Consumer is the durable consumer on the expectations stream, shared by
	// the replicas: "reconciler".
	Consumer string
	// After is how long a webhook may take before the bridge injects it
	// (RECONCILE_AFTER, 5m); GiveUp is how long after the expectation a
	// session the API does not know is tried (RECONCILE_GIVE_UP, 24h).
	After, GiveUp time.Duration
	// Registerer receives the collectors; nil means none.
	Registerer prometheus.Registerer
	// Sync, when set, is called before an expectation is closed, so that the
	// ledger's final state is on disk first (Options.Sync of the enricher).
	Sync func() error
}

// Reconciler closes expectations (DESIGN.md, "Session ledger"): it keeps each
// expectation on the expectations stream until its session is final. A
// durable consumer holds them, each message nakked with a delay until its
// next check (no scanner: the delays survive restarts and are shared by the
// replicas, which never hold the same message at once). At a check:
//   - a final session (enriched, dead_lettered, abandoned) closes it;
//   - before After, or while a webhook is being enriched, it waits;
//   - else, before GiveUp, it injects the missing webhook on the webhooks
//     stream (the first with VerifEye's own message ID, so a real webhook
//     inside the duplicate window wins), with backoff between injections;
//   - after GiveUp, the session is abandoned.
type Reconciler struct {
	js   jetstream.JetStream
	log  zerolog.Logger
	opts ReconcileOptions
	ldg  *Ledger

	opened, injected, reconciled, abandoned prometheus.Counter
	open                                    prometheus.Gauge

	mu      sync.Mutex
	running bool
}

// NewReconciler returns a reconciler; start it with Run.
func NewReconciler(js jetstream.JetStream, log zerolog.Logger, opts ReconcileOptions) *Reconciler {
	if opts.Subjects == (streams.Subjects{}) {
		opts.Subjects, _ = streams.NewSubjects(outcome.DefaultPrefix)
	}
	if opts.Consumer == "" {
		opts.Consumer = "reconciler"
	}
	if opts.After <= 0 {
		opts.After = 5 * time.Minute
	}
	if opts.GiveUp <= 0 {
		opts.GiveUp = 24 * time.Hour
	}
	r := &Reconciler{js: js, log: log, opts: opts,
		opened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verifeye_bridge_expectations_opened_total",
			Help: "Expectations taken (PUT /v1/sessions/{id}/expect or verifeye.expect.<source>).",
		}),
		injected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verifeye_bridge_reconcile_injections_total",
			Help: "Webhooks the bridge injected for expected sessions, retries after a 404 included.",
		}),
		reconciled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verifeye_bridge_sessions_reconciled_total",
			Help: "Expected sessions whose webhook had not come after RECONCILE_AFTER: the bridge injected it. A rising rate means VerifEye's webhooks are being lost.",
		}),
		abandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verifeye_bridge_sessions_abandoned_total",
			Help: "Expected sessions the API did not know by RECONCILE_GIVE_UP: marked abandoned.",
		}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "verifeye_bridge_expectations_open",
			Help: "Expectations not closed yet (their session is not final), as the reconciler's consumer counts them.",
		}),
	}
	ledgerFailures := newLedgerFailures()
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(r.opened, r.injected, r.reconciled, r.abandoned, r.open)
		ledgerFailures = registerShared(opts.Registerer, ledgerFailures)
	}
	r.ldg = NewLedger(js, ledgerFailures)
	return r
}

const reconcileAckWait = 10 * time.Second

// ConsumerConfig is the durable consumer of the expectations stream.
func (r *Reconciler) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       r.opts.Consumer,
		Description:   "verifeye-bridge reconciler",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		// A check is quick (a ledger write, perhaps a publish). Short, because
		// after a NATS restart the messages waiting on a nak delay come back
		// after the ack wait.
		AckWait:    reconcileAckWait,
		MaxDeliver: -1,
		// Every open expectation waits nakked, and counts here.
		MaxAckPending: 1 << 20,
	}
}

// Ready reports whether the reconciler consumes.
func (r *Reconciler) Ready(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running {
		return errors.New("not running")
	}
	return nil
}

// Run creates or updates the durable consumer and reconciles until ctx ends;
// it returns nil then.
func (r *Reconciler) Run(ctx context.Context) error {
	create := func() (jetstream.Consumer, error) {
		c, cancel := context.WithTimeout(ctx, streams.AttemptTimeout)
		defer cancel()
		return r.js.CreateOrUpdateConsumer(c, streams.Expectations, r.ConsumerConfig())
	}
	cons, err := backoff.Retry(ctx, create,
		backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 250 * time.Millisecond, Multiplier: 2, MaxInterval: 10 * time.Second}),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			r.log.Error().Err(err).Dur("retry_in", wait).Msg("cannot create the reconciler consumer")
		}))
	if err != nil {
		return nil
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), reconcileAckWait*4/5)
		defer cancel()
		r.handle(c, msg)
	}, jetstream.PullMaxMessages(64))
	if err != nil {
		r.log.Error().Err(err).Msg("cannot consume expectations")
		return nil
	}
	defer cc.Drain()
	r.mu.Lock()
	r.running = true
	r.mu.Unlock()
	defer func() { r.mu.Lock(); r.running = false; r.mu.Unlock() }()
	r.log.Info().Dur("after", r.opts.After).Dur("give_up", r.opts.GiveUp).Msg("reconciler started")
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		r.countOpen(ctx, cons)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (r *Reconciler) countOpen(ctx context.Context, cons jetstream.Consumer) {
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if info, err := cons.Info(c); err == nil {
		r.open.Set(float64(info.NumPending) + float64(info.NumAckPending))
	}
}

// handle checks one expectation; see Reconciler.
func (r *Reconciler) handle(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return
	}
	var exp outcome.Expectation
	_, source, perr := subjectSource(r.opts.Subjects.Prefix(), msg.Subject())
	if err := json.Unmarshal(msg.Data(), &exp); err != nil || perr != nil || !outcome.ValidSessionID(exp.SessionID) ||
		(exp.Source != "" && exp.Source != source) {
		r.log.Warn().Str("subject", msg.Subject()).Msg("expectation is not {\"verificationSessionId\":\"<uuid>\",\"source\":\"<source>\"} on verifeye.expect.<source>: dropped")
		_ = msg.Term()
		return
	}
	session, at := exp.SessionID, meta.Timestamp
	log := r.log.With().Str("session_id", session).Str("source", source).Logger()
	if meta.NumDelivered == 1 {
		r.opened.Inc()
	}
	now := time.Now()
	var (
		inject  int  // the injection's number, 0 for none
		abandon bool // the session is abandoned now
	)
	cur, err := r.ldg.Update(ctx, session, func(cur *outcome.Session) *outcome.Session {
		inject, abandon = 0, false
		changed := false
		if cur == nil {
			cur, changed = &outcome.Session{SessionID: session, Source: source, State: outcome.StateExpected}, true
		} else if cur.Final() {
			return nil // closed: never overwrite a later state
		}
		if cur.ExpectedAt.IsZero() {
			cur.ExpectedAt, changed = at, true
		}
		if cur.State == outcome.StateExpected && !now.Before(at.Add(r.opts.After)) {
			if !now.Before(at.Add(r.opts.GiveUp)) {
				cur.State, abandon = outcome.StateAbandoned, true
			} else {
				cur.ReconcileAttempts++
				inject = cur.ReconcileAttempts
			}
			return cur
		}
		if !changed {
			return nil
		}
		return cur
	})
	if err != nil {
		log.Warn().Err(err).Msg("reconciler: cannot write the session ledger; will retry")
		_ = msg.NakWithDelay(time.Second)
		return
	}
	switch {
	case abandon:
		r.abandoned.Inc()
		log.Warn().Dur("give_up", r.opts.GiveUp).Msg("expected session unknown to the API: abandoned")
		r.close(msg, log)
		return
	case cur.Final():
		r.close(msg, log)
		return
	case now.Before(at.Add(r.opts.After)):
		_ = msg.NakWithDelay(time.Until(at.Add(r.opts.After)))
		return
	case inject == 0: // received: a webhook is being enriched
		_ = msg.NakWithDelay(r.checkDelay(1, at))
		return
	}
	if err := r.injectWebhook(ctx, source, session, inject); err != nil {
		log.Warn().Err(err).Msg("reconciler: cannot inject the webhook; will retry")
		_ = msg.NakWithDelay(time.Second)
		return
	}
	r.injected.Inc()
	if inject == 1 {
		r.reconciled.Inc()
		log.Warn().Dur("after", r.opts.After).Msg("no webhook for an expected session: injected it (reconciled)")
	}
	_ = msg.NakWithDelay(r.checkDelay(inject, at))
}

// close acks an expectation whose session is final, once the ledger's state
// is on disk (Sync); a failed sync leaves it for the next check.
func (r *Reconciler) close(msg jetstream.Msg, log zerolog.Logger) {
	if r.opts.Sync != nil {
		if err := r.opts.Sync(); err != nil {
			log.Error().Err(err).Msg("reconciler: cannot sync the store; expectation kept")
			_ = msg.NakWithDelay(time.Second)
			return
		}
	}
	_ = msg.Ack()
}

// checkDelay is the wait before the next check after the n-th injection:
// After doubled per injection, at most an hour, and not past GiveUp by much.
func (r *Reconciler) checkDelay(n int, at time.Time) time.Duration {
	d := r.opts.After
	for i := 1; i < n && d < time.Hour; i++ {
		d *= 2
	}
	d = min(d, time.Hour)
	if left := time.Until(at.Add(r.opts.GiveUp)); left > 0 && left < d {
		d = left
	}
	return max(d, 10*time.Millisecond)
}

// injectWebhook publishes the webhook VerifEye did not send: its subject and,
// for the first injection, its message ID, with Verifeye-Reconciled: true.
func (r *Reconciler) injectWebhook(ctx context.Context, source, session string, n int) error {
	msg := nats.NewMsg(r.opts.Subjects.Webhook(source, streams.EventCompleted))
	msg.Data = fmt.Appendf(nil, `{"event":%q,"verificationSessionId":%q}`, streams.EventCompleted, session)
	msg.Header.Set(outcome.HeaderReconciled, "true")
	msg.Header.Set(streams.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	id := streams.WebhookMsgID(streams.EventCompleted, session)
	if n > 1 {
		id += ":reconcile:" + strconv.Itoa(n)
	}
	_, err := r.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(streams.Webhooks))
	return err
}

// subjectSource returns the source of <prefix>.expect.<source>.
func subjectSource(prefix, subject string) (string, string, error) {
	want := prefix + ".expect."
	if len(subject) <= len(want) || subject[:len(want)] != want || !outcome.ValidSource(subject[len(want):]) {
		return "", "", fmt.Errorf("not an expectation subject: %q", subject)
	}
	return prefix, subject[len(want):], nil
}
