// Package groupcommit is the ingest's group commit: concurrent publishes to
// one stream share a single JetStream atomic batch (nats-server 2.12 and
// later), so that a server syncing every write pays one fsync per batch instead
// of one per message. While a batch is being stored, the next publishes
// gather; a publish that finds nothing in flight is sent at once, alone, as a
// plain publish (no added wait at low load).
//
// A gathering that does not go as a batch (batching off, the stream unable to
// batch, or too few messages to pay) is published pipelined: every message
// sent alone with the asynchronous API, written to the connection together,
// then each PubAck awaited; not one request/reply per message.
//
// A connection that drops with publishes in flight leaves unknown whether the
// server stored them: each is published again, alone, once the connection is
// back and while its caller still waits, and is stored then or answered as
// the duplicate of the copy stored before the drop.
//
// Each caller gets its own PubAck. De-duplication stays exact: the server
// refuses a whole atomic batch when any of its messages repeats a Nats-Msg-Id
// it already has (error 10201, without saying which), so a refused batch is
// split in halves and retried until every duplicate is published alone, where
// the server answers it as a plain duplicate (PubAck.Duplicate) and its
// neighbours are stored once. Two publishes with the same message ID never go
// in the same batch: the second waits for the next one.
//
// Whether a batch pays depends on the server: one syncing every write pays an
// fsync per lone message and one per batch, but nats-server stages a
// one-replica file stream's atomic batch in a file store of its own (a few
// fsyncs and file operations), which a server syncing on an interval does not
// pay for lone messages. So the Publisher measures the time per message of
// its batches and of gatherings published alone (concurrently), keeps to the
// cheaper, and tries the other again every 2 s.
//
// A server or stream that cannot take atomic batches (a server older than
// 2.12, a stream without AllowAtomicPublish, an older 2.12 refusing Nats-Msg-Id
// in batches) makes the Publisher fall back to one publish per message,
// logged once; it looks again every minute.
package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// Limits of one batch.
const (
	// MaxBatch is nats-server's default limit on the messages of one atomic
	// batch (jetstream.max_batch_size).
	MaxBatch = 1000
	// MaxBatchBytes bounds the payload and headers of one batch.
	MaxBatchBytes = 8 << 20
)

// Options configure a Publisher.
type Options struct {
	// Stream is the stream every message lands on; batched messages carry it
	// as Nats-Expected-Stream. Required.
	Stream string
	// MaxBatch is the most messages in one batch, 2 to MaxBatch (the default);
	// 1 turns batching off: every message is published alone, those gathered
	// meanwhile pipelined (at most MaxBatch of them at a time).
	MaxBatch int
	// MinBatch is the fewest messages sent as an atomic batch; fewer are
	// published each alone, concurrently. 0 picks it from the stream: 8 for a
	// one-replica file stream, where nats-server stages each atomic batch in
	// a file store of its own (a few fsyncs and file operations, worth about
	// eight lone publishes), else 2.
	MinBatch int
	// Timeout bounds a batch whose callers set no deadline; 5 s by default.
	Timeout time.Duration
	// Sync, when set, is called after each PubAck, before the caller gets
	// it: a server that writes without syncing (natsembed.Options.GroupSync)
	// has its store synced by the caller, once for all the publishes acked
	// before the sync began (natsembed.Syncer). An error of Sync is the
	// publish's. Atomic batches gain nothing then: use MaxBatch 1.
	Sync func() error
	// Registerer receives the batch metrics; nil registers none.
	Registerer prometheus.Registerer
	// Log receives the line saying batching is off (once) or on again.
	Log zerolog.Logger
}

// Stats count what a Publisher sent.
type Stats struct {
	// Batches is the number of atomic batches the server stored.
	Batches uint64
	// Batched is the number of messages stored in those batches.
	Batched uint64
	// Singles is the number of messages published alone: lone ones, and
	// every one while batching is off.
	Singles uint64
	// Splits is the number of batches refused for a duplicate and split.
	Splits uint64
	// Republished is the number of messages sent again, alone, because the
	// connection dropped before their PubAck (or their batch's) came.
	Republished uint64
}

