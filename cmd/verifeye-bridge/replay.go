package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

func cmdReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	since := fs.String("since", "", "start of the window: a duration back from now (1h) or an RFC 3339 time (required)")
	until := fs.String("until", "", "end of the window, like --since (default: now)")
	source := fs.String("source", "", "only webhooks of this source")
	dryRun := fs.Bool("dry-run", false, "print how many webhooks would be replayed, change nothing")
	if err := parseFlags(fs, args, stdout,
		"Re-enrich a time window of the webhooks stream: every VerificationCompleted\n"+
			"webhook received in the window is published again, once per session, so the\n"+
			"enricher fetches its result again and publishes one NEW outcome for it. A\n"+
			"replayed outcome is a distinct CloudEvent: its id (and Nats-Msg-Id) is\n"+
			"<sessionId>:replay:<sequence of the original webhook>. Running the same replay\n"+
			"again within STREAM_DUPLICATE_WINDOW adds nothing (an interrupted run can\n"+
			"simply be repeated); webhooks that are themselves replays are skipped.",
		"verifeye-bridge replay --since 1h --dry-run", &cfg); err != nil {
		return err
	}
	if *since == "" {
		return usagef("--since: required (a duration such as 1h, or an RFC 3339 time)")
	}
	now := time.Now()
	from, err := parseSince(*since, now)
	if err != nil {
		return err
	}
	to := now
	if *until != "" {
		if to, err = parseSince(*until, now); err != nil {
			return usagef("--until: %v", strings.TrimPrefix(err.Error(), "--since "))
		}
		if !to.After(from) {
			return usagef("--until: must be after --since")
		}
	}
	if *source != "" && !streams.ValidSource(*source) {
		return usagef("--source %q: want [a-z0-9_-]{1,64}", *source)
	}
	subjects, nc, js, st, err := openTool(ctx, cfg, "replay", streams.Webhooks, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()

	occ := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.Webhook(orAny(*source), streams.EventCompleted)},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &from,
	}
	var (
		r       = replayer{js: js}
		seen    = make(map[string]bool)
		prog    = newProgress(stderr, "replay")
		skipped = map[string]int{}
	)
	errStop := errors.New("end of window")
	err = scan(ctx, st, occ, func(m jetstream.Msg, meta *jetstream.MsgMetadata) error {
		if meta.Timestamp.After(to) {
			return errStop
		}
		// Copies made by an earlier replay are not webhooks of the window.
		if m.Headers().Get(streams.HeaderReplay) != "" {
			skipped["earlier replays"]++
			return nil
		}
		wh, err := streams.ParseWebhook(m.Data())
		if err != nil {
			skipped["not a webhook with a session ID"]++
			return nil
		}
		// One new outcome per session, even if the window holds the session
		// twice (a webhook and its DLQ redrive).
		key := strings.ToLower(wh.SessionID)
		if seen[key] {
			skipped["sessions already in this run"]++
			return nil
		}
		seen[key] = true
		if *dryRun {
			r.replayed++
			return nil
		}
		if err := r.replay(ctx, m, meta.Sequence.Stream, wh.SessionID); err != nil {
			return err
		}
		prog.tick(r.replayed + r.duplicates)
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	window := fmt.Sprintf("%s to %s", from.Local().Format(time.RFC3339), to.Local().Format(time.RFC3339))
	if *dryRun {
		fmt.Fprintf(stdout, "would replay %d webhooks received %s%s\n", r.replayed, window, skippedNote(skipped))
	} else {
		fmt.Fprintf(stdout, "replayed %d webhooks received %s (%s)", r.replayed, window, prog.rate(r.replayed+r.duplicates))
		if r.duplicates > 0 {
			fmt.Fprintf(stdout, "; %d were replayed already within the duplicate window", r.duplicates)
		}
		fmt.Fprintf(stdout, "%s\n", skippedNote(skipped))
	}
	if err != nil {
		return fmt.Errorf("stopped after %d: %w", r.replayed, err)
	}
	return nil
}

func skippedNote(skipped map[string]int) string {
	var parts []string
	for _, k := range []string{"earlier replays", "sessions already in this run", "not a webhook with a session ID"} {
		if n := skipped[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, k))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; skipped " + strings.Join(parts, ", ")
}

// replayer re-publishes webhooks for re-enrichment and counts the results.
type replayer struct {
	js                   jetstream.JetStream
	replayed, duplicates int
}

// replay publishes a copy of the webhook m (stream sequence seq) carrying
// HeaderReplay, so the enricher gives it a new outcome ID. Its message ID is
// derived from seq: replaying the same webhook twice stores one copy.
func (r *replayer) replay(ctx context.Context, m jetstream.Msg, seq uint64, sessionID string) error {
	out := nats.NewMsg(m.Subject())
	out.Data = m.Data()
	for _, k := range []string{streams.HeaderReceivedAt, streams.HeaderTraceparent, streams.HeaderTracestate} {
		if v := m.Headers().Get(k); v != "" {
			out.Header.Set(k, v)
		}
	}
	out.Header.Set(streams.HeaderReplay, strconv.FormatUint(seq, 10))
	event := streams.EventCompleted
	if i := strings.LastIndexByte(m.Subject(), '.'); i >= 0 {
		event = m.Subject()[i+1:]
	}
	ack, err := r.js.PublishMsg(ctx, out, jetstream.WithMsgID(streams.ReplayMsgID(event, sessionID, seq)), jetstream.WithExpectStream(streams.Webhooks))
	if err != nil {
		return fmt.Errorf("publish replay of seq %d: %w", seq, err)
	}
	if ack.Duplicate {
		r.duplicates++
	} else {
		r.replayed++
	}
	return nil
}
