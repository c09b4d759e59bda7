package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

const stream = "GC_TEST"

// start returns a sync-always server's JetStream with the stream, atomic
// publish allowed or not.
func start(t *testing.T, atomic bool) jetstream.JetStream {
	t.Helper()
	srv := natstest.StartWith(t, natsembed.Options{StoreDir: t.TempDir()})
	js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: stream, Subjects: []string{"gc.>"}, Storage: jetstream.FileStorage,
		Duplicates: time.Minute, AllowAtomicPublish: atomic,
	}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	return js
}

func newPublisher(t *testing.T, js jetstream.JetStream, log zerolog.Logger) *Publisher {
	t.Helper()
	p, err := New(js, Options{Stream: stream, Log: log})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

func msg(id string) *nats.Msg {
	m := nats.NewMsg("gc.webhook")
	m.Data = []byte(`{"id":"` + id + `"}`)
	m.Header.Set(jetstream.MsgIDHeader, id)
	return m
}

type result struct {
	id  string
	ack *jetstream.PubAck
	err error
}

// gather publishes one message per id concurrently while a batch is held in
// flight, so that all of them wait in the queue, then lets them go: they are
// sent as batches (deterministically, rather than by the scheduler's luck or
// what the Publisher learnt of the costs).
func gather(t *testing.T, p *Publisher, ids []string) []result {
	t.Helper()
	// The previous batches' goroutine may still be on its way out.
	natstest.WaitFor(t, 10*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.busy {
			return fmt.Errorf("a publish is in flight")
		}
		p.busy = true
		return nil
	})
	res := make([]result, len(ids))
	var wg sync.WaitGroup
	wg.Go(func() { publishAll(p, ids, res) })
	natstest.WaitFor(t, 10*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.queue) != len(ids) {
			return fmt.Errorf("%d of %d publishes queued", len(p.queue), len(ids))
		}
		return nil
	})
	// Whatever it learnt so far, the gathering goes as a batch.
	p.cost.mu.Lock()
	p.cost.batch, p.cost.tried = 0, time.Now()
	p.cost.mu.Unlock()
	p.next()
	wg.Wait()
	return res
}

// publishAll publishes one message per id, all at once, and returns when
// every one is answered, with the answers in res (in the order of ids).
func publishAll(p *Publisher, ids []string, res []result) {
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ack, err := p.PublishMsg(ctx, msg(id), jetstream.WithExpectStream(stream))
			res[i] = result{id, ack, err}
		})
	}
	wg.Wait()
}

// stored returns the message ID of every stored message by sequence.
func stored(t *testing.T, js jetstream.JetStream) map[uint64]string {
	t.Helper()
	out := map[uint64]string{}
	for _, m := range natstest.Messages(t, js, stream) {
		md, err := m.Metadata()
		if err != nil {
			t.Fatalf("metadata: %v", err)
		}
		out[md.Sequence.Stream] = m.Headers().Get(jetstream.MsgIDHeader)
	}
	return out
}

// check asserts that every result is an ack whose sequence holds its ID,
// that the stream holds each ID once, and returns how many acks were
// duplicates.
func check(t *testing.T, js jetstream.JetStream, res []result) (dups int) {
	t.Helper()
	st := stored(t, js)
	seen := map[string]int{}
	for _, id := range st {
		seen[id]++
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("message %s stored %d times", id, n)
		}
	}
	for _, r := range res {
		if r.err != nil {
			t.Errorf("publish %s: %v", r.id, r.err)
			continue
		}
		if r.ack.Stream != stream {
			t.Errorf("publish %s: PubAck stream %q, want %q", r.id, r.ack.Stream, stream)
		}
		if got := st[r.ack.Sequence]; got != r.id {
			t.Errorf("publish %s: PubAck sequence %d holds %q", r.id, r.ack.Sequence, got)
		}
		if r.ack.Duplicate {
			dups++
		}
	}
	return dups
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// TestLonePublish: a publish with nothing in flight is sent at once, alone,
// and answered with its PubAck.
func TestLonePublish(t *testing.T) {
	js := start(t, true)
	p := newPublisher(t, js, zerolog.Nop())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := p.PublishMsg(ctx, msg("lone"), jetstream.WithExpectStream(stream))
	if err != nil {
		t.Fatalf("PublishMsg: %v", err)
	}
	if ack.Duplicate {
		t.Error("PubAck.Duplicate = true for a new message")
	}
	check(t, js, []result{{"lone", ack, nil}})
	if st := p.Stats(); st.Singles != 1 || st.Batches != 0 {
		t.Errorf("Stats = %+v, want one single and no batch", st)
	}
}

