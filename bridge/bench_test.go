package bridge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/loadgen"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// benchInFlight is how many requests the ingest benchmarks keep in flight, as
// `make bench` does with its 64 connections.
const benchInFlight = 64

// BenchmarkIngest measures webhooks through the real handler (ServeHTTP with a
// ResponseRecorder, 64 in parallel) publishing to a real embedded JetStream
// server, against the ceiling of the same publishes made directly with
// js.PublishMsg and a message ID, measured first in the same run. handler's
// "ratio" metric is its throughput as a share of the ceiling's. Each round gets
// a fresh server (natstest: store synced on an interval, not every write) and
// fresh session IDs, so every operation is a real publish, and checks that the
// stream holds exactly one message per operation. Timings are reported, never
// asserted.
//
//	go test -run '^$' -bench Ingest -benchtime 3s ./bridge/
func BenchmarkIngest(b *testing.B) {
	var ceiling time.Duration // per publish, from the sub-benchmark below
	b.Run("publish", func(b *testing.B) {
		js, subjects := benchJetStream(b)
		subject := subjects.Webhook(streams.DefaultSource, streams.EventCompleted)
		run := rand.Uint32()
		var seq atomic.Uint64
		b.SetParallelism(max(1, benchInFlight/runtime.GOMAXPROCS(0)))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := loadgen.SessionID(run, seq.Add(1))
				msg := nats.NewMsg(subject)
				msg.Data = benchBody(id)
				_, err := js.PublishMsg(context.Background(), msg,
					jetstream.WithMsgID(streams.WebhookMsgID(streams.EventCompleted, id)), jetstream.WithExpectStream(streams.Webhooks))
				if err != nil {
					b.Errorf("PublishMsg: %v", err)
					return
				}
			}
		})
		b.StopTimer()
		ceiling = b.Elapsed() / time.Duration(b.N)
		benchCheckStored(b, js, b.N)
	})
	b.Run("handler", func(b *testing.B) {
		const key = "bench-ingest-key"
		js, subjects := benchJetStream(b)
		h := bridge.New(js, zerolog.New(io.Discard).Level(zerolog.InfoLevel).With().Timestamp().Logger(), bridge.Options{
			Auth:     bridge.APIKeyAuth(key),
			Subjects: subjects,
		})
		benchPostParallel(b, h, key, ceiling)
		benchCheckStored(b, js, b.N)
	})
}

// benchPostParallel posts b.N new webhooks to h, benchInFlight at a time,
// requiring 202 without "duplicate" for each; with ceiling > 0 it reports
// the time per webhook as a "ratio" of ceiling / this.
func benchPostParallel(b *testing.B, h http.Handler, key string, ceiling time.Duration) {
	run := rand.Uint32()
	var seq atomic.Uint64
	b.SetParallelism(max(1, benchInFlight/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec := benchPost(h, key, loadgen.SessionID(run, seq.Add(1)))
			if rec.Code != http.StatusAccepted || bytes.Contains(rec.Body.Bytes(), []byte(`"duplicate"`)) {
				b.Errorf("POST /webhooks/verifeye = %d %s, want 202 without duplicate", rec.Code, rec.Body)
				return
			}
		}
	})
	b.StopTimer()
	if ceiling > 0 {
		b.ReportMetric(float64(ceiling)/float64(b.Elapsed()/time.Duration(b.N)), "ratio")
	}
}

// BenchmarkHandler measures the handler's own cost: BenchmarkIngest's handler
// with a publisher that acknowledges at once, without I/O (the ceiling of
// `make bench`). Profile it to see where the ingest spends its CPU:
//
//	go test -run '^$' -bench Handler -cpuprofile cpu.out ./bridge/
func BenchmarkHandler(b *testing.B) {
	const key = "bench-ingest-key"
	h := bridge.New(&benchNoPublish{}, zerolog.New(io.Discard).Level(zerolog.InfoLevel).With().Timestamp().Logger(), bridge.Options{
		Auth: bridge.APIKeyAuth(key),
	})
	run := rand.Uint32()
	var seq atomic.Uint64
	b.SetParallelism(max(1, benchInFlight/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec := benchPost(h, key, loadgen.SessionID(run, seq.Add(1)))
			if rec.Code != http.StatusAccepted {
				b.Errorf("POST /webhooks/verifeye = %d %s, want 202", rec.Code, rec.Body)
				return
			}
		}
	})
}

