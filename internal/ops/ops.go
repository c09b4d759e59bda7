// Package ops serves what every process of the bridge answers beside its own
// routes: GET /healthz (alive), GET /readyz (named checks) and GET /metrics
// (Prometheus, from an injected Gatherer). The command wires it beside the
// webhook handler of ingest and serve, and alone for the enricher.
package ops

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness check of /readyz. A failing Critical check makes
// /readyz answer 503; a failing non-critical one is only reported in the body.
// Func must be safe for concurrent use.
type Check struct {
	Name     string
	Critical bool
	Func     func(ctx context.Context) error
	// State, when set, is shown in /readyz's body under "state" and the
	// check's name (the spool's depth, oldest age, forwarding or not).
	State func(ctx context.Context) any
}

// Options say what the handler serves.
type Options struct {
	// Checks are run, in order, by GET /readyz.
	Checks []Check
	// Gatherer serves GET /metrics; nil serves an empty registry.
	Gatherer prometheus.Gatherer
	// Next serves every path other than the three of this package; nil
	// answers them 404 not_found.
	Next http.Handler
}

// ReadyTimeout bounds one GET /readyz: all checks together.
const ReadyTimeout = 2 * time.Second

// New returns the handler. Every error answer is a JSON object
// {"error","message"}, as the webhook routes answer theirs; HEAD gets the
// status without a body. The handler is safe for concurrent use.
func New(opts Options) http.Handler {
	if opts.Gatherer == nil {
		opts.Gatherer = prometheus.NewRegistry()
	}
	h := &handler{opts: opts, metrics: promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{})}
	return h
}

type handler struct {
	opts    Options
	metrics http.Handler
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var serve func(http.ResponseWriter, *http.Request)
	switch r.URL.Path {
	case "/healthz":
		serve = func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}
	case "/readyz":
		serve = h.readyz
	case "/metrics":
		serve = h.metrics.ServeHTTP
	default:
		if h.opts.Next != nil {
			h.opts.Next.ServeHTTP(w, r)
			return
		}
		Error(w, r, http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodGet:
		serve(w, r)
	case http.MethodOptions:
		w.Header().Set("Allow", "OPTIONS, GET")
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "OPTIONS, GET")
		Error(w, r, http.StatusMethodNotAllowed)
	}
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
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
	writeJSON(w, code, body)
}

// ErrorCode returns the contract's "error" value and message for an HTTP
// status answered without a more specific reason (no route, wrong method, …).
func ErrorCode(status int) (code, message string) {
	switch status {
	case http.StatusNotFound:
		return "not_found", "no such route"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed", "method not allowed on this route"
	case http.StatusInternalServerError:
		return "internal", "internal error"
	}
	text := http.StatusText(status)
	return strings.ReplaceAll(strings.ToLower(text), " ", "_"), text
}

// Error answers status with the JSON body {"error","message"} of ErrorCode;
// a HEAD request gets the status alone.
func Error(w http.ResponseWriter, r *http.Request, status int) {
	code, message := ErrorCode(status)
	WriteError(w, r, status, code, message)
}

// WriteError answers status with the JSON body {"error":code,"message":message};
// a HEAD request gets the status alone.
func WriteError(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	b, _ := json.Marshal(map[string]string{"error": code, "message": message})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeJSON writes v compact, with a trailing newline (json.Encoder's form).
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal","message":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
