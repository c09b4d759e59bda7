package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/kelseyhightower/envconfig"

	"github.com/realeyes/verifeye-bridge/internal/groupcommit"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// secret is a setting that must never be printed: its String is a placeholder,
// so a secret logged or formatted by mistake leaks nothing.
type secret string

func (s *secret) Decode(v string) error { *s = secret(v); return nil }
func (s secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}
func (s secret) value() string { return string(s) }

// NATSAuth is NATS authentication and TLS, as the NATS CLI names them;
// the services and the terminal tools read it alike.
type NATSAuth struct {
	NATSCreds    string `envconfig:"NATS_CREDS" desc:"NATS credentials file (JWT + nkey seed)"`
	NATSNKey     string `envconfig:"NATS_NKEY" desc:"NATS nkey seed file"`
	NATSUser     string `envconfig:"NATS_USER" desc:"NATS user name"`
	NATSPassword secret `envconfig:"NATS_PASSWORD" desc:"NATS password"`
	NATSToken    secret `envconfig:"NATS_TOKEN" desc:"NATS authentication token"`
	NATSTLSCA    string `envconfig:"NATS_TLS_CA" desc:"CA certificate file to verify the NATS servers"`
	NATSTLSCert  string `envconfig:"NATS_TLS_CERT" desc:"client certificate file for NATS mutual TLS"`
	NATSTLSKey   string `envconfig:"NATS_TLS_KEY" desc:"client key file for NATS mutual TLS"`
	// NATSInboxPrefix is where this client receives answers (PubAcks, API
	// replies, pulled messages), as the NATS CLI's --inbox-prefix: one per
	// NATS user keeps each user's answers from the others (deploy/).
	NATSInboxPrefix string `envconfig:"NATS_INBOX_PREFIX" desc:"subject prefix of this client's inboxes (default _INBOX): give each NATS user its own, e.g. _INBOX_ingest, and allow it only that"`
}

func (c NATSAuth) validate() error {
	if (c.NATSTLSCert == "") != (c.NATSTLSKey == "") {
		return fmt.Errorf("NATS_TLS_CERT and NATS_TLS_KEY: set both or neither")
	}
	// Every credential file must be usable now, not at the first connect.
	_, err := c.options()
	return err
}

// Logging is how a long-running subcommand logs; the services and the
// simulator read it alike.
type Logging struct {
	LogLevel  string `envconfig:"LOG_LEVEL" default:"info" desc:"trace, debug, info, warn or error"`
	LogFormat string `envconfig:"LOG_FORMAT" default:"json" desc:"json, or console for humans"`
	// LogFlushInterval is read by serve, ingest and enrich (logBuffer).
	LogFlushInterval time.Duration `envconfig:"LOG_FLUSH_INTERVAL" default:"5ms" desc:"serve, ingest, enrich: log lines are written out together at most this long after they are logged (warnings and errors at once, everything on shutdown); 0 writes every line at once"`
}

func (c Logging) validate() error {
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("LOG_LEVEL: %q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		return fmt.Errorf("LOG_FORMAT: %q is not json or console", c.LogFormat)
	}
	if c.LogFlushInterval < 0 {
		return fmt.Errorf("LOG_FLUSH_INTERVAL: %v is negative", c.LogFlushInterval)
	}
	return nil
}

