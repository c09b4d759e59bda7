package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/ops"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// noPublish acknowledges every publish at once, without any I/O: the ceiling's
// stand-in for JetStream. It is safe for concurrent use.
type noPublish struct{ seq atomic.Uint64 }

func (p *noPublish) PublishMsg(context.Context, *nats.Msg, ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return &jetstream.PubAck{Stream: streams.Webhooks, Sequence: p.seq.Add(1)}, nil
}

// ceilingStarted is the message of the ceiling's start line, which carries the
// listener's address as http_addr.
const ceilingStarted = "ceiling started"

// serveCeiling serves the ingest handler as `serve` builds it (same Auth,
// logger, registry and http.Server settings) on ln, publishing nowhere, until
// ctx ends. Its start line is logged at any level: the bench learns the
// address from it.
func serveCeiling(ctx context.Context, ln net.Listener, apiKey, logLevel string, logw io.Writer) error {
	defer ln.Close()
	lvl, err := zerolog.ParseLevel(logLevel)
	if err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := zerolog.New(logw).Level(lvl).With().Timestamp().Logger().With().Str("cmd", "ceiling").Logger()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	h := bridge.New(&noPublish{}, log.With().Str("component", "ingest").Logger(), bridge.Options{
		Auth:       bridge.APIKeyAuth(apiKey),
		Registerer: reg,
	})
	log.Log().Str("http_addr", ln.Addr().String()).Msg(ceilingStarted)
	srv := &http.Server{
		Handler:           ops.New(ops.Options{Gatherer: reg, Next: h}),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	return serveUntil(ctx, srv, ln)
}

// serveUntil serves srv on ln until ctx ends, then shuts it down gracefully
// (within 10 s).
func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
