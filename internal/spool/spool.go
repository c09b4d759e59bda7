// Package spool is the ingest's store-and-forward spool (DESIGN.md guarantee 7):
// when the NATS cluster does not acknowledge a webhook within SPOOL_AFTER, the
// event is fsynced to a local JetStream file store (an in-process nats-server
// with no listener, under DATA_DIR/spool) and answered 202; a forwarder drains
// the spool to the cluster, in arrival order, as soon as the cluster takes
// events again, and removes an event only after the cluster's PubAck.
package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// Publisher publishes a message to JetStream and waits for its acknowledgement.
// jetstream.JetStream implements it.
type Publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// Options configure a spool. The zero value works but for Dir.
type Options struct {
	// Dir holds the spool's store (DATA_DIR/spool). Required.
	Dir string
	// MaxBytes is the spool's capacity (SPOOL_MAX_BYTES, 1 GiB by default); a
	// full spool refuses new events and drops nothing it holds.
	MaxBytes int64
	// After is the longest wait for the cluster's PubAck before an event is
	// spooled instead (SPOOL_AFTER, 1 s by default).
	After time.Duration
	// Stream is the cluster stream every forwarded event must land on
	// (streams.Webhooks by default).
	Stream string
	// DuplicateWindow is the cluster's de-duplication window: forwarding an
	// event older than that is logged and counted, because a copy the cluster
	// stored before its PubAck was lost would no longer be recognised. 2 min by
	// default.
	DuplicateWindow time.Duration
	// ForwardTimeout bounds one forward to the cluster; 5 s by default.
	ForwardTimeout time.Duration
	// Registerer receives the spool's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Log receives the spool's log lines.
	Log zerolog.Logger
}

// State is what the spool holds, for /readyz and the metrics.
type State struct {
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	// OldestAge is how long the oldest spooled event has waited, in seconds.
	OldestAge float64 `json:"oldest_age_seconds"`
	// Forwarding is false while the last forward to the cluster failed.
	Forwarding bool   `json:"forwarding"`
	LastError  string `json:"last_error,omitempty"`
	MaxBytes   int64  `json:"max_bytes"`
}

// ErrFull is returned (wrapped) by PublishMsg when the spool is full.
var ErrFull = errors.New("spool: full")

// subjectPrefix is put before the original subject in the spool's stream, so
// the spool takes any subject without a stream on ">" (which would overlap
// the JetStream API).
const subjectPrefix = "spool."

// Spool is an open spool. Its methods are safe for concurrent use.
type Spool struct {
	cluster Publisher
	opts    Options
	log     zerolog.Logger

	ns     *server.Server
	nc     *nats.Conn
	local  jetstream.JetStream
	stream jetstream.Stream

	notify chan struct{} // a spooled event is waiting

	fwdMu      sync.Mutex // one forwarder at a time (Run, then Drain)
	next       uint64     // the next sequence to look at; under fwdMu
	forwarding atomic.Bool
	lastErr    atomic.Pointer[string]
	writeErr   atomic.Pointer[error] // the last failed store, until one succeeds
	outage     atomic.Bool           // a spooled event since the last successful forward

	spooled, forwarded, stale, rejected prometheus.Counter
}

