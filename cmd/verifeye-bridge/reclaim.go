package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/rs/zerolog"
)

// idleReclaim gives memory back to the system once a process that was busy
// goes quiet. Go collects on allocation, so garbage a burst left behind (a
// flood of webhooks taken while the API is paused, a replay) stays resident
// until the runtime's forced collection, every 2 minutes, and its scavenger
// return it; a process that then holds a backlog idle looks as big as at
// the burst's peak. When almost nothing was allocated since the last look
// and more than reclaimAbove is garbage or free heap kept from the system,
// it is collected and returned: two collections (the second also empties
// the sync.Pools, where nats-server keeps its block buffers), only when idle.
type idleReclaim struct {
	samples []metrics.Sample
	allocs  uint64 // /gc/heap/allocs:bytes at the last look
	log     zerolog.Logger
}

const (
	reclaimEvery = 5 * time.Second
	// quietAllocs is the most allocated between two looks for the process to
	// count as idle (an idle serve allocates some kilobytes a second:
	// metrics, the ledger watch, NATS pings).
	quietAllocs = 2 << 20
	// reclaimAbove is the least heap not live (dead objects and free spans
	// kept) worth a collection.
	reclaimAbove = 4 << 20
)

func newIdleReclaim(log zerolog.Logger) *idleReclaim {
	r := &idleReclaim{log: log, samples: []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}}
	r.read()
	r.allocs = r.samples[0].Value.Uint64()
	return r
}

func (r *idleReclaim) read() { metrics.Read(r.samples) }

// check looks once, and reclaims when the process is idle and holds enough
// garbage; it reports whether it did.
func (r *idleReclaim) check() bool {
	r.read()
	allocs := r.samples[0].Value.Uint64()
	busy := allocs-r.allocs > quietAllocs
	r.allocs = allocs
	live, objects, free := r.samples[1].Value.Uint64(), r.samples[2].Value.Uint64(), r.samples[3].Value.Uint64()
	spare := objects + free - min(live, objects)
	if busy || spare < reclaimAbove {
		return false
	}
	start := time.Now()
	runtime.GC()
	debug.FreeOSMemory()
	r.read()
	r.allocs = r.samples[0].Value.Uint64()
	r.log.Debug().Uint64("spare_bytes", spare).Uint64("live_bytes", r.samples[1].Value.Uint64()).
		Dur("took", time.Since(start)).Msg("idle: memory returned to the system")
	return true
}

// run checks every reclaimEvery until ctx ends.
func (r *idleReclaim) run(ctx context.Context) {
	t := time.NewTicker(reclaimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.check()
		}
	}
}
