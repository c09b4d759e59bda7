package enricher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// Ledger reads and writes the session ledger (bucket outcome.BucketSessions,
// one entry per session). Writes are compare-and-set on the entry's revision,
// so processes racing on one session each see the other's write and retry.
// It is safe for concurrent use.
type Ledger struct {
	js       jetstream.JetStream
	failures prometheus.Counter

	mu sync.Mutex
	kv jetstream.KeyValue
}

// NewLedger returns the ledger of js's account; failures, if not nil, counts
// writes that failed.
func NewLedger(js jetstream.JetStream, failures prometheus.Counter) *Ledger {
	return &Ledger{js: js, failures: failures}
}

func (l *Ledger) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.kv != nil {
		return l.kv, nil
	}
	kv, err := l.js.KeyValue(ctx, streams.Sessions)
	if err != nil {
		return nil, fmt.Errorf("ledger: bucket %s: %w", streams.Sessions, err)
	}
	l.kv = kv
	return kv, nil
}

// Get returns the session's entry and its revision; nil, 0, nil when the
// ledger holds none.
func (l *Ledger) Get(ctx context.Context, session string) (*outcome.Session, uint64, error) {
	kv, err := l.bucket(ctx)
	if err != nil {
		return nil, 0, err
	}
	en, err := kv.Get(ctx, outcome.SessionKey(session))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("ledger: get %s: %w", session, err)
	}
	var s outcome.Session
	if err := json.Unmarshal(en.Value(), &s); err != nil {
		return nil, 0, fmt.Errorf("ledger: entry %s: %w", session, err)
	}
	return &s, en.Revision(), nil
}

// Update applies f to the session's current entry (nil when there is none)
// and writes what f returns, with compare-and-set; on a conflict it reads the
// entry again and applies f again. f returning nil writes nothing. Update
// returns the entry as written (or as read, when f wrote nothing). UpdatedAt
// is set on every write.
func (l *Ledger) Update(ctx context.Context, session string, f func(cur *outcome.Session) *outcome.Session) (*outcome.Session, error) {
	en, err := l.update(ctx, session, nil, f)
	return en.s, err
}

// entry is a ledger entry as this process last read or wrote it, with its
// revision; s nil and rev 0 stand for no entry.
type entry struct {
	s   *outcome.Session
	rev uint64
}

// update is Update, saving the read when guess is not nil: f is applied to
// guess first, and the write is a compare-and-set on guess's revision (a
// create when guess stands for no entry), so a wrong guess costs a failed
// write, then the usual read and retry, never a lost update. A right guess
// (the entry this enrichment wrote a moment ago; no entry yet for a webhook
// seen for the first time) makes the update one round trip instead of two.
func (l *Ledger) update(ctx context.Context, session string, guess *entry, f func(cur *outcome.Session) *outcome.Session) (entry, error) {
	en, err := l.write(ctx, session, guess, f)
	if err != nil && l.failures != nil {
		l.failures.Inc()
	}
	return en, err
}

func (l *Ledger) write(ctx context.Context, session string, guess *entry, f func(cur *outcome.Session) *outcome.Session) (entry, error) {
	kv, err := l.bucket(ctx)
	if err != nil {
		return entry{}, err
	}
	key := outcome.SessionKey(session)
	for range 20 {
		var (
			cur *outcome.Session
			rev uint64
		)
		if guess != nil {
			cur, rev, guess = guess.s, guess.rev, nil
		} else if cur, rev, err = l.Get(ctx, session); err != nil {
			return entry{}, err
		}
		var in *outcome.Session
		if cur != nil {
			c := *cur
			in = &c
		}
		next := f(in)
		if next == nil {
			return entry{cur, rev}, nil
		}
		next.UpdatedAt = time.Now().UTC()
		b, err := json.Marshal(next)
		if err != nil {
			return entry{}, fmt.Errorf("ledger: encode %s: %w", session, err)
		}
		if cur == nil && rev == 0 {
			rev, err = kv.Create(ctx, key, b)
		} else {
			rev, err = kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return entry{next, rev}, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return entry{}, fmt.Errorf("ledger: write %s: %w", session, err)
		}
		// Another process wrote first (or the guess was wrong): read again.
	}
	return entry{}, fmt.Errorf("ledger: write %s: too many concurrent writers", session)
}

// isWrongSequence reports a compare-and-set conflict of Update.
func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
