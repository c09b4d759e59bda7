package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// The secrets of the ingest tests; ingestWatchLogs fails a test whose captured
// logs contain either.
const (
	ingestAPIKey = "vk-live-51e0c3a8-cmd-ingest-key"
	ingestToken  = "wt-0d7e4c92-cmd-ingest-token"
)

// ingestLog collects the logs of one test: its in-process loggers and the
// stdout and stderr of the processes it runs.
type ingestLog = natstest.Buffer

// ingestWatchLogs returns a log that, when t ends, must contain no secret and
// every one of wantLines (substrings that prove the logs were captured at all).
// Register it before anything that writes to it, so the check runs last.
func ingestWatchLogs(t *testing.T, wantLines ...string) *ingestLog {
	t.Helper()
	l := &ingestLog{}
	t.Cleanup(func() {
		out := l.String()
		for _, s := range []string{ingestAPIKey, ingestToken} {
			if i := strings.Index(out, s); i >= 0 {
				line := out[strings.LastIndexByte(out[:i], '\n')+1:]
				line, _, _ = strings.Cut(line, "\n")
				t.Errorf("a secret reached the logs: %s", line)
			}
		}
		for _, w := range wantLines {
			if !strings.Contains(out, w) {
				t.Errorf("the captured logs lack %q, so the secret check proves little; logs:\n%s", w, out)
			}
		}
	})
	return l
}

func ingestSessionID(t testing.TB) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("rand: %v", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ingestProc is a running verifeye-bridge process.
type ingestProc struct {
	cmd      *exec.Cmd
	addr     string // the HTTP listener's address
	base     string // http://addr
	done     chan struct{}
	exitCode int
}

// ingestStart starts the binary with env and HTTP_ADDR=127.0.0.1:0, its output
// going to log, learns its HTTP address from its "verifeye-bridge started"
// line, waits until it is ready, and kills it when t ends if it is still
// running. With the embedded server, DATA_DIR/nats.url is written before that
// line: embeddedURL then reads this process's URL.
func ingestStart(t *testing.T, log *ingestLog, env []string, args ...string) *ingestProc {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env, cmd.Dir = append(env[:len(env):len(env)], anyPort), t.TempDir()
	started := newStartedWriter(log)
	cmd.Stdout, cmd.Stderr = log, started
	if err := cmd.Start(); err != nil {
		t.Fatalf("start verifeye-bridge %v: %v", args, err)
	}
	p := &ingestProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.exitCode = cmd.ProcessState.ExitCode()
		if err != nil && p.exitCode == 0 {
			p.exitCode = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	p.addr = started.waitStarted(t, p.done, log.String)
	p.base = "http://" + p.addr
	natstest.WaitFor(t, 30*time.Second, func() error {
		select {
		case <-p.done:
			t.Fatalf("verifeye-bridge %v exited with %d before it was ready; logs:\n%s", args, p.exitCode, log)
		default:
		}
		resp, err := http.Get(p.base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /readyz = %d", resp.StatusCode)
		}
		return nil
	})
	return p
}

// stop sends SIGTERM and returns the exit code; it fails t if the process
// does not exit in a minute.
func (p *ingestProc) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	return p.wait(t)
}

func (p *ingestProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.exitCode
	case <-time.After(time.Minute):
		t.Fatalf("verifeye-bridge did not exit within a minute of SIGTERM")
		return -1
	}
}

// load posts new webhooks from 4 clients until the process exits or report,
// told each answer, returns true; wg tracks the clients.
func (p *ingestProc) load(t *testing.T, wg *sync.WaitGroup, header map[string]string, report func(session string, status int, err error) (stop bool)) {
	client := &http.Client{Timeout: 30 * time.Second}
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-p.done:
					return
				default:
				}
				session := ingestSessionID(t)
				status, _, err := ingestPost(client, p.base, "/webhooks/verifeye", session, header)
				if report(session, status, err) {
					return
				}
			}
		})
	}
}

