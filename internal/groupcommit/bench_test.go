package groupcommit

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

// BenchmarkAlone measures publishes of messages each stored alone, 64 in
// flight, on a one-replica file stream syncing on an interval: "request" is
// js.PublishMsg (a request/reply each, the baseline, measured first),
// "pipelined" the Publisher with batching off (INGEST_BATCH=1), which sends
// each with the asynchronous API and awaits its PubAck. "ratio" is the
// throughput against request's; "cpu-µs/op" the process's CPU per message
// (the embedded server's included, alike for both). Reported, never asserted.
//
//	go test -run '^$' -bench Alone -benchtime 3s ./internal/groupcommit/
func BenchmarkAlone(b *testing.B) {
	var ceiling time.Duration
	for _, mode := range []string{"request", "pipelined"} {
		b.Run(mode, func(b *testing.B) {
			srv := natstest.StartWith(b, natsembed.Options{StoreDir: b.TempDir(), SyncInterval: time.Second})
			js := srv.JetStream()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
				Name: stream, Subjects: []string{"gc.>"}, Storage: jetstream.FileStorage, Duplicates: time.Minute,
			}); err != nil {
				b.Fatal(err)
			}
			var pub interface {
				PublishMsg(context.Context, *nats.Msg, ...jetstream.PublishOpt) (*jetstream.PubAck, error)
			} = js
			if mode == "pipelined" {
				p, err := New(js, Options{Stream: stream, MaxBatch: 1})
				if err != nil {
					b.Fatal(err)
				}
				pub = p
			}
			expect := jetstream.WithExpectStream(stream)
			run := time.Now().UnixNano()
			var seq atomic.Uint64
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
			cpu0 := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					m := msg(fmt.Sprintf("%x-%d", run, seq.Add(1)))
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					_, err := pub.PublishMsg(ctx, m, expect)
					cancel()
					if err != nil {
						b.Errorf("PublishMsg: %v", err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			per := b.Elapsed() / time.Duration(b.N)
			if mode == "request" {
				ceiling = per
			} else if ceiling > 0 {
				b.ReportMetric(float64(ceiling)/float64(per), "ratio")
			}
		})
	}
}

// cpuTime is the CPU the process used so far, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
