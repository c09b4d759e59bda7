package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/internal/groupcommit"
	"github.com/realeyes/verifeye-bridge/internal/ops"
	"github.com/realeyes/verifeye-bridge/internal/sessionapi"
	"github.com/realeyes/verifeye-bridge/internal/spool"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// serviceConfig is the configuration of a long-running subcommand; a nil part
// means that role does not run.
type serviceConfig struct {
	name     string
	common   commonConfig
	embedded *embeddedConfig // serve, dev: embedded NATS when NATS_URL is empty
	ingest   *ingestConfig   // serve, dev, ingest
	spool    *spoolConfig    // serve, ingest: with NATS_URL set
	dataDir  *dataDirConfig  // ingest: DATA_DIR (serve reads it in embedded)
	api      *apiConfig
	enrich   *enrichConfig      // serve, dev, enrich
	internal *internalAPIConfig // serve, dev, enrich: API_ADDR, API_TOKEN
	observe  observeConfig      // METRICS_SAMPLE_INTERVAL, OTEL_*
}

// serviceDeps are what a service is given rather than configured with: dev
// and the tests supply them. The zero value builds everything from the
// configuration.
type serviceDeps struct {
	// client is the Get Session Result client; nil builds one from the api settings.
	client enricher.APIClient
	// onReady, when set, is called once the service is serving.
	onReady func(httpAddr string)
	// onAPIReady, when set, is called with the internal API's address once it
	// is serving.
	onAPIReady func(apiAddr string)
	// spanExporter, when set, turns tracing on and receives every span.
	spanExporter sdktrace.SpanExporter
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := serviceConfig{name: "serve", embedded: &embeddedConfig{}, ingest: &ingestConfig{}, spool: &spoolConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}, internal: &internalAPIConfig{}}
	return runService(ctx, cfg, args, stdout, stderr,
		"Run the webhook ingest and the enricher in one process. With NATS_URL empty it\nstarts an embedded NATS server with JetStream, storing under DATA_DIR.",
		"VERIFEYE_API_KEY=... verifeye-bridge serve")
}

func cmdIngest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := serviceConfig{name: "ingest", ingest: &ingestConfig{}, spool: &spoolConfig{}, dataDir: &dataDirConfig{}, api: &apiConfig{}}
	return runService(ctx, cfg, args, stdout, stderr,
		"Run the HTTP webhook ingest alone, against the NATS cluster at NATS_URL.\nRun as many replicas as you like, each with its own DATA_DIR: while the\ncluster does not acknowledge in time, webhooks are spooled there (SPOOL).",
		"NATS_URL=nats://nats:4222 WEBHOOK_API_KEY_SHA256=... verifeye-bridge ingest")
}

func cmdEnrich(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := serviceConfig{name: "enrich", api: &apiConfig{}, enrich: &enrichConfig{}, internal: &internalAPIConfig{}}
	return runService(ctx, cfg, args, stdout, stderr,
		"Run the enricher alone against NATS_URL; it serves /healthz, /readyz and\n/metrics on HTTP_ADDR. Replicas share one durable consumer.",
		"NATS_URL=nats://nats:4222 VERIFEYE_API_KEY=... verifeye-bridge enrich")
}

func (c *serviceConfig) specs() []any {
	specs := []any{&c.common, &c.observe}
	if c.embedded != nil {
		specs = append(specs, c.embedded)
	}
	if c.ingest != nil {
		specs = append(specs, c.ingest)
	}
	if c.spool != nil {
		specs = append(specs, c.spool)
	}
	if c.dataDir != nil {
		specs = append(specs, c.dataDir)
	}
	if c.api != nil {
		specs = append(specs, c.api)
	}
	if c.enrich != nil {
		specs = append(specs, c.enrich)
	}
	if c.internal != nil {
		specs = append(specs, c.internal)
	}
	return specs
}

