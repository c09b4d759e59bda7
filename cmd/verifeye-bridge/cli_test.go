package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/redrive"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// The CLI tests run the built binary as a user would. It is built once, on
// first use, into a directory TestMain removes.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary returns the path of the built verifeye-bridge.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "verifeye-bridge-cli-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "verifeye-bridge")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatalf("building the binary: %v", binErr)
	}
	return binPath
}

// userEnv is the environment of a user with nothing configured, plus extra.
func userEnv(extra ...string) []string {
	// No internal API unless a test asks: parallel processes would all take its default port.
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "API_ADDR=-"}, extra...)
}

type cliResult struct {
	code           int
	stdout, stderr string
}

// runBin runs the binary to completion (at most a minute).
func runBin(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = env
	cmd.Dir = t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	checkNoCrash(t, args, r.stderr)
	return r
}

// mustRun runs the binary and fails the test unless it exits 0.
func mustRun(t *testing.T, env []string, args ...string) string {
	t.Helper()
	r := runBin(t, env, args...)
	if r.code != 0 {
		t.Fatalf("verifeye-bridge %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func checkNoCrash(t *testing.T, args []string, stderr string) {
	t.Helper()
	for _, bad := range []string{"goroutine ", "panic"} {
		if strings.Contains(stderr, bad) {
			t.Errorf("verifeye-bridge %s: stderr contains %q:\n%s", strings.Join(args, " "), bad, stderr)
		}
	}
}

// freeAddr returns a loopback address nothing listens on, as far as a test
// can tell: for a peer that must be down (NATS_URL of a NATS that is not
// running, a URL nobody serves). A process the test starts binds
// 127.0.0.1:0 instead and reports its address (startedWriter, nats.url).
func freeAddr(t *testing.T) string {
	return "127.0.0.1:" + strconv.Itoa(natstest.FreePort(t))
}

// anyPort is the HTTP_ADDR of a process a test starts: a port the kernel
// picks, which the process reports in its "verifeye-bridge started" line.
const anyPort = "HTTP_ADDR=127.0.0.1:0"

// startedWriter passes a process's output on to w and sends the http_addr of
// its first JSON "verifeye-bridge started" line on addr: the address its
// listener really got, with HTTP_ADDR=127.0.0.1:0.
type startedWriter struct {
	w    io.Writer
	addr chan string // buffered: one address
	mu   sync.Mutex
	line []byte // the unfinished line
	sent bool
}

func newStartedWriter(w io.Writer) *startedWriter {
	return &startedWriter{w: w, addr: make(chan string, 1)}
}

func (s *startedWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	if !s.sent {
		s.line = append(s.line, p...)
		for !s.sent {
			i := bytes.IndexByte(s.line, '\n')
			if i < 0 {
				break
			}
			var l struct {
				Message  string `json:"message"`
				HTTPAddr string `json:"http_addr"`
			}
			if json.Unmarshal(s.line[:i], &l) == nil && l.Message == "verifeye-bridge started" && l.HTTPAddr != "" {
				s.addr <- l.HTTPAddr
				s.sent, s.line = true, nil
				break
			}
			s.line = s.line[i+1:]
		}
	}
	s.mu.Unlock()
	return s.w.Write(p)
}

// waitStarted returns the address of the "verifeye-bridge started" line, or
// fails t when the process exits first (done closed) or 30 s pass; logs
// returns the output to show.
func (s *startedWriter) waitStarted(t *testing.T, done <-chan struct{}, logs func() string) string {
	t.Helper()
	select {
	case a := <-s.addr:
		return a
	case <-done:
		t.Fatalf("verifeye-bridge exited before it logged \"verifeye-bridge started\"; logs:\n%s", logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("verifeye-bridge logged no \"verifeye-bridge started\" with http_addr within 30s; logs:\n%s", logs())
	}
	return ""
}

// TestCLIDevSendWatch: with nothing configured, dev runs the whole pipeline; a
// webhook posted with send comes out of watch as the session's outcome.
func TestCLIDevSendWatch(t *testing.T) {
	t.Parallel()
	// Both listeners take a free port: the banner says which.
	// VERIFEYE_API_URL points nowhere: dev must ignore it and use its simulator.
	dataDir := t.TempDir()
	env := userEnv(anyPort, "NATS_EMBEDDED_ADDR=127.0.0.1:0", "DATA_DIR="+dataDir, "VERIFEYE_API_URL=http://127.0.0.1:1")
	dev := exec.Command(binary(t), "dev")
	dev.Env, dev.Dir = env, t.TempDir()
	var stderr bytes.Buffer
	dev.Stderr = &stderr
	out, err := dev.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	banner := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if !sent && strings.Contains(sc.Text(), "Stop with Ctrl-C") {
				banner <- b.String()
				sent = true
			}
		}
		exited <- dev.Wait()
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = dev.Process.Kill()
			<-exited
		}
	})

	var text string
	select {
	case text = <-banner:
	case err := <-exited:
		stopped = true
		t.Fatalf("dev exited before it was ready: %v\nstderr:\n%s", err, stderr.String())
	case <-time.After(45 * time.Second):
		t.Fatalf("dev printed no banner within 45s; stderr:\n%s", stderr.String())
	}
	m := regexp.MustCompile(`API key\s+([0-9a-f]{32})\s`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("dev banner has no generated API key:\n%s", text)
	}
	key := m[1]
	m = regexp.MustCompile(`webhook URL\s+http://(127\.0\.0\.1:[1-9][0-9]*)/webhooks/verifeye\s`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("dev banner has no webhook URL on the port HTTP_ADDR=127.0.0.1:0 got:\n%s", text)
	}
	httpAddr := m[1]
	// The banner's NATS address is the one the server listens on, as in
	// nats.url (never port 0).
	natsAddr := embeddedAddr(t, dataDir)
	for _, want := range []string{
		"http://" + httpAddr + "/webhooks/verifeye",
		"nats://" + natsAddr,
		"NATS login    in " + filepath.Join(dataDir, natsURLFile),
		"DATA_DIR=" + dataDir + " " + binary(t) + " watch",
		"verifeye-bridge send --url http://" + httpAddr + " --api-key " + key,
		"curl -i http://" + httpAddr + "/webhooks/verifeye -H 'Content-Type: application/json' -H 'X-API-Key: " + key + "'",
		"fa11ed", "404404",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("dev banner lacks %q:\n%s", want, text)
		}
	}

	session := "3f2a9c1e-0000-4000-8000-00000000d001"
	sendOut := mustRun(t, userEnv(), "send", "--url", "http://"+httpAddr, "--api-key", key, "--session", session)
	if !strings.HasPrefix(sendOut, "202 ") || strings.Count(sendOut, "\n") != 1 {
		t.Errorf("send: got %q, want one line starting with 202", sendOut)
	}
	// The embedded server refuses a client without the credentials of
	// nats.url; watch, as the banner prints it, finds them through DATA_DIR.
	if r := runBin(t, userEnv("NATS_URL=nats://"+natsAddr), "watch", "--count", "1", "--timeout", "5s"); r.code != 1 || !strings.Contains(r.stderr, "Authorization Violation") {
		t.Errorf("watch without credentials: exit %d, stderr %q; want 1 and an authorization violation", r.code, r.stderr)
	}
	watchOut := mustRun(t, userEnv("DATA_DIR="+dataDir), "watch", "--json", "--since", "1m", "--count", "1", "--timeout", "30s")
	var ev struct {
		ID, Subject, Type, VerifeyeOutcome string
	}
	if err := json.Unmarshal([]byte(watchOut), &ev); err != nil || strings.Count(watchOut, "\n") != 1 {
		t.Fatalf("watch --json: got %q, want one CloudEvent line (%v)", watchOut, err)
	}
	want := struct{ ID, Subject, Type, VerifeyeOutcome string }{session, session, "ai.realeyes.verifeye.verification.completed", "passed"}
	if diff := cmp.Diff(want, ev); diff != "" {
		t.Errorf("watch --json: CloudEvent mismatch (-want +got):\n%s", diff)
	}

	if err := dev.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("dev after SIGTERM: %v, want exit 0; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("dev did not stop within 30s of SIGTERM")
	}
	checkNoCrash(t, []string{"dev"}, stderr.String())
}

