//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestDiskFullUnready: when the disk under the embedded server fills up,
// nats-server never answers the publish (its write fails with ENOSPC), so
// every webhook is answered 503 after INGEST_PUBLISH_TIMEOUT. Readiness and
// verifeye_bridge_storage_refusing must say so, so that the alert fires and a
// load balancer moves traffic. Once the disk has room again the bridge
// restarts its server (which keeps a stream whose write failed refusing
// until then) and is ready without a restart of its own; every webhook
// answered 202 is stored once. The disk is a 4 MiB tmpfs; the test is skipped
// where mounting one is not allowed.
func TestDiskFullUnready(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	const key = "disk-full-test-key-0123456789"
	for k, v := range map[string]string{
		"DATA_DIR":               filepath.Join(dir, "data"),
		"NATS_EMBEDDED_ADDR":     "127.0.0.1:0",
		"WEBHOOKS_MAX_BYTES":     "-1",
		"RESULTS_MAX_BYTES":      "-1",
		"DLQ_MAX_BYTES":          "-1",
		"VERIFEYE_API_KEY":       key,
		"INGEST_PUBLISH_TIMEOUT": "500ms",
		"SHUTDOWN_GRACE":         "5s",
		"OTEL_SDK_DISABLED":      "true",
	} {
		t.Setenv(k, v)
	}
	cfg := serviceConfig{name: "serve", embedded: &embeddedConfig{}, ingest: &ingestConfig{}, api: &apiConfig{}}
	base := startServe(t, cfg, serviceDeps{}, true, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel))

	accepted := map[string]bool{} // session IDs answered 202
	post := func() int {
		id := uuid.NewString()
		body, _ := json.Marshal(map[string]string{"event": "VerificationCompleted",
			"verificationSessionId": id, "pad": strings.Repeat("x", 2000)})
		req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/verifeye", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			accepted[id] = true
		}
		return resp.StatusCode
	}
	if got := post(); got != http.StatusAccepted {
		t.Fatalf("POST before the disk is full = %d, want 202", got)
	}
	// Fill the disk but for a few webhooks' worth.
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	free := int64(fs.Bavail) * int64(fs.Bsize)
	if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, max(0, free-64<<10)), 0o600); err != nil {
		t.Logf("filler: %v (the disk is full either way)", err)
	}
	refused := false
	for range 200 {
		if post() == http.StatusServiceUnavailable {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("no 503 after 200 webhooks on a full disk")
	}
	natstest.WaitFor(t, 10*time.Second, func() error {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "no room") {
			return fmt.Errorf("GET /readyz on a full disk = %d %s, want 503 with the storage check saying there is no room", resp.StatusCode, b)
		}
		return nil
	})
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "\nverifeye_bridge_storage_refusing 1\n") {
		t.Errorf("verifeye_bridge_storage_refusing is not 1 on a full disk")
	}

	// Room again: the bridge takes webhooks and is ready, without a restart.
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 30*time.Second, func() error {
		if got := post(); got != http.StatusAccepted {
			return fmt.Errorf("POST after the disk has room again = %d, want 202", got)
		}
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /readyz after the disk has room again = %d %s, want 200", resp.StatusCode, b)
		}
		return nil
	})
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "\nverifeye_bridge_embedded_nats_restarts_total 1\n") {
		t.Errorf("verifeye_bridge_embedded_nats_restarts_total is not 1 after the disk had room again")
	}
	// Every webhook answered 202, before the disk filled, while it was full
	// and after, is in the stream once, and nothing twice. (A 503 may still
	// be stored, once: a publish whose answer came too late.)
	js := natstest.JetStreamAt(t, embeddedURL(t, filepath.Join(dir, "data")))
	st, err := js.Stream(context.Background(), streams.Webhooks)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]int{}
	for seq := uint64(1); seq <= st.CachedInfo().State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			continue // a sequence the store dropped (a torn record)
		}
		var w struct {
			ID string `json:"verificationSessionId"`
		}
		if err := json.Unmarshal(m.Data, &w); err != nil {
			t.Fatalf("stored message %d: %v", seq, err)
		}
		stored[w.ID]++
	}
	for id := range accepted {
		if stored[id] != 1 {
			t.Errorf("session %s answered 202, stored %d times; want once", id, stored[id])
		}
	}
	for id, n := range stored {
		if n > 1 {
			t.Errorf("session %s stored %d times; want at most once", id, n)
		}
	}
}
