package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// defaultToolNATSURL is where the terminal tools look for NATS when neither
// NATS_URL nor DATA_DIR/nats.url says: NATS_EMBEDDED_ADDR's default.
const defaultToolNATSURL = "nats://127.0.0.1:4222"

// toolConfig is the environment of the terminal tools (watch, dlq, replay).
type toolConfig struct {
	NATSURL string `envconfig:"NATS_URL" desc:"NATS server URL(s), comma-separated (default: the URL in DATA_DIR/nats.url, which serve and dev write for their embedded server)"`
	DataDir string `envconfig:"DATA_DIR" default:"./data" desc:"data directory of serve or dev: its nats.url is used when NATS_URL is empty"`
	NATSAuth
	SubjectPrefix string `envconfig:"SUBJECT_PREFIX" default:"verifeye" desc:"first token of every subject"`

	// urlFile is the nats.url NATSURL was read from, if any.
	urlFile string
}

// load reads the environment; errors name the variable and are usage errors.
// With NATS_URL empty it takes the embedded server's URL, credentials
// included, from DATA_DIR/nats.url.
func (c *toolConfig) load() (streams.Subjects, error) {
	if err := process(c); err != nil {
		return streams.Subjects{}, usageError{err}
	}
	if c.NATSURL == "" {
		u, path, err := readNATSURL(c.DataDir)
		switch {
		case err == nil:
			c.NATSURL, c.urlFile = u, path
		case errors.Is(err, fs.ErrNotExist):
			c.NATSURL = defaultToolNATSURL
		default:
			return streams.Subjects{}, usagef("DATA_DIR: %v", err)
		}
	}
	if err := firstErr(checkNATSURLs("NATS_URL", c.NATSURL), c.NATSAuth.validate()); err != nil {
		return streams.Subjects{}, usageError{err}
	}
	s, err := streams.NewSubjects(c.SubjectPrefix)
	if err != nil {
		return s, usagef("SUBJECT_PREFIX: %v", err)
	}
	return s, nil
}

// connectTool connects to NATS for a terminal tool. Unlike the services, a tool
// fails at once when no server answers: a person is waiting for it. Once
// connected it reconnects like the services do. The caller must Close the
// connection.
func connectTool(c toolConfig, name string, stderr io.Writer) (*nats.Conn, jetstream.JetStream, error) {
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05"}).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	opts, err := natsOptions(c.NATSAuth, "verifeye-bridge "+name, log)
	if err != nil {
		return nil, nil, usageError{err}
	}
	opts = append(opts,
		nats.RetryOnFailedConnect(false),
		nats.Timeout(5*time.Second),
		// A normal Close is not worth a warning; a lost connection is.
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("nats disconnected; reconnecting")
			}
		}),
	)
	nc, err := nats.Connect(c.NATSURL, opts...)
	if err != nil {
		if c.urlFile != "" {
			return nil, nil, fmt.Errorf("cannot connect to NATS at %s (from %s): %w (is verifeye-bridge serve or dev running with this DATA_DIR? or set NATS_URL)", redactURLs(c.NATSURL), c.urlFile, err)
		}
		return nil, nil, fmt.Errorf("cannot connect to NATS at %s: %w (is verifeye-bridge serve or dev running? set DATA_DIR to its data directory, or NATS_URL)", redactURLs(c.NATSURL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// storeSync returns a function that puts on disk what the tool has written,
// when it writes to the embedded server of DATA_DIR (through its nats.url).
// That server may leave the fsync of each write to whoever answers for it
// (group commit) and sync by itself only every natsembed.GroupSyncInterval;
// a tool answers for its writes when it reports them done. sync is nil for
// another server, which keeps its own durability, and where the system has
// no syncfs(2) (the embedded server then syncs every write itself). The
// caller calls done when finished.
func (c toolConfig) storeSync(stderr io.Writer) (sync func() error, done func()) {
	if c.urlFile == "" {
		return nil, func() {}
	}
	s, err := natsembed.NewSyncer(c.DataDir)
	switch {
	case errors.Is(err, natsembed.ErrSyncUnsupported):
		return nil, func() {}
	case err != nil:
		fmt.Fprintf(stderr, "warning: %v; what this command writes reaches the disk when the server syncs, within %v\n", err, natsembed.GroupSyncInterval)
		return nil, func() {}
	}
	return s.Sync, func() { s.Close() }
}

// openTool loads cfg, connects and opens stream: the start of every tool that
// works on one stream. The caller must Close the connection.
func openTool(ctx context.Context, cfg toolConfig, name, stream string, stderr io.Writer) (streams.Subjects, *nats.Conn, jetstream.JetStream, jetstream.Stream, error) {
	subjects, err := cfg.load()
	if err != nil {
		return subjects, nil, nil, nil, err
	}
	nc, js, err := connectTool(cfg, name, stderr)
	if err != nil {
		return subjects, nil, nil, nil, err
	}
	st, err := openStream(ctx, js, stream)
	if err != nil {
		nc.Close()
		return subjects, nil, nil, nil, err
	}
	return subjects, nc, js, st, nil
}

// redactURLs drops the user information of each comma-separated URL.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
		u, err := url.Parse(parts[i])
		if err != nil || u.User == nil {
			continue
		}
		u.User = nil
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// openStream returns the stream named name, with a hint when it does not exist.
func openStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s not found: no bridge has started on this NATS server yet", name)
	}
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return nil, fmt.Errorf("stream %s: JetStream is not enabled on this NATS server", name)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return st, nil
}

// parseSince reads a --since value: a positive duration back from now ("1h",
// "90m") or an RFC 3339 time ("2026-11-26T10:00:00Z").
func parseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return time.Time{}, usagef("--since %q: want a positive duration", v)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("--since %q: want a duration (1h, 30m) or an RFC 3339 time (2026-11-26T10:00:00Z)", v)
}

// progress reports a long operation's count and rate on w every interval.
type progress struct {
	w        io.Writer
	what     string
	start    time.Time
	last     time.Time
	interval time.Duration
}

func newProgress(w io.Writer, what string) *progress {
	now := time.Now()
	return &progress{w: w, what: what, start: now, last: now, interval: 2 * time.Second}
}

// tick reports n done so far if the interval has passed since the last report.
func (p *progress) tick(n int) {
	if time.Since(p.last) < p.interval {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "%s: %d so far (%s)\n", p.what, n, p.rate(n))
}

func (p *progress) rate(n int) string {
	d := time.Since(p.start)
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f/s", float64(n)/d.Seconds())
}