// Publisher batches concurrent publishes. It implements the PublishMsg of
// jetstream.JetStream and is safe for concurrent use.
type Publisher struct {
	js   jetstream.JetStream
	pipe jetstream.JetStream // js's connection, for the pipelined publishes (asyncTimeout, maxPending)
	opts Options
	log  zerolog.Logger

	mu      sync.Mutex
	queue   []*call
	busy    bool // a publish or batch is in flight
	capable capability

	cost costs

	loggedOff                                      atomic.Bool
	batches, batched, singles, splits, republished atomic.Uint64
	size                                           prometheus.Histogram
}

// capability is whether the server and stream take atomic batches, as last
// seen.
type capability struct {
	known, ok bool
	at        time.Time
	min       int // MinBatch, as chosen
}

// maxPending bounds the pipelined publishes awaiting their PubAck; a publish
// finding this many waits up to 200 ms for room, then fails
// (jetstream.ErrTooManyStalledMsgs), as a late PubAck does.
const maxPending = 4096

// stagedMinBatch is MinBatch for a one-replica file stream.
const stagedMinBatch = 8

// recheck is how long a "cannot batch" verdict holds before it is checked
// again (the stream may have been updated since).
const recheck = time.Minute

type call struct {
	ctx  context.Context
	msg  *nats.Msg
	opts []jetstream.PublishOpt
	id   string
	size int

	fut jetstream.PubAckFuture // when published alone, pipelined

	ack  *jetstream.PubAck
	err  error
	done chan struct{}
}

func (c *call) finish(ack *jetstream.PubAck, err error) {
	c.ack, c.err = ack, err
	close(c.done)
}

// New returns a Publisher that publishes through js.
func New(js jetstream.JetStream, opts Options) (*Publisher, error) {
	if opts.Stream == "" {
		return nil, errors.New("groupcommit: no stream")
	}
	switch {
	case opts.MaxBatch == 0:
		opts.MaxBatch = MaxBatch
	case opts.MaxBatch < 1 || opts.MaxBatch > MaxBatch:
		return nil, fmt.Errorf("groupcommit: batch size %d is not 1 to %d", opts.MaxBatch, MaxBatch)
	}
	if opts.MinBatch < 0 || opts.MinBatch == 1 || opts.MinBatch > opts.MaxBatch {
		return nil, fmt.Errorf("groupcommit: least batch size %d is not 0 or 2 to %d", opts.MinBatch, opts.MaxBatch)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	// Messages published alone go pipelined: sent with the asynchronous API
	// and their PubAcks awaited, not one request/reply each. A context of its
	// own bounds every pending PubAck, so that none whose answer never comes
	// (its caller gone, the stream leaderless) is kept until the connection
	// drops.
	pipe, err := jetstream.New(js.Conn(), jetstream.WithPublishAsyncTimeout(opts.Timeout),
		jetstream.WithPublishAsyncMaxPending(maxPending))
	if err != nil {
		return nil, fmt.Errorf("groupcommit: %w", err)
	}
	p := &Publisher{js: js, pipe: pipe, opts: opts, log: opts.Log}
	if opts.Registerer != nil {
		p.size = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "verifeye_bridge_publish_batch_size",
			Help:    "Webhooks stored per JetStream write (group commit): 1 for a webhook published alone.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000},
		})
		if err := opts.Registerer.Register(p.size); err != nil {
			return nil, fmt.Errorf("groupcommit: register metrics: %w", err)
		}
	}
	return p, nil
}

// Stats returns what the Publisher sent so far.
func (p *Publisher) Stats() Stats {
	return Stats{Batches: p.batches.Load(), Batched: p.batched.Load(), Singles: p.singles.Load(), Splits: p.splits.Load(),
		Republished: p.republished.Load()}
}