// TestConcurrentPublishesShareBatches: publishes made while one is in flight
// are stored as one atomic batch, each answered with its own sequence.
func TestConcurrentPublishesShareBatches(t *testing.T) {
	js := start(t, true)
	p := newPublisher(t, js, zerolog.Nop())
	res := gather(t, p, ids("a", 50))
	if dups := check(t, js, res); dups != 0 {
		t.Errorf("%d duplicates among new messages", dups)
	}
	if st := p.Stats(); st.Batches != 1 || st.Batched != 50 {
		t.Errorf("Stats = %+v, want one batch of 50", st)
	}

	// Without holding anything: many concurrent callers, a few batches.
	var wg sync.WaitGroup
	free := make([]result, 200)
	for i, id := range ids("b", len(free)) {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ack, err := p.PublishMsg(ctx, msg(id))
			free[i] = result{id, ack, err}
		})
	}
	wg.Wait()
	check(t, js, append(res, free...))
	st := p.Stats()
	if st.Batched+st.Singles != 250 {
		t.Errorf("Stats = %+v: %d messages sent, want 250", st, st.Batched+st.Singles)
	}
	t.Logf("200 concurrent publishes: %d batches, %d singles", st.Batches-1, st.Singles)
}

// TestDuplicatesInsideBatches: a message whose ID the stream already has, in
// the middle of a batch, is answered as a duplicate of the stored one, and its
// neighbours are stored once; two publishes with one ID in the same gathering
// store it once, one answered new and the other duplicate.
func TestDuplicatesInsideBatches(t *testing.T) {
	js := start(t, true)
	p := newPublisher(t, js, zerolog.Nop())
	first := gather(t, p, ids("x", 10))
	check(t, js, first)
	orig := map[string]uint64{}
	for _, r := range first {
		orig[r.id] = r.ack.Sequence
	}

	batch := ids("y", 30)
	batch[3], batch[17], batch[29] = "x-1", "x-5", "x-9" // stored before
	batch = append(batch, "y-7", "y-7")                  // the same ID three times
	res := gather(t, p, batch)
	dups := check(t, js, res)
	if dups != 5 {
		t.Errorf("%d duplicates, want 5 (3 stored before, 2 repeats of y-7)", dups)
	}
	for _, r := range res {
		if s, ok := orig[r.id]; ok && (r.ack == nil || !r.ack.Duplicate || r.ack.Sequence != s) {
			t.Errorf("publish %s again: PubAck %+v, want duplicate of sequence %d", r.id, r.ack, s)
		}
	}
	if n := len(stored(t, js)); n != 10+27 {
		t.Errorf("stream holds %d messages, want 37", n)
	}
	if st := p.Stats(); st.Splits == 0 {
		t.Errorf("Stats = %+v: no batch was split for a duplicate", st)
	}
}

// TestFallbackWhenStreamCannotBatch: a stream without atomic publish gets one
// publish per message, every one stored once and answered, and the Publisher
// says so once in the log.
func TestFallbackWhenStreamCannotBatch(t *testing.T) {
	js := start(t, false)
	var logs natstest.Buffer
	p := newPublisher(t, js, zerolog.New(&logs))
	res := gather(t, p, ids("f", 20))
	res = append(res, gather(t, p, append(ids("g", 20), "f-3"))...)
	if dups := check(t, js, res); dups != 1 {
		t.Errorf("%d duplicates, want 1", dups)
	}
	if st := p.Stats(); st.Batches != 0 || st.Singles != 41 {
		t.Errorf("Stats = %+v, want 41 singles (one a duplicate) and no batch", st)
	}
	if n := p.pipe.PublishAsyncPending(); n != 0 {
		t.Errorf("%d PubAcks still pending", n)
	}
	if n := strings.Count(logs.String(), "group commit off"); n != 1 {
		t.Errorf("log says group commit is off %d times, want once:\n%s", n, logs.String())
	}
}

