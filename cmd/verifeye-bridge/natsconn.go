package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// clientOptions returns the options every connection of the bridge shares. The
// connection reconnects forever: an outage of any length ends when NATS returns.
func clientOptions(name string, log zerolog.Logger) []nats.Option {
	return []nats.Option{
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
}

// natsOptions returns the client options of the contract's NATS_* settings. An
// error names the setting that cannot be used.
func natsOptions(c NATSAuth, name string, log zerolog.Logger) ([]nats.Option, error) {
	auth, err := c.options()
	if err != nil {
		return nil, err
	}
	return append(clientOptions(name, log), auth...), nil
}

// options returns the authentication and TLS options of c. Every file it names
// is read and checked now: a credential that cannot be used stops the program
// at start rather than leaving it to connect without it (or never). Errors
// name the variable and never quote a file's content.
func (c NATSAuth) options() ([]nats.Option, error) {
	var opts []nats.Option
	if c.NATSInboxPrefix != "" {
		if !validInboxPrefix(c.NATSInboxPrefix) {
			return nil, fmt.Errorf("NATS_INBOX_PREFIX: %q: want subject tokens of letters, digits, '_' and '-' joined by '.', at most 64 characters", c.NATSInboxPrefix)
		}
		opts = append(opts, nats.CustomInboxPrefix(c.NATSInboxPrefix))
	}
	if c.NATSCreds != "" {
		if err := checkCreds(c.NATSCreds); err != nil {
			return nil, fmt.Errorf("NATS_CREDS: %w", err)
		}
		opts = append(opts, nats.UserCredentials(c.NATSCreds))
	}
	if c.NATSNKey != "" {
		o, err := nats.NkeyOptionFromSeed(c.NATSNKey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %s: %w", c.NATSNKey, err)
		}
		opts = append(opts, o)
	}
	if c.NATSUser != "" {
		opts = append(opts, nats.UserInfo(c.NATSUser, c.NATSPassword.value()))
	}
	if c.NATSToken != "" {
		opts = append(opts, nats.Token(c.NATSToken.value()))
	}
	if c.NATSTLSCA != "" {
		b, err := os.ReadFile(c.NATSTLSCA)
		if err != nil {
			return nil, fmt.Errorf("NATS_TLS_CA: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("NATS_TLS_CA: %s: no PEM certificate in it", c.NATSTLSCA)
		}
		opts = append(opts, nats.RootCAs(c.NATSTLSCA))
	}
	if c.NATSTLSCert != "" || c.NATSTLSKey != "" {
		if err := checkKeyPair(c.NATSTLSCert, c.NATSTLSKey); err != nil {
			return nil, err
		}
		opts = append(opts, nats.ClientCert(c.NATSTLSCert, c.NATSTLSKey))
	}
	return opts, nil
}

// checkCreds checks that a NATS credentials file holds a user JWT and a user
// nkey seed.
func checkCreds(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if jwt, err := nkeys.ParseDecoratedJWT(b); err != nil || strings.Count(jwt, ".") != 2 {
		return fmt.Errorf("%s: no user JWT in it", path)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return fmt.Errorf("%s: no nkey seed in it", path)
	}
	kp.Wipe()
	return nil
}

// checkKeyPair checks a client certificate and its key, naming the variable of
// the file at fault.
func checkKeyPair(certFile, keyFile string) error {
	if certFile == "" || keyFile == "" {
		return fmt.Errorf("NATS_TLS_CERT and NATS_TLS_KEY: set both or neither")
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("NATS_TLS_CERT: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("NATS_TLS_KEY: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return fmt.Errorf("NATS_TLS_CERT: %s: no PEM certificate in it", certFile)
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		return fmt.Errorf("NATS_TLS_CERT: %s: %w", certFile, err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("NATS_TLS_KEY: %s: not the private key of NATS_TLS_CERT (%w)", keyFile, err)
	}
	return nil
}

// connection is a NATS connection and, in embedded mode, the server behind it.
type connection struct {
	nc *nats.Conn
	// emb is the embedded server, nil with NATS_URL.
	emb *natsembed.Restartable
	// noSpace is set when the embedded server failed a write for want of
	// disk space: it then refuses the failed stream's writes until restarted
	// (recoverStore).
	noSpace atomic.Bool
	// restarts counts recoverStore's restarts of the embedded server.
	restarts prometheus.Counter
	// syncer, with the embedded server at NATS_EMBEDDED_SYNC=always, makes
	// the server's writes durable: nothing is acknowledged (a webhook's 202,
	// an enriched webhook's ack) before a Sync. Nil otherwise.
	syncer *natsembed.Syncer
}

// collectors returns the connection's metrics, for a registry: the embedded
// server's restarts and the syncer's metrics; none with NATS_URL.
func (c *connection) collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	if c.restarts != nil {
		cs = append(cs, c.restarts)
	}
	if c.syncer != nil {
		cs = append(cs, c.syncer.Collectors()...)
	}
	return cs
}

// ns returns the embedded server running now, nil with NATS_URL.
func (c *connection) ns() *server.Server {
	if c.emb == nil {
		return nil
	}
	return c.emb.Server()
}

// sync is what the roles call before they answer for a write: the syncer's
// Sync, or nil where the server syncs by itself.
func (c *connection) sync() func() error {
	if c.syncer == nil {
		return nil
	}
	return c.syncer.Sync
}

// connect connects to NATS_URL, or with it empty and embedded non-nil, starts
// the embedded server and connects in-process.
func connect(c commonConfig, embedded *embeddedConfig, name string, log zerolog.Logger) (*connection, error) {
	if c.NATSURL != "" {
		opts, err := natsOptions(c.NATSAuth, name, log)
		if err != nil {
			return nil, usageError{err}
		}
		nc, err := nats.Connect(c.NATSURL, opts...)
		if err != nil {
			return nil, fmt.Errorf("nats: connect: %w", err)
		}
		return &connection{nc: nc}, nil
	}
	if embedded == nil {
		return nil, fmt.Errorf("NATS_URL: required for this subcommand")
	}
	if c.NATSAuth != (NATSAuth{}) {
		log.Warn().Msg("NATS_CREDS, NATS_NKEY, NATS_USER, NATS_PASSWORD, NATS_TOKEN and NATS_TLS_* are for NATS_URL: the embedded server uses NATS_EMBEDDED_USER and NATS_EMBEDDED_PASSWORD")
	}
	return startEmbedded(*embedded, name, log)
}

// startEmbedded starts the embedded server, which accepts only its own
// credentials, writes DATA_DIR/nats.url for the terminal tools and local
// consumers, and connects in-process with the same credentials.
func startEmbedded(cfg embeddedConfig, name string, log zerolog.Logger) (*connection, error) {
	user, password, generated, err := embeddedCredentials(cfg)
	if err != nil {
		return nil, usageError{err}
	}
	interval, _ := cfg.syncInterval()
	// Syncing every write: the server writes, the roles sync once for all
	// the writes made meanwhile (group commit), where the system allows.
	groupSync := interval == 0 && cfg.EmbeddedGroupSync != "off" && natsembed.GroupSyncSupported
	c := &connection{restarts: newRestartsCounter()}
	emb, err := natsembed.StartRestartable(natsembed.Options{
		StoreDir:     cfg.DataDir,
		Addr:         cfg.EmbeddedAddr,
		SyncInterval: interval,
		GroupSync:    groupSync,
		User:         user,
		Password:     password,
		// Without NATS_EMBEDDED_USER the password is the random one kept in
		// DATA_DIR (generated now or at the first start): no need for a slow hash.
		GeneratedPassword: cfg.EmbeddedUser == "",
		Log:               log.Level(zerolog.WarnLevel),
		OnNoSpace:         func() { c.noSpace.Store(true) },
	})
	if err != nil {
		return nil, err
	}
	ns := emb.Server()
	var syncer *natsembed.Syncer
	if groupSync {
		if syncer, err = natsembed.NewSyncer(cfg.DataDir); err != nil {
			emb.Shutdown()
			return nil, err
		}
	}
	urlFile, err := writeNATSURL(cfg.DataDir, ns, user, password)
	if err != nil {
		emb.Shutdown()
		closeSyncer(syncer)
		return nil, usageError{fmt.Errorf("DATA_DIR: %w", err)}
	}
	listen := cfg.EmbeddedAddr // "-": no listener
	if a := ns.Addr(); a != nil {
		listen = a.String() // the port the server got, also for port 0
	}
	ev := log.Info().Str("data_dir", cfg.DataDir).Str("listen", listen).
		Bool("sync_always", interval == 0).Bool("group_sync", groupSync).Bool("generated_credentials", generated)
	if urlFile != "" {
		ev = ev.Str("nats_url_file", urlFile)
	}
	ev.Msg("embedded NATS server started")
	nc, err := nats.Connect("", append(clientOptions(name, log), nats.InProcessServer(emb), nats.UserInfo(user, password))...)
	if err != nil {
		emb.Shutdown()
		closeSyncer(syncer)
		return nil, fmt.Errorf("nats: connect in-process: %w", err)
	}
	c.nc, c.emb, c.syncer = nc, emb, syncer
	return c, nil
}

func closeSyncer(s *natsembed.Syncer) {
	if s != nil {
		s.Close()
	}
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
	if c.emb != nil {
		c.emb.Shutdown()
	}
	closeSyncer(c.syncer)
}

// embeddedHasRoom reports, for the embedded server, whether it can store a
// webhook again: its JetStream store has room under the limit it took at start,
// and the disk under DATA_DIR has room (nats-server refuses with "insufficient
// resources", or fails a write, when either is exhausted; neither shows in the
// stream's or the account's limits), and no write failed for want of space
// since the server (re)started. It returns nil with an external NATS.
func (c *connection) embeddedHasRoom() error {
	ns := c.ns()
	if ns == nil {
		return nil
	}
	if c.noSpace.Load() {
		return fmt.Errorf("%w: the embedded server failed a write for want of disk space; it restarts once the disk under DATA_DIR has room", streams.ErrNoRoom)
	}
	info, err := ns.Jsz(nil)
	if err != nil {
		return fmt.Errorf("embedded NATS: %w", err)
	}
	if info.Disabled {
		return fmt.Errorf("%w: the embedded JetStream is disabled (storage failed)", streams.ErrNoRoom)
	}
	return storeRoom(info)
}

// storeRoom reports whether the embedded store has room for a webhook of the
// largest size, under its limit and on the disk, with some to spare.
func storeRoom(info *server.JSInfo) error {
	const need = streams.MaxWebhookBytes + streams.MaxWebhookHeaderBytes
	if max := info.Config.MaxStore; max > 0 && int64(info.Store)+need > max {
		return fmt.Errorf("%w: the embedded JetStream storage is full (%d of %d bytes)", streams.ErrNoRoom, info.Store, max)
	}
	if free, ok := diskFree(info.Config.StoreDir); ok && free < 4*need {
		return fmt.Errorf("%w: the disk under DATA_DIR has %d bytes free", streams.ErrNoRoom, free)
	}
	return nil
}

// newRestartsCounter returns the counter of recoverStore's restarts.
func newRestartsCounter() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "verifeye_bridge_embedded_nats_restarts_total",
		Help: "Restarts of the embedded NATS server by the bridge, once the disk had room again after a write failed for want of it.",
	})
}

