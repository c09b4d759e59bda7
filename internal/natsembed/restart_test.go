package natsembed_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

// TestRestartableRestart: after Restart, a client connected in-process
// reconnects by itself to the new server, a client over TCP finds it on the
// same port (the server took a random one at first), and what was stored
// before is still there.
func TestRestartableRestart(t *testing.T) {
	r, err := natsembed.StartRestartable(natsembed.Options{StoreDir: t.TempDir(), User: "bridge", Password: "secret-0123456789", GeneratedPassword: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Shutdown)
	addr := r.Server().Addr().String()
	inproc, err := nats.Connect("", nats.InProcessServer(r), nats.UserInfo("bridge", "secret-0123456789"),
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inproc.Close)
	js, err := jetstream.New(inproc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s.before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	first := r.Server()
	if err := r.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if r.Server() == first || first.Running() || !r.Server().Running() {
		t.Fatal("Restart did not replace the server with a running one")
	}
	if got := r.Server().Addr().String(); got != addr {
		t.Errorf("after Restart the server listens on %s, want %s (the port it first took)", got, addr)
	}
	natstest.WaitFor(t, 10*time.Second, func() error {
		if _, err := js.Publish(ctx, "s.after", []byte("2")); err != nil {
			return fmt.Errorf("publish in-process after Restart: %w", err)
		}
		return nil
	})
	tcp, err := nats.Connect("nats://"+addr, nats.UserInfo("bridge", "secret-0123456789"))
	if err != nil {
		t.Fatalf("connect over TCP after Restart: %v", err)
	}
	defer tcp.Close()
	tjs, _ := jetstream.New(tcp)
	st, err := tjs.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 2 {
		t.Errorf("stream holds %d messages after Restart, want 2", n)
	}

	r.Shutdown()
	if err := r.Restart(); err == nil {
		t.Error("Restart after Shutdown: nil, want an error")
	}
	if _, err := r.InProcessConn(); err == nil {
		t.Error("InProcessConn after Shutdown: a connection, want an error")
	}
}