// Open starts the spool's in-process store under opts.Dir (creating it) and
// its stream, and returns the spool; cluster receives forwarded events and is
// tried first by PublishMsg. Events a previous process left in the spool are
// forwarded by Run. The caller must Close the spool. Open fails when the
// store cannot be created (the directory is not writable, a file stands where
// it should be, ...).
func Open(cluster Publisher, opts Options) (*Spool, error) {
	if opts.Dir == "" {
		return nil, errors.New("spool: no directory")
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 1 << 30
	}
	if opts.After <= 0 {
		opts.After = time.Second
	}
	if opts.Stream == "" {
		opts.Stream = streams.Webhooks
	}
	if opts.DuplicateWindow <= 0 {
		opts.DuplicateWindow = 2 * time.Minute
	}
	if opts.ForwardTimeout <= 0 {
		opts.ForwardTimeout = 5 * time.Second
	}
	// Fail at once, naming the problem, when the directory cannot be used
	// (the store itself would only time out).
	if err := probe(opts.Dir); err != nil {
		return nil, err
	}
	// SyncInterval zero: every spooled event is fsynced before its PubAck, so
	// before the 202 (guarantee 1).
	ns, err := natsembed.Start(natsembed.Options{
		StoreDir: opts.Dir,
		Addr:     "-",
		Name:     "verifeye-bridge-spool",
		Log:      opts.Log.Level(zerolog.WarnLevel),
	})
	if err != nil {
		return nil, fmt.Errorf("spool: start store in %s: %w", opts.Dir, err)
	}
	if !ns.JetStreamEnabled() {
		natsembed.Shutdown(ns)
		return nil, fmt.Errorf("spool: store in %s: JetStream could not start (is the directory writable?)", opts.Dir)
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.Name("verifeye-bridge spool"), nats.MaxReconnects(-1))
	if err != nil {
		natsembed.Shutdown(ns)
		return nil, fmt.Errorf("spool: connect in-process: %w", err)
	}
	s := &Spool{cluster: cluster, opts: opts, log: opts.Log, ns: ns, nc: nc, notify: make(chan struct{}, 1), next: 1}
	s.forwarding.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.local, err = jetstream.New(nc)
	if err == nil {
		s.stream, err = s.local.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        streams.Spool,
			Description: "webhooks waiting for the NATS cluster (verifeye-bridge store-and-forward)",
			Subjects:    []string{subjectPrefix + ">"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    1,
			MaxBytes:    opts.MaxBytes,
			// Full: refuse the new event (503), never drop a spooled one.
			Discard: jetstream.DiscardNew,
			// A webhook VerifEye retries during an outage is spooled once.
			Duplicates: min(opts.DuplicateWindow, 2*time.Minute),
		})
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("spool: create stream in %s: %w", opts.Dir, err)
	}
	if err := s.register(opts.Registerer); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// probe creates dir and checks that a file can be written in it.
func probe(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("spool: directory not writable: %w", err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// Close stops the store; what it holds stays on disk for the next Open.
func (s *Spool) Close() {
	s.nc.Close()
	natsembed.Shutdown(s.ns)
}

// PublishMsg publishes msg to the cluster with opts and waits at most
// Options.After for the PubAck; when the publish fails or the PubAck is late,
// it stores msg in the spool instead and returns the spool's PubAck (its
// Stream is streams.Spool). msg must carry its Nats-Msg-Id as a header (opts
// are applied to the cluster publish only). It returns an error, and the
// caller must not answer 2xx, when neither took the event: the spool is full
// (ErrFull) or cannot write.
func (s *Spool) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	cctx, cancel := context.WithTimeout(ctx, s.opts.After)
	ack, err := s.cluster.PublishMsg(cctx, msg, opts...)
	cancel()
	if err == nil {
		return ack, nil
	}
	if ctx.Err() != nil {
		return nil, err // the caller gave up; nothing to answer
	}
	return s.store(ctx, msg, err)
}

// store puts msg into the spool; why is the cluster's error.
func (s *Spool) store(ctx context.Context, msg *nats.Msg, why error) (*jetstream.PubAck, error) {
	m := nats.NewMsg(subjectPrefix + msg.Subject)
	m.Data = msg.Data
	for k, v := range msg.Header {
		// The expectations are the cluster's (re-applied when forwarding); the
		// spool's stream would refuse them.
		if strings.HasPrefix(k, "Nats-Expected-") {
			continue
		}
		m.Header[k] = v
	}
	pa, err := s.local.PublishMsg(ctx, m)
	if err != nil {
		s.rejectedInc()
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "maximum bytes") {
			err = fmt.Errorf("%w (%d bytes): %w", ErrFull, s.opts.MaxBytes, err)
		}
		s.writeErr.Store(&err)
		return nil, fmt.Errorf("spool: cluster unavailable (%v) and spool refused the event: %w", why, err)
	}
	s.writeErr.Store(nil)
	if !pa.Duplicate {
		if s.spooled != nil {
			s.spooled.Inc()
		}
		if !s.outage.Swap(true) {
			s.log.Warn().AnErr("cause", why).Msg("spool: the NATS cluster did not take a webhook in time; spooling until it does")
		}
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return pa, nil
}

func (s *Spool) rejectedInc() {
	if s.rejected != nil {
		s.rejected.Inc()
	}
}

// Run forwards spooled events to the cluster until ctx ends, then returns nil.
// A failed forward is retried with backoff (at most every 5 s); new events are
// forwarded as soon as they are spooled.
func (s *Spool) Run(ctx context.Context) error {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	const maxWait = 5 * time.Second
	wait := 100 * time.Millisecond
	for {
		_, err := s.forwardAll(ctx)
		if ctx.Err() != nil {
			return nil
		}
		next := time.Second // also picks up what another path left
		if err != nil {
			next, wait = wait, min(2*wait, maxWait)
		} else {
			wait = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.notify:
			if err != nil { // the cluster was away: keep the backoff
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(next):
				}
			}
		case <-time.After(next):
		}
	}
}

