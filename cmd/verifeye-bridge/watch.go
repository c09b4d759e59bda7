package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

func cmdWatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	source := fs.String("source", "", "only outcomes of this webhook source")
	outcome := fs.String("outcome", "", "only this outcome (passed, failed, unknown, ...)")
	since := fs.String("since", "", "start this far back (1h) or at this time (2026-11-26T10:00:00Z) instead of now")
	seq := fs.Uint64("seq", 0, "start at this stream sequence of "+streams.Results)
	count := fs.Int("count", 0, "exit after this many outcomes (0: run until interrupted)")
	timeout := fs.Duration("timeout", 0, "give up after this long (with --count, not reaching it is a failure)")
	asJSON := fs.Bool("json", false, "print each outcome's CloudEvent as one JSON line")
	if err := parseFlags(fs, args, stdout,
		"Print outcomes from the results stream as they arrive, one line each. It reads\nwith an ephemeral ordered consumer, so it never disturbs durable consumers.",
		"verifeye-bridge watch --since 1h --outcome failed", &cfg); err != nil {
		return err
	}
	switch {
	case *source != "" && !streams.ValidSource(*source):
		return usagef("--source %q: want [a-z0-9_-]{1,64}", *source)
	case *outcome != "" && streams.Outcome(*outcome) != *outcome:
		return usagef("--outcome %q: want a lower-case word such as passed or failed", *outcome)
	case *since != "" && *seq != 0:
		return usagef("--since and --seq: give one or the other")
	case *count < 0:
		return usagef("--count %d: must not be negative", *count)
	case *timeout < 0:
		return usagef("--timeout %v: must not be negative", *timeout)
	}
	occ := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			return err
		}
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	if *seq != 0 {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, *seq
	}
	subjects, err := cfg.load()
	if err != nil {
		return err
	}
	occ.FilterSubjects = []string{subjects.Result(orAny(*source), orAny(*outcome))}

	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	nc, js, err := connectTool(cfg, "watch", stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := openStream(ctx, js, streams.Results)
	if err != nil {
		return timeoutHint(ctx, *timeout, err)
	}
	cons, err := st.OrderedConsumer(ctx, occ)
	if err != nil {
		return timeoutHint(ctx, *timeout, fmt.Errorf("ordered consumer: %w", err))
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	defer it.Stop()

	seen := 0
	for *count == 0 || seen < *count {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				return fmt.Errorf("read %s: %w", streams.Results, err)
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && *count > 0 {
				return fmt.Errorf("timed out after %v: saw %d of %d outcomes", *timeout, seen, *count)
			}
			return nil // interrupted, or --timeout without --count: a normal end
		}
		seen++
		meta, _ := msg.Metadata()
		if *asJSON {
			var line bytes.Buffer
			if json.Compact(&line, msg.Data()) != nil {
				line.Reset()
				line.Write(bytes.ReplaceAll(msg.Data(), []byte("\n"), nil))
			}
			line.WriteByte('\n')
			if _, err := stdout.Write(line.Bytes()); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintln(stdout, outcomeLine(subjects, msg.Subject(), msg.Data(), meta))
	}
	return nil
}

// orAny returns token, or the single-token wildcard when it is empty.
func orAny(token string) string {
	if token == "" {
		return "*"
	}
	return token
}

// timeoutHint turns a deadline error of the --timeout into a plain sentence.
func timeoutHint(ctx context.Context, timeout time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	return err
}

// outcomeLine renders one outcome for a person: time published, source,
// outcome, session ID and the result fields of data ("…Result" keys and
// failedReason), plus a mark on replayed outcomes. Everything in it comes from
// the stream, so the line is escaped with termSafe.
func outcomeLine(s streams.Subjects, subject string, data []byte, meta *jetstream.MsgMetadata) string {
	_, source, outcome, _ := s.Parse(subject)
	var ev struct {
		ID      string                     `json:"id"`
		Subject string                     `json:"subject"`
		Data    map[string]json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(data, &ev)
	when := "-"
	if meta != nil {
		when = meta.Timestamp.Local().Format("2006-01-02 15:04:05")
	}
	var fields []string
	keys := make([]string, 0, len(ev.Data))
	for k := range ev.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "verificationResult" || (!strings.HasSuffix(k, "Result") && k != "failedReason") {
			continue
		}
		var v string
		if json.Unmarshal(ev.Data[k], &v) == nil && v != "" {
			fields = append(fields, k+"="+v)
		}
	}
	line := fmt.Sprintf("%s  %-10s %-8s %s", when, source, outcome, ev.Subject)
	if len(fields) > 0 {
		line += "  " + strings.Join(fields, " ")
	}
	if ev.ID != "" && ev.ID != ev.Subject {
		line += "  (replay " + ev.ID + ")"
	}
	return termSafe(line)
}