// storeRecoveryInterval is how often recoverStore looks at the disk.
const storeRecoveryInterval = 2 * time.Second

// recoverStore restarts the embedded server once the disk under DATA_DIR has
// room again after a write failed for want of it, until ctx ends.
// nats-server keeps refusing every write to a stream whose write failed (it
// cannot tell a torn record from a whole one) until its store is opened
// again; a restart opens it, checks each block and drops a torn last record.
// Clients reconnect by themselves; a publish in flight meanwhile is answered
// 503 or sent again (groupcommit), never lost once answered 202.
func (c *connection) recoverStore(ctx context.Context, log zerolog.Logger) {
	if c.emb == nil {
		return
	}
	t := time.NewTicker(storeRecoveryInterval)
	defer t.Stop()
	var pace restartPacing
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !c.noSpace.Load() || !pace.allow(time.Now()) {
			continue
		}
		info, err := c.ns().Jsz(nil)
		if err != nil || storeRoom(info) != nil {
			continue // not yet
		}
		log.Warn().Msg("the disk under DATA_DIR has room again: restarting the embedded NATS server, which refuses writes to a stream since one failed for want of space")
		c.noSpace.Store(false)
		pace.restarted(time.Now())
		if err := c.emb.Restart(); err != nil {
			c.noSpace.Store(true) // try again
			log.Error().Err(err).Msg("embedded NATS server restart failed; trying again")
			continue
		}
		c.restarts.Inc()
		log.Info().Msg("embedded NATS server restarted; it stores again")
	}
}

// restartPacing spaces the embedded server's restarts while the disk keeps
// filling up again: a restart within a minute of the last waits twice as
// long as the one before (2 s, 4 s, … up to a minute); after a calm minute
// the next one may come at once.
type restartPacing struct {
	last time.Time
	wait time.Duration
}

// allow reports whether a restart may come at now.
func (p *restartPacing) allow(now time.Time) bool {
	return p.last.IsZero() || now.Sub(p.last) >= p.wait
}

// restarted records a restart at now.
func (p *restartPacing) restarted(now time.Time) {
	if !p.last.IsZero() && now.Sub(p.last) < time.Minute {
		p.wait = min(max(2*p.wait, storeRecoveryInterval), time.Minute)
	} else {
		p.wait = 0
	}
	p.last = now
}

// validInboxPrefix reports whether p can prefix a client's inboxes: one or
// more subject tokens of letters, digits, '_' and '-' joined by '.' (no
// wildcards, no empty token), at most 64 characters.
func validInboxPrefix(p string) bool {
	if len(p) == 0 || len(p) > 64 {
		return false
	}
	for tok := range strings.SplitSeq(p, ".") {
		if tok == "" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return false
			}
		}
	}
	return true
}
