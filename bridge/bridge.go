// Package bridge is the HTTP ingest: it decodes, validates and authenticates
// VerifEye webhooks and publishes each to JetStream, answering 202 only once
// JetStream has acknowledged the event (DESIGN.md guarantee 1). Echo stays inside
// this package; callers get an http.Handler.
package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"

	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/internal/tracing"
)

// Publisher publishes a message to JetStream and waits for its acknowledgement.
// jetstream.JetStream implements it.
type Publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// Check is one readiness check of /readyz. A failing Critical check makes
// /readyz answer 503; a failing non-critical one is only reported in the body.
type Check struct {
	Name     string
	Critical bool
	Func     func(ctx context.Context) error
	// State, when set, is shown in /readyz's body under "state" and the
	// check's name (the spool's depth, oldest age, forwarding or not).
	State func(ctx context.Context) any
}

// Options tune the ingest. The zero value works, but for Auth: the zero Auth
// rejects every webhook.
type Options struct {
	// Auth checks each webhook's credentials.
	Auth Auth
	// Subjects names the subjects; the zero value means prefix "verifeye".
	Subjects streams.Subjects
	// PublishTimeout bounds the wait for JetStream's acknowledgement, after which
	// the answer is 503 so that VerifEye's one retry still has a chance. 3 s by default.
	PublishTimeout time.Duration
	// Checks are run by GET /readyz.
	Checks []Check
	// Registerer receives the ingest's Prometheus collectors and Gatherer serves
	// GET /metrics; both default to a new registry.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// DisableWebhooks leaves out the webhook routes (the enricher's own server).
	DisableWebhooks bool
	// Tracing records a span per webhook; nil records none. Either way the
	// webhook message carries a traceparent: the request's trace continued, or
	// a new one.
	Tracing *tracing.Tracing
}

// New returns the ingest handler: POST /webhooks/verifeye[/{source}], GET
// /healthz, /readyz and /metrics. Every error answer is a JSON object
// {"error","message"}. pub is used concurrently.
func New(pub Publisher, log zerolog.Logger, opts Options) http.Handler {
	if opts.Subjects == (streams.Subjects{}) {
		opts.Subjects, _ = streams.NewSubjects("verifeye")
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = 3 * time.Second
	}
	if opts.Registerer == nil {
		reg := prometheus.NewRegistry()
		opts.Registerer, opts.Gatherer = reg, reg
	}
	if opts.Gatherer == nil {
		opts.Gatherer = prometheus.DefaultGatherer
	}
	h := &handler{pub: pub, log: log, opts: opts}

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = h.httpError
	if !opts.DisableWebhooks {
		h.metrics = newMetrics(opts.Registerer)
		e.POST("/webhooks/verifeye", h.webhook)
		e.POST("/webhooks/verifeye/:source", h.webhook)
	}
	e.GET("/healthz", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
	})
	e.GET("/readyz", h.readyz)
	metricsHandler := promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{})
	e.GET("/metrics", echo.WrapHandler(metricsHandler))
	return e
}

type handler struct {
	pub     Publisher
	log     zerolog.Logger
	opts    Options
	metrics *metrics
}