// PublishMsg publishes msg and waits for its PubAck, sharing one atomic batch
// with the publishes made meanwhile. msg must be bound for Options.Stream and
// carry its message ID as the Nats-Msg-Id header; opts apply when it is
// published alone (in a batch, only the expected stream is checked). msg is
// not modified, then or later.
//
// When ctx ends first, PublishMsg returns its error at once; the message may
// still be stored (as when a plain publish's PubAck is late): publishing it
// again with the same message ID is then answered as a duplicate. A message
// whose caller gave up before its batch was sent is not sent at all.
func (p *Publisher) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	// The client writes the options' headers into the message it sends, and
	// a caller whose ctx ends may use msg again while it is still being sent:
	// only a copy is ever handed to the client.
	msg = &nats.Msg{Subject: msg.Subject, Data: msg.Data, Header: cloneHeader(msg.Header, 4)}
	c := &call{ctx: ctx, msg: msg, opts: opts, id: msg.Header.Get(jetstream.MsgIDHeader), done: make(chan struct{})}
	c.size = len(msg.Subject) + len(msg.Data)
	for k, vs := range msg.Header {
		for _, v := range vs {
			c.size += len(k) + len(v) + 4
		}
	}
	ack, err := p.publish(ctx, c)
	if err == nil && p.opts.Sync != nil {
		// The next sync covers this write and every other one made before
		// it began: the Publisher goes on publishing meanwhile.
		if err := p.opts.Sync(); err != nil {
			return nil, err
		}
	}
	return ack, err
}

