package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

const dlqSummary = "List and replay dead-lettered webhooks (the " + streams.DLQ + " stream).\n\n" +
	"Subcommands:\n" +
	"  list     print a table of the DLQ entries\n" +
	"  replay   send entries back to the enricher, then delete them from the DLQ"

func cmdDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" || args[0] == "help" {
		fmt.Fprintf(stdout, "Usage: verifeye-bridge dlq <list|replay> [flags]\n\n%s\n\nExample:\n  verifeye-bridge dlq list --reason not_found\n  verifeye-bridge dlq replay --session 3f2a9c1e-0000-4000-8000-000000000001\n\nRun 'verifeye-bridge dlq <subcommand> --help' for its flags.\n", dlqSummary)
		if len(args) == 0 {
			return usagef("want a subcommand: list or replay")
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "list":
		return cmdDLQList(ctx, args[1:], stdout, stderr)
	case "replay":
		return cmdDLQReplay(ctx, args[1:], stdout, stderr)
	}
	return usagef("unknown subcommand %q: want list or replay", args[0])
}

// dlqFilter selects DLQ entries; empty fields match everything.
type dlqFilter struct {
	session, reason, source string
}

func (f dlqFilter) match(e dlqEntry) bool {
	return (f.session == "" || strings.EqualFold(f.session, e.session)) &&
		(f.reason == "" || f.reason == e.reason) &&
		(f.source == "" || f.source == e.source)
}

func (f *dlqFilter) flags(fs *flag.FlagSet) {
	fs.StringVar(&f.session, "session", "", "only the entry of this verification session ID")
	fs.StringVar(&f.reason, "reason", "", "only entries with this reason (not_found, bad_request, attempts_exhausted, ...)")
	fs.StringVar(&f.source, "source", "", "only entries of this webhook source")
}

// dlqEntry is one dead-lettered webhook, read from its headers and body.
type dlqEntry struct {
	seq        uint64
	msg        jetstream.Msg
	meta       *jetstream.MsgMetadata
	source     string
	event      string
	session    string // empty when the body is not a webhook of the contract
	reason     string
	detail     string
	lastStatus string
	attempts   string
	origSubj   string // the webhook subject to redrive to
	origEvent  string // its event token
}

func readDLQEntry(s streams.Subjects, msg jetstream.Msg, meta *jetstream.MsgMetadata) dlqEntry {
	h := msg.Headers()
	e := dlqEntry{
		seq: meta.Sequence.Stream, msg: msg, meta: meta,
		reason: h.Get(streams.HeaderError), detail: h.Get(streams.HeaderErrorDetail),
		lastStatus: h.Get(streams.HeaderLastStatus), attempts: h.Get(streams.HeaderAttempts),
	}
	_, e.source, e.event, _ = s.Parse(msg.Subject())
	if wh, err := streams.ParseWebhook(msg.Data()); err == nil {
		e.session = wh.SessionID
	}
	// Redrive to the subject the webhook came from; rebuild it from the DLQ
	// subject when the header is missing or not one of ours.
	if kind, _, event, err := s.Parse(h.Get(streams.HeaderOrigSubject)); err == nil && kind == "webhook" && streams.ValidEvent(event) {
		e.origSubj, e.origEvent = h.Get(streams.HeaderOrigSubject), event
	} else if streams.ValidSource(e.source) && streams.ValidEvent(e.event) {
		e.origSubj, e.origEvent = s.Webhook(e.source, e.event), e.event
	}
	return e
}