// cliPipeline is serve running in-process against a test NATS server and a
// verifeyetest API the test controls.
type cliPipeline struct {
	nats *natstest.Server
	js   jetstream.JetStream
	sim  *verifeyetest.Server
	url  string // the bridge's base URL
	key  string
	env  []string // a user's environment pointing the tools at this NATS
}

func startPipeline(t *testing.T) *cliPipeline {
	t.Helper()
	p := &cliPipeline{nats: natstest.Start(t), key: "cli-test-key"}
	p.js = p.nats.JetStream()
	p.sim = verifeyetest.Start(p.key)
	t.Cleanup(p.sim.Close)
	p.env = userEnv("NATS_URL=" + p.nats.URL())

	cfg := serviceConfig{name: "serve", ingest: &ingestConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}}
	if err := process(cfg.specs()...); err != nil {
		t.Fatal(err)
	}
	cfg.common.NATSURL = p.nats.URL()
	cfg.common.SubjectPrefix = "verifeye"
	cfg.common.ShutdownGrace = 10 * time.Second
	cfg.ingest.WebhookAuth, cfg.ingest.WebhookKeyHash = "api-key", ""
	cfg.api.APIKey, cfg.api.APIURL, cfg.api.APITimeout = secret(p.key), p.sim.URL, 5*time.Second
	e := cfg.enrich
	e.Concurrency, e.RateLimit, e.MaxAttempts, e.AckWait = 4, 0, 3, time.Second
	e.BackoffBase, e.BackoffMax, e.NotFoundDelay, e.NotFoundAttempts = 10*time.Millisecond, 50*time.Millisecond, 10*time.Millisecond, 2

	p.url = startServe(t, cfg, serviceDeps{}, false, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	natstest.WaitFor(t, 10*time.Second, func() error {
		for _, s := range []string{streams.Webhooks, streams.Results, streams.DLQ} {
			if _, err := p.js.Stream(context.Background(), s); err != nil {
				return err
			}
		}
		return nil
	})
	return p
}

