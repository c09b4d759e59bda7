package spool

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// cluster is a test NATS server with the contract's streams.
func cluster(t *testing.T) (*natstest.Server, jetstream.JetStream) {
	t.Helper()
	srv := natstest.Start(t)
	js := srv.JetStream()
	s, _ := streams.NewSubjects("verifeye")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, s, streams.DefaultLimits()); err != nil {
		t.Fatalf("streams.Ensure: %v", err)
	}
	return srv, js
}

func open(t *testing.T, pub Publisher, opts Options) *Spool {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = filepath.Join(t.TempDir(), "spool")
	}
	if opts.After == 0 {
		opts.After = 300 * time.Millisecond
	}
	opts.Log = zerolog.New(zerolog.NewTestWriter(t))
	s, err := Open(pub, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// run runs the forwarder until the test ends.
func run(t *testing.T, s *Spool) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	})
}

func webhook(i int) *nats.Msg {
	session := fmt.Sprintf("5b0e1c2a-0000-4000-8000-%012x", i)
	m := nats.NewMsg("verifeye.webhook.default." + streams.EventCompleted)
	m.Data = []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + session + `"}`)
	m.Header.Set(streams.HeaderMsgID, streams.WebhookMsgID(streams.EventCompleted, session))
	m.Header.Set(streams.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	m.Header.Set("traceparent", fmt.Sprintf("00-%032x-%016x-01", i+1, i+1))
	return m
}

func publish(t *testing.T, s *Spool, m *nats.Msg) (*jetstream.PubAck, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return s.PublishMsg(ctx, m, jetstream.WithMsgID(m.Header.Get(streams.HeaderMsgID)), jetstream.WithExpectStream(streams.Webhooks))
}

func depth(t *testing.T, s *Spool) uint64 {
	t.Helper()
	st, err := s.State(context.Background())
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	return st.Messages
}

func waitCount(t *testing.T, js jetstream.JetStream, want int) {
	t.Helper()
	natstest.WaitFor(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, streams.Webhooks)
		if err != nil {
			return err
		}
		if n := st.CachedInfo().State.Msgs; int(n) != want {
			return fmt.Errorf("%s holds %d messages, want %d", streams.Webhooks, n, want)
		}
		return nil
	})
}

// TestHealthyClusterBypassesSpool: with the cluster up, PublishMsg is the
// cluster's publish and the spool stays empty.
func TestHealthyClusterBypassesSpool(t *testing.T) {
	t.Parallel()
	_, js := cluster(t)
	s := open(t, js, Options{})
	ack, err := publish(t, s, webhook(1))
	if err != nil || ack.Stream != streams.Webhooks {
		t.Fatalf("PublishMsg = %+v, %v; want a PubAck of %s", ack, err, streams.Webhooks)
	}
	if n := depth(t, s); n != 0 {
		t.Errorf("spool holds %d events, want 0", n)
	}
}

// TestSpoolAndForward: with the cluster down every event is spooled; once it
// is back the forwarder delivers them in arrival order with their subject,
// data and every header, plus Verifeye-Spooled-At, and empties the spool.
func TestSpoolAndForward(t *testing.T) {
	t.Parallel()
	srv, js := cluster(t)
	reg := prometheus.NewRegistry()
	s := open(t, js, Options{Registerer: reg})
	srv.Shutdown()

	const n = 20
	var sent []*nats.Msg
	for i := range n {
		m := webhook(i)
		ack, err := publish(t, s, m)
		if err != nil || ack.Stream != streams.Spool {
			t.Fatalf("PublishMsg %d with the cluster down = %+v, %v; want a PubAck of %s", i, ack, err, streams.Spool)
		}
		sent = append(sent, m)
	}
	// A retry of a spooled event is a duplicate in the spool too.
	if ack, err := publish(t, s, webhook(3)); err != nil || !ack.Duplicate {
		t.Errorf("PublishMsg of a spooled event again = %+v, %v; want a duplicate", ack, err)
	}
	if d := depth(t, s); d != n {
		t.Fatalf("spool holds %d events, want %d", d, n)
	}
	if err := s.Ready(context.Background()); err != nil {
		t.Errorf("Ready with the cluster down = %v, want nil (the spool accepts)", err)
	}

	srv.Restart()
	run(t, s)
	waitCount(t, js, n)
	natstest.WaitFor(t, 10*time.Second, func() error {
		if d := depth(t, s); d != 0 {
			return fmt.Errorf("spool holds %d events, want 0", d)
		}
		return nil
	})
	for i, m := range natstest.Messages(t, js, streams.Webhooks) {
		want := sent[i]
		if m.Subject() != want.Subject || string(m.Data()) != string(want.Data) {
			t.Errorf("message %d: %s %s, want %s %s (arrival order)", i, m.Subject(), m.Data(), want.Subject, want.Data)
		}
		for _, h := range []string{streams.HeaderMsgID, streams.HeaderReceivedAt, "traceparent"} {
			if got := m.Headers().Get(h); got != want.Header.Get(h) {
				t.Errorf("message %d: header %s = %q, want %q", i, h, got, want.Header.Get(h))
			}
		}
		if at, err := time.Parse(time.RFC3339Nano, m.Headers().Get(streams.HeaderSpooledAt)); err != nil || time.Since(at) > time.Minute {
			t.Errorf("message %d: %s = %q (%v), want when it was spooled", i, streams.HeaderSpooledAt, m.Headers().Get(streams.HeaderSpooledAt), err)
		}
	}
	mfs, _ := reg.Gather()
	got := map[string]float64{}
	for _, mf := range mfs {
		if len(mf.Metric) == 1 {
			if c := mf.Metric[0].Counter; c != nil {
				got[mf.GetName()] = c.GetValue()
			}
		}
	}
	if got["verifeye_bridge_spooled_total"] != n || got["verifeye_bridge_spool_forwarded_total"] != n {
		t.Errorf("spooled_total %v, forwarded_total %v; want %d each", got["verifeye_bridge_spooled_total"], got["verifeye_bridge_spool_forwarded_total"], n)
	}
}

