package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/rs/zerolog"

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
}

func (c NATSAuth) validate() error {
	if (c.NATSTLSCert == "") != (c.NATSTLSKey == "") {
		return fmt.Errorf("NATS_TLS_CERT and NATS_TLS_KEY: set both or neither")
	}
	return nil
}

// commonConfig is read by every subcommand that talks to NATS.
type commonConfig struct {
	HTTPAddr string `envconfig:"HTTP_ADDR" default:":8080" desc:"HTTP listen address (ingest, or the enricher's health and metrics)"`
	NATSURL  string `envconfig:"NATS_URL" desc:"NATS server URL(s), comma-separated; empty in serve/dev starts an embedded server"`
	NATSAuth
	SubjectPrefix  string        `envconfig:"SUBJECT_PREFIX" default:"verifeye" desc:"first token of every subject"`
	StreamReplicas int           `envconfig:"STREAM_REPLICAS" default:"1" desc:"JetStream replicas of the streams the bridge creates (1, 3 or 5)"`
	DupWindow      time.Duration `envconfig:"STREAM_DUPLICATE_WINDOW" default:"10m" desc:"de-duplication window of the webhooks and results streams"`
	WebhooksMaxAge time.Duration `envconfig:"WEBHOOKS_MAX_AGE" default:"168h" desc:"how long the webhooks stream keeps events"`
	WebhooksMaxB   int64         `envconfig:"WEBHOOKS_MAX_BYTES" default:"1073741824" desc:"size of the webhooks stream; when full, webhooks get 503"`
	ResultsMaxAge  time.Duration `envconfig:"RESULTS_MAX_AGE" default:"168h" desc:"how long the results stream keeps outcomes"`
	ResultsMaxB    int64         `envconfig:"RESULTS_MAX_BYTES" default:"1073741824" desc:"size of the results stream (oldest outcomes go first)"`
	DLQMaxAge      time.Duration `envconfig:"DLQ_MAX_AGE" default:"720h" desc:"how long the DLQ keeps dead-lettered events"`
	DLQMaxB        int64         `envconfig:"DLQ_MAX_BYTES" default:"268435456" desc:"size of the DLQ stream"`
	ShutdownGrace  time.Duration `envconfig:"SHUTDOWN_GRACE" default:"25s" desc:"how long SIGTERM waits for in-flight requests and enrichments"`
	LogLevel       string        `envconfig:"LOG_LEVEL" default:"info" desc:"trace, debug, info, warn or error"`
	LogFormat      string        `envconfig:"LOG_FORMAT" default:"json" desc:"json, or console for humans"`
}

// embeddedConfig is read by serve and dev.
type embeddedConfig struct {
	EmbeddedAddr string `envconfig:"NATS_EMBEDDED_ADDR" default:"127.0.0.1:4222" desc:"where the embedded NATS server listens (for watch and local consumers); '-' for nowhere"`
	DataDir      string `envconfig:"DATA_DIR" default:"./data" desc:"embedded JetStream storage directory (NATS_URL empty), else where the spool lives (DATA_DIR/spool)"`
	EmbeddedSync string `envconfig:"NATS_EMBEDDED_SYNC" default:"always" desc:"'always' fsyncs every event before it is acknowledged; a duration (e.g. 1s) syncs on that interval and risks that much on a power cut"`
}

// ingestConfig is read by serve, dev and ingest.
type ingestConfig struct {
	WebhookAuth    string        `envconfig:"WEBHOOK_AUTH" default:"api-key" desc:"api-key (X-API-Key must equal VERIFEYE_API_KEY or match WEBHOOK_API_KEY_SHA256), token, or none"`
	WebhookKeyHash string        `envconfig:"WEBHOOK_API_KEY_SHA256" desc:"hex SHA-256 of the API key, so an ingest-only replica need not hold the key; comma-separated to accept an old and a new key while rotating"`
	WebhookToken   secret        `envconfig:"WEBHOOK_TOKEN" desc:"token expected as ?token= or Authorization: Bearer when WEBHOOK_AUTH=token"`
	PublishTimeout time.Duration `envconfig:"INGEST_PUBLISH_TIMEOUT" default:"3s" desc:"longest wait for JetStream's acknowledgement before answering 503"`
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
	APIKey     secret        `envconfig:"VERIFEYE_API_KEY" desc:"account API key: used for Get Session Result and to check the webhook's X-API-Key"`
	APIURL     string        `envconfig:"VERIFEYE_API_URL" desc:"API base URL (default: the VERIFEYE_REGION host)"`
	Region     string        `envconfig:"VERIFEYE_REGION" default:"eu" desc:"eu or us: picks the default API host"`
	APITimeout time.Duration `envconfig:"VERIFEYE_API_TIMEOUT" default:"10s" desc:"timeout of one Get Session Result call"`
}