// publish sends c alone at once when nothing is in flight, or queues it for
// the next gathering, and waits for its PubAck.
func (p *Publisher) publish(ctx context.Context, c *call) (*jetstream.PubAck, error) {
	p.mu.Lock()
	if !p.busy {
		// Nothing in flight: publish alone, now, in this goroutine.
		p.busy = true
		p.mu.Unlock()
		ack, err := p.single(ctx, c.msg, c.opts)
		p.next()
		return ack, err
	}
	p.queue = append(p.queue, c)
	p.mu.Unlock()
	select {
	case <-c.done:
		return c.ack, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// next hands what gathered meanwhile to a goroutine of its own, or marks the
// Publisher idle.
func (p *Publisher) next() {
	p.mu.Lock()
	batch := p.take()
	if len(batch) == 0 {
		p.busy = false
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	go p.run(batch)
}

// run sends batches until nothing waits.
func (p *Publisher) run(batch []*call) {
	for {
		p.send(batch)
		p.mu.Lock()
		batch = p.take()
		if len(batch) == 0 {
			p.busy = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}

// take removes the next batch from the queue: in arrival order, at most
// MaxBatch messages and MaxBatchBytes, never two with the same message ID
// (the later waits for the next batch), and none whose caller already gave
// up (it is answered with its context's error and never sent). p.mu is held.
func (p *Publisher) take() []*call {
	var batch, rest []*call
	var ids map[string]struct{}
	bytes := 0
	most := p.opts.MaxBatch
	if most == 1 {
		most = MaxBatch // a gathering published alone, pipelined
	}
	for i, c := range p.queue {
		if c.ctx.Err() != nil {
			c.finish(nil, c.ctx.Err())
			continue
		}
		if len(batch) == most || (len(batch) > 0 && bytes+c.size > MaxBatchBytes) {
			rest = append(rest, p.queue[i:]...)
			break
		}
		if c.id != "" {
			if _, dup := ids[c.id]; dup {
				rest = append(rest, c)
				continue
			}
			if ids == nil {
				ids = make(map[string]struct{})
			}
			ids[c.id] = struct{}{}
		}
		batch = append(batch, c)
		bytes += c.size
	}
	clear(p.queue)
	p.queue = append(p.queue[:0], rest...)
	return batch
}

// send publishes batch and answers each of its callers.
func (p *Publisher) send(batch []*call) {
	if len(batch) == 1 {
		c := batch[0]
		c.finish(p.single(c.ctx, c.msg, c.opts))
		return
	}
	if p.opts.MaxBatch == 1 {
		p.alone(batch)
		return
	}
	ctx, cancel := p.batchContext(batch)
	defer cancel()
	if ok, least := p.canBatch(ctx); !ok || len(batch) < least || !p.cost.batchPays() {
		p.alone(batch)
		return
	}
	p.commit(ctx, batch)
}

// commit sends batch as one atomic batch; a batch refused for a duplicate is
// split and its halves committed in turn.
func (p *Publisher) commit(ctx context.Context, batch []*call) {
	if len(batch) == 1 {
		c := batch[0]
		c.finish(p.single(c.ctx, c.msg, c.opts))
		return
	}
	msgs := make([]*nats.Msg, len(batch))
	for i, c := range batch {
		// A copy again: a half of a split batch may go alone, with the
		// caller's options, after this.
		m := &nats.Msg{Subject: c.msg.Subject, Data: c.msg.Data, Header: cloneHeader(c.msg.Header, 4)}
		m.Header.Set(jetstream.ExpectedStreamHeader, p.opts.Stream)
		msgs[i] = m
	}
	// No ack of the first message: one round trip per batch, the commit's.
	start := time.Now()
	back, lost, err := p.publishBatch(ctx, msgs)
	if lost {
		// The connection dropped with the commit in flight: its answer will
		// never come, though the server may have stored the batch. Once
		// connected again, each message still awaited is published alone:
		// stored now, or answered as the duplicate of the stored copy.
		p.reconnected(ctx, batch)
		return
	}
	if err == nil {
		p.cost.observe(&p.cost.batch, time.Since(start), len(batch))
		p.batches.Add(1)
		p.batched.Add(uint64(len(batch)))
		p.observe(len(batch))
		first := back.Sequence - uint64(len(batch)) + 1
		for i, c := range batch {
			c.finish(&jetstream.PubAck{Stream: back.Stream, Sequence: first + uint64(i), Domain: back.Domain}, nil)
		}
		return
	}
	var apiErr *jetstream.APIError
	isAPI := errors.As(err, &apiErr)
	switch {
	case isAPI && (apiErr.ErrorCode == errDisabled || apiErr.ErrorCode == errUnsupportedHeader),
		errors.Is(err, jetstreamext.ErrInvalidBatchAck):
		// The stream or server cannot batch after all. An invalid batch ack
		// means a server that ignored the batch headers and stored each
		// message: publishing them again is de-duplicated by their IDs.
		p.setCapable(false, 0, err)
		p.alone(batch)
	case isAPI && apiErr.ErrorCode == errTooManyInflight:
		p.alone(batch)
	case isAPI && !refusesAll(apiErr.ErrorCode):
		// Some message is refused, and the server does not say which: a
		// repeated message ID (10201: a stored or staged Nats-Msg-Id), too
		// many messages (10199: over jetstream.max_batch_size), a bad header. Halve until each refused message is
		// alone: the others are stored, and it gets its own answer (a
		// duplicate's is a PubAck with Duplicate set).
		p.splits.Add(1)
		half := len(batch) / 2
		p.commit(ctx, batch[:half])
		p.commit(ctx, batch[half:])
	default:
		// The stream refuses everything (full, storage failed) or NATS did
		// not answer: the batch is not stored, or (a lost commit ack) stored
		// whole, and a retry of any of its messages is de-duplicated.
		for _, c := range batch {
			c.finish(nil, err)
		}
	}
}

// publishBatch sends msgs as one atomic batch. lost reports that the
// connection dropped or was re-established before the answer came, which
// then never comes.
func (p *Publisher) publishBatch(ctx context.Context, msgs []*nats.Msg) (ack *jetstreamext.BatchAck, lost bool, err error) {
	nc := p.js.Conn()
	// A drop ends the wait for an answer that will not come.
	status := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	defer nc.RemoveStatusListener(status) // closes status
	reconnects := nc.Stats().Reconnects
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		if _, ok := <-status; ok {
			cancel()
		}
	}()
	ack, err = jetstreamext.PublishMsgBatch(ctx, p.js, msgs, jetstreamext.BatchFlowControl{AckFirst: false})
	lost = err != nil && (!nc.IsConnected() || nc.Stats().Reconnects != reconnects)
	return ack, lost, err
}

// reconnected waits for the connection (at most until ctx ends) and then
// publishes alone each message of batch whose caller still waits.
func (p *Publisher) reconnected(ctx context.Context, batch []*call) {
	_ = p.waitConnected(ctx)
	waiting := batch[:0:0]
	for _, c := range batch {
		if c.ctx.Err() != nil {
			c.finish(nil, c.ctx.Err())
			continue
		}
		waiting = append(waiting, c)
	}
	p.republished.Add(uint64(len(waiting)))
	p.alone(waiting)
}

// alone publishes each message of batch by itself, pipelined: all are sent
// (the NATS client writes them together) before their PubAcks are awaited, and
// each caller is answered as its PubAck, error or end of context comes.
func (p *Publisher) alone(batch []*call) {
	if len(batch) == 0 {
		return
	}
	start := time.Now()
	failed := false
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.finish(nil, err)
			failed = true
			continue
		}
		f, err := p.pipe.PublishMsgAsync(c.msg, c.opts...)
		if err != nil {
			c.finish(nil, err)
			failed = true
			continue
		}
		c.fut = f
	}
	for _, c := range batch {
		if c.fut == nil {
			continue
		}
		ack, err := p.await(c.ctx, c.fut, c.msg, c.opts)
		if err != nil {
			failed = true
		}
		c.finish(ack, err)
	}
	if !failed {
		p.cost.observe(&p.cost.alone, time.Since(start), len(batch))
	}
}

// costs learns which way of storing a gathering is cheaper on this server:
// the time per message of atomic batches and of messages published alone
// (concurrently, so the server's time per message shows). A server syncing
// every write pays an fsync per lone message, and a batch saves all but a
// few; a server syncing on an interval pays none, while nats-server stages a
// one-replica file stream's atomic batch with fsyncs of its own, so there
// publishing alone is cheaper. The way that looked dearer is tried again
// now and then, since the load and the disk change.
type costs struct {
	mu           sync.Mutex
	batch, alone float64 // seconds per message, moving averages; 0 unknown
	tried        time.Time
}

// retry is how often the way that looked dearer is tried again.
const retry = 2 * time.Second

// batchPays reports whether the next gathering goes as one atomic batch.
func (c *costs) batchPays() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.batch == 0:
		return true
	case c.alone == 0:
		return false
	}
	pays := c.batch <= c.alone
	if time.Since(c.tried) >= retry {
		c.tried = time.Now()
		return !pays
	}
	return pays
}

