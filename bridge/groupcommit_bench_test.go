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

// BenchmarkGroupCommit measures the handler, 64 requests in flight, on a
// server that fsyncs every write (serve's NATS_EMBEDDED_SYNC=always): each
// webhook published alone ("plain"), and through group commit ("batched"),
// against the handler with a publisher that acknowledges at once without I/O
// ("ceiling"), measured first in the same run. "ratio" is a throughput as a
// share of the ceiling's; "msgs/write" is the webhooks stored per JetStream
// write (batch or lone publish). Every round checks that the stream holds one
// message per operation. Timings are reported, never asserted.
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
	for _, batched := range []bool{false, true} {
		name := "plain"
		if batched {
			name = "batched"
		}
		b.Run(name, func(b *testing.B) {
			js := natstest.StartWith(b, natsembed.Options{StoreDir: b.TempDir()}).JetStream() // sync always
			subjects, _ := streams.NewSubjects("verifeye")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := streams.Ensure(ctx, js, subjects, streams.DefaultLimits()); err != nil {
				b.Fatalf("streams.Ensure: %v", err)
			}
			var pub bridge.Publisher = js
			var gc *groupcommit.Publisher
			if batched {
				var err error
				if gc, err = groupcommit.New(js, groupcommit.Options{Stream: streams.Webhooks}); err != nil {
					b.Fatal(err)
				}
				pub = gc
			}
			post(b, bridge.New(pub, log, bridge.Options{Auth: bridge.APIKeyAuth(key), Subjects: subjects}))
			if gc != nil {
				st := gc.Stats()
				b.ReportMetric(float64(st.Batched+st.Singles)/float64(max(1, st.Batches+st.Singles)), "msgs/write")
			}
			benchCheckStored(b, js, b.N)
		})
	}
}