// commonConfig is read by every subcommand that talks to NATS.
type commonConfig struct {
	HTTPAddr     string `envconfig:"HTTP_ADDR" default:":8080" desc:"HTTP listen address (ingest, or the enricher's health and metrics)"`
	HTTPMaxConns int    `envconfig:"HTTP_MAX_CONNS" default:"1024" desc:"most HTTP connections served at once; more wait to be accepted"`
	NATSURL      string `envconfig:"NATS_URL" desc:"NATS server URL(s), comma-separated; empty in serve/dev starts an embedded server"`
	NATSAuth
	SubjectPrefix    string        `envconfig:"SUBJECT_PREFIX" default:"verifeye" desc:"first token of every subject: [A-Za-z0-9_-], at most 64"`
	StreamReplicas   int           `envconfig:"STREAM_REPLICAS" default:"1" desc:"JetStream replicas of the streams the bridge creates: 1 to 5 (3 on a cluster); 1 with the embedded server"`
	DupWindow        time.Duration `envconfig:"STREAM_DUPLICATE_WINDOW" default:"2m" desc:"de-duplication window of the webhooks and results streams: 1s to 168h"`
	WebhooksMaxAge   time.Duration `envconfig:"WEBHOOKS_MAX_AGE" default:"168h" desc:"how long the webhooks stream keeps events: 0 (no limit) or at least STREAM_DUPLICATE_WINDOW"`
	WebhooksMaxBytes int64         `envconfig:"WEBHOOKS_MAX_BYTES" default:"1073741824" desc:"size of the webhooks stream, at least 1 MiB or -1 (no limit); when full, webhooks get 503"`
	ResultsMaxAge    time.Duration `envconfig:"RESULTS_MAX_AGE" default:"168h" desc:"how long the results stream keeps outcomes: 0 (no limit) or at least STREAM_DUPLICATE_WINDOW"`
	ResultsMaxBytes  int64         `envconfig:"RESULTS_MAX_BYTES" default:"1073741824" desc:"size of the results stream, at least 1 MiB or -1 (no limit; oldest outcomes go first)"`
	DLQMaxAge        time.Duration `envconfig:"DLQ_MAX_AGE" default:"720h" desc:"how long the DLQ keeps dead-lettered events: 0 (no limit) or at least STREAM_DUPLICATE_WINDOW"`
	DLQMaxBytes      int64         `envconfig:"DLQ_MAX_BYTES" default:"268435456" desc:"size of the DLQ stream, at least 1 MiB or -1 (no limit)"`
	SessionsMaxAge   time.Duration `envconfig:"SESSIONS_MAX_AGE" default:"720h" desc:"how long the session ledger (VERIFEYE_SESSIONS) keeps a session's entry, and so exactly one outcome per session: 1m to 87600h"`
	ShutdownGrace    time.Duration `envconfig:"SHUTDOWN_GRACE" default:"25s" desc:"how long SIGTERM waits for in-flight requests and enrichments: 1s to 1h"`
	Logging
}

// embeddedConfig is read by serve and dev.
type embeddedConfig struct {
	EmbeddedAddr      string `envconfig:"NATS_EMBEDDED_ADDR" default:"127.0.0.1:4222" desc:"where the embedded NATS server listens (for watch and local consumers); '-' for nowhere"`
	DataDir           string `envconfig:"DATA_DIR" default:"./data" desc:"embedded JetStream storage directory (NATS_URL empty), else where the spool lives (DATA_DIR/spool); created if need be, must be writable"`
	EmbeddedSync      string `envconfig:"NATS_EMBEDDED_SYNC" default:"always" desc:"'always' fsyncs every event before it is acknowledged; a duration up to 2m (e.g. 1s) syncs on that interval and risks that much on a power cut"`
	EmbeddedGroupSync string `envconfig:"NATS_EMBEDDED_GROUP_SYNC" default:"on" desc:"with NATS_EMBEDDED_SYNC=always: 'on' syncs the store once for all the writes made meanwhile (group commit, syncfs); 'off' has the server sync each write itself (concurrent webhooks then share JetStream atomic batches)"`
	EmbeddedUser      string `envconfig:"NATS_EMBEDDED_USER" desc:"user the embedded NATS server requires (with NATS_EMBEDDED_PASSWORD); default: generated at first start and kept in DATA_DIR"`
	EmbeddedPass      secret `envconfig:"NATS_EMBEDDED_PASSWORD" desc:"password of NATS_EMBEDDED_USER"`
}

