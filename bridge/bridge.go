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
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"

	"github.com/realeyes/verifeye-bridge/internal/ops"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/internal/tracing"
)

// Publisher publishes a message to JetStream and waits for its acknowledgement.
// jetstream.JetStream implements it.
type Publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
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
	// Registerer receives the ingest's Prometheus collectors; nil means a new
	// registry nobody reads.
	Registerer prometheus.Registerer
	// Tracing records a span per webhook; nil records none. Either way the
	// webhook message carries a traceparent: the request's trace continued, or
	// a new one.
	Tracing *tracing.Tracing
	// TrustedProxies are the peers whose X-Forwarded-For or X-Real-IP is
	// believed for the remote address in log lines; empty believes none and
	// logs the peer address.
	TrustedProxies []*net.IPNet
	// Probe reports whether the webhooks stream has room again after JetStream
	// refused to store a webhook; Ready calls it while storage is refusing. Nil
	// leaves only a stored webhook to end the refusal.
	Probe func(ctx context.Context) error
	// ProbeSeesFailedWrites says Probe also reports a server whose write
	// failed for want of disk space until it stores again (the embedded
	// server, which the bridge restarts once there is room). Without it, such
	// a refusal (publishes never answered, no room) ends only when a webhook
	// is stored again: nats-server keeps that stream failed until it restarts,
	// so room alone proves nothing.
	ProbeSeesFailedWrites bool
}

// Handler is the ingest: POST /webhooks/verifeye[/{source}]. Every other
// route is answered 404 or 405 with a JSON error body. It is safe for
// concurrent use.
type Handler struct {
	http.Handler
	h *handler
}

