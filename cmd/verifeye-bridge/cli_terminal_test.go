package main

import (
	"context"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// rawControl returns the first control character of s that is not a newline
// (C0, DEL or C1, or a byte that is not UTF-8), or "" if there is none.
func rawControl(s string) string {
	for i, r := range s {
		if r == utf8.RuneError || (r < 0x20 && r != '\n') || (r >= 0x7f && r <= 0x9f) {
			return s[i:min(i+8, len(s))]
		}
	}
	return ""
}

// TestCLIWatchEscapes: an outcome whose data holds terminal control sequences
// (clear screen, retitle the window, an 8-bit CSI) is printed by watch with
// every control character escaped, while watch --json prints the stored
// CloudEvent byte for byte.
func TestCLIWatchEscapes(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	session := "5b7c1d2e-0000-4000-8000-0000000e5c01"
	p.sim.Register(session, []byte(`{"verificationResult":"failed","livenessResult":"\u001b[2J\u001b[H","failedReason":"\u001b]0;pwned\u0007\u009b31m\tx\u202e"}`))
	p.send(t, session)
	p.waitCount(t, streams.Results, 1)
	stored := natstest.Messages(t, p.js, streams.Results)[0].Data()

	human := mustRun(t, p.env, "watch", "--since", "1m", "--count", "1", "--timeout", "20s")
	if c := rawControl(human); c != "" {
		t.Errorf("watch printed a raw control character at %q:\n%q", c, human)
	}
	for _, want := range []string{session, `livenessResult=\x1b[2J\x1b[H`, `failedReason=\x1b]0;pwned\x07\u009b31m\x09x\u202e`} {
		if !strings.Contains(human, want) {
			t.Errorf("watch: output lacks %q:\n%q", want, human)
		}
	}

	jsonOut := mustRun(t, p.env, "watch", "--json", "--since", "1m", "--count", "1", "--timeout", "20s")
	if want := string(stored) + "\n"; jsonOut != want {
		t.Errorf("watch --json is not the stored event byte for byte:\n got %q\nwant %q", jsonOut, want)
	}
}

// TestCLIDLQForged: DLQ entries forged onto the DLQ stream are listed as
// invalid (escaped), never replayed, and make dlq replay exit 1; a valid entry
// beside them is replayed and enriched as usual.
func TestCLIDLQForged(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	ctx := context.Background()
	subjects, _ := streams.NewSubjects("verifeye")
	valid, forged1, forged2 := "5b7c1d2e-0000-4000-8000-0000000f0001", "5b7c1d2e-0000-4000-8000-0000000f0002", "5b7c1d2e-0000-4000-8000-0000000f0003"
	publish := func(id string, seq uint64, edit func(*nats.Msg)) {
		t.Helper()
		d := streams.DeadLetter{Source: "kyc", Event: streams.EventCompleted, Reason: "not_found", LastStatus: 404, Attempts: 5,
			OrigSubject: subjects.Webhook("kyc", streams.EventCompleted), OrigSeq: seq,
			Data: []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + id + `"}`)}
		m := d.Msg(subjects)
		if edit != nil {
			edit(m)
		}
		if _, err := p.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	// The two forgeries of the report: a wildcard original subject (an outcome
	// on verifeye.result.*.passed) and a replay marker that is not a sequence
	// (an outcome ID that escapes de-duplication); the second also carries an
	// escape sequence for whoever lists it.
	publish(forged1, 901, func(m *nats.Msg) {
		m.Header.Set(streams.HeaderOrigSubject, "verifeye.webhook.*.VerificationCompleted")
	})
	publish(forged2, 902, func(m *nats.Msg) {
		m.Header.Set(streams.HeaderReplay, "zz")
		m.Header.Set(streams.HeaderErrorDetail, "\x1b[2Jgone")
	})
	publish(valid, 903, nil)

	list := mustRun(t, p.env, "dlq", "list")
	if c := rawControl(list); c != "" {
		t.Errorf("dlq list printed a raw control character at %q:\n%q", c, list)
	}
	for _, want := range []string{valid, "invalid seq 1", "Verifeye-Original-Subject", "invalid seq 2", "Verifeye-Replay", "3 entries, 2 of them invalid"} {
		if !strings.Contains(list, want) {
			t.Errorf("dlq list: output lacks %q:\n%s", want, list)
		}
	}

	r := runBin(t, p.env, "dlq", "replay", "--all")
	if r.code != 1 || !strings.Contains(r.stdout, "replayed 1, skipped 0, invalid 2, failed 0") || !strings.Contains(r.stderr, "2 entries are not valid DLQ entries") {
		t.Errorf("dlq replay --all with forged entries: exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 1, 1 replayed and 2 invalid", r.code, r.stdout, r.stderr)
	}
	if c := rawControl(r.stdout + r.stderr); c != "" {
		t.Errorf("dlq replay printed a raw control character at %q", c)
	}
	p.waitCount(t, streams.Results, 1)
	if got, want := p.counts(t), (streamCounts{Webhooks: 1, Results: 1, DLQ: 2}); got != want {
		t.Errorf("after dlq replay --all: got %+v, want %+v (only the valid entry redriven)", got, want)
	}
	out := natstest.Messages(t, p.js, streams.Results)[0]
	if got, want := out.Subject(), "verifeye.result.kyc.passed"; got != want {
		t.Errorf("outcome subject %q, want %q", got, want)
	}
	if got := cloudEvents(t, natstest.Messages(t, p.js, streams.Results)); len(got) != 1 || got[0].ID != valid {
		t.Errorf("outcomes after dlq replay: %+v, want one with id %s", got, valid)
	}
}