// TestGaveUpBeforeSent: a caller whose context ends while its message waits
// is answered with the context's error and the message is never sent.
func TestGaveUpBeforeSent(t *testing.T) {
	js := start(t, true)
	p := newPublisher(t, js, zerolog.Nop())
	p.mu.Lock()
	p.busy = true
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.PublishMsg(ctx, msg("late")); err == nil {
		t.Fatal("PublishMsg returned no error after its context ended")
	}
	p.next()
	natstest.WaitFor(t, 5*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.busy {
			return fmt.Errorf("still busy")
		}
		return nil
	})
	if n := len(stored(t, js)); n != 0 {
		t.Errorf("stream holds %d messages, want 0", n)
	}
}

// TestPipelinedAlone: with batching off, concurrent publishes go pipelined,
// each answered with its own PubAck: stored once, a repeated ID answered as
// the duplicate of the stored copy, and no PubAck left pending.
func TestPipelinedAlone(t *testing.T) {
	js := start(t, true)
	p, err := New(js, Options{Stream: stream, MaxBatch: 1})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	publish := func(ids []string) []result {
		res := make([]result, len(ids))
		publishAll(p, ids, res)
		return res
	}
	first := publish(ids("a", 100))
	check(t, js, first)
	orig := map[string]uint64{}
	for _, r := range first {
		orig[r.id] = r.ack.Sequence
	}
	again := append(ids("b", 100), "a-3", "a-50", "a-99")
	res := publish(again)
	if dups := check(t, js, res); dups != 3 {
		t.Errorf("%d duplicates, want 3", dups)
	}
	for _, r := range res {
		if s, ok := orig[r.id]; ok && (r.ack == nil || !r.ack.Duplicate || r.ack.Sequence != s) {
			t.Errorf("publish %s again: PubAck %+v, want duplicate of sequence %d", r.id, r.ack, s)
		}
	}
	// A gathering, deterministically: sent pipelined, each message alone,
	// a repeated ID answered as the duplicate of the copy stored before it.
	res = gather(t, p, append(ids("c", 50), "c-7", "b-1", "c-7"))
	if dups := check(t, js, res); dups != 3 {
		t.Errorf("gathering: %d duplicates, want 3", dups)
	}
	if n := len(stored(t, js)); n != 250 {
		t.Errorf("stream holds %d messages, want 250", n)
	}
	if st := p.Stats(); st.Batches != 0 || st.Singles != 256 {
		t.Errorf("Stats = %+v, want 256 singles and no batch", st)
	}
	if n := p.pipe.PublishAsyncPending(); n != 0 {
		t.Errorf("%d PubAcks still pending", n)
	}
}

// TestPipelinedNoAnswer: a caller whose context ends before its PubAck comes
// gets the context's error, and the pending PubAck is let go after
// Options.Timeout rather than kept.
func TestPipelinedNoAnswer(t *testing.T) {
	js := start(t, true)
	// A subscriber that swallows the message: no PubAck, no "no responders".
	sub, err := js.Conn().Subscribe("silent.>", func(*nats.Msg) {})
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer sub.Unsubscribe()
	p, err := New(js, Options{Stream: stream, MaxBatch: 1, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	m := msg("silent")
	m.Subject = "silent.webhook"
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.PublishMsg(ctx, m); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PublishMsg = %v, want the context's deadline", err)
	}
	// No deadline of the caller's: Options.Timeout answers.
	m = msg("silent-2")
	m.Subject = "silent.webhook"
	if _, err := p.PublishMsg(context.Background(), m); !errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
		t.Fatalf("PublishMsg without a deadline = %v, want %v", err, jetstream.ErrAsyncPublishTimeout)
	}
	natstest.WaitFor(t, 5*time.Second, func() error {
		if n := p.pipe.PublishAsyncPending(); n != 0 {
			return fmt.Errorf("%d PubAcks still pending", n)
		}
		return nil
	})
}

func TestAtLeast(t *testing.T) {
	for v, want := range map[string]bool{"2.12.0": true, "2.15.2": true, "v2.12.1-RC.1": true, "2.11.9": false, "3.0.0": true, "1.99.0": false, "x": false} {
		if got := atLeast(v, 2, 12); got != want {
			t.Errorf("atLeast(%q, 2, 12) = %v, want %v", v, got, want)
		}
	}
}

