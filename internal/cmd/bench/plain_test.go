package main

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/internal/loadgen"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestPlainBridgeStoresEveryWebhook proves the baseline does the work it is
// compared on: every generated webhook answered 202 is one message on the
// contract's webhooks stream, and a webhook sent again is a duplicate.
func TestPlainBridgeStoresEveryWebhook(t *testing.T) {
	srv := natstest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- servePlain(ctx, ln, srv.URL(), io.Discard) }()
	p := &process{addr: addr, done: make(chan struct{})}
	if err := p.waitReady(ctx, 30*time.Second); err != nil {
		t.Fatalf("plain bridge not ready: %v", err)
	}

	wh := loadgen.Webhooks{Host: addr, Run: 7}
	res, err := loadgen.Run(ctx, loadgen.Options{Addr: addr, Conns: 4, Duration: 200 * time.Millisecond, Request: wh.Append})
	if err != nil {
		t.Fatalf("loadgen.Run: %v", err)
	}
	if res.OK == 0 || res.Failed() != 0 || res.Duplicates != 0 {
		t.Fatalf("%d answers 202, %d others (%v, %v), %d duplicates; want only new 202s", res.OK, res.Failed(), res.Status, res.FirstError, res.Duplicates)
	}
	if got := natstest.Count(t, srv.JetStream(), streams.Webhooks); got != res.OK {
		t.Errorf("%s holds %d messages after %d answers 202, want one each", streams.Webhooks, got, res.OK)
	}
	again, err := loadgen.Run(ctx, loadgen.Options{Addr: addr, Conns: 1, Duration: 50 * time.Millisecond, Request: wh.Append})
	if err != nil {
		t.Fatalf("loadgen.Run: %v", err)
	}
	if again.OK == 0 || again.Duplicates != again.OK {
		t.Errorf("the same webhooks again: %d answers 202, %d duplicates; want all duplicates", again.OK, again.Duplicates)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("servePlain after cancel = %v, want nil", err)
	}
}