// apiError is an answer other than 202. It is turned into the JSON error body in
// exactly one place, httpError.
type apiError struct {
	status  int
	code    string
	message string
	cause   error // for the log line, never for the answer
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

// Unwrap returns the cause, so the log line says why (stream full, timeout, …).
func (e *apiError) Unwrap() error { return e.cause }

func (h *handler) webhook(c echo.Context) error {
	start := time.Now()
	r := c.Request()
	source := c.Param("source")
	if source == "" {
		source = streams.DefaultSource
	}
	ctx, span := h.opts.Tracing.StartServer(r.Context(), "POST /webhooks/verifeye", r.Header)
	var w Webhook
	dup, spooled, err := h.ingest(ctx, r, source, &w)
	status := http.StatusAccepted
	result := "accepted"
	if dup {
		result = "duplicate"
	}
	var ae *apiError
	if errors.As(err, &ae) {
		status, result = ae.status, ae.code
	}
	if !streams.ValidSource(source) {
		source = ""
	}
	h.metrics.webhooks.WithLabelValues(source, w.Event, result).Inc()
	h.metrics.duration.WithLabelValues(strconv.Itoa(status)).Observe(time.Since(start).Seconds())

	ev := h.log.Info()
	if status >= 500 {
		ev = h.log.Error().AnErr("cause", errors.Unwrap(err))
	} else if err != nil {
		ev = h.log.Warn().Str("reason", ae.message)
	}
	// Never the query string or headers: they may carry the token or the API key.
	ev.Str("source", source).Str("event", w.Event).Str("session_id", w.SessionID).
		Int("status", status).Str("result", result).Float64("duration_ms", float64(time.Since(start).Microseconds())/1000).
		Bool("spooled", spooled).Str("remote", c.RealIP()).Str("trace_id", tracing.TraceID(ctx)).Msg("webhook")
	if span.IsRecording() {
		span.SetAttributes(attribute.String("verifeye.source", source), attribute.String("verifeye.event", w.Event),
			attribute.String("verifeye.session_id", w.SessionID), attribute.Int("http.response.status_code", status))
	}
	if status >= 500 { // a 4xx is the client's fault, not the span's
		tracing.End(span, err)
	} else {
		span.End()
	}

	if err != nil {
		return err
	}
	return c.JSONBlob(status, appendAccepted(make([]byte, 0, 96), w.SessionID, dup, spooled))
}

// appendAccepted appends the 202 body {"status":"accepted",
// "verificationSessionId":…[,"duplicate":true][,"spooled":true]}, byte for byte what c.JSON
// would write (with json.Encoder's trailing newline), without reflection: the
// 202 body was the costliest step of the handler after parsing
// and publishing (CPU profile, docs/performance.md). A session ID is validated
// hex and dashes, so nothing in it needs escaping.
func appendAccepted(b []byte, sessionID string, duplicate, spooled bool) []byte {
	b = append(b, `{"status":"accepted","verificationSessionId":"`...)
	b = append(b, sessionID...)
	b = append(b, '"')
	if duplicate {
		b = append(b, `,"duplicate":true`...)
	}
	if spooled {
		b = append(b, `,"spooled":true`...)
	}
	return append(b, "}\n"...)
}

// ingest validates r and publishes it; it reports whether JetStream already had
// the event, and whether it went to the local spool (a PubAck of
// streams.Spool) rather than the cluster. w is filled as far as the request
// could be read.
func (h *handler) ingest(ctx context.Context, r *http.Request, source string, w *Webhook) (duplicate, spooled bool, err error) {
	if !streams.ValidSource(source) {
		return false, false, &apiError{http.StatusBadRequest, "invalid_source", "source must match [a-z0-9_-]{1,64}", nil}
	}
	if !h.opts.Auth.check(r) {
		return false, false, &apiError{http.StatusUnauthorized, "unauthorized", "missing or invalid credentials", nil}
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		return false, false, &apiError{http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type must be application/json", nil}
	}
	if r.ContentLength > streams.MaxWebhookBytes {
		return false, false, tooLarge()
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, streams.MaxWebhookBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return false, false, tooLarge()
		}
		return false, false, &apiError{http.StatusBadRequest, "invalid_body", "could not read the request body", nil}
	}
	*w, err = ParseWebhook(body)
	if err != nil {
		var ve *ValidationError
		errors.As(err, &ve)
		return false, false, &apiError{http.StatusBadRequest, ve.Code, ve.Message, nil}
	}

	msg := nats.NewMsg(h.opts.Subjects.Webhook(source, w.Event))
	msg.Data = body
	// The message ID also as a header: a spooling Publisher keeps it for the
	// forward, since it cannot read opts.
	msg.Header.Set(streams.HeaderMsgID, w.MsgID())
	msg.Header.Set(streams.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	tracing.Inject(ctx, msg.Header)
	ctx, cancel := context.WithTimeout(ctx, h.opts.PublishTimeout)
	defer cancel()
	start := time.Now()
	ack, err := h.pub.PublishMsg(ctx, msg, jetstream.WithMsgID(w.MsgID()), jetstream.WithExpectStream(streams.Webhooks))
	if err != nil {
		// Never a 2xx and never a 429: VerifEye retries once, and a 503 keeps
		// that retry useful.
		return false, false, &apiError{http.StatusServiceUnavailable, "unavailable", "the event could not be stored durably; retry later", err}
	}
	h.metrics.publish.Observe(time.Since(start).Seconds())
	return ack.Duplicate, ack.Stream == streams.Spool, nil
}

func tooLarge() error {
	return &apiError{http.StatusRequestEntityTooLarge, "payload_too_large", "request body exceeds 64 KiB", nil}
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

func (h *handler) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	status, code := "ready", http.StatusOK
	checks := make(map[string]string, len(h.opts.Checks))
	state := map[string]any{}
	for _, ch := range h.opts.Checks {
		if ch.State != nil {
			state[ch.Name] = ch.State(ctx)
		}
		if err := ch.Func(ctx); err != nil {
			checks[ch.Name] = err.Error()
			if ch.Critical {
				status, code = "unready", http.StatusServiceUnavailable
			}
			continue
		}
		checks[ch.Name] = "ok"
	}
	body := map[string]any{"status": status, "checks": checks}
	if len(state) > 0 {
		body["state"] = state
	}
	return c.JSON(code, body)
}

// httpError is the one place errors become answers.
func (h *handler) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{http.StatusInternalServerError, "internal", "internal error", nil}
		var he *echo.HTTPError
		if errors.As(err, &he) {
			ae.status = he.Code
			switch he.Code {
			case http.StatusNotFound:
				ae.code, ae.message = "not_found", "no such route"
			case http.StatusMethodNotAllowed:
				ae.code, ae.message = "method_not_allowed", "method not allowed on this route"
			default:
				ae.code = strings.ReplaceAll(strings.ToLower(http.StatusText(he.Code)), " ", "_")
				ae.message = http.StatusText(he.Code)
			}
		}
	}
	body, _ := json.Marshal(map[string]string{"error": ae.code, "message": ae.message})
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(ae.status)
		return
	}
	_ = c.JSONBlob(ae.status, body)
}