// ingestConfig is read by serve, dev and ingest.
type ingestConfig struct {
	WebhookAuth    string        `envconfig:"WEBHOOK_AUTH" default:"api-key" desc:"api-key (X-API-Key must equal VERIFEYE_API_KEY or match WEBHOOK_API_KEY_SHA256), token, or none"`
	WebhookKeyHash string        `envconfig:"WEBHOOK_API_KEY_SHA256" desc:"hex SHA-256 of the API key, so an ingest-only replica need not hold the key; comma-separated to accept an old and a new key while rotating"`
	WebhookToken   secret        `envconfig:"WEBHOOK_TOKEN" desc:"token expected as ?token= or Authorization: Bearer when WEBHOOK_AUTH=token: at least 16 printable ASCII characters, no spaces"`
	PublishTimeout time.Duration `envconfig:"INGEST_PUBLISH_TIMEOUT" default:"3s" desc:"longest wait for JetStream's acknowledgement before answering 503: 10ms to 9s"`
	TrustedProxies string        `envconfig:"HTTP_TRUSTED_PROXIES" desc:"comma-separated CIDRs of proxies whose X-Forwarded-For or X-Real-IP is logged as the remote address; empty trusts none"`
	Batch          int           `envconfig:"INGEST_BATCH" default:"1000" desc:"group commit: most webhooks stored in one JetStream atomic batch while the previous one is being stored, 1 to 1000; 1 publishes each alone"`
}

// spoolConfig is read by serve and ingest: the store-and-forward spool, used
// with an external NATS (NATS_URL set) only.
type spoolConfig struct {
	Spool         string        `envconfig:"SPOOL" default:"on" desc:"on: a webhook the NATS cluster does not acknowledge within SPOOL_AFTER is fsynced to a local spool under DATA_DIR/spool, answered 202 and forwarded later (NATS_URL set only); off: answer 503"`
	SpoolAfter    time.Duration `envconfig:"SPOOL_AFTER" default:"1s" desc:"longest wait for the cluster's acknowledgement before the event goes to the spool instead"`
	SpoolMaxBytes int64         `envconfig:"SPOOL_MAX_BYTES" default:"1073741824" desc:"spool capacity; when full, webhooks get 503 (nothing spooled is dropped)"`
}

// dataDirConfig is DATA_DIR for ingest, which has no embedded server: where
// the spool lives.
type dataDirConfig struct {
	DataDir string `envconfig:"DATA_DIR" default:"./data" desc:"where the spool lives (DATA_DIR/spool)"`
}

func (c spoolConfig) validate(in ingestConfig) error {
	switch {
	case c.Spool != "on" && c.Spool != "off":
		return fmt.Errorf("SPOOL: %q is not on or off", c.Spool)
	case c.SpoolAfter <= 0:
		return errors.New("SPOOL_AFTER: must be positive")
	case c.Spool == "on" && c.SpoolAfter >= in.PublishTimeout:
		// The spool's own write must fit in the answer's time too.
		return fmt.Errorf("SPOOL_AFTER: %v must be shorter than INGEST_PUBLISH_TIMEOUT (%v)", c.SpoolAfter, in.PublishTimeout)
	case c.SpoolMaxBytes <= 0:
		return errors.New("SPOOL_MAX_BYTES: must be positive")
	}
	return nil
}

// apiConfig is read by every subcommand that calls or checks the VerifEye API key.
type apiConfig struct {
	APIKey     secret        `envconfig:"VERIFEYE_API_KEY" desc:"account API key: used for Get Session Result and to check the webhook's X-API-Key (no surrounding spaces)"`
	APIURL     string        `envconfig:"VERIFEYE_API_URL" desc:"API base URL, http(s)://host[:port][/path] (default: the VERIFEYE_REGION host)"`
	Region     string        `envconfig:"VERIFEYE_REGION" default:"eu" desc:"eu or us: picks the default API host"`
	APITimeout time.Duration `envconfig:"VERIFEYE_API_TIMEOUT" default:"10s" desc:"timeout of one Get Session Result call: 100ms to 5m"`
	Insecure   bool          `envconfig:"VERIFEYE_API_INSECURE" default:"false" desc:"true allows an http:// VERIFEYE_API_URL to a host other than loopback, sending the API key in clear text: for test rigs only"`
}