// load reads and checks the environment; errors name the variable.
func (c *serviceConfig) load() error {
	if err := process(c.specs()...); err != nil {
		return usageError{err}
	}
	check := []func() error{c.common.validate, c.observe.validate}
	if c.embedded != nil {
		check = append(check, c.embedded.validate, func() error { return c.embedded.checkUse(c.common) })
		if c.common.NATSURL == "" {
			check = append(check, c.embedded.validateListen)
		}
	} else if c.common.NATSURL == "" {
		check = append(check, func() error { return errors.New("NATS_URL: required for " + c.name) })
	}
	if c.api != nil {
		check = append(check, func() error { return c.api.validate(c.enrich != nil) })
	}
	if c.ingest != nil {
		check = append(check, func() error { return c.ingest.validate(*c.api) })
	}
	// Only where the client is built from VERIFEYE_API_URL: dev ignores it (it
	// calls its own simulator).
	if c.enrich != nil && c.name != "dev" {
		check = append(check, func() error { _, err := c.api.checkURL(); return err })
	}
	if c.spool != nil && c.ingest != nil {
		check = append(check, func() error { return c.spool.validate(*c.ingest) })
	}
	if c.dataDir != nil {
		check = append(check, func() error {
			if c.dataDir.DataDir == "" {
				return errors.New("DATA_DIR: must not be empty")
			}
			return nil
		})
	}
	if c.enrich != nil {
		check = append(check, c.enrich.validate, func() error {
			if c.enrich.ReconcileGiveUp > c.common.SessionsMaxAge {
				return fmt.Errorf("RECONCILE_GIVE_UP: %v is longer than SESSIONS_MAX_AGE (%v)", c.enrich.ReconcileGiveUp, c.common.SessionsMaxAge)
			}
			return nil
		})
	}
	if c.internal != nil {
		check = append(check, c.internal.validate, func() error {
			if c.internal.APIAddr != "-" && c.internal.APIAddr == c.common.HTTPAddr {
				return errors.New("API_ADDR: must differ from HTTP_ADDR (the internal API is never on the public listener)")
			}
			return nil
		})
	}
	for _, f := range check {
		if err := f(); err != nil {
			return usageError{err}
		}
	}
	return nil
}

// spoolDir returns DATA_DIR/spool when the service runs the store-and-forward
// spool (SPOOL=on with an external NATS), else "".
func (c *serviceConfig) spoolDir() string {
	if c.spool == nil || c.spool.Spool != "on" || c.ingest == nil || c.common.NATSURL == "" {
		return ""
	}
	dir := ""
	switch {
	case c.dataDir != nil:
		dir = c.dataDir.DataDir
	case c.embedded != nil:
		dir = c.embedded.DataDir
	}
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, "spool")
}

func runService(ctx context.Context, cfg serviceConfig, args []string, stdout, stderr io.Writer, summary, example string) error {
	fs := flag.NewFlagSet(cfg.name, flag.ContinueOnError)
	if err := parseFlags(fs, args, stdout, summary, example, cfg.specs()...); err != nil {
		return err
	}
	if err := cfg.load(); err != nil {
		return err
	}
	// One write per few milliseconds instead of one per line; every way out
	// of here writes what is left, before run prints the error, if any.
	logw := newLogBuffer(stderr, cfg.common.LogFlushInterval)
	defer logw.Close()
	log := newLogger(logw, cfg.common.Logging)
	ln, err := net.Listen("tcp", cfg.common.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: %w", err)
	}
	return serve(ctx, cfg, serviceDeps{}, ln, log)
}

