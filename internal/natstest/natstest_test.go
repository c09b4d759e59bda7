package natstest_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

// TestRestartKeepsPortAndStore checks that a server started on a port it
// picked itself comes back on that same port, with what it had stored.
func TestRestartKeepsPortAndStore(t *testing.T) {
	t.Parallel()
	s := natstest.Start(t)
	addr := s.Addr()
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
		t.Fatalf("Addr() = %q; want the port the server bound", addr)
	}
	js := s.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "t", []byte("kept")); err != nil {
		t.Fatal(err)
	}

	s.Restart()
	if got := s.Addr(); got != addr {
		t.Errorf("Addr() after Restart = %q; want %q", got, addr)
	}
	// A fresh connection to the remembered address finds the stored message.
	js2 := natstest.JetStreamAt(t, "nats://"+addr)
	natstest.WaitFor(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := js2.Stream(ctx, "T")
		return err
	})
	if n := natstest.Count(t, js2, "T"); n != 1 {
		t.Errorf("messages on T after Restart = %d; want 1", n)
	}
}