func (p *cliPipeline) send(t *testing.T, session string) {
	t.Helper()
	if out := mustRun(t, userEnv("VERIFEYE_API_KEY="+p.key), "send", "--url", p.url, "--session", session); !strings.HasPrefix(out, "202 ") {
		t.Fatalf("send %s: got %q, want 202", session, out)
	}
}

func (p *cliPipeline) waitCount(t *testing.T, stream string, want int) {
	t.Helper()
	natstest.WaitFor(t, 20*time.Second, func() error {
		if got := natstest.Count(t, p.js, stream); got != want {
			return fmt.Errorf("%s holds %d messages, want %d", stream, got, want)
		}
		return nil
	})
}

type streamCounts struct{ Webhooks, Results, DLQ int }

func (p *cliPipeline) counts(t *testing.T) streamCounts {
	t.Helper()
	return streamCounts{natstest.Count(t, p.js, streams.Webhooks), natstest.Count(t, p.js, streams.Results), natstest.Count(t, p.js, streams.DLQ)}
}

// cloudEvent is the part of an outcome the tests compare.
type cloudEvent struct {
	ID, Subject string
}

func cloudEvents(t *testing.T, msgs []jetstream.Msg) []cloudEvent {
	t.Helper()
	var out []cloudEvent
	for _, m := range msgs {
		var ev cloudEvent
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatalf("outcome on %s is not JSON: %v", m.Subject(), err)
		}
		out = append(out, ev)
	}
	return out
}

