package natsembed

import (
	"errors"
	"fmt"
	"os"
	"runtime"
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
	pending *generation   // the callers the next sync covers; nil for none
	wake    chan struct{} // tells the loop callers are pending
	closed  bool
	err     error // the first failure, final
	syncs   uint64
	stopped chan struct{} // closed when the loop has returned

	seconds, wait prometheus.Histogram
}

// generation is the callers one sync covers: they joined before it began.
type generation struct {
	callers int
	done    chan struct{} // closed when the sync has ended; err is set before
	err     error
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

// NewSyncer returns a Syncer for the store under dir (Options.StoreDir). Its
// syncs run in a goroutine of its own until Close.
func NewSyncer(dir string) (*Syncer, error) {
	if !syncfsSupported {
		return nil, ErrSyncUnsupported
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("natsembed: open store for syncing: %w", err)
	}
	s := &Syncer{dir: f, do: syncfs, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
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
	go s.loop()
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
//
// Callers wait on their generation's channel, never on a lock: a sync that
// ends wakes exactly the callers it covered, each once.
func (s *Syncer) Sync() error {
	defer func(start time.Time) { s.wait.Observe(time.Since(start).Seconds()) }(time.Now())
	s.mu.Lock()
	if s.err != nil || s.closed {
		err := s.err
		if err == nil {
			err = errors.New("natsembed: syncer closed")
		}
		s.mu.Unlock()
		return err
	}
	g := s.pending
	if g == nil {
		g = &generation{done: make(chan struct{})}
		s.pending = g
	}
	g.callers++
	select {
	case s.wake <- struct{}{}:
	default: // the loop is awake already
	}
	s.mu.Unlock()
	<-g.done
	return g.err
}

// loop runs one sync per generation, back to back while callers are pending.
func (s *Syncer) loop() {
	defer close(s.stopped)
	for range s.wake {
		for {
			// Let the callers the last sync woke run first, so that those
			// writing again join the next sync. With a single P (GOMAXPROCS=1,
			// as Go sets it in a container limited to one CPU) a sync begun
			// at once would hold it in syncfs(2) before they ran, and each
			// sync would cover one caller.
			runtime.Gosched()
			s.mu.Lock()
			g, failed := s.pending, s.err
			s.pending = nil
			s.mu.Unlock()
			if g == nil {
				break
			}
			err := failed
			if err == nil {
				start := time.Now()
				if err = s.do(s.dir); err != nil {
					err = fmt.Errorf("natsembed: sync store: %w", err)
				}
				s.seconds.Observe(time.Since(start).Seconds())
			}
			s.mu.Lock()
			if failed == nil {
				s.syncs++
			}
			if s.err == nil {
				s.err = err
			}
			g.err = s.err
			s.mu.Unlock()
			close(g.done)
		}
	}
}

// Syncs returns how many syncs have finished.
func (s *Syncer) Syncs() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncs
}

// Close ends the Syncer, once callers already waiting are answered, and
// releases its handle on the store directory. Sync fails after Close.
func (s *Syncer) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.wake)
	}
	s.mu.Unlock()
	<-s.stopped
	return s.dir.Close()
}
