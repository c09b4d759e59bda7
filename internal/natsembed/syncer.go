package natsembed

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Syncer is group commit for the embedded server's store: the server writes
// each message to its files before acknowledging it, without syncing them
// (Options.GroupSync), and whoever must not answer before a write is on disk
// (the ingest's 202, the enricher's ack) calls Sync. Callers that arrive
// while a sync runs share the next one, so a webhook waits for at most two
// syncs, and concurrent ones pay one between them, the way a database commits
// concurrent transactions.
//
// A sync is syncfs(2) of the file system holding the store: it needs no
// knowledge of the server's files (messages, indexes, consumer state, new
// blocks and renamed ones alike), and costs about one fsync when the store is
// on a volume of its own. A failed sync is final: after one, the kernel may
// have dropped the pages it could not write, and a later sync that succeeds
// proves nothing, so every Sync after it fails too.
type Syncer struct {
	dir *os.File
	do  func(*os.File) error // syncfs

	mu      sync.Mutex
	cond    *sync.Cond
	started uint64 // syncs begun
	done    uint64 // syncs finished
	running bool
	waiting int   // callers waiting for a sync to end
	err     error // the first failure, final

	seconds, wait prometheus.Histogram
}

// GroupSyncInterval is how often a server started with Options.GroupSync
// syncs its store by itself, for the writes nobody calls Sync for (a terminal
// tool's, the server's own).
const GroupSyncInterval = time.Second

// GroupSyncSupported reports whether Options.GroupSync and NewSyncer work
// here.
const GroupSyncSupported = syncfsSupported

// ErrSyncUnsupported is returned by NewSyncer where the system has no
// syncfs(2); the server must then sync every write itself.
var ErrSyncUnsupported = errors.New("natsembed: group sync needs syncfs(2) (Linux)")

// NewSyncer returns a Syncer for the store under dir (Options.StoreDir).
func NewSyncer(dir string) (*Syncer, error) {
	if !syncfsSupported {
		return nil, ErrSyncUnsupported
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("natsembed: open store for syncing: %w", err)
	}
	s := &Syncer{dir: f, do: syncfs}
	s.cond = sync.NewCond(&s.mu)
	s.seconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "verifeye_bridge_store_sync_seconds",
		Help:    "Duration of each sync of the embedded server's store (group commit: one sync covers every write made before it began).",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14),
	})
	s.wait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "verifeye_bridge_store_sync_wait_seconds",
		Help: "How long each write waited for a sync to cover it (at most the sync running when it came, then its own).",
		// Fine buckets (x1.25 from 50 µs to about 0.4 s): the figure is compared with one fsync's.
		Buckets: prometheus.ExponentialBuckets(50e-6, 1.25, 41),
	})
	return s, nil
}

// Collectors returns the Syncer's metrics, for a registry.
func (s *Syncer) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.seconds, s.wait}
}

// Err returns the failure that ended syncing, or nil.
func (s *Syncer) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Sync returns once everything written to the store before Sync was called is
// on disk: after a sync that began after the call. It returns the error of a
// failed sync, this one's or any earlier one's.
func (s *Syncer) Sync() error {
	defer func(start time.Time) { s.wait.Observe(time.Since(start).Seconds()) }(time.Now())
	s.mu.Lock()
	defer s.mu.Unlock()
	// A sync running now may have begun before the caller's writes: the
	// caller needs the next one.
	need := s.started + 1
	for s.done < need && s.err == nil {
		if s.running {
			s.waiting++
			s.cond.Wait()
			s.waiting--
			continue
		}
		s.running = true
		s.started++
		n := s.started
		s.mu.Unlock()
		start := time.Now()
		err := s.do(s.dir)
		s.seconds.Observe(time.Since(start).Seconds())
		s.mu.Lock()
		s.running = false
		s.done = n
		if err != nil && s.err == nil {
			s.err = fmt.Errorf("natsembed: sync store: %w", err)
		}
		s.cond.Broadcast()
	}
	return s.err
}

// Syncs returns how many syncs have finished.
func (s *Syncer) Syncs() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// Close releases the Syncer's handle on the store directory.
func (s *Syncer) Close() error { return s.dir.Close() }
