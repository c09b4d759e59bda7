package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// plainStarted is the message of the plain bridge's start line, which carries
// the listener's address as http_addr.
const plainStarted = "plain bridge started"

// plainWebhook is the plain bridge's view of a webhook body.
type plainWebhook struct {
	Event     string `json:"event"`
	SessionID string `json:"verificationSessionId"`
}

// servePlain serves the baseline of `make bench` on ln until ctx ends: the
// bridge anyone would write in an afternoon. Echo, the body decoded into a
// struct, its two fields checked, a synchronous js.PublishMsg with the
// message ID, 202 after the PubAck; no authentication, no logs, no metrics,
// no trace context. It publishes to the NATS server at natsURL, on the
// contract's webhooks stream (streams.Ensure, the configuration the bridge
// itself uses), so that both store exactly the same messages. Only its start
// line is logged, to logw: the bench learns the address from it.
func servePlain(ctx context.Context, ln net.Listener, natsURL string, logw io.Writer) error {
	defer ln.Close()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	subjects, _ := streams.NewSubjects("verifeye")
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = streams.Ensure(ectx, js, subjects, streams.DefaultLimits())
	cancel()
	if err != nil {
		return err
	}

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.GET("/readyz", func(c echo.Context) error { return c.String(http.StatusOK, "ok") })
	e.POST("/webhooks/verifeye", func(c echo.Context) error {
		body, err := io.ReadAll(c.Request().Body)
		if err != nil {
			return c.JSON(http.StatusBadRequest, map[string]string{"error": "could not read the body"})
		}
		var w plainWebhook
		if err := json.Unmarshal(body, &w); err != nil {
			return c.JSON(http.StatusBadRequest, map[string]string{"error": "invalid JSON"})
		}
		if w.Event == "" || w.SessionID == "" {
			return c.JSON(http.StatusBadRequest, map[string]string{"error": "event and verificationSessionId are required"})
		}
		msg := nats.NewMsg(subjects.Webhook(streams.DefaultSource, w.Event))
		msg.Data = body
		msg.Header.Set(jetstream.MsgIDHeader, streams.WebhookMsgID(w.Event, w.SessionID))
		ack, err := js.PublishMsg(c.Request().Context(), msg)
		if err != nil {
			return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": "could not store the event"})
		}
		return c.JSON(http.StatusAccepted, map[string]any{"status": "accepted", "verificationSessionId": w.SessionID, "duplicate": ack.Duplicate})
	})
	startLog := zerolog.New(logw)
	startLog.Log().Timestamp().Str("http_addr", ln.Addr().String()).Msg(plainStarted)
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 5 * time.Second}
	return serveUntil(ctx, srv, ln)
}

// serveNATS runs a nats-server with JetStream and otherwise default settings
// (file storage under dir, the default sync interval) on a random loopback
// port until ctx ends, writing its client URL to dir/nats.url once it accepts
// connections: the external NATS of the plain bridge and of ingest.
func serveNATS(ctx context.Context, dir string) error {
	ns, err := server.NewServer(&server.Options{
		ServerName: "bench-nats",
		JetStream:  true,
		StoreDir:   dir,
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoSigs:     true,
	})
	if err != nil {
		return err
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return errors.New("nats-server not ready within 30s")
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	tmp := filepath.Join(dir, "nats.url.tmp")
	if err := os.WriteFile(tmp, []byte(ns.ClientURL()), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "nats.url")); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// natsProcess is a nats-server run in a process of its own (this binary
// with -role=nats), so that its CPU is neither the bench's nor the measured
// bridge's.
type natsProcess struct {
	cmd  *exec.Cmd
	url  string
	done chan struct{}
}

// startNATSProcess starts a nats-server process storing under dir and waits
// until it has written its URL.
func startNATSProcess(ctx context.Context, self, dir string) (*natsProcess, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// A URL left by an earlier process in dir is not this one's.
	if err := os.Remove(filepath.Join(dir, "nats.url")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return nil, err
	}
	np := &natsProcess{cmd: exec.Command(self, "-role=nats", "-dir="+dir), done: make(chan struct{})}
	np.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	np.cmd.Stdout, np.cmd.Stderr = logf, logf
	if err := np.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() {
		_ = np.cmd.Wait()
		logf.Close()
		close(np.done)
	}()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if b, err := os.ReadFile(filepath.Join(dir, "nats.url")); err == nil {
			np.url = strings.TrimSpace(string(b))
			return np, nil
		}
		select {
		case <-np.done:
			return nil, errors.New("nats-server process exited before it was ready")
		case <-ctx.Done():
			np.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			np.stop()
			return nil, errors.New("nats-server process not ready within 30s")
		}
	}
}

// stop ends the nats-server process gracefully (SIGTERM), or kills it after 10 s.
func (np *natsProcess) stop() {
	_ = np.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-np.done:
	case <-time.After(10 * time.Second):
		_ = np.cmd.Process.Kill()
		<-np.done
	}
}

// printNaive compares ingest (logging, metrics and trace context on) with the
// plain bridge, both against a nats-server of their own with the same
// settings: the targets of docs/performance.md, "Cheaper than a naive bridge".
func printNaive(w io.Writer, targets []*target, all []*measurement, rate float64) {
	var plain, ingest *measurement
	for i, t := range targets {
		switch {
		case t.plain:
			plain = all[i]
		case t.extNATS:
			ingest = all[i]
		}
	}
	if plain == nil || ingest == nil {
		return
	}
	fmt.Fprintf(w, "  NATS server process, CPU per 202: plain %s, ingest %s\n", us(plain.natsPerReq()), us(ingest.natsPerReq()))
	if rate > 0 && (!keptUp(plain, rate) || !keptUp(ingest, rate)) {
		fmt.Fprintf(w, "  ingest / plain: not comparable: %.0f and %.0f req/s answered of %.0f offered\n", ingest.res.Rate(), plain.res.Rate(), rate)
		return
	}
	cpu, throughput := naiveRatios(plain, ingest)
	fmt.Fprintf(w, "  ingest / plain: CPU/req x%.2f (target <= 0.75)", cpu)
	if rate == 0 {
		fmt.Fprintf(w, ", throughput x%.2f (target >= 1.2)", throughput)
	}
	fmt.Fprintf(w, ", p50 x%.2f, p99 x%.2f\n",
		float64(ingest.res.Percentile(0.5))/float64(plain.res.Percentile(0.5)),
		float64(ingest.res.Percentile(0.99))/float64(plain.res.Percentile(0.99)))
}

func (m *measurement) natsPerReq() time.Duration {
	if m.res.OK == 0 {
		return 0
	}
	return m.natsCPU / time.Duration(m.res.OK)
}