// serve runs the configured roles on ln until ctx is cancelled, then shuts down
// gracefully: stop accepting, finish in-flight requests and enrichments, drain
// NATS, stop the embedded server. It returns nil after a clean shutdown.
func serve(ctx context.Context, cfg serviceConfig, deps serviceDeps, ln net.Listener, log zerolog.Logger) error {
	log = log.With().Str("cmd", cfg.name).Logger()
	subjects, err := streams.NewSubjects(cfg.common.SubjectPrefix)
	if err != nil {
		ln.Close()
		return usageError{err}
	}
	conn, err := connect(cfg.common, cfg.embedded, "verifeye-bridge "+cfg.name, log)
	if err != nil {
		ln.Close()
		return err
	}
	stopCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), cfg.common.ShutdownGrace)
	}
	defer func() {
		c, cancel := stopCtx()
		defer cancel()
		conn.close(c)
	}()
	js, err := jetstream.New(conn.nc)
	if err != nil {
		ln.Close()
		return fmt.Errorf("jetstream: %w", err)
	}
	tr, stopTracing, err := startTracing(ctx, cfg.observe, deps.spanExporter, log)
	if err != nil {
		ln.Close()
		return err
	}
	defer stopTracing()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(conn.collectors()...)

	// The store-and-forward spool (DESIGN.md guarantee 7), opened before
	// anything is served: a restarted process forwards what its predecessor
	// spooled, and webhooks are accepted even while NATS is unreachable.
	// Group commit (internal/groupcommit): concurrent webhooks share one
	// JetStream atomic batch. The spool wraps it, so the cluster is tried
	// first and a batch that is late sends its webhooks to the spool.
	var pub bridge.Publisher = js
	if cfg.ingest != nil {
		// nats-server stages every atomic batch of a one-replica file stream
		// with fsyncs of its own: that pays where every write is synced
		// anyway (the embedded default), and slows down a store syncing on an
		// interval, which a lone publish does not make wait for the disk.
		// An external server's sync policy is unknown: one-replica streams
		// there publish alone; replicated ones stage in memory.
		// The embedded server syncing every write leaves the sync to its
		// callers (natsembed.Syncer): webhooks published meanwhile share
		// one, so no batch is needed there either.
		batch := cfg.ingest.Batch
		if cfg.common.NATSURL == "" && cfg.embedded != nil {
			if interval, _ := cfg.embedded.syncInterval(); interval > 0 || conn.syncer != nil {
				batch = 1
			}
		} else if cfg.common.limits().Replicas <= 1 {
			batch = 1
		}
		gc, err := groupcommit.New(js, groupcommit.Options{
			Stream:     streams.Webhooks,
			MaxBatch:   batch,
			Sync:       conn.sync(),
			Registerer: reg,
			Log:        log.With().Str("component", "ingest").Logger(),
		})
		if err != nil {
			ln.Close()
			return err
		}
		pub = gc
	}
	var sp *spool.Spool
	if dir := cfg.spoolDir(); dir != "" {
		sp, err = spool.Open(pub, spool.Options{
			Dir:             dir,
			MaxBytes:        cfg.spool.SpoolMaxBytes,
			After:           cfg.spool.SpoolAfter,
			Stream:          streams.Webhooks,
			DuplicateWindow: cfg.common.DupWindow,
			Registerer:      reg,
			Log:             log.With().Str("component", "spool").Logger(),
		})
		if err != nil {
			ln.Close()
			return fmt.Errorf("DATA_DIR: %w", err)
		}
		defer sp.Close()
		pub = sp
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, _ := sp.State(c)
		cancel()
		log.Info().Str("dir", dir).Uint64("messages", st.Messages).Int64("max_bytes", cfg.spool.SpoolMaxBytes).
			Dur("after", cfg.spool.SpoolAfter).Msg("spool open")
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		newIdleReclaim(log.With().Str("component", "memory").Logger()).run(gctx)
		return nil
	})
	g.Go(func() error {
		conn.recoverStore(gctx, log.With().Str("component", "nats").Logger())
		return nil
	})
	streamsReady := make(chan struct{})
	g.Go(func() error {
		ensureStreams(gctx, js, subjects, cfg.common.limits(), log)
		close(streamsReady)
		return nil
	})
	// afterStreams runs run once the streams and the ledger exist (nothing
	// if serve stops first): what reads them starts then.
	afterStreams := func(run func() error) func() error {
		return func() error {
			select {
			case <-streamsReady:
				return run()
			case <-gctx.Done():
				return nil
			}
		}
	}

	// With the spool on, readiness is the spool accepting events; NATS is
	// only reported (webhooks wait in the spool while it is away).
	checks := []ops.Check{{Name: "nats", Critical: sp == nil, Func: func(ctx context.Context) error {
		return streams.Ready(ctx, conn.nc, js)
	}}}
	if conn.syncer != nil {
		// A failed sync is final (natsembed.Syncer): nothing is acknowledged
		// after it, and only a restart, after the disk is mended, recovers.
		checks = append(checks, ops.Check{Name: "store_sync", Critical: true, Func: func(context.Context) error {
			return conn.syncer.Err()
		}})
	}
	fwdDone := make(chan struct{})
	if sp != nil {
		checks = append(checks, ops.Check{Name: "spool", Critical: true, Func: sp.Ready, State: func(ctx context.Context) any {
			st, err := sp.State(ctx)
			if err != nil {
				return err.Error()
			}
			return st
		}})
		g.Go(func() error {
			defer close(fwdDone)
			return sp.Run(gctx)
		})
	} else {
		close(fwdDone)
	}

	var enr *enricher.Enricher
	if cfg.enrich != nil {
		client := deps.client
		if client == nil {
			client, err = newAPIClient(*cfg.api)
			if err != nil {
				ln.Close()
				return usageError{err}
			}
			if cleartext, _ := cfg.api.checkURL(); cleartext {
				log.Warn().Msg("VERIFEYE_API_INSECURE=true: the API key is sent in clear text to VERIFEYE_API_URL; for test rigs only")
			}
		}
		enr = enricher.New(js, client, log.With().Str("component", "enricher").Logger(), enricher.Options{
			Subjects:    subjects,
			Consumer:    cfg.enrich.Consumer,
			Concurrency: cfg.enrich.Concurrency,
			RateLimit:   cfg.enrich.RateLimit,
			MaxAttempts: cfg.enrich.MaxAttempts,
			AckWait:     cfg.enrich.AckWait,
			AuthRetry:   cfg.enrich.AuthRetry,
			Registerer:  reg,
			Tracing:     tr,
			Sync:        conn.sync(),
			Policy: enricher.Policy{
				BackoffBase:      cfg.enrich.BackoffBase,
				BackoffMax:       cfg.enrich.BackoffMax,
				NotFoundDelay:    cfg.enrich.NotFoundDelay,
				NotFoundAttempts: cfg.enrich.NotFoundAttempts,
				MaxAttempts:      cfg.enrich.MaxAttempts,
			},
		})
		// In serve the enricher's pause is reported, not fatal: webhooks are
		// still accepted and wait safely in JetStream.
		checks = append(checks, ops.Check{Name: "enricher", Critical: cfg.ingest == nil, Func: enr.Ready})
		g.Go(afterStreams(func() error { return enr.Run(gctx) }))
		rec := enricher.NewReconciler(js, log.With().Str("component", "reconciler").Logger(), enricher.ReconcileOptions{
			Subjects:   subjects,
			After:      cfg.enrich.ReconcileAfter,
			GiveUp:     cfg.enrich.ReconcileGiveUp,
			Registerer: reg,
			Sync:       conn.sync(),
		})
		g.Go(afterStreams(func() error { return rec.Run(gctx) }))
	}

	// The internal API, on a listener of its own (API_ADDR), never the
	// public one.
	var apiSrv *http.Server
	var apiLn net.Listener
	if cfg.internal != nil && cfg.internal.APIAddr != "-" {
		apiLn, err = net.Listen("tcp", cfg.internal.APIAddr)
		if err != nil {
			ln.Close()
			return usageError{fmt.Errorf("API_ADDR: %w", err)}
		}
		sapi := sessionapi.New(js, sessionapi.Options{Token: cfg.internal.APIToken.value(), Prefix: subjects.Prefix(),
			Log: log.With().Str("component", "api").Logger(), Sync: conn.sync()})
		g.Go(afterStreams(func() error { return sapi.Run(gctx) })) // the ledger watch
		apiSrv = newHTTPServer(sapi, log)
		apiSrv.WriteTimeout = sessionapi.MaxWait + 10*time.Second // long polls
		apiLn = netutil.LimitListener(apiLn, cfg.common.HTTPMaxConns)
		g.Go(func() error {
			// Once the ledger exists: until then connections wait to be accepted.
			select {
			case <-streamsReady:
			case <-gctx.Done():
			}
			err := apiSrv.Serve(apiLn)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("api: %w", err)
		})
	}

	var webhooks http.Handler // nil: the enricher alone serves no webhook route
	if cfg.ingest != nil {
		opts := bridge.Options{
			Subjects:       subjects,
			PublishTimeout: cfg.ingest.PublishTimeout,
			Registerer:     reg,
			Tracing:        tr,
			TrustedProxies: cfg.ingest.trustedProxies(),
			Probe: func(ctx context.Context) error {
				if err := streams.HasRoom(ctx, js); err != nil {
					return err
				}
				return conn.embeddedHasRoom()
			},
			// The embedded server is restarted once the disk has room
			// (recoverStore), and its probe says no room until then.
			ProbeSeesFailedWrites: conn.emb != nil,
		}
		opts.Auth, err = webhookAuth(*cfg.ingest, *cfg.api)
		if err != nil {
			ln.Close()
			return usageError{err}
		}
		if opts.Auth.Mode() == bridge.AuthNone {
			log.Warn().Msg("WEBHOOK_AUTH=none: webhooks are accepted from anyone; outcomes are still fetched from the API, so forged IDs end on the DLQ")
		}
		in := bridge.New(pub, log.With().Str("component", "ingest").Logger(), opts)
		checks = append(checks, ops.Check{Name: "storage", Critical: true, Func: in.Ready})
		webhooks = in
	}
	srv := newHTTPServer(ops.New(ops.Options{Checks: checks, Gatherer: reg, Next: webhooks}), log)
	ln = netutil.LimitListener(ln, cfg.common.HTTPMaxConns)
	obs := newObserver(reg, conn.nc, js, cfg, checks, log)
	g.Go(func() error { return obs.run(gctx) })
	g.Go(func() error {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("http: %w", err)
	})
	g.Go(func() error {
		<-gctx.Done()
		c, cancel := stopCtx()
		defer cancel()
		// Stop accepting and finish in-flight requests first; the enricher
		// finishes its in-flight work on its own (its Run returns when done).
		if apiSrv != nil {
			// Long polls end with the server: answer them now.
			_ = apiSrv.Close()
		}
		if err := srv.Shutdown(c); err != nil {
			return fmt.Errorf("http shutdown: %w", err)
		}
		if sp != nil {
			// Nothing new is spooled now: forward what is left within the
			// grace, and leave the rest on disk for the next start.
			<-fwdDone
			left, err := sp.Drain(c)
			if left > 0 || err != nil {
				log.Warn().Uint64("left", left).AnErr("cause", err).Str("dir", cfg.spoolDir()).
					Msg("spool: not drained within SHUTDOWN_GRACE; the events left stay on disk and are forwarded by the next start")
			} else {
				log.Info().Msg("spool: drained")
			}
		}
		return nil
	})
	log.Info().Str("http_addr", ln.Addr().String()).Bool("ingest", cfg.ingest != nil).
		Bool("enrich", cfg.enrich != nil).Str("version", version).Msg("verifeye-bridge started")
	if apiLn != nil {
		log.Info().Str("api_addr", apiLn.Addr().String()).Bool("token", cfg.internal.APIToken != "").Msg("internal API listening")
		if deps.onAPIReady != nil {
			deps.onAPIReady(apiLn.Addr().String())
		}
	}
	if deps.onReady != nil {
		deps.onReady(ln.Addr().String())
	}
	err = g.Wait()
	log.Info().Err(err).Msg("verifeye-bridge stopped")
	return err
}