// enrichConfig is read by serve, dev and enrich.
type enrichConfig struct {
	Concurrency      int           `envconfig:"ENRICH_CONCURRENCY" default:"16" desc:"enricher workers (concurrent API calls): 1 to 1024"`
	RateLimit        float64       `envconfig:"VERIFEYE_RATE_LIMIT" default:"50" desc:"API calls per second, 0.01 to 100000; 0 = no cap"`
	MaxAttempts      int           `envconfig:"ENRICH_MAX_ATTEMPTS" default:"10" desc:"attempts before an event goes to the DLQ: 1 to 1000"`
	Consumer         string        `envconfig:"ENRICH_CONSUMER" default:"enricher" desc:"durable consumer name shared by all enricher replicas: [A-Za-z0-9_-], at most 64"`
	AckWait          time.Duration `envconfig:"ENRICH_ACK_WAIT" default:"5s" desc:"how long a webhook held by an enricher that died waits before another replica takes it (a live enricher extends it at every stage): 1s to 1h"`
	BackoffBase      time.Duration `envconfig:"ENRICH_BACKOFF_BASE" default:"1s" desc:"first retry delay after 429/5xx/timeout; doubles per attempt, with jitter: 1ms up to ENRICH_BACKOFF_MAX"`
	BackoffMax       time.Duration `envconfig:"ENRICH_BACKOFF_MAX" default:"5m" desc:"longest retry delay: up to 24h"`
	NotFoundDelay    time.Duration `envconfig:"ENRICH_NOT_FOUND_DELAY" default:"15s" desc:"retry delay after a 404 (the result may lag): 1ms to 24h"`
	NotFoundAttempts int           `envconfig:"ENRICH_NOT_FOUND_ATTEMPTS" default:"5" desc:"404 answers before the event goes to the DLQ as not_found: 1 to 1000"`
	AuthRetry        time.Duration `envconfig:"ENRICH_AUTH_RETRY" default:"30s" desc:"while the API answers 401/403, how often to try again (consuming is paused): 1ms to 1h"`
	ReconcileAfter   time.Duration `envconfig:"RECONCILE_AFTER" default:"5m" desc:"how long after an expectation without a webhook the bridge injects the webhook itself: 1s to 24h"`
	ReconcileGiveUp  time.Duration `envconfig:"RECONCILE_GIVE_UP" default:"24h" desc:"how long after the expectation a session the API does not know (404) is tried before it is marked abandoned: RECONCILE_AFTER to SESSIONS_MAX_AGE"`
}

// internalAPIConfig is read by serve, enrich and dev: the internal API over
// the session ledger.
type internalAPIConfig struct {
	APIAddr  string `envconfig:"API_ADDR" default:"127.0.0.1:8081" desc:"listen address of the internal API (GET /v1/sessions/{id}, PUT /v1/sessions/{id}/expect); '-' for none; never the public ingest listener"`
	APIToken secret `envconfig:"API_TOKEN" desc:"bearer token the internal API requires (Authorization: Bearer <token>): at least 16 printable ASCII characters; required when API_ADDR is not a loopback address"`
}

func (c internalAPIConfig) validate() error {
	if c.APIAddr == "-" {
		return nil
	}
	if err := checkHostPort("API_ADDR", c.APIAddr); err != nil {
		return err
	}
	if tok := c.APIToken.value(); tok != "" {
		if len(tok) < minTokenLen || len(tok) > maxSecretLen {
			return fmt.Errorf("API_TOKEN: must be %d to %d characters", minTokenLen, maxSecretLen)
		}
		for i := 0; i < len(tok); i++ {
			if tok[i] <= ' ' || tok[i] > '~' {
				return errors.New("API_TOKEN: must be printable ASCII without spaces")
			}
		}
	} else if !isLoopbackAddr(c.APIAddr) {
		return fmt.Errorf("API_TOKEN: required when API_ADDR (%s) is not a loopback address", c.APIAddr)
	}
	return nil
}

// isLoopbackAddr reports whether host:port addr listens on loopback only.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Ranges of the settings, where a bound is not a single use's.
const (
	minStreamBytes = 1 << 20 // a stream smaller than 1 MiB holds a handful of webhooks
	maxRateLimit   = 100_000
	maxAttempts    = 1000
	maxSecretLen   = 4096
	minTokenLen    = 16
)

// inRange checks that setting name's d lies in [lo, hi].
func inRange(name string, d, lo, hi time.Duration) error {
	if d < lo || d > hi {
		return fmt.Errorf("%s: %v is not between %v and %v", name, d, lo, hi)
	}
	return nil
}

