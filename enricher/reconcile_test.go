package enricher_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// reconcileOptions are short delays so that a reconciliation plays out in a
// second or two.
func reconcileOptions(after, giveUp time.Duration) enricher.ReconcileOptions {
	return enricher.ReconcileOptions{After: after, GiveUp: giveUp}
}

// startReconciler runs a reconciler until the returned stop is called (or
// the test ends).
func (r *rig) startReconciler(opts enricher.ReconcileOptions) (stop func()) {
	r.t.Helper()
	rc := enricher.NewReconciler(r.js, r.log, opts)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = rc.Run(ctx) })
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	r.t.Cleanup(stop)
	natstest.WaitFor(r.t, 10*time.Second, func() error { return rc.Ready(context.Background()) })
	return stop
}

func (r *rig) expect(source, session string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := outcome.Expect(ctx, r.js, source, session); err != nil {
		r.t.Fatalf("outcome.Expect(%s) error = %v", session, err)
	}
}

// outcomes returns the outcomes on the results stream by session.
func (r *rig) outcomes() map[string][]*outcome.Event {
	r.t.Helper()
	out := make(map[string][]*outcome.Event)
	for _, m := range natstest.Messages(r.t, r.js, streams.Results) {
		ev, err := outcome.Decode(m.Data())
		if err != nil {
			r.t.Fatalf("outcome.Decode: %v", err)
		}
		out[ev.SessionID] = append(out[ev.SessionID], ev)
	}
	return out
}

// TestReconcileMissingWebhooks: expected sessions whose webhooks never come
// get exactly one outcome each, marked reconciled; expected sessions whose
// webhooks do come get one ordinary outcome.
func TestReconcileMissingWebhooks(t *testing.T) {
	r := newRig(t)
	r.startReady(enricher.New(r.js, r.client(5*time.Second), r.log, options()))
	r.startReconciler(reconcileOptions(500*time.Millisecond, time.Minute))
	var missing, arriving []string
	for i := range 4 {
		s := sid(130, i, "")
		missing = append(missing, s)
		r.expect("acme", s)
	}
	for i := 10; i < 13; i++ {
		s := sid(130, i, "")
		arriving = append(arriving, s)
		r.expect("acme", s)
		r.publishWebhook("acme", streams.EventCompleted, s)
	}
	r.waitCount(streams.Results, 7, 15*time.Second)
	for _, s := range missing {
		e := r.waitState(s, outcome.StateEnriched, 5*time.Second)
		if !e.Reconciled || e.ExpectedAt.IsZero() {
			t.Errorf("ledger of %s = %+v; want reconciled, with its expectation time", s, e)
		}
	}
	// Past RECONCILE_AFTER for all of them: nothing more comes.
	natstest.WaitFor(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := r.js.Consumer(ctx, streams.Expectations, "reconciler")
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending+uint64(info.NumAckPending) != 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	r.waitSettled("enricher", 10*time.Second)
	got := r.outcomes()
	for _, s := range missing {
		if len(got[s]) != 1 || !got[s][0].Reconciled {
			t.Errorf("session %s without a webhook: %d outcomes (reconciled %v), want exactly one reconciled", s, len(got[s]), len(got[s]) > 0 && got[s][0].Reconciled)
		}
	}
	for _, s := range arriving {
		if len(got[s]) != 1 || got[s][0].Reconciled {
			t.Errorf("session %s with its webhook: %d outcomes, want exactly one ordinary", s, len(got[s]))
		}
		if n := r.api.Calls(s); n != 1 {
			t.Errorf("session %s: %d API calls, want 1", s, n)
		}
	}
}

// TestReconcileAbandoned: an expected session the API never knows is retried
// until RECONCILE_GIVE_UP, then abandoned, with no DLQ entry and no outcome.
func TestReconcileAbandoned(t *testing.T) {
	r := newRig(t)
	reg := prometheus.NewRegistry()
	r.startReady(enricher.New(r.js, r.client(5*time.Second), r.log, options()))
	opts := reconcileOptions(200*time.Millisecond, 2*time.Second)
	opts.Registerer = reg
	r.startReconciler(opts)
	s := sid(131, 1, "")
	r.api.Script(s, verifeyetest.NotFoundFor(1000)...)
	r.expect("acme", s)
	e := r.waitState(s, outcome.StateAbandoned, 15*time.Second)
	if e.ReconcileAttempts < 2 {
		t.Errorf("abandoned after %d injections, want retries before giving up", e.ReconcileAttempts)
	}
	r.waitSettled("enricher", 10*time.Second)
	if n := natstest.Count(t, r.js, streams.DLQ); n != 0 {
		t.Errorf("DLQ holds %d entries, want none for an abandoned session", n)
	}
	if n := natstest.Count(t, r.js, streams.Results); n != 0 {
		t.Errorf("results stream holds %d outcomes, want none", n)
	}
	if v := metricValue(t, reg, "verifeye_bridge_sessions_abandoned_total"); v != 1 {
		t.Errorf("abandoned counter = %v, want 1", v)
	}
}

// TestReconcileReplicas: two enrichers and two reconcilers on the same
// expectations yield exactly one outcome per session.
func TestReconcileReplicas(t *testing.T) {
	r := newRig(t)
	for range 2 {
		r.startReady(enricher.New(r.js, r.client(5*time.Second), r.log, options()))
		r.startReconciler(reconcileOptions(300*time.Millisecond, time.Minute))
	}
	var sessions []string
	for i := range 20 {
		s := sid(132, i, "")
		sessions = append(sessions, s)
		r.expect("acme", s)
	}
	r.waitCount(streams.Results, 20, 20*time.Second)
	for _, s := range sessions {
		r.waitState(s, outcome.StateEnriched, 5*time.Second)
	}
	r.waitSettled("enricher", 10*time.Second)
	got := r.outcomes()
	for _, s := range sessions {
		if len(got[s]) != 1 {
			t.Errorf("session %s: %d outcomes, want 1", s, len(got[s]))
		}
	}
}

// TestReconcileSurvivesRestart: expectations open while the reconciler and
// NATS restart are all reconciled afterwards.
func TestReconcileSurvivesRestart(t *testing.T) {
	r := newRig(t)
	stopRec := r.startReconciler(reconcileOptions(time.Second, time.Minute))
	var sessions []string
	for i := range 5 {
		s := sid(133, i, "")
		sessions = append(sessions, s)
		r.expect("acme", s)
	}
	r.waitState(sessions[4], outcome.StateExpected, 5*time.Second)
	stopRec()
	r.ns.Restart()
	r.js = r.ns.JetStream()
	r.startReady(enricher.New(r.js, r.client(5*time.Second), r.log, options()))
	r.startReconciler(reconcileOptions(time.Second, time.Minute))
	r.waitCount(streams.Results, 5, 20*time.Second)
	for _, s := range sessions {
		if e := r.waitState(s, outcome.StateEnriched, 5*time.Second); !e.Reconciled {
			t.Errorf("session %s: %+v, want reconciled", s, e)
		}
	}
}