// newHTTPServer returns the settings of every HTTP server the process runs:
// bounded reads, writes and idle keep-alives, and the server's own error lines
// (accept errors, panics) written through log as JSON like every other line.
// The caller bounds concurrent connections with a limiting listener
// (HTTP_MAX_CONNS).
func newHTTPServer(h http.Handler, log zerolog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          httpErrorLog(log.With().Str("component", "http").Logger()),
	}
}

// httpErrorLog returns a *log.Logger whose every line is a zerolog warning
// with the text as its message.
func httpErrorLog(log zerolog.Logger) *stdlog.Logger {
	return stdlog.New(zerologWriter{log}, "", 0)
}

type zerologWriter struct{ log zerolog.Logger }

func (w zerologWriter) Write(p []byte) (int, error) {
	w.log.Warn().Msg(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// ensureStreams creates or updates the streams, retrying until it succeeds or
// ctx ends: a NATS outage at start delays readiness, it does not stop the process.
func ensureStreams(ctx context.Context, js jetstream.JetStream, s streams.Subjects, l streams.Limits, log zerolog.Logger) {
	_, err := backoff.Retry(ctx, func() (struct{}, error) { return struct{}{}, streams.Ensure(ctx, js, s, l) },
		backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 250 * time.Millisecond, Multiplier: 2, MaxInterval: 10 * time.Second}),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			log.Error().Err(err).Dur("retry_in", wait).Msg("cannot create or update streams")
		}))
	if err == nil {
		log.Info().Int("replicas", l.Replicas).Dur("duplicate_window", l.Duplicates).Msg("streams ready")
	}
}