// intInRange checks that setting name's n lies in [lo, hi].
func intInRange(name string, n, lo, hi int) error {
	if n < lo || n > hi {
		return fmt.Errorf("%s: %d is not between %d and %d", name, n, lo, hi)
	}
	return nil
}

// firstErr returns the first of errs that is not nil.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// checkHostPort checks that setting name is host:port with a port number.
func checkHostPort(name, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s: %q is not host:port", name, addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%s: %q: the port is not a number from 0 to 65535", name, addr)
	}
	return nil
}

// checkNATSURLs checks each of the comma-separated NATS URLs of setting name
// as nats.Connect reads them: nats://, tls://, ws:// or wss:// (nats:// when
// left out) and a host. Errors never repeat user information.
func checkNATSURLs(name, urls string) error {
	for _, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		if !strings.Contains(u, "://") {
			u = "nats://" + u
		}
		p, err := url.Parse(u)
		if err != nil {
			return fmt.Errorf("%s: a URL in the list cannot be parsed", name)
		}
		p.User = nil // a user, password or token
		switch {
		case p.Scheme != "nats" && p.Scheme != "tls" && p.Scheme != "ws" && p.Scheme != "wss":
			return fmt.Errorf("%s: %q: the scheme is not nats, tls, ws or wss", name, p)
		case p.Hostname() == "":
			return fmt.Errorf("%s: %q has no host", name, p)
		}
	}
	return nil
}

// checkSecret refuses what a copy and paste adds to a secret: white space
// around it and control characters (a newline would end an HTTP header). The
// error names the setting, never the value.
func checkSecret(name string, s secret) error {
	v := s.value()
	if strings.TrimSpace(v) != v {
		return fmt.Errorf("%s: has white space at its start or end", name)
	}
	if strings.IndexFunc(v, unicode.IsControl) >= 0 {
		return fmt.Errorf("%s: contains a control character", name)
	}
	if len(v) > maxSecretLen {
		return fmt.Errorf("%s: longer than %d bytes", name, maxSecretLen)
	}
	return nil
}

// checkToken checks WEBHOOK_TOKEN: a shared secret sent in a URL or a Bearer
// header, so printable ASCII without spaces, and long enough not to be guessed.
func checkToken(s secret) error {
	if err := checkSecret("WEBHOOK_TOKEN", s); err != nil {
		return err
	}
	v := s.value()
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return errors.New("WEBHOOK_TOKEN: only printable ASCII characters without spaces")
		}
	}
	if len(v) < minTokenLen {
		return fmt.Errorf("WEBHOOK_TOKEN: shorter than %d characters", minTokenLen)
	}
	return nil
}

// checkStreamBytes checks a stream's size setting: -1 for no limit, else at
// least minStreamBytes (0 would silently mean no limit to JetStream).
func checkStreamBytes(name string, n int64) error {
	if n != -1 && n < minStreamBytes {
		return fmt.Errorf("%s: %d is not -1 (no limit) or at least %d (1 MiB)", name, n, minStreamBytes)
	}
	return nil
}

// checkMaxAge checks a stream's age setting: 0 for no limit, else at least the
// duplicate window, which JetStream cannot hold longer than the messages.
func (c commonConfig) checkMaxAge(name string, d time.Duration) error {
	if d < 0 || (d > 0 && d < c.DupWindow) {
		return fmt.Errorf("%s: %v is not 0 (no limit) or at least STREAM_DUPLICATE_WINDOW (%v)", name, d, c.DupWindow)
	}
	return nil
}

