package redrive

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// Window selects the webhooks Replay re-publishes: the VerificationCompleted
// webhooks stored from From up to To.
type Window struct {
	From, To time.Time
	// Source, when set, limits the window to one webhook source; it must
	// satisfy streams.ValidSource.
	Source string
	// DryRun counts what would be replayed and publishes nothing.
	DryRun bool
	// Progress, when non-nil, is called after each webhook published with the
	// number published so far (new and duplicates).
	Progress func(done int)
}

// Rejected is a message that failed validation and was not re-published.
type Rejected struct {
	Seq uint64
	Err error
}

// ReplayResult counts what Replay did.
type ReplayResult struct {
	// Replayed are new copies stored (with DryRun: copies that would be made);
	// Duplicates were replayed already within the duplicate window.
	Replayed, Duplicates int
	// EarlierReplays are copies made by an earlier replay (they carry
	// streams.HeaderReplay), Repeats webhooks of a session met before in this
	// run (a webhook and its DLQ redrive, say): neither is replayed.
	EarlierReplays, Repeats int
	// Rejected are messages that are not valid webhooks (see
	// streams.DecodeStoredWebhook), oldest first.
	Rejected []Rejected
}

// Replay re-publishes every webhook of the window w on the webhooks stream st
// once per session, carrying streams.HeaderReplay (the original's stream
// sequence), so that the enricher fetches its result again and publishes one
// new outcome with the ID streams.ReplayOutcomeID. Each copy's message ID is
// derived from the original's sequence (streams.ReplayMsgID): running the same
// replay again within the duplicate window adds nothing. Messages that are not
// valid webhooks are counted in Rejected and not re-published. On error the
// result counts what was done before it.
func Replay(ctx context.Context, js jetstream.JetStream, st jetstream.Stream, s streams.Subjects, w Window) (ReplayResult, error) {
	var r ReplayResult
	source := "*"
	if w.Source != "" {
		if !streams.ValidSource(w.Source) {
			return r, fmt.Errorf("redrive: source %q: want [a-z0-9_-]{1,64}", w.Source)
		}
		source = w.Source
	}
	from := w.From
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.Webhook(source, streams.EventCompleted)},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &from,
	}
	seen := make(map[string]bool)
	errStop := errors.New("end of window")
	err := scan(ctx, st, cfg, func(m jetstream.Msg, meta *jetstream.MsgMetadata) error {
		if meta.Timestamp.After(w.To) {
			return errStop
		}
		// Copies made by an earlier replay are not webhooks of the window.
		if m.Headers().Get(streams.HeaderReplay) != "" {
			r.EarlierReplays++
			return nil
		}
		_, event, session, err := streams.DecodeStoredWebhook(s, m.Subject(), m.Headers(), m.Data())
		if err != nil {
			r.Rejected = append(r.Rejected, Rejected{Seq: meta.Sequence.Stream, Err: err})
			return nil
		}
		// One new outcome per session, even if the window holds the session
		// twice (a webhook and its DLQ redrive).
		key := strings.ToLower(session)
		if seen[key] {
			r.Repeats++
			return nil
		}
		seen[key] = true
		if w.DryRun {
			r.Replayed++
			return nil
		}
		seq := meta.Sequence.Stream
		out := nats.NewMsg(m.Subject())
		out.Data = m.Data()
		streams.CopyWebhookHeaders(out.Header, m.Headers())
		out.Header.Set(streams.HeaderReplay, strconv.FormatUint(seq, 10))
		ack, err := js.PublishMsg(ctx, out, jetstream.WithMsgID(streams.ReplayMsgID(event, session, seq)), jetstream.WithExpectStream(streams.Webhooks))
		if err != nil {
			return fmt.Errorf("redrive: publish replay of seq %d: %w", seq, err)
		}
		if ack.Duplicate {
			r.Duplicates++
		} else {
			r.Replayed++
		}
		if w.Progress != nil {
			w.Progress(r.Replayed + r.Duplicates)
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return r, err
}
