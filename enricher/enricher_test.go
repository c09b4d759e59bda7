package enricher_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

const testKey = "sk-test-enricher-0123456789"

// rig is one test's NATS server with the contract's streams and a fake API.
type rig struct {
	t        *testing.T
	ns       *natstest.Server
	js       jetstream.JetStream
	api      *verifeyetest.Server
	subjects streams.Subjects
	log      zerolog.Logger
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigLimits(t, streams.DefaultLimits())
}

// newRigLimits is newRig with the streams under limits l.
func newRigLimits(t *testing.T, l streams.Limits) *rig {
	t.Helper()
	ns := natstest.Start(t)
	js := ns.JetStream()
	subjects, err := streams.NewSubjects("verifeye")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, subjects, l); err != nil {
		t.Fatalf("streams.Ensure() error = %v", err)
	}
	api := verifeyetest.Start(testKey)
	t.Cleanup(api.Close)
	return &rig{t: t, ns: ns, js: js, api: api, subjects: subjects,
		log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Logger()}
}

// client returns a real API client for the fake, with a per-call timeout.
func (r *rig) client(timeout time.Duration) *verifeye.Client {
	r.t.Helper()
	c, err := verifeye.New(r.api.URL, testKey, verifeye.Options{Timeout: timeout})
	if err != nil {
		r.t.Fatalf("verifeye.New() error = %v", err)
	}
	return c
}

// options are tiny settings so that every policy row plays out in a second or two.
func options() enricher.Options {
	return enricher.Options{
		Concurrency: 4,
		MaxAttempts: 5,
		AckWait:     time.Second,
		AuthRetry:   100 * time.Millisecond,
		Policy: enricher.Policy{
			BackoffBase:      20 * time.Millisecond,
			BackoffMax:       200 * time.Millisecond,
			NotFoundDelay:    50 * time.Millisecond,
			NotFoundAttempts: 3,
		},
	}
}

// start runs e until the returned stop is called (or the test ends). stop
// returns once Run has returned.
func (r *rig) start(e *enricher.Enricher) (stop func()) {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = e.Run(ctx) })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			if runErr != nil {
				r.t.Errorf("Run() = %v, want nil", runErr)
			}
		})
	}
	r.t.Cleanup(stop)
	return stop
}

// startReady is start, then waits until e is ready.
func (r *rig) startReady(e *enricher.Enricher) (stop func()) {
	r.t.Helper()
	stop = r.start(e)
	natstest.WaitFor(r.t, 10*time.Second, func() error { return e.Ready(context.Background()) })
	return stop
}

// publishWebhook stores a webhook the way the ingest does and returns its body
// and stream sequence.
func (r *rig) publishWebhook(source, event, session string) ([]byte, uint64) {
	r.t.Helper()
	body := fmt.Appendf(nil, `{"event":%q,"verificationSessionId":%q}`, event, session)
	msg := nats.NewMsg(r.subjects.Webhook(source, event))
	msg.Data = body
	msg.Header.Set(streams.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := r.js.PublishMsg(ctx, msg, jetstream.WithMsgID(streams.WebhookMsgID(event, session)), jetstream.WithExpectStream(streams.Webhooks))
	if err != nil {
		r.t.Fatalf("publish webhook %s: %v", session, err)
	}
	return body, ack.Sequence
}

// byMsgID returns the messages of stream by Nats-Msg-Id, failing on a repeat.
func (r *rig) byMsgID(stream string) map[string]jetstream.Msg {
	r.t.Helper()
	out := make(map[string]jetstream.Msg)
	for _, m := range natstest.Messages(r.t, r.js, stream) {
		id := m.Headers().Get(streams.HeaderMsgID)
		if _, dup := out[id]; dup {
			r.t.Errorf("%s holds two messages with Nats-Msg-Id %q", stream, id)
		}
		out[id] = m
	}
	return out
}

// waitCount waits until stream holds n messages. Unlike natstest.Count it
// tolerates failing requests, as while the server restarts.
func (r *rig) waitCount(stream string, n int, timeout time.Duration) {
	r.t.Helper()
	natstest.WaitFor(r.t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := r.js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if got := info.State.Msgs; got != uint64(n) {
			return fmt.Errorf("%s holds %d messages, want %d", stream, got, n)
		}
		return nil
	})
}

