package natsembed

import (
	"context"
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func newTestSyncer(t *testing.T) *Syncer {
	t.Helper()
	if !GroupSyncSupported {
		t.Skip("no syncfs(2) here")
	}
	s, err := NewSyncer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSyncerSharesSyncs: concurrent callers share syncs, and each returns
// nil.
func TestSyncerSharesSyncs(t *testing.T) {
	s := newTestSyncer(t)
	const callers, rounds = 32, 20
	syncConcurrently(t, s, callers, rounds)
	if n := s.Syncs(); n == 0 || n >= callers*rounds {
		t.Errorf("%d syncs for %d calls; want at least one and fewer than the calls", n, callers*rounds)
	}
	t.Logf("%d syncs for %d calls", s.Syncs(), callers*rounds)
}

// syncConcurrently has callers goroutines call s.Sync rounds times each, and
// reports any error.
func syncConcurrently(t *testing.T, s *Syncer, callers, rounds int) {
	t.Helper()
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range rounds {
				if err := s.Sync(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestSyncerWaitsForASyncBegunAfterTheCall: a sync already running when Sync
// is called may have begun before the caller's writes; Sync returns only after
// the next one.
func TestSyncerWaitsForASyncBegunAfterTheCall(t *testing.T) {
	s := newTestSyncer(t)
	began := make(chan int, 4)
	release := make(chan struct{})
	var mu sync.Mutex
	n := 0
	s.do = func(f *os.File) error {
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		began <- k
		<-release
		return syncfs(f)
	}
	first := make(chan error, 1)
	go func() { first <- s.Sync() }()
	if k := <-began; k != 1 {
		t.Fatalf("sync %d began, want 1", k)
	}
	second := make(chan error, 1)
	go func() { second <- s.Sync() }() // called while sync 1 runs
	waitFor(t, func() bool {           // the second caller is waiting
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.pending != nil && s.pending.callers == 1
	})
	release <- struct{}{} // sync 1 ends
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-second:
		t.Fatalf("Sync called during sync 1 returned after it (%v); want it to wait for sync 2", err)
	case k := <-began:
		if k != 2 {
			t.Fatalf("sync %d began, want 2", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no second sync began")
	}
	close(release)
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

// TestSyncerFailureIsFinal: after a failed sync, every Sync fails, and Err
// says why.
func TestSyncerFailureIsFinal(t *testing.T) {
	s := newTestSyncer(t)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	fail := errors.New("EIO")
	calls := 0
	s.do = func(f *os.File) error {
		calls++
		if calls == 1 {
			return fail
		}
		return syncfs(f)
	}
	for i := range 3 {
		if err := s.Sync(); !errors.Is(err, fail) {
			t.Fatalf("Sync %d after a failure = %v, want %v", i, err, fail)
		}
	}
	if !errors.Is(s.Err(), fail) {
		t.Errorf("Err() = %v, want %v", s.Err(), fail)
	}
	if calls != 1 {
		t.Errorf("%d syncs ran after the failure, want none", calls-1)
	}
}

// TestGroupSyncServer: a server started with GroupSync does not sync each
// write (its timer does, every GroupSyncInterval), acknowledges publishes,
// and a Syncer on its store syncs.
func TestGroupSyncServer(t *testing.T) {
	if !GroupSyncSupported {
		t.Skip("no syncfs(2) here")
	}
	dir := t.TempDir()
	ns, err := Start(Options{StoreDir: dir, Addr: "-", GroupSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(ns)
	if jsc := ns.JetStreamConfig(); jsc == nil || jsc.SyncAlways || jsc.SyncInterval != GroupSyncInterval {
		t.Fatalf("JetStreamConfig = %+v; want SyncAlways off, SyncInterval %v", jsc, GroupSyncInterval)
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s", []byte("x")); err != nil {
		t.Fatal(err)
	}
	s, err := NewSyncer(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Sync(); err != nil || s.Syncs() != 1 {
		t.Fatalf("Sync = %v after %d syncs; want nil after 1", err, s.Syncs())
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
	}
}

// TestSyncerSharesSyncsOnOneCPU: with one P (GOMAXPROCS=1, as Go sets it in a
// container limited to one CPU) the callers woken by a sync still share the
// next one. A syncer that began the next sync as soon as one ended, before
// they had run, held the only P in syncfs(2) and synced for one caller at a
// time.
func TestSyncerSharesSyncsOnOneCPU(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	s := newTestSyncer(t)
	const callers, rounds = 32, 20
	syncConcurrently(t, s, callers, rounds)
	// Each round, every caller joins one of at most two syncs (the one that
	// woke it may still be running when the first of them calls again).
	if n, most := s.Syncs(), uint64(callers*rounds/4); n > most {
		t.Errorf("%d syncs for %d calls by %d callers; want at most %d", n, callers*rounds, callers, most)
	}
	t.Logf("%d syncs for %d calls", s.Syncs(), callers*rounds)
}