// readDLQ returns the DLQ entries f selects, oldest first.
func readDLQ(ctx context.Context, st jetstream.Stream, s streams.Subjects, f dlqFilter) ([]dlqEntry, error) {
	var out []dlqEntry
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{s.DLQAll()}}
	if f.source != "" {
		cfg.FilterSubjects = []string{s.DLQ(f.source, "*")}
	}
	err := scan(ctx, st, cfg, func(m jetstream.Msg, meta *jetstream.MsgMetadata) error {
		if e := readDLQEntry(s, m, meta); f.match(e) {
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

func cmdDLQList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	var f dlqFilter
	fs := flag.NewFlagSet("dlq list", flag.ContinueOnError)
	f.flags(fs)
	if err := parseFlags(fs, args, stdout,
		"Print the dead-lettered webhooks as a table: sequence, time dead-lettered,\nsource, session, reason, last API status, attempts and detail.",
		"verifeye-bridge dlq list --reason not_found", &cfg); err != nil {
		return err
	}
	if f.source != "" && !streams.ValidSource(f.source) {
		return usagef("--source %q: want [a-z0-9_-]{1,64}", f.source)
	}
	subjects, nc, _, st, err := openTool(ctx, cfg, "dlq list", streams.DLQ, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	entries, err := readDLQ(ctx, st, subjects, f)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		fmt.Fprintln(stdout, "no DLQ entries match")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 1, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tSOURCE\tSESSION\tREASON\tLAST STATUS\tATTEMPTS\tDETAIL")
	for _, e := range entries {
		session := e.session
		if session == "" {
			session = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.seq, e.meta.Timestamp.Local().Format("2006-01-02 15:04:05"),
			e.source, session, dash(e.reason), dash(e.lastStatus), dash(e.attempts), dash(shorten(e.detail, 80)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d entries\n", len(entries))
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func cmdDLQReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	var f dlqFilter
	fs := flag.NewFlagSet("dlq replay", flag.ContinueOnError)
	f.flags(fs)
	all := fs.Bool("all", false, "replay every entry")
	dryRun := fs.Bool("dry-run", false, "print what would be replayed, change nothing")
	if err := parseFlags(fs, args, stdout,
		"Send dead-lettered webhooks back to the enricher (to the webhook subject they\ncame from, with the original body and receive time), then delete each from the\nDLQ once the webhooks stream has stored it. Replaying an entry twice cannot\nduplicate it. Choose entries with --session, --reason or --source, or --all.",
		"verifeye-bridge dlq replay --reason not_found --dry-run", &cfg); err != nil {
		return err
	}
	selected := f != (dlqFilter{})
	switch {
	case *all && selected:
		return usagef("--all: not with --session, --reason or --source")
	case !*all && !selected:
		return usagef("choose entries with --session, --reason or --source, or --all")
	case f.source != "" && !streams.ValidSource(f.source):
		return usagef("--source %q: want [a-z0-9_-]{1,64}", f.source)
	}
	subjects, nc, js, st, err := openTool(ctx, cfg, "dlq replay", streams.DLQ, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	if _, err := openStream(ctx, js, streams.Webhooks); err != nil {
		return err
	}

	var done, skipped, failed int
	prog := newProgress(stderr, "dlq replay")
	cfgc := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.DLQAll()}}
	if f.source != "" {
		cfgc.FilterSubjects = []string{subjects.DLQ(f.source, "*")}
	}
	err = scan(ctx, st, cfgc, func(m jetstream.Msg, meta *jetstream.MsgMetadata) error {
		e := readDLQEntry(subjects, m, meta)
		if !f.match(e) {
			return nil
		}
		if e.session == "" || e.origSubj == "" {
			skipped++
			fmt.Fprintf(stdout, "skip    seq %d: not a webhook with a session ID (reason %s); delete it or fix it by hand\n", e.seq, dash(e.reason))
			return nil
		}
		if *dryRun {
			done++
			fmt.Fprintf(stdout, "would replay seq %d session %s (%s) to %s\n", e.seq, e.session, dash(e.reason), e.origSubj)
			return nil
		}
		ack, err := redrive(ctx, js, st, e)
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "failed  seq %d session %s: %v\n", e.seq, e.session, err)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
		done++
		note := ""
		if ack.Duplicate {
			note = " (already replayed before; now removed from the DLQ)"
		}
		fmt.Fprintf(stdout, "replayed seq %d session %s (%s) to %s seq %d%s\n", e.seq, e.session, dash(e.reason), e.origSubj, ack.Sequence, note)
		prog.tick(done)
		return nil
	})
	verb := "replayed"
	if *dryRun {
		verb = "would replay"
	}
	fmt.Fprintf(stdout, "%s %d, skipped %d, failed %d (%s)\n", verb, done, skipped, failed, prog.rate(done))
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d entries could not be replayed; they stay on the DLQ", failed)
	}
	return nil
}

// redrive re-publishes a DLQ entry to the webhooks stream and, once stored,
// deletes it from the DLQ. The message ID names the DLQ sequence, so a second
// redrive of the same entry (say, the delete failed) is dropped as a duplicate.
// It carries no replay header unless the entry came from a replay: the session
// never got its outcome, which keeps the session ID as its ID.
func redrive(ctx context.Context, js jetstream.JetStream, dlq jetstream.Stream, e dlqEntry) (*jetstream.PubAck, error) {
	m := nats.NewMsg(e.origSubj)
	m.Data = e.msg.Data()
	for _, k := range []string{streams.HeaderReceivedAt, streams.HeaderReplay, streams.HeaderTraceparent, streams.HeaderTracestate} {
		if v := e.msg.Headers().Get(k); v != "" {
			m.Header.Set(k, v)
		}
	}
	ack, err := js.PublishMsg(ctx, m, jetstream.WithMsgID(streams.RedriveMsgID(e.origEvent, e.session, e.seq)), jetstream.WithExpectStream(streams.Webhooks))
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	if err := dlq.DeleteMsg(ctx, e.seq); err != nil && !gone(ctx, dlq, e.seq) {
		return ack, fmt.Errorf("stored as webhook seq %d, but not deleted from the DLQ (replay it again to delete it; it will not duplicate): %w", ack.Sequence, err)
	}
	return ack, nil
}

// gone reports whether the message seq is no longer on st (deleting a deleted
// message fails with an error that does not say so in a matchable way).
func gone(ctx context.Context, st jetstream.Stream, seq uint64) bool {
	_, err := st.GetMsg(ctx, seq)
	return errors.Is(err, jetstream.ErrMsgNotFound)
}
