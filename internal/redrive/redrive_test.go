package redrive_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/redrive"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// rig is an embedded JetStream server with the bridge's three streams.
type rig struct {
	js       jetstream.JetStream
	subjects streams.Subjects
	webhooks jetstream.Stream
	dlq      jetstream.Stream
}

func newRig(t *testing.T) *rig {
	t.Helper()
	ns := natstest.Start(t)
	r := &rig{js: ns.JetStream()}
	r.subjects, _ = streams.NewSubjects("verifeye")
	ctx := context.Background()
	if err := streams.Ensure(ctx, r.js, r.subjects, streams.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.webhooks, err = r.js.Stream(ctx, streams.Webhooks); err != nil {
		t.Fatal(err)
	}
	if r.dlq, err = r.js.Stream(ctx, streams.DLQ); err != nil {
		t.Fatal(err)
	}
	return r
}

func session(n int) string { return fmt.Sprintf("3f2a9c1e-0000-4000-8000-%012d", n) }

func webhookBody(id string) []byte {
	return []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + id + `"}`)
}

// webhook publishes a webhook as the ingest does and returns its sequence.
func (r *rig) webhook(t *testing.T, source, id string) uint64 {
	t.Helper()
	m := nats.NewMsg(r.subjects.Webhook(source, streams.EventCompleted))
	m.Data = webhookBody(id)
	m.Header.Set(streams.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	ack, err := r.js.PublishMsg(context.Background(), m, jetstream.WithMsgID(streams.WebhookMsgID(streams.EventCompleted, id)))
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// deadLetter publishes the DLQ entry the enricher would write for the webhook
// at seq, after edit (which forges it), straight onto the DLQ stream.
func (r *rig) deadLetter(t *testing.T, source, id string, seq uint64, edit func(*nats.Msg)) {
	t.Helper()
	h := nats.Header{}
	h.Set(streams.HeaderReceivedAt, "2026-11-26T10:00:00Z")
	d := streams.DeadLetter{Source: source, Event: streams.EventCompleted, Reason: "bad_request", LastStatus: 400, Attempts: 1,
		OrigSubject: r.subjects.Webhook(source, streams.EventCompleted), OrigSeq: seq, Header: h, Data: webhookBody(id)}
	m := d.Msg(r.subjects)
	if edit != nil {
		edit(m)
	}
	if _, err := r.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatalf("publish DLQ entry: %v", err)
	}
}

// TestRedriveTwice: redriving the same DLQ entry twice (as when the delete
// after the first redrive failed) stores one webhook, under the redrive message
// ID, and empties the DLQ.
func TestRedriveTwice(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	id := session(1)
	r.deadLetter(t, "kyc", id, 7, func(m *nats.Msg) {
		m.Header.Set(streams.HeaderTraceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	})

	entries, err := redrive.DeadLetters(ctx, r.dlq, r.subjects, redrive.Filter{SessionID: id})
	if err != nil || len(entries) != 1 || entries[0].Err != nil || !entries[0].Redrivable() {
		t.Fatalf("DeadLetters = %+v, %v; want one redrivable entry", entries, err)
	}
	var dups []bool
	for range 2 {
		ack, err := redrive.Redrive(ctx, r.js, r.dlq, r.subjects, entries[0], nil)
		if err != nil {
			t.Fatalf("Redrive: %v", err)
		}
		dups = append(dups, ack.Duplicate)
	}
	if want := []bool{false, true}; !cmp.Equal(dups, want) {
		t.Errorf("Redrive twice: PubAck.Duplicate = %v, want %v", dups, want)
	}
	if n := natstest.Count(t, r.js, streams.DLQ); n != 0 {
		t.Errorf("DLQ holds %d entries after the redrive, want 0", n)
	}
	msgs := natstest.Messages(t, r.js, streams.Webhooks)
	if len(msgs) != 1 {
		t.Fatalf("webhooks stream holds %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	got := map[string]string{
		"subject":                 m.Subject(),
		"body":                    string(m.Data()),
		streams.HeaderMsgID:       m.Headers().Get(streams.HeaderMsgID),
		streams.HeaderReceivedAt:  m.Headers().Get(streams.HeaderReceivedAt),
		streams.HeaderTraceparent: m.Headers().Get(streams.HeaderTraceparent),
		streams.HeaderReplay:      m.Headers().Get(streams.HeaderReplay),
		streams.HeaderError:       m.Headers().Get(streams.HeaderError),
	}
	want := map[string]string{
		"subject":                 "verifeye.webhook.kyc.VerificationCompleted",
		"body":                    string(webhookBody(id)),
		streams.HeaderMsgID:       streams.RedriveMsgID(streams.EventCompleted, id, entries[0].Seq),
		streams.HeaderReceivedAt:  "2026-11-26T10:00:00Z",
		streams.HeaderTraceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		streams.HeaderReplay:      "",
		streams.HeaderError:       "",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("redriven webhook (-want +got):\n%s", diff)
	}
}

// TestRedriveForged: DLQ entries forged onto the DLQ stream (by anyone who can
// publish there) are reported as invalid and never reach the webhooks stream;
// a valid entry beside them is redriven.
func TestRedriveForged(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	forged := map[string]func(*nats.Msg){
		"wildcard original subject": func(m *nats.Msg) {
			m.Header.Set(streams.HeaderOrigSubject, "verifeye.webhook.*.VerificationCompleted")
		},
		"replay marker zz":      func(m *nats.Msg) { m.Header.Set(streams.HeaderReplay, "zz") },
		"attempts not a number": func(m *nats.Msg) { m.Header.Set(streams.HeaderAttempts, "many") },
		"another source's subject": func(m *nats.Msg) {
			m.Header.Set(streams.HeaderOrigSubject, "verifeye.webhook.other.VerificationCompleted")
		},
		"reason with escapes": func(m *nats.Msg) { m.Header.Set(streams.HeaderError, "bad_request\x1b[2J") },
	}
	n := 0
	for _, edit := range forged {
		n++
		r.deadLetter(t, "kyc", session(100+n), uint64(100+n), edit)
	}
	// A subject with a wildcard token, as a forger could publish it.
	r.deadLetter(t, "kyc", session(200), 200, func(m *nats.Msg) {
		m.Subject = "verifeye.dlq.*.VerificationCompleted"
		m.Header.Set(streams.HeaderOrigSubject, "verifeye.webhook.*.VerificationCompleted")
	})
	r.deadLetter(t, "kyc", session(300), 300, nil)

	entries, err := redrive.DeadLetters(ctx, r.dlq, r.subjects, redrive.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(forged)+2 {
		t.Fatalf("DeadLetters: %d entries, want %d", len(entries), len(forged)+2)
	}
	var redriven int
	for _, e := range entries {
		_, err := redrive.Redrive(ctx, r.js, r.dlq, r.subjects, e, nil)
		switch {
		case e.Letter.SessionID == session(300) && e.Err == nil:
			if err != nil {
				t.Errorf("Redrive(valid entry): %v", err)
			}
			redriven++
		case e.Err == nil:
			t.Errorf("DeadLetters: forged entry seq %d (session %s) decoded without error", e.Seq, e.Letter.SessionID)
		case !errors.Is(err, redrive.ErrNotRedrivable) || !errors.Is(err, streams.ErrInvalidDeadLetter):
			t.Errorf("Redrive(forged entry seq %d: %v) error = %v, want ErrNotRedrivable", e.Seq, e.Err, err)
		}
	}
	if redriven != 1 {
		t.Errorf("redrove %d valid entries, want 1", redriven)
	}
	msgs := natstest.Messages(t, r.js, streams.Webhooks)
	if len(msgs) != 1 || msgs[0].Subject() != "verifeye.webhook.kyc.VerificationCompleted" || string(msgs[0].Data()) != string(webhookBody(session(300))) {
		var subs []string
		for _, m := range msgs {
			subs = append(subs, m.Subject())
		}
		t.Errorf("webhooks stream after redriving forged entries: %v, want only the valid entry's webhook", subs)
	}
	if got, want := natstest.Count(t, r.js, streams.DLQ), len(forged)+1; got != want {
		t.Errorf("DLQ holds %d entries, want the %d invalid ones left", got, want)
	}
}

// TestReplayTwice: Replay re-publishes each session of the window once, with
// the replay marker and message ID of its original; a second run adds nothing;
// invalid messages of the window are rejected and not re-published.
func TestReplayTwice(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	from := time.Now().Add(-time.Minute)
	var seqs []uint64
	for i := range 3 {
		seqs = append(seqs, r.webhook(t, "kyc", session(i)))
	}
	// The same session again (as a DLQ redrive would store it): one replay only.
	m := nats.NewMsg(r.subjects.Webhook("kyc", streams.EventCompleted))
	m.Data = webhookBody(session(0))
	if _, err := r.js.PublishMsg(ctx, m, jetstream.WithMsgID(streams.RedriveMsgID(streams.EventCompleted, session(0), 9))); err != nil {
		t.Fatal(err)
	}
	// Forged onto the webhooks stream: a received-at that is not a time is
	// rejected, not re-published.
	bad := nats.NewMsg(r.subjects.Webhook("kyc", streams.EventCompleted))
	bad.Data = webhookBody(session(50))
	bad.Header.Set(streams.HeaderReceivedAt, "\x1b[2J")
	if _, err := r.js.PublishMsg(ctx, bad); err != nil {
		t.Fatal(err)
	}
	before := natstest.Count(t, r.js, streams.Webhooks)

	w := redrive.Window{From: from, To: time.Now().Add(time.Minute)}
	dry := w
	dry.DryRun = true
	res, err := redrive.Replay(ctx, r.js, r.webhooks, r.subjects, dry)
	if err != nil || res.Replayed != 3 || natstest.Count(t, r.js, streams.Webhooks) != before {
		t.Fatalf("Replay(dry run) = %+v, %v; want 3 counted and nothing published", res, err)
	}

	res, err = redrive.Replay(ctx, r.js, r.webhooks, r.subjects, w)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 3 || res.Duplicates != 0 || res.Repeats != 1 || len(res.Rejected) != 1 {
		t.Errorf("Replay = %+v, want 3 replayed, 1 repeat, 1 rejected", res)
	}
	if len(res.Rejected) == 1 && !errors.Is(res.Rejected[0].Err, streams.ErrInvalidStoredWebhook) {
		t.Errorf("Replay rejected %v, want ErrInvalidStoredWebhook", res.Rejected[0].Err)
	}
	all := natstest.Messages(t, r.js, streams.Webhooks)
	if len(all) != before+3 {
		t.Fatalf("webhooks stream holds %d messages after Replay, want %d", len(all), before+3)
	}
	var got [][2]string
	for _, m := range all[before:] {
		got = append(got, [2]string{m.Headers().Get(streams.HeaderReplay), m.Headers().Get(streams.HeaderMsgID)})
	}
	var want [][2]string
	for i, seq := range seqs {
		want = append(want, [2]string{fmt.Sprint(seq), streams.ReplayMsgID(streams.EventCompleted, session(i), seq)})
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("replayed copies (replay marker, message ID) (-want +got):\n%s", diff)
	}

	// Replaying twice adds nothing; the copies of the first run are skipped.
	res, err = redrive.Replay(ctx, r.js, r.webhooks, r.subjects, w)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 0 || res.Duplicates != 3 || res.EarlierReplays != 3 {
		t.Errorf("second Replay = %+v, want 0 replayed, 3 duplicates, 3 earlier replays", res)
	}
	if n := natstest.Count(t, r.js, streams.Webhooks); n != before+3 {
		t.Errorf("webhooks stream holds %d messages after a second Replay, want %d", n, before+3)
	}
}

// TestRedriveSyncsBeforeDelete: the sync runs once the copy is stored and
// while the entry is still on the DLQ; a failed sync leaves the entry there,
// and redriving it again stores nothing twice and then deletes it.
func TestRedriveSyncsBeforeDelete(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	id := session(3)
	r.deadLetter(t, "kyc", id, 9, nil)
	entries, err := redrive.DeadLetters(ctx, r.dlq, r.subjects, redrive.Filter{SessionID: id})
	if err != nil || len(entries) != 1 || !entries[0].Redrivable() {
		t.Fatalf("DeadLetters = %+v, %v; want one redrivable entry", entries, err)
	}

	var syncs int
	seen := func() error {
		syncs++
		if w, d := natstest.Count(t, r.js, streams.Webhooks), natstest.Count(t, r.js, streams.DLQ); w != 1 || d != 1 {
			t.Errorf("at sync %d: webhooks stream holds %d, DLQ %d; want the copy stored and the entry still there (1, 1)", syncs, w, d)
		}
		return nil
	}
	diskFailed := errors.New("disk failed")
	_, err = redrive.Redrive(ctx, r.js, r.dlq, r.subjects, entries[0], func() error { seen(); return diskFailed })
	if !errors.Is(err, diskFailed) || !strings.Contains(err.Error(), "stays on the DLQ") {
		t.Errorf("Redrive with a failing sync: %v; want the sync's error, saying the entry stays", err)
	}
	if n := natstest.Count(t, r.js, streams.DLQ); n != 1 {
		t.Errorf("after a failed sync the DLQ holds %d, want 1", n)
	}

	ack, err := redrive.Redrive(ctx, r.js, r.dlq, r.subjects, entries[0], seen)
	if err != nil || !ack.Duplicate {
		t.Fatalf("Redrive again = %+v, %v; want a duplicate PubAck", ack, err)
	}
	if syncs != 2 {
		t.Errorf("%d syncs, want 2 (one per redrive)", syncs)
	}
	if w, d := natstest.Count(t, r.js, streams.Webhooks), natstest.Count(t, r.js, streams.DLQ); w != 1 || d != 0 {
		t.Errorf("after the redrive: webhooks stream holds %d, DLQ %d; want 1, 0", w, d)
	}
}