// lostAck publishes to the cluster, then reports a timeout for the first
// publishes, as if the PubAck had been lost after the cluster stored the event.
type lostAck struct {
	js   jetstream.JetStream
	lose atomic.Int32
}

func (p *lostAck) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := p.js.PublishMsg(ctx, m, opts...)
	if err == nil && p.lose.Add(-1) >= 0 {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return ack, err
}

// TestLostPubAckYieldsOneMessage: the cluster stored the event but its PubAck
// never came; the event is spooled and forwarded, and the message ID makes the
// forward a duplicate: one message, not two.
func TestLostPubAckYieldsOneMessage(t *testing.T) {
	t.Parallel()
	_, js := cluster(t)
	pub := &lostAck{js: js}
	pub.lose.Store(1)
	s := open(t, pub, Options{})
	ack, err := publish(t, s, webhook(7))
	if err != nil || ack.Stream != streams.Spool {
		t.Fatalf("PublishMsg with the PubAck lost = %+v, %v; want it spooled", ack, err)
	}
	run(t, s)
	natstest.WaitFor(t, 10*time.Second, func() error {
		if d := depth(t, s); d != 0 {
			return fmt.Errorf("spool holds %d events, want 0", d)
		}
		return nil
	})
	if n := natstest.Count(t, js, streams.Webhooks); n != 1 {
		t.Errorf("%s holds %d messages, want 1", streams.Webhooks, n)
	}
}

// TestSpoolFull: a full spool refuses the new event (ErrFull: the ingest
// answers 503) and keeps every event it holds; all of them arrive later.
func TestSpoolFull(t *testing.T) {
	t.Parallel()
	srv, js := cluster(t)
	s := open(t, js, Options{MaxBytes: 2048})
	srv.Shutdown()
	stored := 0
	for i := range 100 {
		_, err := publish(t, s, webhook(i))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatalf("PublishMsg %d = %v, want a PubAck or ErrFull", i, err)
		}
		stored++
	}
	if stored == 0 || stored == 100 {
		t.Fatalf("%d events stored in a 2 KiB spool; want some, then ErrFull", stored)
	}
	if err := s.Ready(context.Background()); !errors.Is(err, ErrFull) {
		t.Errorf("Ready of a full spool = %v, want ErrFull", err)
	}
	if d := depth(t, s); int(d) != stored {
		t.Errorf("spool holds %d events, want the %d stored", d, stored)
	}
	srv.Restart()
	run(t, s)
	waitCount(t, js, stored)
}

// TestSpoolRefusingWrites: a spool that cannot write (here its stream refuses
// every write, as a read-only or full disk does) makes PublishMsg fail, so the
// ingest answers 503, never 202; Ready says so.
func TestSpoolRefusingWrites(t *testing.T) {
	t.Parallel()
	srv, js := cluster(t)
	s := open(t, js, Options{})
	ctx := context.Background()
	info, err := s.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.Sealed = true
	if _, err := s.local.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("seal the spool stream: %v", err)
	}
	srv.Shutdown()
	if ack, err := publish(t, s, webhook(1)); err == nil {
		t.Fatalf("PublishMsg into a spool that refuses writes = %+v, want an error", ack)
	}
	if err := s.Ready(ctx); err == nil {
		t.Errorf("Ready after a failed write = nil, want an error")
	}
}

// TestRestartForwardsPredecessor: events spooled by one process (closed with
// the cluster still down) are forwarded by the next one to open the directory.
func TestRestartForwardsPredecessor(t *testing.T) {
	t.Parallel()
	srv, js := cluster(t)
	dir := filepath.Join(t.TempDir(), "spool")
	first, err := Open(js, Options{Dir: dir, After: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	for i := range 5 {
		if _, err := publish(t, first, webhook(i)); err != nil {
			t.Fatalf("PublishMsg %d: %v", i, err)
		}
	}
	first.Close()

	second := open(t, js, Options{Dir: dir})
	if d := depth(t, second); d != 5 {
		t.Fatalf("the reopened spool holds %d events, want 5", d)
	}
	run(t, second)
	srv.Restart()
	waitCount(t, js, 5)
}

// TestDrainLeavesTheRest: Drain with the cluster away gives up when its
// context ends and reports what is left; nothing is lost.
func TestDrainLeavesTheRest(t *testing.T) {
	t.Parallel()
	srv, js := cluster(t)
	s := open(t, js, Options{})
	srv.Shutdown()
	for i := range 3 {
		if _, err := publish(t, s, webhook(i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	left, _ := s.Drain(ctx)
	if left != 3 {
		t.Errorf("Drain with the cluster down left %d, want 3", left)
	}
	srv.Restart()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	if left, err := s.Drain(ctx2); left != 0 || err != nil {
		t.Errorf("Drain with the cluster back = %d, %v; want 0, nil", left, err)
	}
	waitCount(t, js, 3)
}
