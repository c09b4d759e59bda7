package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

// TestServeHTTPMaxConns: with HTTP_MAX_CONNS connections held open, another
// connection waits to be accepted instead of costing memory and file
// descriptors; once they close, the service answers it.
func TestServeHTTPMaxConns(t *testing.T) {
	ns := natstest.Start(t)
	for k, v := range map[string]string{
		"NATS_URL":          ns.URL(),
		"VERIFEYE_API_KEY":  "http-max-conns-test-key",
		"HTTP_MAX_CONNS":    "2",
		"SHUTDOWN_GRACE":    "10s",
		"OTEL_SDK_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}
	cfg := serviceConfig{name: "ingest", ingest: &ingestConfig{}, api: &apiConfig{}}
	base := startServe(t, cfg, serviceDeps{}, true, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	http.DefaultClient.CloseIdleConnections() // startServe's keep-alive would hold a slot
	addr := strings.TrimPrefix(base, "http://")

	// Two keep-alive connections, each served once and then held open.
	var held []net.Conn
	for i := range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("held connection %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("held connection %d: GET /healthz = %d", i, resp.StatusCode)
		}
	}

	quick := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := quick.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("GET /healthz on a third connection = %d while HTTP_MAX_CONNS=2 are held, want it to wait", resp.StatusCode)
	}
	for _, c := range held {
		c.Close()
	}
	natstest.WaitFor(t, 10*time.Second, func() error {
		resp, err := quick.Get(base + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /healthz = %d", resp.StatusCode)
		}
		return nil
	})
}

// TestHTTPErrorLogIsJSON: the HTTP server's own error lines (accept errors,
// panics) are zerolog lines like every other, not plain text in the JSON log.
func TestHTTPErrorLogIsJSON(t *testing.T) {
	var buf bytes.Buffer
	srv := newHTTPServer(http.NotFoundHandler(), zerolog.New(&buf))
	srv.ErrorLog.Printf("http: Accept error: %v; retrying in %v", errors.New("accept4: too many open files"), 5*time.Millisecond)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var got struct{ Level, Component, Message string }
	if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &got) != nil {
		t.Fatalf("ErrorLog wrote %q, want one JSON line", buf.String())
	}
	if got.Level != "warn" || got.Component != "http" || got.Message != "http: Accept error: accept4: too many open files; retrying in 5ms" {
		t.Errorf("ErrorLog line %+v, want level warn, component http and the text as message", got)
	}
}