// benchNoPublish acknowledges every publish at once, without I/O.
type benchNoPublish struct{ seq atomic.Uint64 }

func (p *benchNoPublish) PublishMsg(context.Context, *nats.Msg, ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return &jetstream.PubAck{Stream: streams.Webhooks, Sequence: p.seq.Add(1)}, nil
}

// TestAcceptedBodyIsEncoderOutput guards the handler's hand-written 202 body
// (the optimisation BenchmarkIngest's profile led to): without a query it must
// be byte for byte what echo's JSON encoder writes, which the handler still
// would write, query or not.
func TestAcceptedBodyIsEncoderOutput(t *testing.T) {
	const key = "bench-ingest-key"
	js, subjects := benchJetStream(t)
	h := bridge.New(js, zerolog.Nop(), bridge.Options{Auth: bridge.APIKeyAuth(key), Subjects: subjects})
	post := func(query, sessionID string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/webhooks/verifeye"+query, bytes.NewReader(benchBody(sessionID)))
		req.Header.Set("X-API-Key", key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	encoded := func(sessionID string, dup bool) string {
		var b strings.Builder
		v := struct {
			Status    string `json:"status"`
			SessionID string `json:"verificationSessionId"`
			Duplicate bool   `json:"duplicate,omitempty"`
		}{"accepted", sessionID, dup}
		if err := json.NewEncoder(&b).Encode(v); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	mixed := "3F2a9c1E-0000-4000-8000-00000000abCD"
	tests := []struct {
		name, query, sessionID string
		dup                    bool
	}{
		{"new, no query", "", mixed, false},
		{"duplicate, no query", "", mixed, true},
		{"new, with a query", "?source=x", loadgen.SessionID(1, 2), false},
		{"duplicate, with a query", "?source=x", loadgen.SessionID(1, 2), true},
	}
	for _, tt := range tests {
		rec := post(tt.query, tt.sessionID)
		if got, want := rec.Body.String(), encoded(tt.sessionID, tt.dup); rec.Code != http.StatusAccepted || got != want {
			t.Errorf("%s: POST = %d %q, want 202 %q", tt.name, rec.Code, got, want)
		}
		if got, want := rec.Header().Get("Content-Type"), "application/json"; got != want {
			t.Errorf("%s: Content-Type = %q, want %q", tt.name, got, want)
		}
	}
}

// benchJetStream starts a server for this round with the contract's streams.
func benchJetStream(b testing.TB) (jetstream.JetStream, streams.Subjects) {
	b.Helper()
	js := natstest.Start(b).JetStream()
	subjects, err := streams.NewSubjects("verifeye")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, subjects, streams.DefaultLimits()); err != nil {
		b.Fatalf("streams.Ensure: %v", err)
	}
	return js, subjects
}

func benchBody(sessionID string) []byte {
	return []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + sessionID + `"}`)
}

// benchCheckStored fails b unless the webhooks stream holds exactly n messages.
func benchCheckStored(b *testing.B, js jetstream.JetStream, n int) {
	b.Helper()
	if got := natstest.Count(b, js, streams.Webhooks); got != n {
		b.Errorf("%s holds %d messages after %d operations, want one each", streams.Webhooks, got, n)
	}
}

// benchPost posts the webhook of sessionID to h, as a loopback client would.
func benchPost(h http.Handler, key, sessionID string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/webhooks/verifeye", bytes.NewReader(benchBody(sessionID)))
	req.RemoteAddr = "127.0.0.1:40000"
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}
