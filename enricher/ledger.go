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
	s, err := l.update(ctx, session, f)
	if err != nil && l.failures != nil {
		l.failures.Inc()
	}
	return s, err
}

func (l *Ledger) update(ctx context.Context, session string, f func(cur *outcome.Session) *outcome.Session) (*outcome.Session, error) {
	kv, err := l.bucket(ctx)
	if err != nil {
		return nil, err
	}
	key := outcome.SessionKey(session)
	for range 20 {
		cur, rev, err := l.Get(ctx, session)
		if err != nil {
			return nil, err
		}
		var in *outcome.Session
		if cur != nil {
			c := *cur
			in = &c
		}
		next := f(in)
		if next == nil {
			return cur, nil
		}
		next.UpdatedAt = time.Now().UTC()
		b, err := json.Marshal(next)
		if err != nil {
			return nil, fmt.Errorf("ledger: encode %s: %w", session, err)
		}
		if cur == nil && rev == 0 {
			_, err = kv.Create(ctx, key, b)
		} else {
			_, err = kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return next, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return nil, fmt.Errorf("ledger: write %s: %w", session, err)
		}
		// Another process wrote first: read again.
	}
	return nil, fmt.Errorf("ledger: write %s: too many concurrent writers", session)
}

// isWrongSequence reports a compare-and-set conflict of Update.
func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