// ingestPost posts the webhook of session and returns the status.
func ingestPost(client *http.Client, base, path, session string, header map[string]string) (int, []byte, error) {
	body := `{"event":"VerificationCompleted","verificationSessionId":"` + session + `"}`
	req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// openStore opens a stopped bridge's DATA_DIR with an embedded server of its
// own (no listener) and returns a JetStream on it.
func openStore(t *testing.T, dir string) jetstream.JetStream {
	t.Helper()
	ns, err := natsembed.Start(natsembed.Options{StoreDir: dir, Addr: "-"})
	if err != nil {
		t.Fatalf("natsembed.Start(%s): %v", dir, err)
	}
	t.Cleanup(func() { natsembed.Shutdown(ns) })
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatalf("connect in-process: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return js
}

// TestServeSIGTERMLosesNoAcceptedWebhook runs `serve` with embedded NATS and
// sends SIGTERM while webhooks stream in. It requires exit code 0, a 202 for a
// request that was in flight when the signal came (its body arrives only after
// the listener closed), and, when the store is opened again, every webhook
// answered 202 in VERIFEYE_WEBHOOKS exactly once.
func TestServeSIGTERMLosesNoAcceptedWebhook(t *testing.T) {
	t.Parallel()
	log := ingestWatchLogs(t, `"message":"webhook"`, "verifeye-bridge started")
	api := verifeyetest.Start(ingestAPIKey)
	t.Cleanup(api.Close)
	dataDir := t.TempDir()
	p := ingestStart(t, log, userEnv(
		"NATS_EMBEDDED_ADDR=127.0.0.1:0",
		"DATA_DIR="+dataDir,
		"VERIFEYE_API_URL="+api.URL,
		"VERIFEYE_API_KEY="+ingestAPIKey,
		"LOG_LEVEL=debug",
		"ENRICH_ACK_WAIT=1s",
		"ENRICH_BACKOFF_BASE=10ms",
		"ENRICH_BACKOFF_MAX=100ms",
		"SHUTDOWN_GRACE=20s",
	), "serve")
	key := map[string]string{"X-API-Key": ingestAPIKey}

	type outcome struct {
		session string
		status  int // 0: no HTTP answer
		err     error
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		accepted atomic.Int64
		termed   atomic.Bool
		wg       sync.WaitGroup
	)
	record := func(o outcome) {
		mu.Lock()
		defer mu.Unlock()
		outcomes = append(outcomes, o)
	}
	p.load(t, &wg, key, func(session string, status int, err error) bool {
		if status == http.StatusAccepted {
			accepted.Add(1)
		}
		record(outcome{session, status, err})
		return err != nil && termed.Load() // the listener is closed: stop hammering it
	})
	natstest.WaitFor(t, 30*time.Second, func() error {
		if n := accepted.Load(); n < 50 {
			return fmt.Errorf("%d webhooks accepted, want 50 before SIGTERM", n)
		}
		return nil
	})

	// A request in flight across the signal: headers and half the body now.
	slow := ingestSessionID(t)
	slowBody := `{"event":"VerificationCompleted","verificationSessionId":"` + slow + `"}`
	inflight, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer inflight.Close()
	fmt.Fprintf(inflight, "POST /webhooks/verifeye HTTP/1.1\r\nHost: %s\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		p.addr, ingestAPIKey, len(slowBody), slowBody[:20])
	// The accept queue is FIFO: once a connection dialled after it is
	// answered, the server has accepted the slow one, so SIGTERM finds it
	// in flight rather than in the listener's backlog.
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if status, body, err := ingestPost(fresh, p.base, "/webhooks/verifeye", ingestSessionID(t), key); status != http.StatusAccepted {
		t.Fatalf("POST after the slow request started: %d %s %v, want 202", status, body, err)
	}

	termed.Store(true)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	natstest.WaitFor(t, 20*time.Second, func() error {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			return nil // the listener is closed: shutdown has begun
		}
		c.Close()
		return errors.New("still accepting connections after SIGTERM")
	})
	if _, err := io.WriteString(inflight, slowBody[20:]); err != nil {
		t.Fatalf("writing the rest of the in-flight request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(inflight), nil)
	if err != nil {
		t.Fatalf("in-flight request: no answer after SIGTERM: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("in-flight request: status %d after SIGTERM, want 202", resp.StatusCode)
	}
	record(outcome{slow, resp.StatusCode, nil})

	code := p.wait(t)
	wg.Wait()
	if code != 0 {
		t.Fatalf("serve exited with %d after SIGTERM, want 0; logs:\n%s", code, log)
	}

	js := openStore(t, dataDir)
	stored := make(map[string]int)
	for _, m := range natstest.Messages(t, js, streams.Webhooks) {
		stored[m.Headers().Get(streams.HeaderMsgID)]++
	}
	var n202, nOther int
	for _, o := range outcomes {
		id := streams.WebhookMsgID(streams.EventCompleted, o.session)
		switch o.status {
		case http.StatusAccepted:
			n202++
			if stored[id] != 1 {
				t.Errorf("session %s got 202 but is stored %d times, want 1", o.session, stored[id])
			}
		case 0, http.StatusServiceUnavailable:
			// No answer (the connection raced the closing listener or an
			// idle keep-alive was closed) or 503: VerifEye retries. It may
			// or may not be stored, but never twice.
			nOther++
			if stored[id] > 1 {
				t.Errorf("session %s (%v) is stored %d times", o.session, o.err, stored[id])
			}
		default:
			t.Errorf("session %s: status %d, want 202, 503 or no answer", o.session, o.status)
		}
	}
	t.Logf("%d requests: %d accepted, %d not; %d stored", len(outcomes), n202, nOther, len(stored))
}

// TestIngestSubcommand runs `ingest` against an external NATS with only the
// SHA-256 of the API key and SPOOL=off (the v1 behaviour): the right key gets
// 202 and the webhook is stored, /readyz follows NATS, and SIGTERM exits 0.
func TestIngestSubcommand(t *testing.T) {
	t.Parallel()
	log := ingestWatchLogs(t, `"message":"webhook"`)
	srv := natstest.Start(t)
	sum := sha256.Sum256([]byte(ingestAPIKey))
	p := ingestStart(t, log, userEnv(
		"NATS_URL="+srv.URL(),
		"WEBHOOK_API_KEY_SHA256="+hex.EncodeToString(sum[:]),
		"INGEST_PUBLISH_TIMEOUT=500ms",
		"SPOOL=off",
		"LOG_LEVEL=debug",
	), "ingest")

	client := &http.Client{Timeout: 10 * time.Second}
	session := ingestSessionID(t)
	status, body, err := ingestPost(client, p.base, "/webhooks/verifeye/shop-1?token="+ingestToken, session, map[string]string{"X-API-Key": ingestAPIKey})
	if err != nil || status != http.StatusAccepted {
		t.Fatalf("POST with the right key: %d %s %v, want 202", status, body, err)
	}
	status, body, err = ingestPost(client, p.base, "/webhooks/verifeye", ingestSessionID(t), map[string]string{"X-API-Key": ingestAPIKey + "x"})
	if err != nil || status != http.StatusUnauthorized {
		t.Fatalf("POST with a wrong key: %d %s %v, want 401", status, body, err)
	}

	js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, streams.Webhooks)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	m, err := st.GetLastMsgForSubject(ctx, "verifeye.webhook.shop-1.VerificationCompleted")
	if err != nil {
		t.Fatalf("the accepted webhook is not stored: %v", err)
	}
	if got, want := m.Header.Get(streams.HeaderMsgID), "VerificationCompleted:"+session; got != want {
		t.Errorf("Nats-Msg-Id = %q, want %q", got, want)
	}
	if n := natstest.Count(t, js, streams.Webhooks); n != 1 {
		t.Errorf("stream holds %d messages, want 1", n)
	}

	readyz := func() error {
		resp, err := client.Get(p.base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("GET /readyz = %d, want 503", resp.StatusCode)
		}
		return nil
	}
	srv.Shutdown()
	natstest.WaitFor(t, 20*time.Second, readyz)
	status, _, err = ingestPost(client, p.base, "/webhooks/verifeye", ingestSessionID(t), map[string]string{"X-API-Key": ingestAPIKey})
	if err != nil || status != http.StatusServiceUnavailable {
		t.Errorf("POST while NATS is down: %d %v, want 503", status, err)
	}
	srv.Restart()
	natstest.WaitFor(t, 20*time.Second, func() error {
		status, _, err := ingestPost(client, p.base, "/webhooks/verifeye", ingestSessionID(t), map[string]string{"X-API-Key": ingestAPIKey})
		if err != nil {
			return err
		}
		if status != http.StatusAccepted {
			return fmt.Errorf("POST after NATS came back: %d, want 202", status)
		}
		return nil
	})

	if code := p.stop(t); code != 0 {
		t.Fatalf("ingest exited with %d after SIGTERM, want 0; logs:\n%s", code, log)
	}
}

// TestServiceConfigErrors: a missing or invalid setting makes serve and ingest
// exit 2 at once with one line naming the variable, before starting anything.
func TestServiceConfigErrors(t *testing.T) {
	t.Parallel()
	sum := sha256.Sum256([]byte(ingestAPIKey))
	keyHash := "WEBHOOK_API_KEY_SHA256=" + hex.EncodeToString(sum[:])
	key := "VERIFEYE_API_KEY=" + ingestAPIKey
	// Where nothing listens: a start that got that far would hang or fail
	// differently.
	noNATS := "NATS_URL=nats://" + freeAddr(t)
	embedded := []string{"NATS_EMBEDDED_ADDR=-", anyPort}
	tests := []struct {
		name    string
		cmd     string
		env     []string
		wantVar string
	}{
		{"token mode without token", "serve", []string{key, "WEBHOOK_AUTH=token"}, "WEBHOOK_TOKEN"},
		{"token mode with empty token", "serve", []string{key, "WEBHOOK_AUTH=token", "WEBHOOK_TOKEN="}, "WEBHOOK_TOKEN"},
		{"replicas not a number", "serve", []string{key, "STREAM_REPLICAS=x"}, "STREAM_REPLICAS"},
		{"replicas zero", "serve", []string{key, "STREAM_REPLICAS=0"}, "STREAM_REPLICAS"},
		{"unknown auth mode", "serve", []string{key, "WEBHOOK_AUTH=bogus"}, "WEBHOOK_AUTH"},
		{"no API key", "serve", nil, "VERIFEYE_API_KEY"},
		{"only the key hash", "serve", []string{keyHash}, "VERIFEYE_API_KEY"},
		{"bad publish timeout", "serve", []string{key, "INGEST_PUBLISH_TIMEOUT=soon"}, "INGEST_PUBLISH_TIMEOUT"},
		{"bad sync setting", "serve", []string{key, "NATS_EMBEDDED_SYNC=sometimes"}, "NATS_EMBEDDED_SYNC"},
		{"bad group sync setting", "serve", []string{key, "NATS_EMBEDDED_GROUP_SYNC=maybe"}, "NATS_EMBEDDED_GROUP_SYNC"},
		{"bad subject prefix", "serve", []string{key, "SUBJECT_PREFIX=a.b"}, "SUBJECT_PREFIX"},
		{"API key in clear text to a remote host", "serve", []string{key, "VERIFEYE_API_URL=http://example.com"}, "VERIFEYE_API_URL"},
		{"enrich: API key in clear text to a remote host", "enrich", []string{key, noNATS, "VERIFEYE_API_URL=http://192.0.2.1:8080"}, "VERIFEYE_API_URL"},
		{"ingest without NATS_URL", "ingest", []string{key}, "NATS_URL"},
		{"ingest without key or hash", "ingest", []string{noNATS}, "VERIFEYE_API_KEY"},
		{"ingest token mode without token", "ingest", []string{noNATS, "WEBHOOK_AUTH=token"}, "WEBHOOK_TOKEN"},
		{"ingest key hash not hex", "ingest", []string{noNATS, "WEBHOOK_API_KEY_SHA256=" + strings.Repeat("z", 64)}, "WEBHOOK_API_KEY_SHA256"},
		{"no connections", "serve", []string{key, "HTTP_MAX_CONNS=0"}, "HTTP_MAX_CONNS"},
		{"trusted proxy not a CIDR", "ingest", []string{noNATS, key, "HTTP_TRUSTED_PROXIES=10.0.0.0/8, proxy.local"}, "HTTP_TRUSTED_PROXIES"},
		{"ingest key hash too short", "ingest", []string{noNATS, "WEBHOOK_API_KEY_SHA256=abcd"}, "WEBHOOK_API_KEY_SHA256"},
		{"bad spool switch", "ingest", []string{noNATS, key, "SPOOL=maybe"}, "SPOOL"},
		{"spool after not a duration", "ingest", []string{noNATS, key, "SPOOL_AFTER=soon"}, "SPOOL_AFTER"},
		{"spool after beyond the publish timeout", "ingest", []string{noNATS, key, "SPOOL_AFTER=3s"}, "SPOOL_AFTER"},
		{"spool size zero", "ingest", []string{noNATS, key, "SPOOL_MAX_BYTES=0"}, "SPOOL_MAX_BYTES"},
		{"spool size not a number", "serve", []string{key, "SPOOL_MAX_BYTES=1GiB"}, "SPOOL_MAX_BYTES"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			log := ingestWatchLogs(t)
			r := runBin(t, userEnv(append(append([]string{}, embedded...), tc.env...)...), tc.cmd)
			fmt.Fprint(log, r.stdout, r.stderr)
			if r.code != exitUsage {
				t.Errorf("verifeye-bridge %s with %v: exit %d, want %d (stderr %q)", tc.cmd, tc.env, r.code, exitUsage, r.stderr)
			}
			if n := strings.Count(r.stderr, "\n"); n != 1 || !strings.Contains(r.stderr, tc.wantVar) {
				t.Errorf("verifeye-bridge %s with %v: stderr %q, want one line naming %s", tc.cmd, tc.env, r.stderr, tc.wantVar)
			}
			if r.stdout != "" {
				t.Errorf("verifeye-bridge %s with %v: stdout %q, want nothing", tc.cmd, tc.env, r.stdout)
			}
		})
	}
}

// TestServiceHelpAndVersion: --help needs no configuration, exits 0 and lists
// each subcommand's environment variables; version exits 0.
func TestServiceHelpAndVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args    []string
		want    []string
		notWant []string
	}{{
		args: []string{"serve", "--help"},
		want: []string{"HTTP_ADDR", "NATS_URL", "NATS_EMBEDDED_ADDR", "DATA_DIR", "NATS_EMBEDDED_SYNC", "NATS_EMBEDDED_GROUP_SYNC", "SUBJECT_PREFIX", "STREAM_REPLICAS",
			"VERIFEYE_API_KEY", "VERIFEYE_API_URL", "VERIFEYE_REGION", "WEBHOOK_AUTH", "WEBHOOK_TOKEN", "WEBHOOK_API_KEY_SHA256",
			"ENRICH_CONCURRENCY", "VERIFEYE_RATE_LIMIT", "ENRICH_MAX_ATTEMPTS", "LOG_LEVEL", "LOG_FORMAT", "NATS_CREDS", "NATS_TLS_CA",
			"SPOOL", "SPOOL_AFTER", "SPOOL_MAX_BYTES"},
	}, {
		args:    []string{"serve", "-h"},
		want:    []string{"HTTP_ADDR", "WEBHOOK_AUTH"},
		notWant: nil,
	}, {
		args: []string{"ingest", "--help"},
		want: []string{"HTTP_ADDR", "NATS_URL", "WEBHOOK_AUTH", "WEBHOOK_TOKEN", "WEBHOOK_API_KEY_SHA256", "VERIFEYE_API_KEY", "INGEST_PUBLISH_TIMEOUT",
			"SPOOL", "SPOOL_AFTER", "SPOOL_MAX_BYTES", "DATA_DIR"},
		notWant: []string{"NATS_EMBEDDED_ADDR", "ENRICH_CONCURRENCY"},
	}, {
		args: []string{"version"},
		want: []string{"verifeye-bridge "},
	}}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			t.Parallel()
			r := runBin(t, userEnv(), tc.args...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("verifeye-bridge %v: exit %d, stderr %q; want 0 and nothing", tc.args, r.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("verifeye-bridge %v: stdout lacks %q:\n%s", tc.args, w, r.stdout)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(r.stdout, w) {
					t.Errorf("verifeye-bridge %v: stdout lists %q, which it does not read:\n%s", tc.args, w, r.stdout)
				}
			}
		})
	}
}

