// Package redrive sends webhooks back to the enricher: dead letters from the
// DLQ stream (Redrive, behind `verifeye-bridge dlq replay`) and a time window
// of the webhooks stream for re-enrichment (Replay, behind `verifeye-bridge
// replay`). Both read streams with ephemeral ordered consumers, so they disturb
// no durable consumer, and both use message IDs that make a second run add
// nothing. Every message read back is validated as strictly as the ingest
// validates a request; what fails is reported, never re-published.
package redrive

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// Entry is one message of the DLQ stream.
type Entry struct {
	// Seq is the entry's sequence on the DLQ stream, Time when it was stored.
	Seq  uint64
	Time time.Time
	// Letter is the decoded entry. When Err is set it holds only what could be
	// read, for reporting.
	Letter streams.DeadLetter
	// Err is non-nil when the entry is not a valid DLQ entry
	// (streams.ErrInvalidDeadLetter): it is never redriven.
	Err error
}

// Redrivable reports whether e can be redriven: it is valid and its body is a
// webhook with a session ID.
func (e Entry) Redrivable() bool { return e.Err == nil && e.Letter.SessionID != "" }

// Filter selects DLQ entries; empty fields match everything.
type Filter struct {
	SessionID string // case-insensitive
	Reason    string
	Source    string // must satisfy streams.ValidSource when set
}

// Match reports whether f selects e.
func (f Filter) Match(e Entry) bool {
	return (f.SessionID == "" || strings.EqualFold(f.SessionID, e.Letter.SessionID)) &&
		(f.Reason == "" || f.Reason == e.Letter.Reason) &&
		(f.Source == "" || f.Source == e.Letter.Source)
}

// EachDeadLetter calls fn for every entry of the DLQ stream dlq (subjects s)
// that f selects, oldest first, up to the last entry when it starts. Invalid
// entries are passed too, with Err set. It returns fn's first error.
func EachDeadLetter(ctx context.Context, dlq jetstream.Stream, s streams.Subjects, f Filter, fn func(Entry) error) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{s.DLQAll()}}
	if f.Source != "" {
		if !streams.ValidSource(f.Source) {
			return fmt.Errorf("redrive: source %q: want [a-z0-9_-]{1,64}", f.Source)
		}
		cfg.FilterSubjects = []string{s.DLQ(f.Source, "*")}
	}
	return scan(ctx, dlq, cfg, func(m jetstream.Msg, meta *jetstream.MsgMetadata) error {
		e := Entry{Seq: meta.Sequence.Stream, Time: meta.Timestamp}
		l, err := streams.DecodeDeadLetter(s, m.Subject(), m.Headers(), m.Data())
		e.Letter, e.Err = *l, err
		if !f.Match(e) {
			return nil
		}
		return fn(e)
	})
}

// DeadLetters returns the entries of the DLQ stream that f selects, oldest
// first (see EachDeadLetter).
func DeadLetters(ctx context.Context, dlq jetstream.Stream, s streams.Subjects, f Filter) ([]Entry, error) {
	var out []Entry
	err := EachDeadLetter(ctx, dlq, s, f, func(e Entry) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// ErrNotRedrivable is returned by Redrive for an entry that is invalid or whose
// body is not a webhook with a session ID.
var ErrNotRedrivable = errors.New("redrive: not a valid dead-lettered webhook")

// Redrive re-publishes the DLQ entry e to the webhooks stream, on the webhook
// subject the entry names and with its body and carried headers, and once
// stored deletes it from dlq. The message ID names the DLQ sequence
// (streams.RedriveMsgID), so a second redrive of the same entry (say, the
// delete failed) is dropped as a duplicate. The copy carries no replay marker
// unless the entry came from a replay: the session never got its outcome, so
// it keeps the session ID as its ID. An entry that is not Redrivable is
// refused with ErrNotRedrivable and nothing is published.
//
// sync, when set, is called once the webhook is stored and before the entry
// is deleted: a server that leaves the fsync of its writes to whoever answers
// for them (natsembed.Options.GroupSync) then has the copy on disk before the
// original goes, so no power cut can leave neither. A failed sync leaves the
// entry on the DLQ.
func Redrive(ctx context.Context, js jetstream.JetStream, dlq jetstream.Stream, s streams.Subjects, e Entry, sync func() error) (*jetstream.PubAck, error) {
	if !e.Redrivable() {
		if e.Err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNotRedrivable, e.Err)
		}
		return nil, ErrNotRedrivable
	}
	l := e.Letter
	m := nats.NewMsg(s.Webhook(l.Source, l.Event))
	m.Data = l.Data
	streams.CopyWebhookHeaders(m.Header, l.Header)
	ack, err := js.PublishMsg(ctx, m, jetstream.WithMsgID(streams.RedriveMsgID(l.Event, l.SessionID, e.Seq)), jetstream.WithExpectStream(streams.Webhooks))
	if err != nil {
		return nil, fmt.Errorf("redrive: publish: %w", err)
	}
	if sync != nil {
		if err := sync(); err != nil {
			return ack, fmt.Errorf("redrive: stored as webhook seq %d, but not known to be on disk, so it stays on the DLQ (redrive it again; it will not duplicate): %w", ack.Sequence, err)
		}
	}
	if err := dlq.DeleteMsg(ctx, e.Seq); err != nil && !gone(ctx, dlq, e.Seq) {
		return ack, fmt.Errorf("redrive: stored as webhook seq %d, but not deleted from the DLQ (redrive it again to delete it; it will not duplicate): %w", ack.Sequence, err)
	}
	return ack, nil
}

// gone reports whether the message seq is no longer on st (deleting a deleted
// message fails with an error that does not say so in a matchable way).
func gone(ctx context.Context, st jetstream.Stream, seq uint64) bool {
	_, err := st.GetMsg(ctx, seq)
	return errors.Is(err, jetstream.ErrMsgNotFound)
}

// scan calls fn for every message of st that cfg selects, in order, up to the
// stream's last sequence when the scan starts: messages published meanwhile
// (by fn itself, for example) are not visited. It uses an ephemeral ordered
// consumer, so it disturbs no durable consumer. It returns fn's first error.
func scan(ctx context.Context, st jetstream.Stream, cfg jetstream.OrderedConsumerConfig, fn func(jetstream.Msg, *jetstream.MsgMetadata) error) error {
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("redrive: stream info: %w", err)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("redrive: ordered consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("redrive: ordered consumer: %w", err)
	}
	defer it.Stop()
	if ci := cons.CachedInfo(); ci != nil && ci.NumPending == 0 {
		return nil
	}
	for {
		nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msg, err := it.Next(jetstream.NextContext(nctx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
				// Pending messages may have been deleted or aged out meanwhile.
				if ci, ierr := cons.Info(ctx); ierr == nil && ci.NumPending == 0 {
					return nil
				}
				continue
			}
			return fmt.Errorf("redrive: read %s: %w", info.Config.Name, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("redrive: read %s: %w", info.Config.Name, err)
		}
		if meta.Sequence.Stream > last {
			return nil
		}
		if err := fn(msg, meta); err != nil {
			return err
		}
		if meta.Sequence.Stream >= last || meta.NumPending == 0 {
			return nil
		}
	}
}

// Scan calls fn for every message of st on the subjects filter (all when
// empty), oldest first, up to the stream's last sequence when it starts, with
// an ephemeral ordered consumer. It returns fn's first error.
func Scan(ctx context.Context, st jetstream.Stream, filter []string, fn func(jetstream.Msg, *jetstream.MsgMetadata) error) error {
	return scan(ctx, st, jetstream.OrderedConsumerConfig{FilterSubjects: filter}, fn)
}
