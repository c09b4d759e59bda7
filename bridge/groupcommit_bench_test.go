package bridge_test

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/groupcommit"
	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// BenchmarkGroupCommit measures the handler, 64 requests in flight, with
// every write synced before its 202 (serve's NATS_EMBEDDED_SYNC=always): on a
// server that fsyncs every write, each webhook published alone ("plain") and
// through JetStream atomic batches ("batched"); and on a server that leaves
// the sync to its callers, webhooks published alone, pipelined, sharing syncs
// ("synced", serve's way where syncfs exists: natsembed.Syncer). All against
// the handler with a publisher that acknowledges at once without I/O
// ("ceiling"), measured first in the same run. "ratio" is a throughput as a
// share of the ceiling's; "msgs/write" is the webhooks stored per JetStream
// write (batch or lone publish); "msgs/sync" the webhooks per sync. Every
// round checks that the stream holds one message per operation. Timings are
// reported, never asserted.
//
//	go test -run '^$' -bench GroupCommit -benchtime 3s ./bridge/
func BenchmarkGroupCommit(b *testing.B) {
	const key = "bench-ingest-key"
	log := zerolog.New(io.Discard).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	var ceiling time.Duration
	post := func(b *testing.B, h http.Handler) { benchPostParallel(b, h, key, ceiling) }
	b.Run("ceiling", func(b *testing.B) {
		benchPostParallel(b, bridge.New(&benchNoPublish{}, log, bridge.Options{Auth: bridge.APIKeyAuth(key)}), key, 0)
		ceiling = b.Elapsed() / time.Duration(b.N)
	})
	for _, way := range []string{"plain", "batched", "synced"} {
		if way == "synced" && !natsembed.GroupSyncSupported {
			continue
		}
		b.Run(way, func(b *testing.B) {
			dir := b.TempDir()
			// sync always: by the server, or (synced) by the callers
			js := natstest.StartWith(b, natsembed.Options{StoreDir: dir, GroupSync: way == "synced"}).JetStream()
			subjects, _ := streams.NewSubjects("verifeye")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := streams.Ensure(ctx, js, subjects, streams.DefaultLimits()); err != nil {
				b.Fatalf("streams.Ensure: %v", err)
			}
			var pub bridge.Publisher = js
			var gc *groupcommit.Publisher
			var syncer *natsembed.Syncer
			var err error
			switch way {
			case "batched":
				gc, err = groupcommit.New(js, groupcommit.Options{Stream: streams.Webhooks})
			case "synced":
				if syncer, err = natsembed.NewSyncer(dir); err != nil {
					b.Fatal(err)
				}
				defer syncer.Close()
				gc, err = groupcommit.New(js, groupcommit.Options{Stream: streams.Webhooks, MaxBatch: 1, Sync: syncer.Sync})
			}
			if err != nil {
				b.Fatal(err)
			}
			if gc != nil {
				pub = gc
			}
			post(b, bridge.New(pub, log, bridge.Options{Auth: bridge.APIKeyAuth(key), Subjects: subjects}))
			if gc != nil {
				st := gc.Stats()
				b.ReportMetric(float64(st.Batched+st.Singles)/float64(max(1, st.Batches+st.Singles)), "msgs/write")
			}
			if syncer != nil {
				b.ReportMetric(float64(b.N)/float64(max(1, syncer.Syncs())), "msgs/sync")
			}
			benchCheckStored(b, js, b.N)
		})
	}
}
