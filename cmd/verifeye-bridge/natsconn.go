package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
)

// natsOptions returns the client options of the contract's NATS_* settings. The
// connection reconnects forever: an outage of any length ends when NATS returns.
func natsOptions(c NATSAuth, name string, log zerolog.Logger) []nats.Option {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, time.Second),
		// No client-side buffering while disconnected: a publish then fails at
		// once (503) instead of waiting in memory that a crash would lose.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Drain/Close at shutdown, not news
				log.Warn().Err(err).Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn().Err(err).Msg("nats async error")
		}),
	}
	if c.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(c.NATSCreds))
	}
	if c.NATSNKey != "" {
		if o, err := nats.NkeyOptionFromSeed(c.NATSNKey); err == nil {
			opts = append(opts, o)
		} else {
			log.Error().Err(err).Msg("NATS_NKEY: cannot read the seed file")
		}
	}
	if c.NATSUser != "" {
		opts = append(opts, nats.UserInfo(c.NATSUser, c.NATSPassword.value()))
	}
	if c.NATSToken != "" {
		opts = append(opts, nats.Token(c.NATSToken.value()))
	}
	if c.NATSTLSCA != "" {
		opts = append(opts, nats.RootCAs(c.NATSTLSCA))
	}
	if c.NATSTLSCert != "" {
		opts = append(opts, nats.ClientCert(c.NATSTLSCert, c.NATSTLSKey))
	}
	return opts
}

// connection is a NATS connection and, in embedded mode, the server behind it.
type connection struct {
	nc *nats.Conn
	ns *server.Server
}

// connect connects to NATS_URL, or with it empty and embedded non-nil, starts
// the embedded server and connects in-process.
func connect(c commonConfig, embedded *embeddedConfig, name string, log zerolog.Logger) (*connection, error) {
	opts := natsOptions(c.NATSAuth, name, log)
	if c.NATSURL != "" {
		nc, err := nats.Connect(c.NATSURL, opts...)
		if err != nil {
			return nil, fmt.Errorf("nats: connect: %w", err)
		}
		return &connection{nc: nc}, nil
	}
	if embedded == nil {
		return nil, fmt.Errorf("NATS_URL: required for this subcommand")
	}
	sync, _ := embedded.syncInterval()
	ns, err := natsembed.Start(natsembed.Options{
		StoreDir:     embedded.DataDir,
		Addr:         embedded.EmbeddedAddr,
		SyncInterval: sync,
		Log:          log.Level(zerolog.WarnLevel),
	})
	if err != nil {
		return nil, err
	}
	log.Info().Str("data_dir", embedded.DataDir).Str("listen", embedded.EmbeddedAddr).
		Bool("sync_always", sync == 0).Msg("embedded NATS server started")
	nc, err := nats.Connect("", append(opts, nats.InProcessServer(ns))...)
	if err != nil {
		natsembed.Shutdown(ns)
		return nil, fmt.Errorf("nats: connect in-process: %w", err)
	}
	return &connection{nc: nc, ns: ns}, nil
}

// close drains the connection (finishing pending acks and publishes), then stops
// the embedded server, last.
func (c *connection) close(ctx context.Context) {
	done := make(chan struct{})
	c.nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := c.nc.Drain(); err != nil {
		c.nc.Close()
	} else {
		select {
		case <-done:
		case <-ctx.Done():
			c.nc.Close()
		}
	}
	if c.ns != nil {
		natsembed.Shutdown(c.ns)
	}
}