// Drain forwards what the spool holds until it is empty or ctx ends, and
// returns how many events are left in it. Call it after Run has returned and
// no new events are spooled (at shutdown).
func (s *Spool) Drain(ctx context.Context) (left uint64, err error) {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	for ctx.Err() == nil {
		var empty bool
		if empty, err = s.forwardAll(ctx); empty {
			return 0, nil
		}
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	st, serr := s.State(c)
	if serr != nil {
		return 0, serr
	}
	return st.Messages, err
}

// forwardAll forwards events in arrival order until the spool is empty (empty
// true), an event cannot be forwarded (its error), or ctx ends. Forwarded events
// are removed in batches, each only after the cluster acknowledged it.
func (s *Spool) forwardAll(ctx context.Context) (empty bool, err error) {
	const batch = 256
	var done uint64 // the highest forwarded sequence not yet removed
	defer func() {
		if done > 0 {
			c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			// Purge below done+1: everything up to done was acknowledged by the
			// cluster (in order), so nothing unforwarded is removed.
			if perr := s.stream.Purge(c, jetstream.WithPurgeSequence(done+1)); perr != nil && err == nil {
				err = fmt.Errorf("spool: remove forwarded events: %w", perr)
			} else if perr == nil {
				s.madeRoom()
			}
			cancel()
		}
	}()
	for n := 0; ; n++ {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if n > 0 && n%batch == 0 && done > 0 {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			perr := s.stream.Purge(c, jetstream.WithPurgeSequence(done+1))
			cancel()
			if perr != nil {
				return false, fmt.Errorf("spool: remove forwarded events: %w", perr)
			}
			s.madeRoom()
			done = 0
		}
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		raw, err := s.stream.GetMsg(c, s.next, jetstream.WithGetMsgSubject(subjectPrefix+">"))
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			s.setForwarding(nil)
			s.outage.Store(false)
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("spool: read: %w", err)
		}
		if err := s.forward(ctx, raw); err != nil {
			s.setForwarding(err)
			return false, err
		}
		s.setForwarding(nil)
		done, s.next = raw.Sequence, raw.Sequence+1
	}
}

// forward publishes one spooled event to the cluster: its original subject,
// data and headers (Nats-Msg-Id among them, so a copy the cluster already has is
// a duplicate it drops), plus Verifeye-Spooled-At.
func (s *Spool) forward(ctx context.Context, raw *jetstream.RawStreamMsg) error {
	m := nats.NewMsg(strings.TrimPrefix(raw.Subject, subjectPrefix))
	m.Data = raw.Data
	for k, v := range raw.Header {
		m.Header[k] = v
	}
	m.Header.Set(streams.HeaderSpooledAt, raw.Time.UTC().Format(time.RFC3339Nano))
	c, cancel := context.WithTimeout(ctx, s.opts.ForwardTimeout)
	defer cancel()
	ack, err := s.cluster.PublishMsg(c, m, jetstream.WithExpectStream(s.opts.Stream))
	if err != nil {
		return fmt.Errorf("spool: forward: %w", err)
	}
	if s.forwarded != nil {
		s.forwarded.Inc()
	}
	if age := time.Since(raw.Time); age > s.opts.DuplicateWindow {
		if s.stale != nil {
			s.stale.Inc()
		}
		s.log.Warn().Str("msg_id", raw.Header.Get(streams.HeaderMsgID)).Dur("age", age).Dur("duplicate_window", s.opts.DuplicateWindow).
			Bool("duplicate", ack.Duplicate).
			Msg("spool: forwarded an event older than the duplicate window; a copy stored before a lost PubAck would not be recognised")
	}
	return nil
}