func (c commonConfig) validate() error {
	if err := checkHostPort("HTTP_ADDR", c.HTTPAddr); err != nil {
		return err
	}
	if c.NATSURL != "" {
		if err := checkNATSURLs("NATS_URL", c.NATSURL); err != nil {
			return err
		}
	}
	if !streams.ValidPrefix(c.SubjectPrefix) {
		return fmt.Errorf("SUBJECT_PREFIX: %q is not one NATS token of [A-Za-z0-9_-]", c.SubjectPrefix)
	}
	return firstErr(
		intInRange("STREAM_REPLICAS", c.StreamReplicas, 1, 5),
		inRange("STREAM_DUPLICATE_WINDOW", c.DupWindow, time.Second, 168*time.Hour),
		c.checkMaxAge("WEBHOOKS_MAX_AGE", c.WebhooksMaxAge),
		checkStreamBytes("WEBHOOKS_MAX_BYTES", c.WebhooksMaxBytes),
		c.checkMaxAge("RESULTS_MAX_AGE", c.ResultsMaxAge),
		checkStreamBytes("RESULTS_MAX_BYTES", c.ResultsMaxBytes),
		c.checkMaxAge("DLQ_MAX_AGE", c.DLQMaxAge),
		checkStreamBytes("DLQ_MAX_BYTES", c.DLQMaxBytes),
		inRange("SESSIONS_MAX_AGE", c.SessionsMaxAge, time.Minute, 87600*time.Hour),
		inRange("SHUTDOWN_GRACE", c.ShutdownGrace, time.Second, time.Hour),
		intInRange("HTTP_MAX_CONNS", c.HTTPMaxConns, 1, 1<<20),
		c.Logging.validate(),
		c.NATSAuth.validate(),
	)
}

func (c commonConfig) limits() streams.Limits {
	return streams.Limits{
		Replicas:         c.StreamReplicas,
		Duplicates:       c.DupWindow,
		WebhooksMaxAge:   c.WebhooksMaxAge,
		WebhooksMaxBytes: c.WebhooksMaxBytes,
		ResultsMaxAge:    c.ResultsMaxAge,
		ResultsMaxBytes:  c.ResultsMaxBytes,
		DLQMaxAge:        c.DLQMaxAge,
		DLQMaxBytes:      c.DLQMaxBytes,
		SessionsMaxAge:   c.SessionsMaxAge,
	}
}

// maxSyncInterval is nats-server's own default sync interval: longer risks more.
const maxSyncInterval = 2 * time.Minute

func (c embeddedConfig) syncInterval() (time.Duration, error) {
	if c.EmbeddedSync == "always" {
		return 0, nil
	}
	d, err := time.ParseDuration(c.EmbeddedSync)
	if err != nil || d <= 0 || d > maxSyncInterval {
		return 0, fmt.Errorf("NATS_EMBEDDED_SYNC: %q is not 'always' or a duration from 1ns to %v", c.EmbeddedSync, maxSyncInterval)
	}
	return d, nil
}

func (c embeddedConfig) validate() error {
	if c.EmbeddedAddr != "-" {
		if err := checkHostPort("NATS_EMBEDDED_ADDR", c.EmbeddedAddr); err != nil {
			return err
		}
	}
	if c.DataDir == "" {
		return errors.New("DATA_DIR: must not be empty")
	}
	if (c.EmbeddedUser == "") != (c.EmbeddedPass == "") {
		return errors.New("NATS_EMBEDDED_USER and NATS_EMBEDDED_PASSWORD: set both or neither")
	}
	if strings.ContainsAny(c.EmbeddedUser, " \t\r\n") {
		return errors.New("NATS_EMBEDDED_USER: must not contain white space")
	}
	if c.EmbeddedGroupSync != "on" && c.EmbeddedGroupSync != "off" {
		return fmt.Errorf("NATS_EMBEDDED_GROUP_SYNC: %q is not on or off", c.EmbeddedGroupSync)
	}
	_, err := c.syncInterval()
	return err
}

// validateListen refuses an embedded server reachable from other machines
// without credentials the operator chose: generated ones live only in
// DATA_DIR, so nobody else could use the listener, and anybody who guessed
// wrong about its reach would expose the streams. It matters only when the
// embedded server runs (NATS_URL empty).
func (c embeddedConfig) validateListen() error {
	if c.EmbeddedAddr == "-" || c.EmbeddedUser != "" {
		return nil
	}
	host, _, _ := net.SplitHostPort(c.EmbeddedAddr)
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	where := host
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		where = "every interface"
	}
	return fmt.Errorf("NATS_EMBEDDED_ADDR: %q listens beyond this machine (%s); use a loopback address such as 127.0.0.1:4222, or set NATS_EMBEDDED_USER and NATS_EMBEDDED_PASSWORD", c.EmbeddedAddr, where)
}