// TestCLIDLQReplay: a session dead-lettered by an API failure that has since
// been fixed yields exactly one outcome when replayed, leaves the DLQ empty,
// and replaying again adds nothing.
func TestCLIDLQReplay(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	session := "5b7c1d2e-0000-4000-8000-0000000d1001"
	p.sim.Script(session, verifeyetest.Status(400)) // once: the next call gets the default 200
	p.send(t, session)
	p.waitCount(t, streams.DLQ, 1)

	list := mustRun(t, p.env, "dlq", "list")
	for _, want := range []string{session, "bad_request", "400", "1 entries"} {
		if !strings.Contains(list, want) {
			t.Errorf("dlq list: output lacks %q:\n%s", want, list)
		}
	}
	if out := mustRun(t, p.env, "dlq", "list", "--reason", "not_found"); !strings.Contains(out, "no DLQ entries match") {
		t.Errorf("dlq list --reason not_found: got %q, want no entries", out)
	}

	before := p.counts(t)
	dry := mustRun(t, p.env, "dlq", "replay", "--session", session, "--dry-run")
	if !strings.Contains(dry, "would replay 1,") {
		t.Errorf("dlq replay --dry-run: got %q, want it to count 1 entry", dry)
	}
	if got := p.counts(t); got != before {
		t.Errorf("dlq replay --dry-run changed the streams: got %+v, want %+v", got, before)
	}

	out := mustRun(t, p.env, "dlq", "replay", "--session", session)
	if !strings.Contains(out, "replayed 1,") {
		t.Errorf("dlq replay: got %q, want 1 replayed", out)
	}
	p.waitCount(t, streams.Results, 1)
	if got, want := p.counts(t), (streamCounts{Webhooks: 2, Results: 1, DLQ: 0}); got != want {
		t.Errorf("after dlq replay: got %+v, want %+v", got, want)
	}
	// A redriven session never had an outcome: it gets the normal one.
	if got, want := cloudEvents(t, natstest.Messages(t, p.js, streams.Results)), []cloudEvent{{session, session}}; !cmp.Equal(got, want) {
		t.Errorf("outcome after dlq replay: got %+v, want %+v", got, want)
	}

	again := mustRun(t, p.env, "dlq", "replay", "--session", session)
	if !strings.Contains(again, "replayed 0,") {
		t.Errorf("second dlq replay: got %q, want 0 replayed", again)
	}
	if got, want := p.counts(t), (streamCounts{Webhooks: 2, Results: 1, DLQ: 0}); got != want {
		t.Errorf("after the second dlq replay: got %+v, want %+v", got, want)
	}
}

// TestRedriveTwice: redriving the same DLQ entry twice (as when the delete
// after the first redrive failed) stores one webhook and yields one outcome.
func TestRedriveTwice(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	session := "5b7c1d2e-0000-4000-8000-0000000d2002"
	p.sim.Script(session, verifeyetest.Status(400))
	p.send(t, session)
	p.waitCount(t, streams.DLQ, 1)

	ctx := context.Background()
	subjects, _ := streams.NewSubjects("verifeye")
	dlq, err := p.js.Stream(ctx, streams.DLQ)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := redrive.DeadLetters(ctx, dlq, subjects, redrive.Filter{SessionID: session})
	if err != nil || len(entries) != 1 {
		t.Fatalf("redrive.DeadLetters: got %d entries, %v; want 1", len(entries), err)
	}
	var dups []bool
	for range 2 {
		ack, err := redrive.Redrive(ctx, p.js, dlq, subjects, entries[0], nil)
		if err != nil {
			t.Fatalf("redrive: %v", err)
		}
		dups = append(dups, ack.Duplicate)
	}
	if want := []bool{false, true}; !cmp.Equal(dups, want) {
		t.Errorf("redrive twice: PubAck.Duplicate got %v, want %v", dups, want)
	}
	p.waitCount(t, streams.Results, 1)
	if got, want := p.counts(t), (streamCounts{Webhooks: 2, Results: 1, DLQ: 0}); got != want {
		t.Errorf("after two redrives: got %+v, want %+v", got, want)
	}
}

