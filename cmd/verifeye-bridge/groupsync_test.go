package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestServeGroupSync: serve with the embedded server at its default
// NATS_EMBEDDED_SYNC=always, where the roles sync the store (group commit).
// Concurrent webhooks are each answered 202 after a sync that covers them and
// each enrichment is acked after one: the wait histogram counts a wait per
// 202 and per ack, fewer syncs than waits ran, every webhook is stored and
// enriched once, and readiness reports the sync.
func TestServeGroupSync(t *testing.T) {
	if !natsembed.GroupSyncSupported {
		t.Skip("no syncfs(2) here: the server syncs every write itself")
	}
	t.Parallel()
	const key = "group-sync-key"
	dataDir := t.TempDir()
	var logs ingestLog
	base := startEmbeddedServe(t, dataDir, "127.0.0.1:0", key, &logs, func(c *embeddedConfig) { c.EmbeddedSync = "always" })
	if !strings.Contains(logs.String(), `"group_sync":true`) {
		t.Fatalf("the start line does not say group_sync:true; logs:\n%s", logs.String())
	}

	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			body := fmt.Sprintf(`{"event":"VerificationCompleted","verificationSessionId":%q}`, uuid.NewString())
			req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/verifeye", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-API-Key", key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				errs <- fmt.Errorf("POST: %d", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	nc, err := nats.Connect(embeddedURL(t, dataDir))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if got := natstest.Count(t, js, streams.Webhooks); got != n {
		t.Errorf("%s holds %d webhooks, want %d", streams.Webhooks, got, n)
	}
	natstest.WaitFor(t, 30*time.Second, func() error {
		if got := natstest.Count(t, js, streams.Results); got != n {
			return fmt.Errorf("%s holds %d outcomes, want %d", streams.Results, got, n)
		}
		return nil
	})

	var waits, syncs uint64
	natstest.WaitFor(t, 10*time.Second, func() error {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(string(b)))
		if err != nil {
			return err
		}
		w, _ := lookup(fams, "verifeye_bridge_store_sync_wait_seconds_count", "")
		s, _ := lookup(fams, "verifeye_bridge_store_sync_seconds_count", "")
		waits, syncs = uint64(w), uint64(s)
		// One wait per 202 and one per enriched webhook's ack.
		if waits < 2*n {
			return fmt.Errorf("%d sync waits, want at least %d (a 202 and an ack for each of %d webhooks)", waits, 2*n, n)
		}
		return nil
	})
	if syncs == 0 || syncs >= waits {
		t.Errorf("%d syncs for %d waits; want at least one, and fewer syncs than waits (concurrent writes share one)", syncs, waits)
	}
	t.Logf("%d waits, %d syncs", waits, syncs)

	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "store_sync") {
		t.Errorf("GET /readyz = %d %s; want 200 naming the store_sync check", resp.StatusCode, b)
	}
}