func (r *rig) consumerInfo(name string) *jetstream.ConsumerInfo {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := r.js.Consumer(ctx, streams.Webhooks, name)
	if err != nil {
		r.t.Fatalf("consumer %s: %v", name, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		r.t.Fatalf("consumer info %s: %v", name, err)
	}
	return info
}

// waitSettled waits until the consumer has nothing pending or unacknowledged.
func (r *rig) waitSettled(name string, timeout time.Duration) {
	r.t.Helper()
	natstest.WaitFor(r.t, timeout, func() error {
		if info := r.consumerInfo(name); info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("consumer %s: %d pending, %d unacknowledged", name, info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

// sid returns a session ID unique per test and n, whose last group starts with magic.
func sid(test, n int, magic string) string {
	last := magic + fmt.Sprintf("%012x", n)[len(magic):]
	return fmt.Sprintf("%08x-0000-4000-8000-%s", test, last)
}

// checkResult checks one outcome message against the contract.
func checkResult(t *testing.T, m jetstream.Msg, source, session string) {
	t.Helper()
	wantOutcome := verifeyetest.OutcomeFor(session)
	if got, want := m.Subject(), "verifeye.result."+source+"."+wantOutcome; got != want {
		t.Errorf("result %s: subject = %q, want %q", session, got, want)
	}
	if got := m.Headers().Get(streams.HeaderMsgID); got != session {
		t.Errorf("result %s: Nats-Msg-Id = %q, want the session ID", session, got)
	}
	if got := m.Headers().Get("Content-Type"); got != "application/cloudevents+json" {
		t.Errorf("result %s: Content-Type = %q, want application/cloudevents+json", session, got)
	}
	var ev struct {
		SpecVersion     string          `json:"specversion"`
		ID              string          `json:"id"`
		Type            string          `json:"type"`
		Source          string          `json:"source"`
		Subject         string          `json:"subject"`
		Time            string          `json:"time"`
		DataContentType string          `json:"datacontenttype"`
		Data            json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(m.Data(), &ev); err != nil {
		t.Fatalf("result %s: not a JSON CloudEvent: %v: %s", session, err, m.Data())
	}
	if ev.SpecVersion != "1.0" || ev.ID != session || ev.Subject != session ||
		ev.Type != "ai.realeyes.verifeye.verification.completed" || ev.DataContentType != "application/json" ||
		ev.Source != enricher.EventSource(source) {
		t.Errorf("result %s: CloudEvent attributes = %+v", session, ev)
	}
	if _, err := time.Parse(time.RFC3339Nano, ev.Time); err != nil {
		t.Errorf("result %s: time %q is not RFC 3339: %v", session, ev.Time, err)
	}
	if want := verifeyetest.BodyFor(session); !bytes.Equal(ev.Data, want) {
		t.Errorf("result %s: data = %s, want %s byte for byte", session, ev.Data, want)
	}
}

// dlqWant is what a DLQ message must say.
type dlqWant struct {
	reason, status, attempts string
}

func checkDLQ(t *testing.T, m jetstream.Msg, webhook []byte, source, session string, want dlqWant) {
	t.Helper()
	if got, w := m.Subject(), "verifeye.dlq."+source+".VerificationCompleted"; got != w {
		t.Errorf("DLQ %s: subject = %q, want %q", session, got, w)
	}
	h := m.Headers()
	got := dlqWant{h.Get(streams.HeaderError), h.Get(streams.HeaderLastStatus), h.Get(streams.HeaderAttempts)}
	if got != want {
		t.Errorf("DLQ %s: (Verifeye-Error, Verifeye-Last-Status, Verifeye-Attempts) = %+v, want %+v", session, got, want)
	}
	if !bytes.Equal(m.Data(), webhook) {
		t.Errorf("DLQ %s: body = %q, want the webhook %q", session, m.Data(), webhook)
	}
	if h.Get(streams.HeaderReceivedAt) == "" {
		t.Errorf("DLQ %s: no %s header", session, streams.HeaderReceivedAt)
	}
}

// TestEnricherFailurePolicy makes every row of the failure policy happen
// against the real client and the fake API over HTTP, in one enricher run.
func TestEnricherFailurePolicy(t *testing.T) {
	r := newRig(t)
	opts := options() // MaxAttempts 5, NotFoundAttempts 3
	const source = "kyc"

	type retried struct {
		name    string
		session string
		replies []verifeyetest.Reply
		calls   int
	}
	forbidden := make([]verifeyetest.Reply, opts.MaxAttempts+1)
	for i := range forbidden {
		forbidden[i] = verifeyetest.Status(http.StatusForbidden)
	}
	published := []retried{
		{"200", sid(1, 1, ""), nil, 1},
		{"failed outcome", sid(1, 2, "fa11ed"), nil, 1},
		{"429 twice with Retry-After", sid(1, 3, ""), []verifeyetest.Reply{
			verifeyetest.RetryAfter(http.StatusTooManyRequests, time.Second),
			verifeyetest.RetryAfter(http.StatusTooManyRequests, time.Second)}, 3},
		{"500, 502, 503", sid(1, 4, ""), []verifeyetest.Reply{
			verifeyetest.Status(500), verifeyetest.Status(502), verifeyetest.Status(503)}, 4},
		{"408", sid(1, 5, ""), []verifeyetest.Reply{verifeyetest.Status(http.StatusRequestTimeout)}, 2},
		{"404 twice (result lags)", sid(1, 6, ""), verifeyetest.NotFoundFor(2), 3},
		{"slower than the client timeout", sid(1, 7, ""), []verifeyetest.Reply{verifeyetest.Slow(time.Second)}, 2},
		// More 403s than attempts: a refused key burns none.
		{"403 more times than MaxAttempts", sid(1, 8, ""), forbidden, len(forbidden) + 1},
	}
	type deadLettered struct {
		name    string
		session string
		replies []verifeyetest.Reply
		want    dlqWant
		calls   int
	}
	dead := []deadLettered{
		{"404 forever", sid(1, 20, "404404"), nil, dlqWant{"not_found", "404", "3"}, 3},
		{"400", sid(1, 21, ""), []verifeyetest.Reply{verifeyetest.Status(400)}, dlqWant{"bad_request", "400", "1"}, 1},
		{"200 not JSON", sid(1, 22, ""), []verifeyetest.Reply{verifeyetest.NonJSON()}, dlqWant{"invalid_response", "200", "1"}, 1},
		{"422", sid(1, 23, ""), []verifeyetest.Reply{verifeyetest.Status(422)}, dlqWant{"rejected", "422", "1"}, 1},
		{"500 forever: attempts exhausted", sid(1, 24, "500500"), nil, dlqWant{"attempts_exhausted", "500", "5"}, 5},
	}
	for _, p := range published {
		r.api.Script(p.session, p.replies...)
		r.publishWebhook(source, streams.EventCompleted, p.session)
	}
	webhooks := make(map[string][]byte)
	for _, d := range dead {
		r.api.Script(d.session, d.replies...)
		webhooks[d.session], _ = r.publishWebhook(source, streams.EventCompleted, d.session)
	}

	stop := r.startReady(enricher.New(r.js, r.client(200*time.Millisecond), r.log, opts))
	r.waitCount(streams.Results, len(published), 30*time.Second)
	r.waitCount(streams.DLQ, len(dead), 30*time.Second)
	r.waitSettled("enricher", 10*time.Second)
	stop()

	results := r.byMsgID(streams.Results)
	for _, p := range published {
		m, ok := results[p.session]
		if !ok {
			t.Errorf("%s: no result for %s", p.name, p.session)
			continue
		}
		checkResult(t, m, source, p.session)
		if got := r.api.Calls(p.session); got != p.calls {
			t.Errorf("%s: API calls = %d, want %d", p.name, got, p.calls)
		}
	}
	dlq := r.byMsgID(streams.DLQ)
	bySession := make(map[string]jetstream.Msg)
	for _, m := range dlq {
		var wh struct {
			SessionID string `json:"verificationSessionId"`
		}
		_ = json.Unmarshal(m.Data(), &wh)
		bySession[wh.SessionID] = m
	}
	for _, d := range dead {
		m, ok := bySession[d.session]
		if !ok {
			t.Errorf("%s: %s not on the DLQ", d.name, d.session)
			continue
		}
		checkDLQ(t, m, webhooks[d.session], source, d.session, d.want)
		if got := r.api.Calls(d.session); got != d.calls {
			t.Errorf("%s: API calls = %d, want %d", d.name, got, d.calls)
		}
		if _, ok := results[d.session]; ok {
			t.Errorf("%s: %s has a result; want none", d.name, d.session)
		}
	}
}

// TestEnricherPausesOnRefusedKey: while the API answers 401 the enricher holds
// the messages it has (no attempt burned, nothing dead-lettered), fetches no
// more, and reports itself unready; a working key resumes it.
func TestEnricherPausesOnRefusedKey(t *testing.T) {
	r := newRig(t)
	opts := options()
	opts.Concurrency = 2
	opts.MaxAttempts = 3
	sessions := []string{sid(2, 1, ""), sid(2, 2, ""), sid(2, 3, "fa11ed")}
	for _, s := range sessions {
		r.publishWebhook("default", streams.EventCompleted, s)
	}
	r.api.SetAPIKey("a-key-the-bridge-does-not-have")

	e := enricher.New(r.js, r.client(time.Second), r.log, opts)
	stop := r.start(e)
	// Several AuthRetry intervals, well past MaxAttempts probes of each held
	// message. A worker that had not fetched when the first 401 paused the
	// enricher fetches nothing more, so one or two messages are held.
	held := 0
	natstest.WaitFor(t, 20*time.Second, func() error {
		fetched, probed := 0, 0
		for _, s := range sessions {
			if n := r.api.Calls(s); n > 0 {
				fetched++
				if n >= 3*opts.MaxAttempts {
					probed++
				}
			}
		}
		if fetched == 0 || probed != fetched {
			return fmt.Errorf("%d of the %d sessions fetched probed %d times, want all", probed, fetched, 3*opts.MaxAttempts)
		}
		held = fetched
		return nil
	})
	if held > opts.Concurrency {
		t.Errorf("%d messages held, more than the %d workers", held, opts.Concurrency)
	}
	if err := e.Ready(context.Background()); err == nil {
		t.Errorf("Ready() = nil while the API refuses the key, want an error")
	}
	info := r.consumerInfo("enricher")
	if info.Delivered.Consumer != uint64(held) || info.NumRedelivered != 0 ||
		info.NumAckPending != held || info.NumPending != uint64(len(sessions)-held) {
		t.Errorf("while paused: delivered %d, redelivered %d, unacknowledged %d, pending %d; want %d, 0, %d, %d (held, not redelivered, no new fetch)",
			info.Delivered.Consumer, info.NumRedelivered, info.NumAckPending, info.NumPending,
			held, held, len(sessions)-held)
	}
	if n := natstest.Count(t, r.js, streams.DLQ); n != 0 {
		t.Errorf("DLQ holds %d messages while paused, want 0", n)
	}
	if n := natstest.Count(t, r.js, streams.Results); n != 0 {
		t.Errorf("results hold %d messages while paused, want 0", n)
	}

	r.api.SetAPIKey(testKey)
	r.waitCount(streams.Results, len(sessions), 10*time.Second)
	natstest.WaitFor(t, 5*time.Second, func() error { return e.Ready(context.Background()) })
	r.waitSettled("enricher", 5*time.Second)
	if info := r.consumerInfo("enricher"); info.NumRedelivered != 0 {
		t.Errorf("after the pause: %d messages redelivered, want 0", info.NumRedelivered)
	}
	stop()
	r.checkAllPublished(sessions, "default")
}

// publisherFunc adapts a function to enricher.Publisher.
type publisherFunc func(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)

func (f publisherFunc) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return f(ctx, msg, opts...)
}

// TestEnricherCrashAfterPublish: the enricher dies after the outcome is stored
// and before the webhook is acked; a fresh enricher gets the redelivery and the
// results stream still holds one outcome.
func TestEnricherCrashAfterPublish(t *testing.T) {
	r := newRig(t)
	session := sid(3, 1, "")
	_, seq := r.publishWebhook("default", streams.EventCompleted, session)

	nc1 := r.ns.Connect()
	js1, err := jetstream.New(nc1)
	if err != nil {
		t.Fatal(err)
	}
	var crashed atomic.Bool
	crash := publisherFunc(func(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
		if _, err := js1.PublishMsg(ctx, msg, opts...); err != nil {
			return nil, err
		}
		crashed.Store(true)
		nc1.Close() // the process is gone before it can ack
		return nil, errors.New("test: crashed after publishing")
	})
	opts1 := options()
	opts1.Publisher = crash
	stop1 := r.startReady(enricher.New(js1, r.client(time.Second), r.log, opts1))
	natstest.WaitFor(t, 10*time.Second, func() error {
		if !crashed.Load() {
			return errors.New("no publish yet")
		}
		return nil
	})
	stop1()
	if n := natstest.Count(t, r.js, streams.Results); n != 1 {
		t.Fatalf("after the crash the results stream holds %d messages, want 1", n)
	}
	if info := r.consumerInfo("enricher"); info.NumAckPending != 1 || info.AckFloor.Stream >= seq {
		t.Fatalf("after the crash: %d unacknowledged, ack floor %d; want the webhook (seq %d) unacknowledged",
			info.NumAckPending, info.AckFloor.Stream, seq)
	}

	r.startReady(enricher.New(r.ns.JetStream(), r.client(time.Second), r.log, options()))
	natstest.WaitFor(t, 15*time.Second, func() error {
		if info := r.consumerInfo("enricher"); info.AckFloor.Stream < seq {
			return fmt.Errorf("webhook %d not acknowledged yet (ack floor %d)", seq, info.AckFloor.Stream)
		}
		return nil
	})
	if got := r.api.Calls(session); got != 2 {
		t.Errorf("API calls = %d, want 2 (the crashed attempt and the redelivery)", got)
	}
	if n := natstest.Count(t, r.js, streams.Results); n != 1 {
		t.Fatalf("results stream holds %d messages, want exactly 1", n)
	}
	m, ok := r.byMsgID(streams.Results)[session]
	if !ok {
		t.Fatalf("no result with Nats-Msg-Id %s", session)
	}
	checkResult(t, m, "default", session)
	if n := natstest.Count(t, r.js, streams.DLQ); n != 0 {
		t.Errorf("DLQ holds %d messages, want 0", n)
	}
}

// TestEnricherReplicasShareConsumer: two enrichers on one durable consumer
// enrich each session exactly once.
func TestEnricherReplicasShareConsumer(t *testing.T) {
	r := newRig(t)
	const n = 100
	sessions := make([]string, n)
	for i := range sessions {
		sessions[i] = sid(4, i, "")
		r.publishWebhook("default", streams.EventCompleted, sessions[i])
	}
	opts := options()
	opts.AckWait = 2 * time.Second
	var calls [2]atomic.Int64
	for i := range 2 {
		api := countingAPI{next: r.client(time.Second), calls: &calls[i]}
		r.startReady(enricher.New(r.ns.JetStream(), api, r.log, opts))
	}
	r.waitCount(streams.Results, n, 30*time.Second)
	r.waitSettled("enricher", 10*time.Second)

	results := r.byMsgID(streams.Results)
	for _, s := range sessions {
		if m, ok := results[s]; ok {
			checkResult(t, m, "default", s)
		} else {
			t.Errorf("no result for %s", s)
		}
	}
	if got := r.api.TotalCalls(); got != n {
		t.Errorf("API calls = %d, want %d (one per session)", got, n)
	}
	if calls[0].Load() == 0 || calls[1].Load() == 0 {
		// Not a guarantee, but with both running from the start each should get work.
		t.Logf("API calls by replica: %d, %d", calls[0].Load(), calls[1].Load())
	}
}

// countingAPI counts calls and tracks the most that ran at once.
type countingAPI struct {
	next    enricher.APIClient
	calls   *atomic.Int64
	running *atomic.Int64
	most    *atomic.Int64
}

func (c countingAPI) GetSessionResult(ctx context.Context, session string) (*verifeye.Result, error) {
	c.calls.Add(1)
	if c.running != nil {
		n := c.running.Add(1)
		defer c.running.Add(-1)
		for m := c.most.Load(); n > m && !c.most.CompareAndSwap(m, n); m = c.most.Load() {
		}
	}
	return c.next.GetSessionResult(ctx, session)
}

// TestEnricherAPIOutage: while the API answers 503 the webhooks wait in
// JetStream, never more than Concurrency held by the process; afterwards every
// session has exactly one outcome.
func TestEnricherAPIOutage(t *testing.T) {
	r := newRig(t)
	opts := options()
	opts.Concurrency = 4
	opts.MaxAttempts = 40 // enough for the outage: this test is not about exhaustion
	opts.Policy.BackoffBase = 50 * time.Millisecond
	opts.Policy.BackoffMax = time.Second
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	var calls, running, most atomic.Int64
	api := countingAPI{next: r.client(time.Second), calls: &calls, running: &running, most: &most}
	e := enricher.New(r.js, api, r.log.Level(zerolog.ErrorLevel), opts)
	maxAckPending := e.ConsumerConfig().MaxAckPending

	r.api.SetFault(&verifeyetest.Reply{Status: http.StatusServiceUnavailable})
	r.startReady(e)
	const n = 100
	sessions := make([]string, n)
	for i := range sessions {
		sessions[i] = sid(5, i, "")
		r.publishWebhook("default", streams.EventCompleted, sessions[i])
	}

	// The design's outage is 20 s and more; 5 s keeps the suite fast and is
	// long enough for every held message to be retried several times.
	var waiting uint64 // webhooks in JetStream, not held by the process, at the last sample
	var mostHeld float64
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		info := r.consumerInfo("enricher")
		if info.NumAckPending > maxAckPending {
			t.Fatalf("during the outage %d messages unacknowledged, over MaxAckPending %d", info.NumAckPending, maxAckPending)
		}
		held := metricValue(t, reg, "verifeye_bridge_enricher_in_flight")
		// Undelivered, or delivered and waiting out a NakWithDelay: both wait
		// on the server, not in this process.
		waiting = info.NumPending + uint64(info.NumAckPending) - uint64(held)
		if held > float64(opts.Concurrency) {
			t.Fatalf("during the outage the process held %v messages, over Concurrency %d", held, opts.Concurrency)
		}
		mostHeld = max(mostHeld, held)
	}
	if waiting == 0 {
		t.Errorf("at the end of the outage no webhook waited in JetStream; want all but the %d held ones to wait there", opts.Concurrency)
	}
	if mostHeld == 0 {
		t.Errorf("the in-flight gauge never rose above 0 during the outage; the sampling saw nothing")
	}
	if got := most.Load(); got > int64(opts.Concurrency) {
		t.Errorf("up to %d API calls at once, want at most Concurrency %d", got, opts.Concurrency)
	}
	if got := calls.Load(); got < n {
		t.Errorf("%d API calls during the outage; want the outage to have been hit (at least %d)", got, n)
	}
	if got := natstest.Count(t, r.js, streams.Results); got != 0 {
		t.Fatalf("results hold %d messages during the outage, want 0", got)
	}

	r.api.SetFault(nil)
	r.waitCount(streams.Results, n, 30*time.Second)
	r.waitSettled("enricher", 10*time.Second)
	r.checkAllPublished(sessions, "default")
}

// metricValue returns the value of the unlabelled counter or gauge name in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			if c := mf.GetMetric()[0].GetCounter(); c != nil {
				return c.GetValue()
			}
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// TestEnricherIgnoresOtherEvents: events other than VerificationCompleted stay
// on the webhooks stream and cost no API call.
func TestEnricherIgnoresOtherEvents(t *testing.T) {
	r := newRig(t)
	other := sid(6, 1, "")
	r.publishWebhook("default", "SomethingElse", other)
	r.publishWebhook("kyc", "VerificationStarted", sid(6, 2, ""))
	// A completed event published after the others: once it is enriched, the
	// enricher has seen everything before it it was going to see.
	barrier := sid(6, 3, "")
	r.publishWebhook("default", streams.EventCompleted, barrier)

	r.startReady(enricher.New(r.js, r.client(time.Second), r.log, options()))
	r.waitCount(streams.Results, 1, 10*time.Second)
	r.waitSettled("enricher", 5*time.Second)

	if got := r.api.TotalCalls(); got != 1 {
		t.Errorf("API calls = %d, want 1 (only the VerificationCompleted event)", got)
	}
	if got := r.api.Calls(other); got != 0 {
		t.Errorf("API calls for the SomethingElse session = %d, want 0", got)
	}
	if got := natstest.Count(t, r.js, streams.Webhooks); got != 3 {
		t.Errorf("webhooks stream holds %d messages, want all 3 kept", got)
	}
	if got := natstest.Count(t, r.js, streams.DLQ); got != 0 {
		t.Errorf("DLQ holds %d messages, want 0", got)
	}
	if info := r.consumerInfo("enricher"); info.Delivered.Consumer != 1 {
		t.Errorf("consumer delivered %d messages, want 1", info.Delivered.Consumer)
	}
	m, ok := r.byMsgID(streams.Results)[barrier]
	if !ok {
		t.Fatalf("no result with Nats-Msg-Id %s", barrier)
	}
	checkResult(t, m, "default", barrier)
}

// TestEnricherInvalidWebhook: a message on a completed subject that is not a
// webhook of the contract goes to the DLQ without an API call.
func TestEnricherInvalidWebhook(t *testing.T) {
	r := newRig(t)
	msg := nats.NewMsg(r.subjects.Webhook("default", streams.EventCompleted))
	msg.Data = []byte(`{"event":"VerificationCompleted","verificationSessionId":"not-a-uuid"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := r.js.PublishMsg(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	r.startReady(enricher.New(r.js, r.client(time.Second), r.log, options()))
	r.waitCount(streams.DLQ, 1, 10*time.Second)
	m := natstest.Messages(t, r.js, streams.DLQ)[0]
	if got := m.Headers().Get(streams.HeaderError); got != enricher.ReasonInvalidWebhook {
		t.Errorf("DLQ reason = %q, want %q", got, enricher.ReasonInvalidWebhook)
	}
	if got, want := m.Headers().Get(streams.HeaderMsgID), "dlq:"+strconv.FormatUint(ack.Sequence, 10); got != want {
		t.Errorf("DLQ Nats-Msg-Id = %q, want %q", got, want)
	}
	if !bytes.Equal(m.Data(), msg.Data) {
		t.Errorf("DLQ body = %q, want %q", m.Data(), msg.Data)
	}
	if got := r.api.TotalCalls(); got != 0 {
		t.Errorf("API calls = %d, want 0", got)
	}
}

// TestEnricherStopsCrashLoop: a webhook already delivered MaxAttempts times
// without a decision (earlier enrichers crashed on it) is dead-lettered as
// max_deliveries on its next delivery, without another API call.
func TestEnricherStopsCrashLoop(t *testing.T) {
	r := newRig(t)
	opts := options()
	opts.MaxAttempts = 2
	opts.AckWait = 300 * time.Millisecond
	e := enricher.New(r.js, r.client(time.Second), r.log, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := r.js.CreateOrUpdateConsumer(ctx, streams.Webhooks, e.ConsumerConfig())
	if err != nil {
		t.Fatal(err)
	}
	session := sid(7, 1, "")
	body, _ := r.publishWebhook("default", streams.EventCompleted, session)
	// Two crashed enrichers: each fetched the webhook and never decided.
	for i := 1; i <= opts.MaxAttempts; i++ {
		natstest.WaitFor(t, 5*time.Second, func() error {
			m, err := cons.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
			if err != nil {
				return err
			}
			if md, _ := m.Metadata(); md == nil || md.NumDelivered != uint64(i) {
				return fmt.Errorf("delivery %d: metadata %+v", i, md)
			}
			return nil
		})
	}

	r.startReady(e)
	r.waitCount(streams.DLQ, 1, 10*time.Second)
	r.waitSettled("enricher", 5*time.Second)
	checkDLQ(t, natstest.Messages(t, r.js, streams.DLQ)[0], body, "default", session, dlqWant{"max_deliveries", "0", "3"})
	if got := r.api.TotalCalls(); got != 0 {
		t.Errorf("API calls = %d, want 0", got)
	}
	if got := natstest.Count(t, r.js, streams.Results); got != 0 {
		t.Errorf("results hold %d messages, want 0", got)
	}
}

// TestEnricherRecreatesDeletedConsumer: a running enricher whose durable
// consumer is deleted creates it again, as a restart would, instead of
// failing every fetch forever.
func TestEnricherRecreatesDeletedConsumer(t *testing.T) {
	r := newRig(t)
	r.startReady(enricher.New(r.js, r.client(time.Second), r.log.Level(zerolog.ErrorLevel), options()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.js.DeleteConsumer(ctx, streams.Webhooks, "enricher"); err != nil {
		t.Fatalf("DeleteConsumer() error = %v", err)
	}
	session := sid(8, 1, "")
	r.publishWebhook("default", streams.EventCompleted, session)
	r.waitCount(streams.Results, 1, 15*time.Second)
	m, ok := r.byMsgID(streams.Results)[session]
	if !ok {
		t.Fatalf("no result with Nats-Msg-Id %s", session)
	}
	checkResult(t, m, "default", session)
}

// TestEnricherSurvivesNATSRestart: the server restarts while webhooks are being
// enriched; afterwards every session has exactly one outcome.
func TestEnricherSurvivesNATSRestart(t *testing.T) {
	r := newRig(t)
	r.api.SetLatency(50 * time.Millisecond) // keep enrichments in flight across the restart
	e := enricher.New(r.ns.JetStream(), r.client(time.Second), r.log, options())
	r.startReady(e)
	const n = 60
	sessions := make([]string, n)
	for i := range sessions {
		sessions[i] = sid(10, i, "")
		r.publishWebhook("default", streams.EventCompleted, sessions[i])
	}
	natstest.WaitFor(t, 10*time.Second, func() error {
		if got := natstest.Count(t, r.js, streams.Results); got == 0 {
			return errors.New("no outcome yet")
		}
		return nil
	})
	t.Logf("restarting NATS after %d of %d API calls", r.api.TotalCalls(), n)
	r.ns.Restart()
	r.waitCount(streams.Results, n, 30*time.Second)
	r.waitSettled("enricher", 10*time.Second)
	r.checkAllPublished(sessions, "default")
}

// checkAllPublished fails the test unless every session has its result,
// checked by checkResult, and the DLQ is empty.
func (r *rig) checkAllPublished(sessions []string, source string) {
	r.t.Helper()
	results := r.byMsgID(streams.Results)
	for _, s := range sessions {
		if m, ok := results[s]; ok {
			checkResult(r.t, m, source, s)
		} else {
			r.t.Errorf("no result for %s", s)
		}
	}
	if got := natstest.Count(r.t, r.js, streams.DLQ); got != 0 {
		r.t.Errorf("DLQ holds %d messages, want 0", got)
	}
}

// TestEnricherReadsWebhookAsIngest: the enricher reads a stored webhook with
// the ingest's parser, so a body whose keys a case-insensitive decoder would
// read as another session (stored before the ingest refused such bodies) is
// never enriched for that other session: it is dead-lettered as invalid, with
// no API call. A plain webhook is enriched for the ID the ingest validated.
func TestEnricherReadsWebhookAsIngest(t *testing.T) {
	r := newRig(t)
	a, b := sid(99, 1, ""), sid(99, 2, "")
	for _, key := range []string{"VERIFICATIONSESSIONID", "verificationSeſſionId"} {
		msg := nats.NewMsg(r.subjects.Webhook("default", streams.EventCompleted))
		msg.Data = []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + a + `","` + key + `":"` + b + `"}`)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := r.js.PublishMsg(ctx, msg)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	c := sid(99, 3, "")
	r.publishWebhook("default", streams.EventCompleted, c)
	r.startReady(enricher.New(r.js, r.client(time.Second), r.log, options()))
	r.waitCount(streams.DLQ, 2, 10*time.Second)
	r.waitCount(streams.Results, 1, 10*time.Second)
	for _, m := range natstest.Messages(t, r.js, streams.DLQ) {
		if got := m.Headers().Get(streams.HeaderError); got != enricher.ReasonInvalidWebhook {
			t.Errorf("DLQ reason = %q, want %q", got, enricher.ReasonInvalidWebhook)
		}
	}
	results := r.byMsgID(streams.Results)
	if _, ok := results[b]; ok {
		t.Errorf("an outcome for %s, the session hidden behind a case-variant key", b)
	}
	if m, ok := results[c]; !ok {
		t.Errorf("no outcome for %s", c)
	} else {
		checkResult(t, m, "default", c)
	}
	if got := r.api.TotalCalls(); got != 1 {
		t.Errorf("API calls = %d, want 1 (for %s only)", got, c)
	}
}

// TestEnricherRedirectNotFollowed: an API that answers 302 does not get the
// webhook enriched by whatever the new location says; the location receives
// nothing (not the API key either) and the webhook goes to the DLQ as
// redirected, at once.
func TestEnricherRedirectNotFollowed(t *testing.T) {
	r := newRig(t)
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		elsewhere.Add(1)
		_, _ = io.WriteString(w, `{"verificationResult":"passed"}`)
	}))
	defer other.Close()
	session := sid(40, 1, "0000")
	r.api.Script(session, verifeyetest.Reply{Status: http.StatusFound, Header: http.Header{"Location": {other.URL + verifeyetest.ResultPath}}})
	r.publishWebhook("default", streams.EventCompleted, session)

	r.startReady(enricher.New(r.js, r.client(time.Second), r.log, options()))
	r.waitCount(streams.DLQ, 1, 10*time.Second)
	m := natstest.Messages(t, r.js, streams.DLQ)[0]
	h := m.Headers()
	if got, want := []string{h.Get(streams.HeaderError), h.Get(streams.HeaderLastStatus), h.Get(streams.HeaderAttempts)}, []string{enricher.ReasonRedirected, "302", "1"}; !cmp.Equal(got, want) {
		t.Errorf("DLQ reason, last status, attempts = %q, want %q", got, want)
	}
	if n := natstest.Count(t, r.js, streams.Results); n != 0 {
		t.Errorf("results stream holds %d outcomes, want 0", n)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the redirect's location received %d requests, want 0", n)
	}
}
