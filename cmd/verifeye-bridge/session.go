package main

import (
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

	"github.com/realeyes/verifeye-bridge/internal/redrive"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// splitPositional parses fs from args with the one positional argument
// (named what) allowed before or after the flags, and returns it.
func splitPositional(fs *flag.FlagSet, args []string, stdout io.Writer, what, summary, example string, specs ...any) (string, error) {
	var pos string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = args[0], args[1:]
	} else {
		// The positional argument after the flags.
		for i, a := range args {
			if !strings.HasPrefix(a, "-") && (i == 0 || !flagTakesValue(fs, args[i-1])) {
				pos = a
				args = append(append([]string{}, args[:i]...), args[i+1:]...)
				break
			}
		}
	}
	if err := parseFlags(fs, args, stdout, summary, example, specs...); err != nil {
		return "", err
	}
	if pos == "" {
		return "", usagef("missing the %s argument (see --help)", what)
	}
	return pos, nil
}

// flagTakesValue reports whether arg is a flag of fs that takes a value in
// the next argument (-source S, not -json or -source=S).
func flagTakesValue(fs *flag.FlagSet, arg string) bool {
	name := strings.TrimLeft(arg, "-")
	if strings.Contains(name, "=") {
		return false
	}
	f := fs.Lookup(name)
	if f == nil {
		return false
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return false
	}
	return true
}

func cmdExpect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	fs := flag.NewFlagSet("expect", flag.ContinueOnError)
	source := fs.String("source", streams.DefaultSource, "source of the session's webhooks")
	id, err := splitPositional(fs, args, stdout, "session ID",
		"Announce a session you started, so that the bridge fetches its outcome even\nif VerifEye's webhook never comes (after RECONCILE_AFTER). Idempotent.",
		"verifeye-bridge expect 3f2a9c1e-0000-4000-8000-000000000001 --source acme", &cfg)
	if err != nil {
		return err
	}
	if !streams.ValidSessionID(id) {
		return usagef("%q is not a session ID (8-4-4-4-12 hex)", id)
	}
	if !streams.ValidSource(*source) {
		return usagef("--source %q: want [a-z0-9_-]{1,64}", *source)
	}
	subjects, err := cfg.load()
	if err != nil {
		return err
	}
	nc, js, err := connectTool(cfg, "expect", stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := outcome.Expect(c, js, *source, id, outcome.WithPrefix(subjects.Prefix())); err != nil {
		return err
	}
	printLine(stdout, "expected %s (source %s): the bridge reconciles it if no webhook comes", outcome.SessionKey(id), *source)
	return nil
}

// sessionStory is a session's whole path, as `session --json` prints it.
type sessionStory struct {
	SessionID   string            `json:"sessionId"`
	Ledger      *outcome.Session  `json:"ledger"`
	Webhooks    []storyWebhook    `json:"webhooks"`
	DeadLetters []storyDeadLetter `json:"deadLetters"`
	Outcomes    []storyOutcome    `json:"outcomes"`
	events      []storyLine       // the text form, in time order
}

type storyWebhook struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Subject    string    `json:"subject"`
	MsgID      string    `json:"msgId"`
	SpooledAt  string    `json:"spooledAt,omitempty"`
	Reconciled bool      `json:"reconciled,omitempty"`
	Replay     string    `json:"replayOf,omitempty"`
}

type storyDeadLetter struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Reason     string    `json:"reason"`
	LastStatus int       `json:"lastStatus"`
	Attempts   int       `json:"attempts"`
	Detail     string    `json:"detail,omitempty"`
}

type storyOutcome struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	ID         string    `json:"id"`
	Outcome    string    `json:"outcome"`
	Reconciled bool      `json:"reconciled,omitempty"`
}

type storyLine struct {
	t    time.Time
	text string
}

