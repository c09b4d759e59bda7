package natsembed

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats-server/v2/server"
)

// Restartable is an embedded server that can be started again in-process,
// with the same options and on the port it first got. Clients connected
// in-process through it (nats.InProcessServer(r)) reconnect to the new server
// by themselves, as to any restarted server.
//
// A restart opens the store again: nats-server checks each message block and
// drops a torn last record, and a stream that refused every write after one
// failed (for want of disk space, say) takes writes again.
type Restartable struct {
	opts Options
	mu   sync.Mutex // serialises Restart and Shutdown
	cur  atomic.Pointer[server.Server]
	down bool
}

// StartRestartable starts a server as Start does.
func StartRestartable(opts Options) (*Restartable, error) {
	ns, err := Start(opts)
	if err != nil {
		return nil, err
	}
	if a := ns.Addr(); a != nil { // nil without a listener (Addr "-")
		// Port 0 took a random one: a restart must take the same, which
		// DATA_DIR/nats.url and the clients name.
		opts.Addr = a.String()
	}
	r := &Restartable{opts: opts}
	r.cur.Store(ns)
	return r, nil
}

// Server returns the server running now (or the last one, shut down, while a
// restart fails).
func (r *Restartable) Server() *server.Server { return r.cur.Load() }

// InProcessConn connects in-process to the server running now, for
// nats.InProcessServer.
func (r *Restartable) InProcessConn() (net.Conn, error) {
	ns := r.cur.Load()
	if !ns.Running() {
		return nil, errors.New("natsembed: server restarting")
	}
	return ns.InProcessConn()
}

// Restart shuts the server down (clients are disconnected and reconnect) and
// starts it again. When the new one cannot start, the error says why and a
// later Restart may succeed; meanwhile there is no server.
func (r *Restartable) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return errors.New("natsembed: server shut down")
	}
	Shutdown(r.cur.Load())
	ns, err := Start(r.opts)
	if err != nil {
		return err
	}
	r.cur.Store(ns)
	return nil
}

// Shutdown stops the server for good and waits until it has stopped.
func (r *Restartable) Shutdown() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = true
	Shutdown(r.cur.Load())
}