// enrichConfig is read by serve, dev and enrich.
type enrichConfig struct {
	Concurrency      int           `envconfig:"ENRICH_CONCURRENCY" default:"16" desc:"enricher workers (concurrent API calls)"`
	RateLimit        float64       `envconfig:"VERIFEYE_RATE_LIMIT" default:"50" desc:"API calls per second; 0 = no cap"`
	MaxAttempts      int           `envconfig:"ENRICH_MAX_ATTEMPTS" default:"10" desc:"attempts before an event goes to the DLQ"`
	Consumer         string        `envconfig:"ENRICH_CONSUMER" default:"enricher" desc:"durable consumer name shared by all enricher replicas"`
	AckWait          time.Duration `envconfig:"ENRICH_ACK_WAIT" default:"30s" desc:"how long an enrichment may run before JetStream redelivers it (extended while the API call runs)"`
	BackoffBase      time.Duration `envconfig:"ENRICH_BACKOFF_BASE" default:"1s" desc:"first retry delay after 429/5xx/timeout; doubles per attempt, with jitter"`
	BackoffMax       time.Duration `envconfig:"ENRICH_BACKOFF_MAX" default:"5m" desc:"longest retry delay"`
	NotFoundDelay    time.Duration `envconfig:"ENRICH_NOT_FOUND_DELAY" default:"15s" desc:"retry delay after a 404 (the result may lag)"`
	NotFoundAttempts int           `envconfig:"ENRICH_NOT_FOUND_ATTEMPTS" default:"5" desc:"404 answers before the event goes to the DLQ as not_found"`
	AuthRetry        time.Duration `envconfig:"ENRICH_AUTH_RETRY" default:"30s" desc:"while the API answers 401/403, how often to try again (consuming is paused)"`
}

func (c commonConfig) validate() error {
	if !streams.ValidPrefix(c.SubjectPrefix) {
		return fmt.Errorf("SUBJECT_PREFIX: %q is not one NATS token of [A-Za-z0-9_-]", c.SubjectPrefix)
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		return fmt.Errorf("STREAM_REPLICAS: %d is not between 1 and 5", c.StreamReplicas)
	}
	if _, err := zerolog.ParseLevel(c.LogLevel); err != nil || c.LogLevel == "" {
		return fmt.Errorf("LOG_LEVEL: %q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		return fmt.Errorf("LOG_FORMAT: %q is not json or console", c.LogFormat)
	}
	if c.DupWindow <= 0 {
		return fmt.Errorf("STREAM_DUPLICATE_WINDOW: must be positive")
	}
	if c.ShutdownGrace <= 0 {
		return fmt.Errorf("SHUTDOWN_GRACE: must be positive")
	}
	return c.NATSAuth.validate()
}

func (c commonConfig) limits() streams.Limits {
	return streams.Limits{
		Replicas:        c.StreamReplicas,
		Duplicates:      c.DupWindow,
		WebhooksMaxAge:  c.WebhooksMaxAge,
		WebhooksMaxSize: c.WebhooksMaxB,
		ResultsMaxAge:   c.ResultsMaxAge,
		ResultsMaxSize:  c.ResultsMaxB,
		DLQMaxAge:       c.DLQMaxAge,
		DLQMaxSize:      c.DLQMaxB,
	}
}

func (c embeddedConfig) syncInterval() (time.Duration, error) {
	if c.EmbeddedSync == "always" {
		return 0, nil
	}
	d, err := time.ParseDuration(c.EmbeddedSync)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("NATS_EMBEDDED_SYNC: %q is not 'always' or a positive duration", c.EmbeddedSync)
	}
	return d, nil
}

func (c embeddedConfig) validate() error {
	if c.EmbeddedAddr != "-" {
		if _, _, err := net.SplitHostPort(c.EmbeddedAddr); err != nil {
			return fmt.Errorf("NATS_EMBEDDED_ADDR: %q is not host:port", c.EmbeddedAddr)
		}
	}
	if c.DataDir == "" {
		return errors.New("DATA_DIR: must not be empty")
	}
	_, err := c.syncInterval()
	return err
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
	// A malformed WEBHOOK_API_KEY_SHA256 must fail here, before NATS is touched.
	if _, err := webhookAuth(c, api); err != nil {
		return err
	}
	if c.PublishTimeout <= 0 {
		return errors.New("INGEST_PUBLISH_TIMEOUT: must be positive")
	}
	return nil
}

func (c apiConfig) validate(requireKey bool) error {
	if requireKey && c.APIKey == "" {
		return errors.New("VERIFEYE_API_KEY: required to call Get Session Result")
	}
	if c.Region != "eu" && c.Region != "us" {
		return fmt.Errorf("VERIFEYE_REGION: %q is not eu or us", c.Region)
	}
	if c.APITimeout <= 0 {
		return errors.New("VERIFEYE_API_TIMEOUT: must be positive")
	}
	return nil
}

func (c enrichConfig) validate() error {
	switch {
	case c.Concurrency < 1 || c.Concurrency > 1024:
		return fmt.Errorf("ENRICH_CONCURRENCY: %d is not between 1 and 1024", c.Concurrency)
	case c.RateLimit < 0:
		return errors.New("VERIFEYE_RATE_LIMIT: must not be negative")
	case c.MaxAttempts < 1:
		return errors.New("ENRICH_MAX_ATTEMPTS: must be at least 1")
	case !streams.ValidPrefix(c.Consumer):
		return fmt.Errorf("ENRICH_CONSUMER: %q is not a valid consumer name", c.Consumer)
	case c.AckWait < time.Second:
		return errors.New("ENRICH_ACK_WAIT: must be at least 1s")
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return errors.New("ENRICH_BACKOFF_BASE/ENRICH_BACKOFF_MAX: want 0 < base <= max")
	case c.NotFoundDelay <= 0 || c.NotFoundAttempts < 1:
		return errors.New("ENRICH_NOT_FOUND_DELAY/ENRICH_NOT_FOUND_ATTEMPTS: must be positive")
	case c.AuthRetry <= 0:
		return errors.New("ENRICH_AUTH_RETRY: must be positive")
	}
	return nil
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
