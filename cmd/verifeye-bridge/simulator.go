package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/simulator"
)

// simulatorConfig is read by simulator.
type simulatorConfig struct {
	HTTPAddr string        `envconfig:"HTTP_ADDR" default:":8080" desc:"simulator listen address"`
	APIKey   secret        `envconfig:"VERIFEYE_API_KEY" desc:"the API key the simulator accepts (Authorization: ApiKey <key>); required"`
	Latency  time.Duration `envconfig:"SIMULATOR_LATENCY" default:"0s" desc:"delay added to every 200 answer, to imitate a slower API: 0 to 1m"`
	Logging
}

func (c simulatorConfig) validate() error {
	if c.APIKey == "" {
		return errors.New("VERIFEYE_API_KEY: required (the key the simulator accepts)")
	}
	return firstErr(
		checkHostPort("HTTP_ADDR", c.HTTPAddr),
		checkSecret("VERIFEYE_API_KEY", c.APIKey),
		inRange("SIMULATOR_LATENCY", c.Latency, 0, time.Minute),
		c.Logging.validate(),
	)
}

// cmdSimulator serves the VerifEye simulator (package simulator) alone, so a
// compose file or a staging cluster can point VERIFEYE_API_URL at it. It is a
// stand-in for VerifEye and never for production: it answers any well-formed
// session ID with a made-up result.
func cmdSimulator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg simulatorConfig
	fs := flag.NewFlagSet("simulator", flag.ContinueOnError)
	if err := parseFlags(fs, args, stdout,
		"Serve a STAND-IN for the VerifEye Get Session Result API on HTTP_ADDR, for\n"+
			"demos, compose and load tests. NEVER use it in production: it answers any\n"+
			"well-formed session ID with a made-up result. The last group of the session\n"+
			"ID picks the outcome (fa11ed... failed, 0000... passed, 404404... 404,\n"+
			"500500... 500; see package simulator). It also serves /healthz and /readyz.",
		"VERIFEYE_API_KEY=demo-key HTTP_ADDR=:8090 verifeye-bridge simulator", &cfg); err != nil {
		return err
	}
	if err := process(&cfg); err != nil {
		return usageError{err}
	}
	if err := cfg.validate(); err != nil {
		return usageError{err}
	}
	log := newLogger(stderr, cfg.Logging).
		With().Str("cmd", "simulator").Logger()
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: %w", err)
	}
	return simulate(ctx, cfg, ln, log)
}

// simulate serves the simulator on ln until ctx is cancelled.
func simulate(ctx context.Context, cfg simulatorConfig, ln net.Listener, log zerolog.Logger) error {
	sim := simulator.New(cfg.APIKey.value(), simulator.Options{Latency: cfg.Latency})
	log.Warn().Str("http_addr", ln.Addr().String()).Str("path", simulator.ResultPath).
		Msg("VerifEye SIMULATOR started: a stand-in for the real API, never for production")
	err := serveSimulator(ctx, sim, ln, log)
	log.Info().Err(err).Msg("simulator stopped")
	return err
}

// serveSimulator serves sim, with /healthz and /readyz, on ln until ctx is
// cancelled; then it ends the simulated delays and shuts the server down.
// The simulator subcommand and dev both serve it this way.
func serveSimulator(ctx context.Context, sim *simulator.Server, ln net.Listener, log zerolog.Logger) error {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
	}
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /readyz", ok)
	mux.Handle("/", sim)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second, ErrorLog: httpErrorLog(log.With().Str("component", "http").Logger())}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		sim.Close() // ends pending simulated delays, so Shutdown does not wait for them
		return srv.Shutdown(c)
	})
	return g.Wait()
}
