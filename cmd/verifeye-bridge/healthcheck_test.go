package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHealthcheck runs the healthcheck subcommand (the image's HEALTHCHECK)
// against servers that are ready, not ready, and absent.
func TestHealthcheck(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"status":"ok"}`) })
	alive := httptest.NewServer(mux)
	defer alive.Close()
	_, port, _ := net.SplitHostPort(alive.Listener.Addr().String())
	closed := httptest.NewServer(mux)
	closedAddr := closed.Listener.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		name, addr string
		args       []string
		want       int
	}{
		{"alive, --path /healthz", alive.Listener.Addr().String(), []string{"--path", "/healthz"}, exitOK},
		{"alive, host left out", ":" + port, []string{"--path", "/healthz"}, exitOK},
		{"not ready", alive.Listener.Addr().String(), nil, exitFailure},
		{"nothing listening", closedAddr, nil, exitFailure},
		{"path without slash", alive.Listener.Addr().String(), []string{"--path", "healthz"}, exitUsage},
		{"HTTP_ADDR not host:port", "8080", nil, exitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HTTP_ADDR", tc.addr)
			var stdout, stderr bytes.Buffer
			got := run(context.Background(), append([]string{"healthcheck"}, tc.args...), &stdout, &stderr)
			if got != tc.want {
				t.Fatalf("HTTP_ADDR=%s healthcheck %v = %d, want %d (stdout %q, stderr %q)", tc.addr, tc.args, got, tc.want, stdout.String(), stderr.String())
			}
			out := stdout.String() + stderr.String()
			if strings.Count(out, "\n") != 1 {
				t.Errorf("healthcheck %v printed %q; want one line", tc.args, out)
			}
		})
	}
}

// TestLoopbackAddr checks which address the healthcheck and dev's banner use
// for a listen address.
func TestLoopbackAddr(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{":8080", "127.0.0.1:8080"},
		{"0.0.0.0:8080", "127.0.0.1:8080"},
		{"[::]:8080", "127.0.0.1:8080"},
		{"10.1.2.3:9000", "10.1.2.3:9000"},
		{"[::1]:8080", "[::1]:8080"},
		{"localhost:4222", "localhost:4222"},
	} {
		if got := loopbackAddr(tc.addr); got != tc.want {
			t.Errorf("loopbackAddr(%q) = %q; want %q", tc.addr, got, tc.want)
		}
	}
}
