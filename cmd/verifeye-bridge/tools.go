package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// defaultToolNATSURL is where the terminal tools look for NATS: the embedded
// server of `serve` and `dev` (NATS_EMBEDDED_ADDR's default).
const defaultToolNATSURL = "nats://127.0.0.1:4222"

// toolConfig is the environment of the terminal tools (watch, dlq, replay).
type toolConfig struct {
	NATSURL string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" desc:"NATS server URL(s), comma-separated (default: the embedded server of serve/dev)"`
	NATSAuth
	SubjectPrefix string `envconfig:"SUBJECT_PREFIX" default:"verifeye" desc:"first token of every subject"`
}

// load reads the environment; errors name the variable and are usage errors.
func (c *toolConfig) load() (streams.Subjects, error) {
	if err := process(c); err != nil {
		return streams.Subjects{}, usageError{err}
	}
	if c.NATSURL == "" {
		c.NATSURL = defaultToolNATSURL
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
	opts := append(natsOptions(c.NATSAuth, "verifeye-bridge "+name, log),
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
		return nil, nil, fmt.Errorf("cannot connect to NATS at %s: %w (is verifeye-bridge serve or dev running? set NATS_URL)", redactURLs(c.NATSURL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
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

// scan calls fn for every message of st that cfg selects, in order, up to the
// stream's last sequence when the scan starts: messages published meanwhile
// (by fn itself, for example) are not visited. It uses an ephemeral ordered
// consumer, so it disturbs no durable consumer. It returns fn's first error.
func scan(ctx context.Context, st jetstream.Stream, cfg jetstream.OrderedConsumerConfig, fn func(jetstream.Msg, *jetstream.MsgMetadata) error) error {
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	defer it.Stop()
	if ci := cons.CachedInfo(); ci != nil && ci.NumPending == 0 {
		return nil
	}
	for {
		nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msg, err := it.Next(jetstream.NextContext(nctx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
				// Pending messages may have been deleted or aged out meanwhile.
				if ci, ierr := cons.Info(ctx); ierr == nil && ci.NumPending == 0 {
					return nil
				}
				continue
			}
			return fmt.Errorf("read %s: %w", info.Config.Name, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read %s: %w", info.Config.Name, err)
		}
		if meta.Sequence.Stream > last {
			return nil
		}
		if err := fn(msg, meta); err != nil {
			return err
		}
		if meta.Sequence.Stream >= last || meta.NumPending == 0 {
			return nil
		}
	}
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