func cmdSession(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	fs := flag.NewFlagSet("session", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object, for scripts")
	id, err := splitPositional(fs, args, stdout, "session ID",
		"Print a session's whole path in time order: its webhook(s) (spooled,\nreconciled or replayed), its DLQ entries with the attempts and the last API\nstatus, its outcome(s), and its state in the session ledger. It reads the\nstreams from the start: on large streams it takes a while.",
		"verifeye-bridge session 3f2a9c1e-0000-4000-8000-000000000001 --json", &cfg)
	if err != nil {
		return err
	}
	if !streams.ValidSessionID(id) {
		return usagef("%q is not a session ID (8-4-4-4-12 hex)", id)
	}
	subjects, err := cfg.load()
	if err != nil {
		return err
	}
	nc, js, err := connectTool(cfg, "session", stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	story, err := readStory(ctx, js, subjects, id)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(story)
	}
	printStory(stdout, story)
	if story.Ledger == nil && len(story.Webhooks)+len(story.DeadLetters)+len(story.Outcomes) == 0 {
		return fmt.Errorf("no trace of session %s", outcome.SessionKey(id))
	}
	return nil
}

func readStory(ctx context.Context, js jetstream.JetStream, subjects streams.Subjects, id string) (*sessionStory, error) {
	story := &sessionStory{SessionID: outcome.SessionKey(id), Webhooks: []storyWebhook{}, DeadLetters: []storyDeadLetter{}, Outcomes: []storyOutcome{}}
	s, err := outcome.Lookup(ctx, js, id)
	switch {
	case err == nil:
		story.Ledger = s
	case errors.Is(err, outcome.ErrNotFound), errors.Is(err, jetstream.ErrBucketNotFound):
	default:
		return nil, err
	}
	if st, err := openStream(ctx, js, streams.Webhooks); err == nil {
		err = redrive.Scan(ctx, st, []string{subjects.WebhooksAll()}, func(m jetstream.Msg, meta *jetstream.MsgMetadata) error {
			wh, perr := streams.ParseWebhook(m.Data())
			if perr != nil || !strings.EqualFold(wh.SessionID, id) {
				return nil
			}
			h := m.Headers()
			w := storyWebhook{Seq: meta.Sequence.Stream, Time: meta.Timestamp, Subject: m.Subject(), MsgID: h.Get(streams.HeaderMsgID),
				SpooledAt: h.Get(streams.HeaderSpooledAt), Reconciled: h.Get(outcome.HeaderReconciled) == "true", Replay: h.Get(streams.HeaderReplay)}
			story.Webhooks = append(story.Webhooks, w)
			var tags []string
			if w.SpooledAt != "" {
				tags = append(tags, "spooled at "+w.SpooledAt)
			}
			if w.Reconciled {
				tags = append(tags, "reconciled (injected by the bridge)")
			}
			if w.Replay != "" {
				tags = append(tags, "replay of seq "+w.Replay)
			}
			story.add(w.Time, fmt.Sprintf("webhook   seq %d on %s %s", w.Seq, w.Subject, strings.Join(tags, ", ")))
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if st, err := openStream(ctx, js, streams.DLQ); err == nil {
		entries, err := redrive.DeadLetters(ctx, st, subjects, redrive.Filter{SessionID: id})
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			l := e.Letter
			d := storyDeadLetter{Seq: e.Seq, Time: e.Time, Reason: l.Reason, LastStatus: l.LastStatus, Attempts: l.Attempts, Detail: l.Detail}
			story.DeadLetters = append(story.DeadLetters, d)
			story.add(d.Time, fmt.Sprintf("dlq       seq %d: %s after %d attempt(s), last API status %d %s", d.Seq, d.Reason, d.Attempts, d.LastStatus, shorten(d.Detail, 80)))
		}
	}
	if st, err := openStream(ctx, js, streams.Results); err == nil {
		err = redrive.Scan(ctx, st, []string{subjects.ResultsAll()}, func(m jetstream.Msg, meta *jetstream.MsgMetadata) error {
			ev, derr := outcome.Decode(m.Data())
			if derr != nil || !strings.EqualFold(ev.SessionID, id) {
				return nil
			}
			o := storyOutcome{Seq: meta.Sequence.Stream, Time: meta.Timestamp, ID: ev.ID, Outcome: ev.Outcome, Reconciled: ev.Reconciled}
			story.Outcomes = append(story.Outcomes, o)
			tag := ""
			if o.Reconciled {
				tag = " (reconciled)"
			}
			story.add(o.Time, fmt.Sprintf("outcome   seq %d: %s, API status 200, event id %s%s", o.Seq, o.Outcome, o.ID, tag))
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return story, nil
}

func (s *sessionStory) add(t time.Time, text string) {
	s.events = append(s.events, storyLine{t: t, text: strings.TrimSpace(text)})
}

func printStory(w io.Writer, s *sessionStory) {
	printLine(w, "session %s", s.SessionID)
	if s.Ledger != nil && !s.Ledger.ExpectedAt.IsZero() {
		s.add(s.Ledger.ExpectedAt, "expected  (announced with expect)")
	}
	if s.Ledger != nil {
		first := s.Ledger.APICalls - len(s.Ledger.Calls) + 1
		for i, a := range s.Ledger.Calls {
			status := "no answer"
			if a.Status != 0 {
				status = fmt.Sprintf("HTTP %d", a.Status)
			}
			s.add(a.At, fmt.Sprintf("API call  %d: Get Session Result answered %s", first+i, status))
		}
	}
	sort.SliceStable(s.events, func(i, j int) bool { return s.events[i].t.Before(s.events[j].t) })
	for _, e := range s.events {
		printLine(w, "  %s  %s", e.t.Local().Format("2006-01-02 15:04:05.000"), e.text)
	}
	if s.Ledger == nil {
		printLine(w, "ledger: no entry")
		return
	}
	l := s.Ledger
	line := "ledger: " + l.State
	if l.Outcome != "" {
		line += ", outcome " + l.Outcome
	}
	if l.ResultSeq != 0 {
		line += fmt.Sprintf(", result seq %d", l.ResultSeq)
	}
	if l.Reconciled {
		line += ", reconciled"
	}
	if l.Reason != "" {
		line += ", reason " + l.Reason
	}
	if l.APICalls > 0 {
		line += fmt.Sprintf(", %d API call(s), last status %d", l.APICalls, l.LastStatus)
	}
	if l.ReconcileAttempts > 0 {
		line += fmt.Sprintf(", %d webhook(s) injected", l.ReconcileAttempts)
	}
	printLine(w, "%s (updated %s)", line, l.UpdatedAt.Local().Format("2006-01-02 15:04:05"))
}
