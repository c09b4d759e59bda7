package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

// startServe runs serve(cfg, deps) in-process on a loopback listener until t ends,
// then cancels it and requires a clean return. It loads cfg from the
// environment first when load is true. It returns the base URL once /readyz
// answers 200.
func startServe(t *testing.T, cfg serviceConfig, deps serviceDeps, load bool, log zerolog.Logger) string {
	t.Helper()
	if load {
		if err := cfg.load(); err != nil {
			t.Fatalf("%s: load() error = %v", cfg.name, err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, deps, ln, log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: serve() = %v, want nil after a clean shutdown", cfg.name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s: serve() did not return within 30 s of cancel", cfg.name)
		}
	})
	natstest.WaitFor(t, 60*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("%s: serve() returned early: %v", cfg.name, err)
		default:
		}
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("%s: GET /readyz = %d %s", cfg.name, resp.StatusCode, b)
		}
		return nil
	})
	return base
}