func (c *costs) observe(avg *float64, d time.Duration, n int) {
	per := d.Seconds() / float64(n)
	c.mu.Lock()
	defer c.mu.Unlock()
	if *avg == 0 {
		*avg = per
	} else {
		*avg += 0.2 * (per - *avg)
	}
}

// single publishes msg alone: sent with the asynchronous API, its PubAck
// awaited until ctx ends. A msg whose ctx has ended already is not sent.
func (p *Publisher) single(ctx context.Context, msg *nats.Msg, opts []jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := p.pipe.PublishMsgAsync(msg, opts...)
	if err != nil {
		return nil, err
	}
	return p.await(ctx, f, msg, opts)
}

// await waits for f's PubAck or error, or for ctx to end. A PubAck that comes
// after ctx ended is dropped by the client, as is one that never comes once
// Options.Timeout has passed.
//
// A connection that drops with the publish in flight leaves it unknown
// whether the server stored msg (its PubAck may be what was lost). A message
// with a Nats-Msg-Id is then published again once the connection is back, while
// ctx lasts: it is stored now, or answered as the duplicate of the copy stored
// before the drop. So the caller's error means "not stored" unless ctx ended
// while the connection was still away.
func (p *Publisher) await(ctx context.Context, f jetstream.PubAckFuture, msg *nats.Msg, opts []jetstream.PublishOpt) (*jetstream.PubAck, error) {
	for {
		select {
		case ack := <-f.Ok():
			p.singles.Add(1)
			p.observe(1)
			return ack, nil
		case err := <-f.Err():
			if !errors.Is(err, nats.ErrDisconnected) || msg.Header.Get(jetstream.MsgIDHeader) == "" {
				return nil, err
			}
			if err := p.waitConnected(ctx); err != nil {
				return nil, err
			}
			if f, err = p.pipe.PublishMsgAsync(msg, opts...); err != nil {
				return nil, err
			}
			p.republished.Add(1)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// waitConnected returns once the connection is up, or ctx's error.
func (p *Publisher) waitConnected(ctx context.Context) error {
	nc := p.js.Conn()
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return ctx.Err()
}

func (p *Publisher) observe(n int) {
	if p.size != nil {
		p.size.Observe(float64(n))
	}
}

// batchContext bounds a batch by the latest deadline of its callers (or
// Options.Timeout when one has none): the batch is one write, and a caller
// gone earlier has its answer already.
func (p *Publisher) batchContext(batch []*call) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, c := range batch {
		d, ok := c.ctx.Deadline()
		if !ok {
			d = time.Now().Add(p.opts.Timeout)
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.Background(), latest)
}

// canBatch reports whether the server and stream take atomic batches: the
// server is 2.12 or later and the stream allows atomic publish. A verdict
// holds for a minute; when it cannot be had (NATS away), the answer is no for
// this batch only.
// The second result is the fewest messages worth a batch (MinBatch).
func (p *Publisher) canBatch(ctx context.Context) (bool, int) {
	p.mu.Lock()
	cp := p.capable
	p.mu.Unlock()
	if cp.known && (cp.ok || time.Since(cp.at) < recheck) {
		return cp.ok, cp.min
	}
	if v := p.js.Conn().ConnectedServerVersion(); v != "" && !atLeast(v, 2, 12) {
		p.setCapable(false, 0, fmt.Errorf("nats-server %s is older than 2.12", v))
		return false, 0
	}
	st, err := p.js.Stream(ctx, p.opts.Stream)
	if err != nil {
		return false, 0
	}
	cfg := st.CachedInfo().Config
	if !cfg.AllowAtomicPublish {
		p.setCapable(false, 0, fmt.Errorf("stream %s does not allow atomic publish", p.opts.Stream))
		return false, 0
	}
	least := p.opts.MinBatch
	if least == 0 {
		least = 2
		if cfg.Replicas <= 1 && cfg.Storage == jetstream.FileStorage {
			least = stagedMinBatch
		}
	}
	p.setCapable(true, least, nil)
	return true, least
}

func (p *Publisher) setCapable(ok bool, least int, why error) {
	p.mu.Lock()
	was := p.capable
	p.capable = capability{known: true, ok: ok, at: time.Now(), min: least}
	p.mu.Unlock()
	switch {
	case !ok && !p.loggedOff.Swap(true):
		p.log.Warn().AnErr("cause", why).Str("stream", p.opts.Stream).
			Msg("group commit off: JetStream cannot take atomic batches; publishing each webhook alone")
	case ok && was.known && !was.ok:
		p.log.Info().Str("stream", p.opts.Stream).Msg("group commit on: JetStream takes atomic batches again")
	}
}

// cloneHeader copies h, with room for extra more keys.
func cloneHeader(h nats.Header, extra int) nats.Header {
	out := make(nats.Header, len(h)+extra)
	for k, v := range h {
		out[k] = slices.Clone(v)
	}
	return out
}

// atLeast reports whether version (major.minor.patch[-pre]) is at least
// major.minor.
func atLeast(version string, major, minor int) bool {
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.SplitN(parts[1], "-", 2)[0])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}

// nats-server's error codes for atomic batches (jetstream_errors_generated.go;
// jetstreamext's constants are numbered differently).
const (
	errDisabled          jetstream.ErrorCode = 10174 // atomic publish is disabled
	errUnsupportedHeader jetstream.ErrorCode = 10177 // e.g. Nats-Msg-Id before 2.12 supported it
	errTooManyInflight   jetstream.ErrorCode = 10210
)

// refusesAll reports whether an API error refuses every message alike, so
// that publishing them one by one would only repeat it: the storage refusals
// the ingest reports as such (stream full, store failed, no resources), and a
// wrong stream.
func refusesAll(code jetstream.ErrorCode) bool {
	switch code {
	case 10002, 10023, 10047, 10077, // account/insufficient/storage resources, store failed
		10060, // expected stream does not match
		10059: // stream not found
		return true
	}
	return false
}
