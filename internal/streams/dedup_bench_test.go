package streams_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// BenchmarkDuplicateWindowMemory measures what one remembered message ID costs
// the NATS server: the heap after publishing n webhooks with Nats-Msg-Id,
// against the same n webhooks without one, in the same run.
func BenchmarkDuplicateWindowMemory(b *testing.B) {
	const n = 50_000
	heap := func(withIDs bool) uint64 {
		srv := natstest.Start(b)
		js := srv.JetStream()
		s, _ := streams.NewSubjects("verifeye")
		ctx := context.Background()
		if err := streams.Ensure(ctx, js, s, streams.DefaultLimits()); err != nil {
			b.Fatal(err)
		}
		body := []byte(`{"event":"VerificationCompleted","verificationSessionId":"00000000-0000-4000-8000-000000000000"}`)
		before := heapInUse()
		for i := range n {
			m := nats.NewMsg(s.Webhook("default", EventCompleted))
			m.Data = body
			var opts []jetstream.PublishOpt
			if withIDs {
				opts = append(opts, jetstream.WithMsgID(streams.WebhookMsgID(EventCompleted, fmt.Sprintf("00000000-0000-4000-8000-%012d", i))))
			}
			if _, err := js.PublishMsgAsync(m, opts...); err != nil {
				b.Fatal(err)
			}
			if i%1000 == 999 {
				select {
				case <-js.PublishAsyncComplete():
				case <-time.After(30 * time.Second):
					b.Fatal("publish acks timed out")
				}
			}
		}
		<-js.PublishAsyncComplete()
		after := heapInUse()
		srv.Shutdown()
		return after - min(after, before)
	}
	for b.Loop() {
		without := heap(false)
		with := heap(true)
		b.ReportMetric(float64(with-min(with, without))/n, "bytes/msg-id")
		b.ReportMetric(float64(with)/float64(max(without, 1)), "heap-ratio")
	}
}

const EventCompleted = streams.EventCompleted

func heapInUse() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