// TestEmbeddedSyncsEveryWrite: by default the embedded server of serve and dev
// has every write synced before it is acknowledged (NATS_EMBEDDED_SYNC=always):
// where syncfs(2) exists, by the roles through the connection's Syncer (group
// commit), the server itself syncing only on its timer; elsewhere by the
// server (SyncAlways). A duration turns both off, as documented.
func TestEmbeddedSyncsEveryWrite(t *testing.T) {
	log := ingestWatchLogs(t, "embedded NATS server started")
	t.Setenv("NATS_EMBEDDED_SYNC", "") // restored when the test ends
	os.Unsetenv("NATS_EMBEDDED_SYNC")
	var def embeddedConfig
	if err := process(&def); err != nil {
		t.Fatalf("process: %v", err)
	}
	tests := []struct {
		name  string
		sync  string
		group string // NATS_EMBEDDED_GROUP_SYNC
		want  bool
	}{
		{"default", def.EmbeddedSync, def.EmbeddedGroupSync, true},
		{"always", "always", "on", true},
		{"always, the server syncing each write", "always", "off", true},
		{"interval", "1s", "on", false},
	}
	for _, tc := range tests {
		cfg := embeddedConfig{EmbeddedAddr: "-", DataDir: t.TempDir(), EmbeddedSync: tc.sync, EmbeddedGroupSync: tc.group}
		if err := cfg.validate(); err != nil {
			t.Fatalf("%s: validate: %v", tc.name, err)
		}
		zl := zerolog.New(log)
		conn, err := connect(commonConfig{Logging: Logging{LogLevel: "info", LogFormat: "json"}}, &cfg, "sync-test", zl)
		if err != nil {
			t.Fatalf("%s: connect: %v", tc.name, err)
		}
		jsc := conn.ns().JetStreamConfig()
		grouped := conn.sync() != nil
		if grouped {
			// The roles' sync works on this store.
			if err := conn.sync()(); err != nil {
				t.Errorf("%s: Sync: %v", tc.name, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn.close(ctx)
		cancel()
		if jsc == nil {
			t.Fatalf("%s: the embedded server has no JetStream", tc.name)
		}
		switch {
		case !tc.want && (jsc.SyncAlways || grouped):
			t.Errorf("%s (NATS_EMBEDDED_SYNC=%q): SyncAlways %v, group sync %v; want neither", tc.name, tc.sync, jsc.SyncAlways, grouped)
		case tc.want && tc.group == "off" && (grouped || !jsc.SyncAlways):
			t.Errorf("%s: group sync %v, server SyncAlways %v; want the server syncing each write", tc.name, grouped, jsc.SyncAlways)
		case tc.want && tc.group == "on" && grouped != natsembed.GroupSyncSupported:
			t.Errorf("%s (NATS_EMBEDDED_SYNC=%q): group sync %v, want %v (syncfs here: %v)", tc.name, tc.sync, grouped, natsembed.GroupSyncSupported, natsembed.GroupSyncSupported)
		case tc.want && grouped && (jsc.SyncAlways || jsc.SyncInterval != natsembed.GroupSyncInterval):
			t.Errorf("%s: group sync with the server's SyncAlways %v, SyncInterval %v; want false, %v", tc.name, jsc.SyncAlways, jsc.SyncInterval, natsembed.GroupSyncInterval)
		case tc.want && !grouped && !jsc.SyncAlways:
			t.Errorf("%s (NATS_EMBEDDED_SYNC=%q): nothing syncs every write", tc.name, tc.sync)
		}
	}

	// natsembed's zero value, which tests and other callers get.
	ns, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Addr: "-"})
	if err != nil {
		t.Fatalf("natsembed.Start: %v", err)
	}
	defer natsembed.Shutdown(ns)
	if jsc := ns.JetStreamConfig(); jsc == nil || !jsc.SyncAlways {
		t.Errorf("natsembed zero Options: JetStreamConfig = %+v, want SyncAlways", jsc)
	}
}
