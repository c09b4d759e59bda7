// Package natsembed runs an in-process NATS server with JetStream, for `serve` and
// `dev` when NATS_URL is empty, and for tests.
package natsembed

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// Options configure an embedded server. The zero value listens on a random
// loopback port, stores under the current directory and syncs every write.
type Options struct {
	// StoreDir is the JetStream storage directory (JetStream writes under
	// StoreDir/jetstream).
	StoreDir string
	// Addr is the host:port clients may connect to; "" means 127.0.0.1 on a
	// random port, "-" means no listener at all (in-process connections only).
	Addr string
	// SyncInterval is how often the store is fsynced. Zero means every write is
	// synced before it is acknowledged, so an acknowledged event survives a power
	// cut; a positive interval risks that much acknowledged data on a power cut
	// or kernel crash (a process crash loses nothing either way).
	SyncInterval time.Duration
	// GroupSync, with SyncInterval zero, moves the sync of every write from
	// the server to the caller: the server writes each message to its files
	// before acknowledging it and syncs them every GroupSyncInterval, and the
	// caller calls a Syncer's Sync before it answers for a write (group
	// commit: one sync for all the writes made meanwhile). Only where
	// GroupSyncSupported.
	GroupSync bool
	// Name is the server name, "verifeye-bridge" by default.
	Name string
	// Cluster, when non-nil, makes the server a member of a NATS cluster.
	Cluster *server.ClusterOpts
	// Routes are the cluster peers' route URLs (nats-route://host:port).
	Routes []string
	// User and Password, when User is set, are the only credentials the
	// server accepts: every client, in-process ones included, must present
	// them. With User empty the server accepts any client.
	User, Password string
	// GeneratedPassword says Password was drawn at random (at least 128
	// bits): it is then hashed at bcrypt's lowest cost. Stretching protects
	// only a guessable password, and every connection pays for it: at the
	// default cost a loaded machine took seconds per connection, long enough
	// for the server's first PING to overtake its PONG and the client to fail.
	// A password an operator chose keeps bcrypt's default cost.
	GeneratedPassword bool
	// Log receives the server's log; a disabled logger by default.
	Log zerolog.Logger
	// OnNoSpace, when set, is called each time the server reports a failure
	// for want of disk space (ENOSPC, EDQUOT). nats-server then refuses every
	// later write to the stream that failed, even once there is room again,
	// until its store is opened again, by a restart (see Restartable).
	OnNoSpace func()
}

// Start starts a server and waits until it accepts connections, for at most
// 30 s. A server that cannot start (JetStream refusing its store, a port in
// use) makes Start return the server's own reason at once. The caller must
// call Shutdown on it (which also waits for it to stop).
func Start(opts Options) (*server.Server, error) {
	so, err := serverOptions(opts)
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("natsembed: new server: %w", err)
	}
	// A fatal error ends the server's start without it ever becoming ready;
	// the embedded server must not exit the process, so Fatalf reports here.
	fatal := make(chan string, 1)
	ns.SetLoggerV2(logger{l: opts.Log, fatal: fatal, noSpace: opts.OnNoSpace}, false, false, false)
	go ns.Start()
	for deadline := time.Now().Add(30 * time.Second); !ns.ReadyForConnections(100 * time.Millisecond); {
		select {
		case msg := <-fatal:
			Shutdown(ns)
			return nil, fmt.Errorf("natsembed: %s", msg)
		default:
		}
		if time.Now().After(deadline) {
			Shutdown(ns)
			return nil, errors.New("natsembed: server not ready for connections within 30s")
		}
	}
	return ns, nil
}

// Shutdown stops ns and waits until it has stopped and flushed its store.
func Shutdown(ns *server.Server) {
	ns.Shutdown()
	ns.WaitForShutdown()
}

func serverOptions(opts Options) (*server.Options, error) {
	so := &server.Options{
		ServerName: opts.Name,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		NoSigs:     true,
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		MaxPayload: 1 << 20,
	}
	if so.ServerName == "" {
		so.ServerName = "verifeye-bridge"
	}
	switch {
	case opts.SyncInterval <= 0 && opts.GroupSync:
		if !syncfsSupported {
			return nil, ErrSyncUnsupported
		}
		so.SyncInterval = GroupSyncInterval
	case opts.SyncInterval <= 0:
		so.SyncAlways = true
	default:
		so.SyncInterval = opts.SyncInterval
	}
	switch opts.Addr {
	case "":
	case "-":
		so.DontListen = true
	default:
		host, port, err := net.SplitHostPort(opts.Addr)
		if err != nil {
			return nil, fmt.Errorf("natsembed: listen address %q: %w", opts.Addr, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("natsembed: listen address %q: bad port", opts.Addr)
		}
		if host == "" {
			host = "0.0.0.0"
		}
		so.Host, so.Port = host, p
		if p == 0 {
			so.Port = server.RANDOM_PORT
		}
	}
	if opts.User != "" {
		// The server keeps only a bcrypt hash of the password, so a dump of its
		// memory or options does not show it (and it does not warn about a
		// plain-text password at every start).
		cost := bcrypt.DefaultCost
		if opts.GeneratedPassword {
			cost = bcrypt.MinCost
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), cost)
		if err != nil {
			return nil, fmt.Errorf("natsembed: hash the password: %w", err)
		}
		so.Users = []*server.User{{Username: opts.User, Password: string(hash)}}
	}
	if opts.Cluster != nil {
		so.Cluster = *opts.Cluster
		so.Routes = server.RoutesFromStr(strings.Join(opts.Routes, ","))
	}
	return so, nil
}

// logger adapts the server's logger to zerolog. The first fatal message also
// goes to fatal, when set; an error or warning that names a lack of disk
// space calls noSpace, when set.
type logger struct {
	l       zerolog.Logger
	fatal   chan<- string
	noSpace func()
}

func (g logger) Noticef(f string, v ...any) { g.l.Info().Str("component", "nats-server").Msgf(f, v...) }
func (g logger) Fatalf(f string, v ...any)  { g.fatalf(f, v...) }
func (g logger) Debugf(f string, v ...any)  { g.l.Debug().Str("component", "nats-server").Msgf(f, v...) }
func (g logger) Tracef(f string, v ...any)  { g.l.Trace().Str("component", "nats-server").Msgf(f, v...) }

func (g logger) Warnf(f string, v ...any) {
	g.checkSpace(f, v)
	g.l.Warn().Str("component", "nats-server").Msgf(f, v...)
}

func (g logger) Errorf(f string, v ...any) {
	g.checkSpace(f, v)
	g.l.Error().Str("component", "nats-server").Msgf(f, v...)
}

// checkSpace calls noSpace when the message names ENOSPC or EDQUOT: the
// server reports a failed write by its error's text, in its log only.
func (g logger) checkSpace(f string, v []any) {
	if g.noSpace == nil {
		return
	}
	msg := fmt.Sprintf(f, v...)
	if strings.Contains(msg, syscall.ENOSPC.Error()) || strings.Contains(msg, syscall.EDQUOT.Error()) {
		g.noSpace()
	}
}

// fatalf logs a fatal message as an error and passes it to fatal, unless one
// is there already.
func (g logger) fatalf(f string, v ...any) {
	g.l.Error().Str("component", "nats-server").Msgf(f, v...)
	if g.fatal == nil {
		return
	}
	select {
	case g.fatal <- fmt.Sprintf(f, v...):
	default:
	}
}
