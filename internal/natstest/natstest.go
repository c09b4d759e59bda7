// Package natstest starts real, embedded JetStream servers for tests: one per test,
// on a random loopback port, storing under t.TempDir(), with Restart on the same
// port and store to prove that nothing acknowledged is lost.
package natstest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
)

// Server is a running test server. Its methods are safe for concurrent use.
type Server struct {
	t    testing.TB
	opts natsembed.Options

	mu sync.Mutex
	ns *server.Server
}

// Start starts a JetStream server for t and shuts it down when t ends. The store
// is synced on an interval (not every write) to keep tests fast; tests of the
// sync-always default start their own server with natsembed.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, natsembed.Options{StoreDir: t.TempDir(), SyncInterval: time.Minute})
}

// StartWith starts a server with opts and shuts it down when t ends. An empty
// Addr, or port 0, lets the server pick a free loopback port as it binds (no
// other test can take it in between); Addr then reports that port, and
// Restart binds it again.
func StartWith(t testing.TB, opts natsembed.Options) *Server {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	ns, err := natsembed.Start(opts)
	if err != nil {
		t.Fatalf("natstest: start: %v", err)
	}
	if opts.Addr != "-" {
		addr, ok := ns.Addr().(*net.TCPAddr)
		if !ok {
			natsembed.Shutdown(ns)
			t.Fatalf("natstest: start: the server listens on %v, not TCP", ns.Addr())
		}
		opts.Addr = addr.String()
	}
	s := &Server{t: t, opts: opts, ns: ns}
	t.Cleanup(s.Shutdown)
	return s
}

// URL returns the client URL of the server.
func (s *Server) URL() string { return "nats://" + s.opts.Addr }

// Addr returns the host:port the server listens on.
func (s *Server) Addr() string { return s.opts.Addr }

// StoreDir returns the server's JetStream store directory.
func (s *Server) StoreDir() string { return s.opts.StoreDir }

// Server returns the running nats-server (nil while shut down).
func (s *Server) Server() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ns
}

// Shutdown stops the server and waits for it; it may be called more than once.
func (s *Server) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ns != nil {
		natsembed.Shutdown(s.ns)
		s.ns = nil
	}
}

// Restart starts the server again on the same port with the same store. It
// retries for a while because the port may linger after Shutdown.
func (s *Server) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.ns, err = natsembed.Start(s.opts)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("natstest: restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Connect returns a client connection that reconnects forever; it is closed when
// the test ends.
func (s *Server) Connect(opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	return Connect(s.t, s.URL(), opts...)
}

// Connect connects to the server at url (for example a bridge's embedded one)
// and reconnects forever; the connection is closed when t ends.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(-1),
	}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("natstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStreamAt returns a JetStream context on a new connection to url.
func JetStreamAt(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(Connect(t, url))
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}

// JetStream returns a JetStream context on a new connection.
func (s *Server) JetStream() jetstream.JetStream {
	s.t.Helper()
	js, err := jetstream.New(s.Connect())
	if err != nil {
		s.t.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}

// FreePort returns a loopback TCP port that was free a moment ago, and is
// closed now. Another test may take it before it is bound again: use it only
// for an address where nothing must listen (a peer that is down), or for a
// server a client was told of before it starts (NATS that comes up later on
// the address the client was configured with). Servers bind port 0 and report
// the port they got: in the test process through their listener, the binary
// in its "verifeye-bridge started" line (http_addr) and DATA_DIR/nats.url.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitFor polls f every 20 ms until it returns nil or timeout passes, then fails
// the test with f's last error.
func WaitFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: still failing after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Messages returns every message stored on stream, in order, using an
// ephemeral ordered consumer (it disturbs no durable consumer).
func Messages(t testing.TB, js jetstream.JetStream, stream string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("natstest: stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("natstest: stream info %s: %v", stream, err)
	}
	n := int(info.State.Msgs)
	if n == 0 {
		return nil
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("natstest: ordered consumer: %v", err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		batch, err := c.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("natstest: fetch: %v", err)
		}
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		if batch.Error() != nil {
			t.Fatalf("natstest: fetch: %v", batch.Error())
		}
		if got == 0 {
			t.Fatalf("natstest: fetched %d of %d messages of %s", len(out), n, stream)
		}
	}
	return out
}

// Count returns the number of messages stored on stream.
func Count(t testing.TB, js jetstream.JetStream, stream string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("natstest: stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("natstest: stream info: %v", err)
	}
	return int(info.State.Msgs)
}
