package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

// countingWriter records every Write it gets.
type countingWriter struct {
	mu     sync.Mutex
	writes int
	b      strings.Builder
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.b.Write(p)
}

func (w *countingWriter) get() (string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String(), w.writes
}

// TestLogBuffer: info lines are gathered and written together once the
// interval has passed; a warning is written at once with what was gathered
// before it; Close writes the rest, and lines after Close are written at once.
func TestLogBuffer(t *testing.T) {
	t.Parallel()
	out := &countingWriter{}
	b := newLogBuffer(out, 50*time.Millisecond)
	log := zerolog.New(b)
	for i := range 100 {
		log.Info().Int("i", i).Msg("webhook")
	}
	natstest.WaitFor(t, 10*time.Second, func() error {
		if got, writes := out.get(); strings.Count(got, `"message":"webhook"`) != 100 || writes != 1 {
			return fmt.Errorf("%d lines in %d writes, want 100 in 1", strings.Count(got, "\n"), writes)
		}
		return nil
	})

	log.Info().Msg("before the warning")
	log.Warn().Msg("warning")
	if got, writes := out.get(); !strings.Contains(got, `"before the warning"}`+"\n"+`{"level":"warn","message":"warning"}`) || writes != 2 {
		t.Errorf("after a warning: %d writes, output ends %q; want the info line and the warning, in order, in a second write", writes, got[max(0, len(got)-120):])
	}

	b.interval = time.Hour // only Close can write what follows now
	log.Info().Msg("last")
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	log.Info().Msg("after close")
	got, _ := out.get()
	if !strings.HasSuffix(got, `{"level":"info","message":"last"}`+"\n"+`{"level":"info","message":"after close"}`+"\n") {
		t.Errorf("after Close: output ends %q, want the last line and the one logged after Close", got[max(0, len(got)-120):])
	}
}

// TestLogBufferZeroWritesEachLine: LOG_FLUSH_INTERVAL=0 is one write per line.
func TestLogBufferZeroWritesEachLine(t *testing.T) {
	t.Parallel()
	out := &countingWriter{}
	log := zerolog.New(newLogBuffer(out, 0))
	log.Info().Msg("one")
	log.Info().Msg("two")
	if got, writes := out.get(); writes != 2 || strings.Count(got, "\n") != 2 {
		t.Errorf("%d writes of %q, want 2 lines in 2 writes", writes, got)
	}
}

// TestLogLineBeforeSIGTERMIsWritten runs `ingest` with a flush interval of an
// hour, so that only shutdown can write its info lines: the webhook line
// logged just before its 202, and the stopped line, must both be in the log
// file once SIGTERM has ended the process.
func TestLogLineBeforeSIGTERMIsWritten(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	sum := sha256.Sum256([]byte(ingestAPIKey))
	addr := freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(binary(t), "ingest")
	cmd.Env = userEnv(
		"NATS_URL="+srv.URL(),
		"HTTP_ADDR="+addr,
		"WEBHOOK_API_KEY_SHA256="+hex.EncodeToString(sum[:]),
		"SPOOL=off",
		"LOG_FLUSH_INTERVAL=1h",
	)
	cmd.Dir, cmd.Stdout, cmd.Stderr = t.TempDir(), logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})

	client := &http.Client{Timeout: 10 * time.Second}
	session := ingestSessionID(t)
	natstest.WaitFor(t, 30*time.Second, func() error {
		status, body, err := ingestPost(client, "http://"+addr, "/webhooks/verifeye", session, map[string]string{"X-API-Key": ingestAPIKey})
		if err != nil {
			return err
		}
		if status != http.StatusAccepted {
			return fmt.Errorf("POST = %d %s, want 202", status, body)
		}
		return nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ingest after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("ingest did not exit within a minute of SIGTERM")
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"session_id":"` + session + `","status":202`, `"message":"verifeye-bridge stopped"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the log lacks %s after SIGTERM; it holds:\n%s", want, b)
		}
	}
}