// TestCLIReplayAndWatch: replay re-publishes every outcome of the window
// exactly once more, as new CloudEvents; --dry-run and a repeated replay change
// nothing; watch shows and filters them.
func TestCLIReplayAndWatch(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	sessions := []string{
		"7c9e6679-0000-4000-8000-000000000e01", // passed
		"7c9e6679-0000-4000-8000-fa11ed000e02", // failed
		"7c9e6679-0000-4000-8000-7e5700000e03", // passed, one verifier not_executed
	}
	for _, s := range sessions {
		p.send(t, s)
	}
	p.waitCount(t, streams.Results, 3)

	dry := mustRun(t, p.env, "replay", "--since", "1m", "--dry-run")
	if !strings.Contains(dry, "would replay 3 webhooks") {
		t.Errorf("replay --dry-run: got %q, want 3", dry)
	}
	if got, want := p.counts(t), (streamCounts{Webhooks: 3, Results: 3}); got != want {
		t.Errorf("replay --dry-run changed the streams: got %+v, want %+v", got, want)
	}

	out := mustRun(t, p.env, "replay", "--since", "1m")
	if !strings.Contains(out, "replayed 3 webhooks") {
		t.Errorf("replay: got %q, want 3 replayed", out)
	}
	p.waitCount(t, streams.Results, 6)
	all := natstest.Messages(t, p.js, streams.Results)
	firsts, replays := cloudEvents(t, all[:3]), cloudEvents(t, all[3:])
	got := map[string]int{}
	for _, ev := range replays {
		if ev.ID == ev.Subject || !strings.HasPrefix(ev.ID, ev.Subject+":replay:") {
			t.Errorf("replayed outcome of %s has id %q, want %s:replay:<seq>", ev.Subject, ev.ID, ev.Subject)
		}
		got[ev.Subject]++
	}
	want := map[string]int{}
	for i, s := range sessions {
		want[s] = 1
		if firsts[i] != (cloudEvent{s, s}) {
			t.Errorf("first outcome %d: got %+v, want id and subject %s", i, firsts[i], s)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("replayed outcomes per session (-want +got):\n%s", diff)
	}

	again := mustRun(t, p.env, "replay", "--since", "1m")
	if !strings.Contains(again, "replayed 0 webhooks") {
		t.Errorf("second replay: got %q, want 0 replayed", again)
	}
	if got, want := p.counts(t), (streamCounts{Webhooks: 6, Results: 6}); got != want {
		t.Errorf("after a second replay: got %+v, want %+v", got, want)
	}

	// watch: the failed session, first and replayed, in human lines.
	lines := strings.Split(strings.TrimSpace(mustRun(t, p.env, "watch", "--since", "1m", "--outcome", "failed", "--count", "2", "--timeout", "20s")), "\n")
	if len(lines) != 2 {
		t.Fatalf("watch --outcome failed: got %d lines, want 2:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		for _, w := range []string{"default", "failed", sessions[1], "livenessResult=failed"} {
			if !strings.Contains(l, w) {
				t.Errorf("watch line %d: %q lacks %q", i, l, w)
			}
		}
		if isReplay := strings.Contains(l, "(replay "); isReplay != (i == 1) {
			t.Errorf("watch line %d: %q marked as replay: %v, want %v", i, l, isReplay, i == 1)
		}
	}
	// --seq starts at a sequence: the three replays.
	jsonOut := mustRun(t, p.env, "watch", "--seq", "4", "--json", "--count", "3", "--timeout", "20s")
	var fromSeq []string
	for _, l := range strings.Split(strings.TrimSpace(jsonOut), "\n") {
		var ev cloudEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("watch --json line %q: %v", l, err)
		}
		fromSeq = append(fromSeq, ev.ID)
	}
	var wantIDs []string
	for _, ev := range replays {
		wantIDs = append(wantIDs, ev.ID)
	}
	if diff := cmp.Diff(wantIDs, fromSeq); diff != "" {
		t.Errorf("watch --seq 4: ids (-want +got):\n%s", diff)
	}
	// Nothing new arrives: a --count not reached within --timeout is a failure.
	r := runBin(t, p.env, "watch", "--count", "1", "--timeout", "500ms")
	if r.code != 1 || !strings.Contains(r.stderr, "timed out") {
		t.Errorf("watch with nothing new: exit %d, stderr %q; want 1 and a timeout", r.code, r.stderr)
	}
}

// TestCLISendBurst: a burst to one session is one acceptance and duplicates.
func TestCLISendBurst(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	session := "0d1e2f3a-0000-4000-8000-000000000b01"
	out := mustRun(t, userEnv("VERIFEYE_API_KEY="+p.key), "send", "--url", p.url, "--session", session, "--count", "4", "--rate", "100", "--source", "shop")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		t.Fatalf("send --count 4: got %d lines, want 4 answers and a summary:\n%s", len(lines), out)
	}
	if !strings.HasPrefix(lines[4], "sent 4, accepted 1, duplicates 3, failed 0 in ") {
		t.Errorf("send --count 4 summary: got %q", lines[4])
	}
	p.waitCount(t, streams.Results, 1)
	if msgs := natstest.Messages(t, p.js, streams.Results); msgs[0].Subject() != "verifeye.result.shop.passed" {
		t.Errorf("outcome subject: got %q, want verifeye.result.shop.passed", msgs[0].Subject())
	}

	r := runBin(t, userEnv("VERIFEYE_API_KEY=wrong"), "send", "--url", p.url)
	if r.code != 1 || !strings.HasPrefix(r.stdout, "401 ") {
		t.Errorf("send with a wrong key: exit %d, stdout %q; want 1 and a 401 line", r.code, r.stdout)
	}
}

