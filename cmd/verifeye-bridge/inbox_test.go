package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// TestIngestInboxPrefix: with NATS_INBOX_PREFIX the ingest receives every
// answer of NATS (stream creation, PubAcks) on its own prefix, so a NATS user
// allowed to receive only there can run it: it becomes ready and stores a
// webhook.
func TestIngestInboxPrefix(t *testing.T) {
	t.Parallel()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir(),
		Users: []*server.User{
			{Username: "ingest", Password: "ingest-pw", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{">"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_ingest.>"}},
			}},
			{Username: "admin", Password: "admin-pw"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}

	log := ingestWatchLogs(t, `"message":"webhook"`)
	sum := sha256.Sum256([]byte(ingestAPIKey))
	p := ingestStart(t, log, userEnv(
		"NATS_URL="+ns.ClientURL(),
		"NATS_USER=ingest", "NATS_PASSWORD=ingest-pw", "NATS_INBOX_PREFIX=_INBOX_ingest",
		"WEBHOOK_API_KEY_SHA256="+hex.EncodeToString(sum[:]),
		"SPOOL=off",
	), "ingest")
	client := &http.Client{Timeout: 10 * time.Second}
	session := ingestSessionID(t)
	status, body, err := ingestPost(client, p.base, "/webhooks/verifeye", session, map[string]string{"X-API-Key": ingestAPIKey})
	if err != nil || status != http.StatusAccepted {
		t.Fatalf("POST: %d %s %v, want 202; logs:\n%s", status, body, err, log)
	}

	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("admin", "admin-pw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, streams.Webhooks)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	m, err := st.GetLastMsgForSubject(ctx, "verifeye.webhook.default.VerificationCompleted")
	if err != nil || m.Header.Get(streams.HeaderMsgID) != "VerificationCompleted:"+session {
		t.Errorf("stored webhook: %v, %v; want the one posted", m, err)
	}
	if n := natstest.Count(t, js, streams.Webhooks); n != 1 {
		t.Errorf("stream holds %d messages, want 1", n)
	}
	// SIGTERM writes out the buffered log lines that the log check reads.
	if code := p.stop(t); code != 0 {
		t.Errorf("ingest exited with %d after SIGTERM, want 0; logs:\n%s", code, log)
	}
}