// TestCostsLearnTheCheaperWay: the gathering goes the way that cost less per
// message, and the other way is tried again after a while.
func TestCostsLearnTheCheaperWay(t *testing.T) {
	var c costs
	if !c.batchPays() {
		t.Fatal("batchPays() = false before any batch was measured")
	}
	c.observe(&c.batch, 8*time.Millisecond, 32) // 250 µs per message
	if c.batchPays() {
		t.Fatal("batchPays() = true before publishing alone was measured")
	}
	c.observe(&c.alone, 2*time.Millisecond, 32) // 62 µs per message
	c.tried = time.Now()
	if c.batchPays() {
		t.Error("batchPays() = true although publishing alone costs less")
	}
	c.tried = time.Now().Add(-retry)
	if !c.batchPays() {
		t.Error("batchPays() = false: the dearer way is not tried again after a while")
	}
	for range 20 {
		c.observe(&c.alone, 30*time.Millisecond, 32) // the disk syncs every write now
	}
	c.tried = time.Now()
	if !c.batchPays() {
		t.Error("batchPays() = false although batches now cost less")
	}
}

// TestMessageNotModified: PublishMsg leaves the caller's message as it was,
// published at once or after waiting in the queue. A caller whose context
// ends may use its message again (the spool stores it) while the Publisher
// still sends it: the Publisher must write only to a copy.
func TestMessageNotModified(t *testing.T) {
	js := start(t, true)
	p := newPublisher(t, js, zerolog.Nop())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unchanged := func(what string, m *nats.Msg, id string) {
		t.Helper()
		if len(m.Header) != 1 || m.Header.Get(jetstream.MsgIDHeader) != id {
			t.Errorf("%s: the caller's message headers are now %v, want only %s: %s", what, m.Header, jetstream.MsgIDHeader, id)
		}
	}

	lone := msg("lone")
	if _, err := p.PublishMsg(ctx, lone, jetstream.WithExpectStream(stream)); err != nil {
		t.Fatalf("PublishMsg: %v", err)
	}
	unchanged("published at once", lone, "lone")

	p.mu.Lock()
	p.busy = true
	p.mu.Unlock()
	queued := msg("queued")
	done := make(chan error, 1)
	go func() {
		_, err := p.PublishMsg(ctx, queued, jetstream.WithExpectStream(stream))
		done <- err
	}()
	natstest.WaitFor(t, 5*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.queue) != 1 {
			return fmt.Errorf("%d publishes queued, want 1", len(p.queue))
		}
		return nil
	})
	p.next()
	if err := <-done; err != nil {
		t.Fatalf("PublishMsg: %v", err)
	}
	unchanged("published from the queue", queued, "queued")
}

// TestSyncBeforeAnswer: with Options.Sync, no caller is answered before a
// Sync called after its PubAck has returned; the Publisher goes on publishing
// while a sync runs (every message is stored while none is answered); a
// failing Sync is the publish's error. The server is one that leaves syncing
// to its callers (natsembed GroupSync), with a real Syncer under the gate.
func TestSyncBeforeAnswer(t *testing.T) {
	if !natsembed.GroupSyncSupported {
		t.Skip("no syncfs(2) here")
	}
	dir := t.TempDir()
	js := natstest.StartWith(t, natsembed.Options{StoreDir: dir, GroupSync: true}).JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{"gc.>"}, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	syncer, err := natsembed.NewSyncer(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer syncer.Close()
	gate := make(chan struct{})
	var fail atomic.Bool
	var calls atomic.Int64
	p, err := New(js, Options{Stream: stream, MaxBatch: 1, Sync: func() error {
		calls.Add(1)
		<-gate
		if fail.Load() {
			return errors.New("sync failed")
		}
		return syncer.Sync()
	}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	res := make([]result, n)
	answered := make(chan struct{})
	go func() { publishAll(p, ids("s", n), res); close(answered) }()
	natstest.WaitFor(t, 10*time.Second, func() error {
		if got := len(stored(t, js)); got != n {
			return fmt.Errorf("%d of %d stored while the sync is held", got, n)
		}
		return nil
	})
	select {
	case <-answered:
		t.Fatal("callers answered before their sync returned")
	default:
	}
	if c := calls.Load(); c != n {
		t.Errorf("%d calls of Sync, want one per publish (%d)", c, n)
	}
	close(gate)
	<-answered
	check(t, js, res)

	fail.Store(true)
	ack, err := p.PublishMsg(ctx, msg("after-failure"), jetstream.WithExpectStream(stream))
	if err == nil || ack != nil {
		t.Errorf("PublishMsg with a failing Sync = %+v, %v; want the sync's error", ack, err)
	}
}
