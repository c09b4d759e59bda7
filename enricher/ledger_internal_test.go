package enricher

import (
	"context"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// TestLedgerWrongGuessLosesNothing: an update from a guess that is no longer
// the entry (another process wrote since, or the session is not new) reads
// the entry again and applies f to it, as an update without a guess does.
func TestLedgerWrongGuessLosesNothing(t *testing.T) {
	ns := natstest.Start(t)
	js := ns.JetStream()
	subjects, err := streams.NewSubjects("verifeye")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, subjects, streams.DefaultLimits()); err != nil {
		t.Fatalf("streams.Ensure() error = %v", err)
	}
	l := NewLedger(js, nil)
	const session = "0000000a-0000-4000-8000-000000000001"
	mark := func(reason string) func(*outcome.Session) *outcome.Session {
		return func(cur *outcome.Session) *outcome.Session {
			if cur == nil {
				return &outcome.Session{SessionID: session, State: outcome.StateReceived, Reason: reason}
			}
			cur.Reason += "," + reason
			return cur
		}
	}

	// The guess "no entry yet" for a session that has one.
	first, err := l.update(ctx, session, &entry{}, mark("a"))
	if err != nil || first.rev == 0 {
		t.Fatalf("update(new session, guess none) = %+v, %v; want a created entry", first, err)
	}
	if _, err := l.update(ctx, session, &entry{}, mark("b")); err != nil {
		t.Fatalf("update(existing session, guess none): %v", err)
	}
	// A guess one revision old.
	got, err := l.update(ctx, session, &first, mark("c"))
	if err != nil {
		t.Fatalf("update(stale guess): %v", err)
	}
	if got.s.Reason != "a,b,c" {
		t.Errorf("after a wrong guess of each kind the entry's updates are %q, want a,b,c", got.s.Reason)
	}
	// A right guess: one write, on the entry's revision.
	right, err := l.update(ctx, session, &got, mark("d"))
	if err != nil || right.rev <= got.rev || right.s.Reason != "a,b,c,d" {
		t.Errorf("update(current guess) = %+v, %v; want a,b,c,d at a later revision than %d", right.s, err, got.rev)
	}
	stored, rev, err := l.Get(ctx, session)
	if err != nil || stored.Reason != "a,b,c,d" || rev != right.rev {
		t.Errorf("Get() = %+v rev %d, %v; want a,b,c,d at revision %d", stored, rev, err, right.rev)
	}
}