// New returns the ingest handler. Every error answer is a JSON object
// {"error","message"}. pub is used concurrently. Health, readiness and
// metrics are served beside it (see internal/ops), not by it.
func New(pub Publisher, log zerolog.Logger, opts Options) *Handler {
	if opts.Subjects == (streams.Subjects{}) {
		opts.Subjects, _ = streams.NewSubjects("verifeye")
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = 3 * time.Second
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	h := &handler{pub: pub, log: log, opts: opts, metrics: newMetrics(opts.Registerer),
		expectStream: jetstream.WithExpectStream(streams.Webhooks)}

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = h.httpError
	e.IPExtractor = remoteIP(opts.TrustedProxies)
	e.POST("/webhooks/verifeye", h.webhook)
	e.POST("/webhooks/verifeye/:source", h.webhook)
	return &Handler{Handler: e, h: h}
}

// Ready reports whether JetStream is storing webhooks: an error from the time
// it refused one (stream full, storage failed, resources exhausted) until a
// webhook is stored again or the Probe finds room. It is the readiness check
// "storage" and safe for concurrent use.
func (h *Handler) Ready(ctx context.Context) error {
	return h.h.storageReady(ctx)
}

// remoteIP returns the echo.IPExtractor for the remote address of log lines:
// the peer's address, or what a trusted proxy says it forwarded for.
func remoteIP(trusted []*net.IPNet) echo.IPExtractor {
	direct := echo.ExtractIPDirect()
	if len(trusted) == 0 {
		return direct
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, n := range trusted {
		opts = append(opts, echo.TrustIPRange(n))
	}
	xff, realIP := echo.ExtractIPFromXFFHeader(opts...), echo.ExtractIPFromRealIPHeader(opts...)
	return func(r *http.Request) string {
		if r.Header.Get(echo.HeaderXForwardedFor) != "" {
			return xff(r)
		}
		return realIP(r)
	}
}

type handler struct {
	pub     Publisher
	log     zerolog.Logger
	opts    Options
	metrics *metrics

	refusing atomic.Pointer[string] // why JetStream refused the last webhook; nil while it stores them

	expectStream jetstream.PublishOpt // WithExpectStream(streams.Webhooks), built once
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

// asAPIError maps any error to its answer: an *apiError as it is, anything
// else 500 internal (so that no error is ever left without an answer).
func asAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	code, message := ops.ErrorCode(http.StatusInternalServerError)
	return &apiError{http.StatusInternalServerError, code, message, err}
}

func (h *handler) webhook(c echo.Context) error {
	start := time.Now()
	r := c.Request()
	source := c.Param("source")
	if source == "" {
		source = streams.DefaultSource
	}
	ctx, span := h.opts.Tracing.StartServer(r.Context(), "POST /webhooks/verifeye", r.Header)
	var w streams.Webhook
	dup, spooled, err := h.ingest(ctx, r, source, &w)
	status := http.StatusAccepted
	result := resultAccepted
	if dup {
		result = resultDuplicate
	}
	var ae *apiError
	if err != nil {
		ae = asAPIError(err)
		status, result = ae.status, ae.code
	}
	if !streams.ValidSource(source) {
		source = ""
	}
	h.metrics.count(sourceLabel(source, ae), eventLabel(w.Event), result)
	h.metrics.observeDuration(status, time.Since(start))

	ev := h.log.Info()
	if status >= 500 {
		ev = h.log.Error().AnErr("cause", errors.Unwrap(ae))
	} else if ae != nil {
		ev = h.log.Warn().Str("reason", ae.message)
	}
	var traceID [16]byte // hex in the line, as tracing.TraceID writes it, without a string
	// Never the query string or headers: they may carry the token or the API key.
	ev.Str("source", source).Str("event", w.Event).Str("session_id", w.SessionID).
		Int("status", status).Str("result", result).Float64("duration_ms", float64(time.Since(start).Microseconds())/1000).
		Bool("spooled", spooled).Str("remote", c.RealIP()).Hex("trace_id", tracing.AppendTraceID(ctx, traceID[:0])).Msg("webhook")
	if span.IsRecording() {
		span.SetAttributes(attribute.String("verifeye.source", source), attribute.String("verifeye.event", w.Event),
			attribute.String("verifeye.session_id", w.SessionID), attribute.Int("http.response.status_code", status))
	}
	if status >= 500 { // a 4xx is the client's fault, not the span's
		tracing.End(span, err)
	} else {
		span.End()
	}

	if ae != nil {
		return ae
	}
	// The Content-Type echo would set, set without Header.Set's allocation.
	c.Response().Header()[echo.HeaderContentType] = jsonContentType
	return c.JSONBlob(status, appendAccepted(make([]byte, 0, 96), w.SessionID, dup, spooled))
}

// sourceLabel is the source label of a request: only a source that passed
// authentication may become a series; every request refused before (bad
// source, bad credentials) shares the label "", so that no stranger can grow
// the metrics without bound.
func sourceLabel(source string, ae *apiError) string {
	if ae != nil && (ae.code == codeInvalidSource || ae.code == codeUnauthorized) {
		return ""
	}
	return source
}

// eventLabel bounds the event label: the events the bridge knows by name, any
// other "other", and "" when the body had none.
func eventLabel(event string) string {
	switch event {
	case "", streams.EventCompleted:
		return event
	}
	return "other"
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
func (h *handler) ingest(ctx context.Context, r *http.Request, source string, w *streams.Webhook) (duplicate, spooled bool, err error) {
	if !streams.ValidSource(source) {
		return false, false, &apiError{http.StatusBadRequest, codeInvalidSource, "source must match [a-z0-9_-]{1,64}", nil}
	}
	if !h.opts.Auth.check(r) {
		return false, false, &apiError{http.StatusUnauthorized, codeUnauthorized, "missing or invalid credentials", nil}
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		return false, false, &apiError{http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type must be application/json", nil}
	}
	if r.ContentLength > streams.MaxWebhookBytes {
		return false, false, tooLarge()
	}
	body, err := readBody(r)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return false, false, tooLarge()
		}
		return false, false, &apiError{http.StatusBadRequest, "invalid_body", "could not read the request body", nil}
	}
	*w, err = streams.ParseWebhook(body)
	if err != nil {
		var ve *streams.ValidationError
		errors.As(err, &ve)
		return false, false, &apiError{http.StatusBadRequest, ve.Code, ve.Message, nil}
	}

	// The message ID as a header, not a publish option: JetStream reads it
	// from there either way, and a spooling Publisher keeps it for the
	// forward, since it cannot read opts. The header map and values are
	// built directly (the keys are canonical already), in two allocations
	// instead of one per header.
	var at [len(time.RFC3339Nano) + 8]byte
	vals := []string{w.MsgID(), string(time.Now().UTC().AppendFormat(at[:0], time.RFC3339Nano))}
	hdr := make(nats.Header, 6) // these two, traceparent, tracestate, JetStream's expectation
	hdr[streams.HeaderMsgID] = vals[0:1:1]
	hdr[streams.HeaderReceivedAt] = vals[1:2:2]
	msg := &nats.Msg{Subject: h.opts.Subjects.Webhook(source, w.Event), Data: body, Header: hdr}
	tracing.Inject(ctx, msg.Header)
	capTracestate(msg.Header)
	ctx, cancel := context.WithTimeout(ctx, h.opts.PublishTimeout)
	defer cancel()
	start := time.Now()
	ack, err := h.pub.PublishMsg(ctx, msg, h.expectStream)
	if err != nil {
		if why := storageRefusal(err); why != "" {
			h.setRefusing(why)
		} else if errors.Is(h.probe(ctx), streams.ErrNoRoom) {
			// No answer at all, as when the disk under the server is full:
			// the probe tells whether storage is what failed.
			h.setRefusing(refusedNoRoom)
		}
		// Never a 2xx and never a 429: VerifEye retries once, and a 503 keeps
		// that retry useful.
		return false, false, &apiError{http.StatusServiceUnavailable, "unavailable", "the event could not be stored durably; retry later", err}
	}
	h.storing()
	h.metrics.publish.Observe(time.Since(start).Seconds())
	return ack.Duplicate, ack.Stream == streams.Spool, nil
}

// jsonContentType is the Content-Type header value of a 202, shared by all
// answers: nothing changes a header value in place.
var jsonContentType = []string{echo.MIMEApplicationJSON}

// The results of webhooks_total for stored webhooks.
const (
	resultAccepted  = "accepted"
	resultDuplicate = "duplicate"
)

// The codes of the answers given before a request is authenticated.
const (
	codeInvalidSource = "invalid_source"
	codeUnauthorized  = "unauthorized"
)

// readBody reads r's body, at most streams.MaxWebhookBytes (a longer one is
// an *http.MaxBytesError). With a Content-Length, which the caller checked
// against the limit, it reads into a buffer of exactly that size instead of
// growing one from 512 bytes, as io.ReadAll does.
func readBody(r *http.Request) ([]byte, error) {
	if n := r.ContentLength; n > 0 && n <= streams.MaxWebhookBytes {
		body := make([]byte, n+1)
		if _, err := io.ReadFull(r.Body, body[:n]); err != nil {
			return nil, err
		}
		// net/http's body ends at Content-Length; a body that does not
		// (a handler called directly) is refused, never cut short.
		if k, _ := r.Body.Read(body[n:]); k > 0 {
			return nil, errors.New("bridge: body longer than its Content-Length")
		}
		return body[:n], nil
	}
	return io.ReadAll(http.MaxBytesReader(nil, r.Body, streams.MaxWebhookBytes))
}

func tooLarge() error {
	return &apiError{http.StatusRequestEntityTooLarge, "payload_too_large", "request body exceeds 64 KiB", nil}
}

func isJSON(contentType string) bool {
	if contentType == "application/json" { // what VerifEye sends: no need to parse it
		return true
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

// httpError is the one place errors become answers.
func (h *handler) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	ae := asAPIError(err)
	var he *echo.HTTPError
	if errors.As(err, &he) {
		ae.status = he.Code
		ae.code, ae.message = ops.ErrorCode(he.Code)
	}
	body, _ := json.Marshal(map[string]string{"error": ae.code, "message": ae.message})
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(ae.status)
		return
	}
	_ = c.JSONBlob(ae.status, body)
}