// TestCLIUsage: bad usage and missing servers give one line on stderr and
// exit 2 or 1, never a stack trace; --help works everywhere.
func TestCLIUsage(t *testing.T) {
	t.Parallel()
	noNATS := "NATS_URL=nats://" + freeAddr(t)
	noBridge := "http://" + freeAddr(t)
	tests := []struct {
		args     []string
		env      []string
		wantCode int
		wantErr  string
	}{
		{[]string{"send", "--bogus"}, nil, 2, "flag provided but not defined: -bogus"},
		{[]string{"send", "--count", "0"}, nil, 2, "--count 0"},
		{[]string{"send", "--url", "ftp://x"}, nil, 2, "--url"},
		{[]string{"send", "--url", noBridge}, nil, 1, "no bridge listening at " + noBridge},
		{[]string{"watch", "--since", "yesterday"}, nil, 2, `--since "yesterday"`},
		{[]string{"watch", "--since", "1h", "--seq", "3"}, nil, 2, "--since and --seq"},
		{[]string{"watch", "--outcome", "Not A Word"}, nil, 2, "--outcome"},
		{[]string{"watch", "--timeout", "2s"}, []string{noNATS}, 1, "cannot connect to NATS"},
		{[]string{"watch", "extra"}, nil, 2, `unexpected argument "extra"`},
		{[]string{"replay"}, nil, 2, "--since: required"},
		{[]string{"replay", "--since", "-5m"}, nil, 2, "want a positive duration"},
		{[]string{"replay", "--since", "1h"}, []string{noNATS}, 1, "cannot connect to NATS"},
		{[]string{"dlq"}, nil, 2, "want a subcommand"},
		{[]string{"dlq", "frob"}, nil, 2, `unknown subcommand "frob"`},
		{[]string{"dlq", "replay"}, nil, 2, "choose entries"},
		{[]string{"dlq", "replay", "--all", "--reason", "not_found"}, nil, 2, "--all: not with"},
		{[]string{"dlq", "list"}, []string{noNATS}, 1, "cannot connect to NATS"},
		{[]string{"dlq", "replay", "--all"}, []string{noNATS}, 1, "cannot connect to NATS"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "_"), func(t *testing.T) {
			t.Parallel()
			r := runBin(t, userEnv(tt.env...), tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("verifeye-bridge %v: exit %d, want %d (stderr %q)", tt.args, r.code, tt.wantCode, r.stderr)
			}
			if n := strings.Count(r.stderr, "\n"); n != 1 || !strings.Contains(r.stderr, tt.wantErr) {
				t.Errorf("verifeye-bridge %v: stderr %q, want one line containing %q", tt.args, r.stderr, tt.wantErr)
			}
		})
	}

	for _, args := range [][]string{{"dev"}, {"send"}, {"watch"}, {"dlq"}, {"dlq", "list"}, {"dlq", "replay"}, {"replay"}} {
		t.Run(strings.Join(args, "_")+"_help", func(t *testing.T) {
			t.Parallel()
			r := runBin(t, userEnv(), append(args, "--help")...)
			if r.code != 0 || !strings.Contains(r.stdout, "Example:") || r.stderr != "" {
				t.Errorf("verifeye-bridge %v --help: exit %d, stderr %q, stdout:\n%s\nwant exit 0 and an example", args, r.code, r.stderr, r.stdout)
			}
		})
	}
}

func TestInvokedAs(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/go-build123/b001/exe/verifeye-bridge": "go run ./cmd/verifeye-bridge",
		"bin/verifeye-bridge":                       "bin/verifeye-bridge",
		"/usr/local/bin/verifeye-bridge":            "/usr/local/bin/verifeye-bridge",
		"verifeye-bridge":                           "verifeye-bridge",
	} {
		if got := invokedAs(in); got != want {
			t.Errorf("invokedAs(%q) = %q, want %q", in, got, want)
		}
	}
}