// checkUse checks what the embedded server needs when it is used (NATS_URL
// empty): one server holds one replica, and DATA_DIR must take writes. It
// creates DATA_DIR if need be.
func (c embeddedConfig) checkUse(common commonConfig) error {
	if common.NATSURL != "" {
		return nil
	}
	if common.StreamReplicas != 1 {
		return fmt.Errorf("STREAM_REPLICAS: %d, but the embedded NATS server (NATS_URL empty) is one server: set 1, or NATS_URL to a cluster", common.StreamReplicas)
	}
	return checkWritableDir("DATA_DIR", c.DataDir)
}

// checkWritableDir creates dir if need be and proves that it takes writes by
// writing and removing a probe file, so that an unusable directory stops the
// start with the setting's name instead of failing deep inside a store.
func checkWritableDir(name, dir string) error {
	cause := func(err error) error {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("%s: cannot create %q: %v", name, dir, cause(err))
	}
	f, err := os.CreateTemp(dir, ".write-probe-*")
	if err != nil {
		return fmt.Errorf("%s: cannot write in %q: %v", name, dir, cause(err))
	}
	_, werr := f.Write([]byte("probe\n"))
	serr := f.Sync()
	cerr := f.Close()
	rerr := os.Remove(f.Name())
	if err := firstErr(werr, serr, cerr, rerr); err != nil {
		return fmt.Errorf("%s: cannot write in %q: %v", name, dir, cause(err))
	}
	return nil
}

func (c ingestConfig) validate(api apiConfig) error {
	switch c.WebhookAuth {
	case "api-key":
		if api.APIKey == "" && c.WebhookKeyHash == "" {
			return errors.New("VERIFEYE_API_KEY: required when WEBHOOK_AUTH=api-key (or set WEBHOOK_API_KEY_SHA256)")
		}
	case "token":
		if c.WebhookToken == "" {
			return errors.New("WEBHOOK_TOKEN: required when WEBHOOK_AUTH=token")
		}
	case "none":
	default:
		return fmt.Errorf("WEBHOOK_AUTH: %q is not api-key, token or none", c.WebhookAuth)
	}
	if c.WebhookToken != "" {
		if err := checkToken(c.WebhookToken); err != nil {
			return err
		}
	}
	// A malformed WEBHOOK_API_KEY_SHA256 must fail here, before NATS is touched.
	if _, err := webhookAuth(c, api); err != nil {
		return err
	}
	// Below the HTTP server's 10 s write timeout, so the 503 still gets out.
	if err := inRange("INGEST_PUBLISH_TIMEOUT", c.PublishTimeout, 10*time.Millisecond, 9*time.Second); err != nil {
		return err
	}
	if err := intInRange("INGEST_BATCH", c.Batch, 1, groupcommit.MaxBatch); err != nil {
		return err
	}
	_, err := parseCIDRs(c.TrustedProxies)
	return err
}

// trustedProxies returns HTTP_TRUSTED_PROXIES, checked by validate.
func (c ingestConfig) trustedProxies() []*net.IPNet {
	n, _ := parseCIDRs(c.TrustedProxies)
	return n
}