func webhookAuth(in ingestConfig, api apiConfig) (bridge.Auth, error) {
	switch in.WebhookAuth {
	case bridge.AuthToken:
		return bridge.TokenAuth(in.WebhookToken.value()), nil
	case bridge.AuthNone:
		return bridge.NoAuth(), nil
	}
	if in.WebhookKeyHash != "" {
		a, err := bridge.APIKeyHashAuth(in.WebhookKeyHash)
		if err != nil {
			return a, fmt.Errorf("WEBHOOK_API_KEY_SHA256: %w", err)
		}
		return a, nil
	}
	return bridge.APIKeyAuth(api.APIKey.value()), nil
}

func newAPIClient(c apiConfig) (*verifeye.Client, error) {
	url := c.APIURL
	if url == "" {
		var err error
		if url, err = verifeye.DefaultURL(c.Region); err != nil {
			return nil, fmt.Errorf("VERIFEYE_REGION: %w", err)
		}
	}
	cl, err := verifeye.New(url, c.APIKey.value(), verifeye.Options{Timeout: c.APITimeout, UserAgent: "verifeye-bridge/" + version, HTTPClient: tracedHTTPClient()})
	if err != nil {
		return nil, fmt.Errorf("VERIFEYE_API_URL: %w", err)
	}
	return cl, nil
}
