package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/internal/loadgen"
)

// TestCeilingServesTheHandler proves the ceiling is the real handler with
// authentication on: generated webhooks with the key get 202, without it 401.
func TestCeilingServesTheHandler(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serveCeiling(ctx, ln, "ceiling-key", "info", io.Discard) }()
	p := &process{addr: addr, done: make(chan struct{})}
	if err := p.waitReady(ctx, 10*time.Second); err != nil {
		t.Fatalf("ceiling not ready: %v", err)
	}

	tests := []struct {
		name   string
		key    string
		status int
	}{
		{"right key", "ceiling-key", http.StatusAccepted},
		{"wrong key", "other-key", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		wh := loadgen.Webhooks{Host: addr, APIKey: tt.key}
		res, err := loadgen.Run(ctx, loadgen.Options{Addr: addr, Conns: 4, Duration: 100 * time.Millisecond, Request: wh.Append, WantStatus: tt.status})
		if err != nil {
			t.Fatalf("%s: loadgen.Run: %v", tt.name, err)
		}
		if res.OK == 0 || res.Failed() != 0 || res.Duplicates != 0 {
			t.Errorf("%s: %d answers %d, %d others (%v, %v), %d duplicates; want only %d", tt.name, res.OK, tt.status, res.Failed(), res.Status, res.FirstError, res.Duplicates, tt.status)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("serveCeiling after cancel = %v, want nil", err)
	}
}