// parseCIDRs parses a comma-separated list of CIDRs; an empty list is none.
func parseCIDRs(s string) ([]*net.IPNet, error) {
	var out []*net.IPNet
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		_, n, err := net.ParseCIDR(f)
		if err != nil {
			return nil, fmt.Errorf("HTTP_TRUSTED_PROXIES: %q is not a CIDR such as 10.0.0.0/8", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func (c apiConfig) validate(requireKey bool) error {
	if requireKey && c.APIKey == "" {
		return errors.New("VERIFEYE_API_KEY: required to call Get Session Result")
	}
	if err := checkSecret("VERIFEYE_API_KEY", c.APIKey); err != nil {
		return err
	}
	if c.APIURL != "" {
		u, err := url.Parse(c.APIURL)
		if err != nil {
			return errors.New("VERIFEYE_API_URL: cannot be parsed as a URL")
		}
		shown := *u
		shown.User, shown.RawQuery, shown.Fragment = nil, "", ""
		switch {
		case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			return fmt.Errorf("VERIFEYE_API_URL: %q is not an absolute http or https URL", &shown)
		case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
			return fmt.Errorf("VERIFEYE_API_URL: %q must not have a query or fragment", &shown)
		}
	}
	if c.Region != "eu" && c.Region != "us" {
		return fmt.Errorf("VERIFEYE_REGION: %q is not eu or us", c.Region)
	}
	return inRange("VERIFEYE_API_TIMEOUT", c.APITimeout, 100*time.Millisecond, 5*time.Minute)
}

// checkURL refuses a VERIFEYE_API_URL that would send the API key in clear
// text over a network: http:// to a host other than loopback, unless
// VERIFEYE_API_INSECURE says it is a test rig. It also reports whether the key
// will travel in clear text, so the caller can warn.
func (c apiConfig) checkURL() (cleartext bool, err error) {
	if c.APIURL == "" {
		return false, nil // the region's https host
	}
	u, err := url.Parse(c.APIURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return false, errors.New("VERIFEYE_API_URL: not an absolute http or https URL")
	}
	if u.Scheme == "https" || isLoopbackHost(u.Hostname()) {
		return false, nil
	}
	if !c.Insecure {
		return false, fmt.Errorf("VERIFEYE_API_URL: http:// to %s would send the API key in clear text; use https (VERIFEYE_API_INSECURE=true allows it on a test rig)", u.Hostname())
	}
	return true, nil
}

// isLoopbackHost reports whether host names this machine: localhost, or an
// IPv4 or IPv6 loopback address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c enrichConfig) validate() error {
	if r := c.RateLimit; math.IsNaN(r) || (r != 0 && (r < 0.01 || r > maxRateLimit)) {
		return fmt.Errorf("VERIFEYE_RATE_LIMIT: %v is not 0 (no cap) or between 0.01 and %d", r, maxRateLimit)
	}
	if !streams.ValidToken(c.Consumer) {
		return fmt.Errorf("ENRICH_CONSUMER: %q is not a consumer name of [A-Za-z0-9_-], at most 64", c.Consumer)
	}
	return firstErr(
		intInRange("ENRICH_CONCURRENCY", c.Concurrency, 1, 1024),
		intInRange("ENRICH_MAX_ATTEMPTS", c.MaxAttempts, 1, maxAttempts),
		inRange("ENRICH_ACK_WAIT", c.AckWait, time.Second, time.Hour),
		inRange("ENRICH_BACKOFF_BASE", c.BackoffBase, time.Millisecond, 24*time.Hour),
		inRange("ENRICH_BACKOFF_MAX", c.BackoffMax, max(c.BackoffBase, time.Millisecond), 24*time.Hour),
		inRange("ENRICH_NOT_FOUND_DELAY", c.NotFoundDelay, time.Millisecond, 24*time.Hour),
		intInRange("ENRICH_NOT_FOUND_ATTEMPTS", c.NotFoundAttempts, 1, maxAttempts),
		inRange("ENRICH_AUTH_RETRY", c.AuthRetry, time.Millisecond, time.Hour),
		inRange("RECONCILE_AFTER", c.ReconcileAfter, time.Second, 24*time.Hour),
		inRange("RECONCILE_GIVE_UP", c.ReconcileGiveUp, c.ReconcileAfter, 87600*time.Hour),
	)
}

// process reads the environment into each of specs, naming the variable on error.
func process(specs ...any) error {
	for _, s := range specs {
		if err := envconfig.Process("", s); err != nil {
			var pe *envconfig.ParseError
			if errors.As(err, &pe) {
				return fmt.Errorf("%s: cannot parse %q as %s", pe.KeyName, pe.Value, pe.TypeName)
			}
			return err
		}
	}
	return nil
}

const usageFormat = `{{range .}}  {{usage_key .}}	{{usage_default .}}	{{usage_description .}}
{{end}}`

// printEnv writes the environment variables of specs as a table.
func printEnv(w io.Writer, specs ...any) {
	tw := tabwriter.NewWriter(w, 1, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "Environment (variable, default, meaning):")
	for _, s := range specs {
		_ = envconfig.Usagef("", s, tw, usageFormat)
	}
	tw.Flush()
}