// madeRoom forgets a failed write that was the spool being full: forwarded
// events were just removed.
func (s *Spool) madeRoom() {
	if e := s.writeErr.Load(); e != nil && errors.Is(*e, ErrFull) {
		s.writeErr.CompareAndSwap(e, nil)
	}
}

func (s *Spool) setForwarding(err error) {
	if err == nil {
		s.forwarding.Store(true)
		s.lastErr.Store(nil)
		return
	}
	if s.forwarding.Swap(false) {
		s.log.Warn().Err(err).Msg("spool: cannot forward to the NATS cluster yet; retrying")
	}
	e := err.Error()
	s.lastErr.Store(&e)
}

// State returns what the spool holds now.
func (s *Spool) State(ctx context.Context) (State, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return State{}, fmt.Errorf("spool: state: %w", err)
	}
	st := State{
		Messages:   info.State.Msgs,
		Bytes:      info.State.Bytes,
		Forwarding: s.forwarding.Load(),
		MaxBytes:   s.opts.MaxBytes,
	}
	if st.Messages > 0 && !info.State.FirstTime.IsZero() {
		st.OldestAge = time.Since(info.State.FirstTime).Seconds()
	}
	if e := s.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	return st, nil
}

// Ready reports whether the spool accepts events: its store answers, its
// last write did not fail, and it is not full. It is the
// ingest's readiness with the spool on (the cluster may be away). A full
// spool is ready again once the forwarder has made room.
func (s *Spool) Ready(ctx context.Context) error {
	st, err := s.State(ctx)
	if err != nil {
		return err
	}
	if e := s.writeErr.Load(); e != nil {
		return fmt.Errorf("spool: last write failed: %w", *e)
	}
	if int64(st.Bytes) >= s.opts.MaxBytes {
		return fmt.Errorf("%w: %d of %d bytes", ErrFull, st.Bytes, s.opts.MaxBytes)
	}
	return nil
}

func (s *Spool) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	s.spooled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "verifeye_bridge_spooled_total",
		Help: "Webhooks stored in the local spool because the NATS cluster did not acknowledge them within SPOOL_AFTER.",
	})
	s.forwarded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "verifeye_bridge_spool_forwarded_total",
		Help: "Spooled webhooks forwarded to the NATS cluster (acknowledged by it, duplicates included).",
	})
	s.stale = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "verifeye_bridge_spool_stale_forwards_total",
		Help: "Spooled webhooks forwarded after waiting longer than STREAM_DUPLICATE_WINDOW.",
	})
	s.rejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "verifeye_bridge_spool_rejected_total",
		Help: "Webhooks the spool could not store (full or not writable), answered 503.",
	})
	state := func() State {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, _ := s.State(ctx)
		return st
	}
	cs := []prometheus.Collector{s.spooled, s.forwarded, s.stale, s.rejected,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "verifeye_bridge_spool_messages",
			Help: "Webhooks waiting in the local spool.",
		}, func() float64 { return float64(state().Messages) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "verifeye_bridge_spool_bytes",
			Help: "Bytes stored in the local spool.",
		}, func() float64 { return float64(state().Bytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "verifeye_bridge_spool_max_bytes",
			Help: "Capacity of the local spool (SPOOL_MAX_BYTES).",
		}, func() float64 { return float64(s.opts.MaxBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "verifeye_bridge_spool_oldest_age_seconds",
			Help: "How long the oldest spooled webhook has waited (0 when the spool is empty).",
		}, func() float64 { return state().OldestAge }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "verifeye_bridge_spool_forwarding",
			Help: "1 while the spool's forwarder reaches the NATS cluster, 0 while its last forward failed.",
		}, func() float64 {
			if s.forwarding.Load() {
				return 1
			}
			return 0
		}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("spool: register metrics: %w", err)
		}
	}
	return nil
}
