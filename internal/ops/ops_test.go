package ops_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/ops"
)

// TestRoutes holds every answer of the composed handler, with and without the
// webhook routes beside it, to what the ingest and the enricher answered when
// one echo router served all routes: status, Allow, Content-Type and body.
func TestRoutes(t *testing.T) {
	tests := []struct {
		webhooks           bool
		method, path       string
		status             int
		allow, contentType string
		body               string
	}{
		{true, "GET", "/healthz", 200, "", "application/json", `{"status":"ok"}`},
		{true, "GET", "/readyz", 200, "", "application/json", `{"checks":{},"status":"ready"}`},
		{true, "GET", "/metrics", 200, "", "text/plain; version=0.0.4; charset=utf-8; escaping=underscores", `<metrics>`},
		{true, "GET", "/webhooks/verifeye", 405, "OPTIONS, POST", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "GET", "/webhooks/verifeye/x", 405, "OPTIONS, POST", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "GET", "/nope", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "GET", "/healthz/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "GET", "/webhooks/verifeye/a/b", 405, "OPTIONS, POST", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "GET", "/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "HEAD", "/healthz", 405, "OPTIONS, GET", "", ``},
		{true, "HEAD", "/readyz", 405, "OPTIONS, GET", "", ``},
		{true, "HEAD", "/metrics", 405, "OPTIONS, GET", "", ``},
		{true, "HEAD", "/webhooks/verifeye", 405, "OPTIONS, POST", "", ``},
		{true, "HEAD", "/webhooks/verifeye/x", 405, "OPTIONS, POST", "", ``},
		{true, "HEAD", "/nope", 404, "", "", ``},
		{true, "HEAD", "/healthz/", 404, "", "", ``},
		{true, "HEAD", "/webhooks/verifeye/a/b", 405, "OPTIONS, POST", "", ``},
		{true, "HEAD", "/", 404, "", "", ``},
		{true, "POST", "/healthz", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "POST", "/readyz", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "POST", "/metrics", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "POST", "/nope", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "POST", "/healthz/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "POST", "/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "PUT", "/healthz", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "PUT", "/readyz", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "PUT", "/metrics", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "PUT", "/webhooks/verifeye", 405, "OPTIONS, POST", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "PUT", "/webhooks/verifeye/x", 405, "OPTIONS, POST", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "PUT", "/nope", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "PUT", "/healthz/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "PUT", "/webhooks/verifeye/a/b", 405, "OPTIONS, POST", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{true, "PUT", "/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "OPTIONS", "/healthz", 204, "OPTIONS, GET", "", ``},
		{true, "OPTIONS", "/readyz", 204, "OPTIONS, GET", "", ``},
		{true, "OPTIONS", "/metrics", 204, "OPTIONS, GET", "", ``},
		{true, "OPTIONS", "/webhooks/verifeye", 204, "OPTIONS, POST", "", ``},
		{true, "OPTIONS", "/webhooks/verifeye/x", 204, "OPTIONS, POST", "", ``},
		{true, "OPTIONS", "/nope", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "OPTIONS", "/healthz/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{true, "OPTIONS", "/webhooks/verifeye/a/b", 204, "OPTIONS, POST", "", ``},
		{true, "OPTIONS", "/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "GET", "/healthz", 200, "", "application/json", `{"status":"ok"}`},
		{false, "GET", "/readyz", 200, "", "application/json", `{"checks":{},"status":"ready"}`},
		{false, "GET", "/metrics", 200, "", "text/plain; version=0.0.4; charset=utf-8; escaping=underscores", `<metrics>`},
		{false, "GET", "/webhooks/verifeye", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "GET", "/webhooks/verifeye/x", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "GET", "/nope", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "GET", "/healthz/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "GET", "/webhooks/verifeye/a/b", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "GET", "/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "HEAD", "/healthz", 405, "OPTIONS, GET", "", ``},
		{false, "HEAD", "/readyz", 405, "OPTIONS, GET", "", ``},
		{false, "HEAD", "/metrics", 405, "OPTIONS, GET", "", ``},
		{false, "HEAD", "/webhooks/verifeye", 404, "", "", ``},
		{false, "HEAD", "/webhooks/verifeye/x", 404, "", "", ``},
		{false, "HEAD", "/nope", 404, "", "", ``},
		{false, "HEAD", "/healthz/", 404, "", "", ``},
		{false, "HEAD", "/webhooks/verifeye/a/b", 404, "", "", ``},
		{false, "HEAD", "/", 404, "", "", ``},
		{false, "POST", "/healthz", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{false, "POST", "/readyz", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{false, "POST", "/metrics", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{false, "POST", "/webhooks/verifeye", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "POST", "/webhooks/verifeye/x", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "POST", "/nope", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "POST", "/healthz/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "POST", "/webhooks/verifeye/a/b", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "POST", "/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "PUT", "/healthz", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{false, "PUT", "/readyz", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{false, "PUT", "/metrics", 405, "OPTIONS, GET", "application/json", `{"error":"method_not_allowed","message":"method not allowed on this route"}`},
		{false, "PUT", "/webhooks/verifeye", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "PUT", "/webhooks/verifeye/x", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "PUT", "/nope", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "PUT", "/healthz/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "PUT", "/webhooks/verifeye/a/b", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "PUT", "/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "OPTIONS", "/healthz", 204, "OPTIONS, GET", "", ``},
		{false, "OPTIONS", "/readyz", 204, "OPTIONS, GET", "", ``},
		{false, "OPTIONS", "/metrics", 204, "OPTIONS, GET", "", ``},
		{false, "OPTIONS", "/webhooks/verifeye", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "OPTIONS", "/webhooks/verifeye/x", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "OPTIONS", "/nope", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "OPTIONS", "/healthz/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "OPTIONS", "/webhooks/verifeye/a/b", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
		{false, "OPTIONS", "/", 404, "", "application/json", `{"error":"not_found","message":"no such route"}`},
	}
	ingest := bridge.New(nil, zerolog.Nop(), bridge.Options{})
	for _, tc := range tests {
		opts := ops.Options{}
		if tc.webhooks {
			opts.Next = ingest
		}
		h := ops.New(opts)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		body, _ := io.ReadAll(rec.Body)
		got := strings.TrimSpace(string(body))
		if tc.body == "<metrics>" {
			if !strings.Contains(got, "# HELP") && got != "" {
				t.Errorf("webhooks=%v %s %s: body %q, want the Prometheus text format", tc.webhooks, tc.method, tc.path, got)
			}
			got = tc.body
		}
		ct := rec.Header().Get("Content-Type")
		if tc.body == "<metrics>" {
			ct = strings.SplitN(ct, ";", 2)[0]
			tc.contentType = strings.SplitN(tc.contentType, ";", 2)[0]
		}
		if rec.Code != tc.status || rec.Header().Get("Allow") != tc.allow || ct != tc.contentType || got != tc.body {
			t.Errorf("webhooks=%v %s %s = %d Allow %q Content-Type %q %s; want %d Allow %q Content-Type %q %s",
				tc.webhooks, tc.method, tc.path, rec.Code, rec.Header().Get("Allow"), ct, got, tc.status, tc.allow, tc.contentType, tc.body)
		}
	}
}

// TestReadyz: a failing critical check makes /readyz 503 and a failing
// non-critical one is only reported; each check is named with "ok" or its error.
func TestReadyz(t *testing.T) {
	ok := func(context.Context) error { return nil }
	bad := func(context.Context) error { return errors.New("down") }
	tests := []struct {
		checks     []ops.Check
		wantStatus int
		want       string
	}{
		{nil, http.StatusOK, `{"checks":{},"status":"ready"}`},
		{[]ops.Check{{Name: "a", Critical: true, Func: ok}, {Name: "b", Func: bad}}, http.StatusOK, `{"checks":{"a":"ok","b":"down"},"status":"ready"}`},
		{[]ops.Check{{Name: "a", Critical: true, Func: bad}, {Name: "b", Func: ok}}, http.StatusServiceUnavailable, `{"checks":{"a":"down","b":"ok"},"status":"unready"}`},
	}
	for _, tc := range tests {
		rec := httptest.NewRecorder()
		ops.New(ops.Options{Checks: tc.checks}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		if got := strings.TrimSpace(rec.Body.String()); rec.Code != tc.wantStatus || got != tc.want || !json.Valid([]byte(got)) {
			t.Errorf("GET /readyz with %d checks = %d %s, want %d %s", len(tc.checks), rec.Code, got, tc.wantStatus, tc.want)
		}
	}
}
