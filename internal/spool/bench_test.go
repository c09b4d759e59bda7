package spool

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// BenchmarkSpool measures publishes of webhooks, 64 in flight: "direct" is
// js.PublishMsg to a healthy server (the ceiling, measured first), "healthy"
// the same through the spool's PublishMsg (the fast path: its "ratio" is its
// throughput as a share of direct's, the target is within noise of 1), and
// "down" through the spool with the server stopped, so every event is fsynced
// to the spool's own store (its "ratio" is against direct too). Timings are
// reported, never asserted.
//
//	go test -run '^$' -bench Spool -benchtime 3s ./internal/spool/
func BenchmarkSpool(b *testing.B) {
	var ceiling time.Duration
	for _, mode := range []string{"direct", "healthy", "down"} {
		b.Run(mode, func(b *testing.B) {
			srv, js := benchCluster(b)
			var pub Publisher = js
			var s *Spool
			if mode != "direct" {
				var err error
				s, err = Open(js, Options{Dir: b.TempDir(), After: time.Second, Log: zerolog.Nop()})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				pub = s
			}
			if mode == "down" {
				srv.Shutdown()
			}
			run := time.Now().UnixNano()
			var seq atomic.Uint64
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					m := nats.NewMsg("verifeye.webhook.default." + streams.EventCompleted)
					session := fmt.Sprintf("%08x-0000-4000-8000-%012x", run&0xffffffff, seq.Add(1))
					m.Data = []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + session + `"}`)
					id := streams.WebhookMsgID(streams.EventCompleted, session)
					m.Header.Set(streams.HeaderMsgID, id)
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					_, err := pub.PublishMsg(ctx, m, jetstream.WithMsgID(id), jetstream.WithExpectStream(streams.Webhooks))
					cancel()
					if err != nil {
						b.Errorf("PublishMsg: %v", err)
						return
					}
				}
			})
			b.StopTimer()
			per := b.Elapsed() / time.Duration(b.N)
			if mode == "direct" {
				ceiling = per
			} else if ceiling > 0 {
				b.ReportMetric(float64(ceiling)/float64(per), "ratio")
			}
			if s != nil {
				st, err := s.State(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if want := map[string]uint64{"healthy": 0, "down": uint64(b.N)}[mode]; st.Messages != want {
					b.Errorf("%s: the spool holds %d events after %d publishes, want %d", mode, st.Messages, b.N, want)
				}
				if st.Messages > 0 {
					b.ReportMetric(float64(st.Bytes)/float64(st.Messages), "spool-B/event")
				}
			}
		})
	}
}

func benchCluster(b *testing.B) (*natstest.Server, jetstream.JetStream) {
	srv := natstest.Start(b)
	js := srv.JetStream()
	sub, _ := streams.NewSubjects("verifeye")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, sub, streams.DefaultLimits()); err != nil {
		b.Fatal(err)
	}
	return srv, js
}
