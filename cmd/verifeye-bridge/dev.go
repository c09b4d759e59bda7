package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/simulator"
)

// cmdDev runs serve against a built-in VerifEye simulator on loopback, with
// embedded NATS, and needs no configuration at all. It never calls the real API.
func cmdDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := serviceConfig{name: "dev", embedded: &embeddedConfig{}, ingest: &ingestConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}, internal: &internalAPIConfig{}}
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	if err := parseFlags(fs, args, stdout,
		"Try the whole pipeline on this machine with no account and no configuration:\n"+
			"serve (ingest, enricher, embedded NATS under DATA_DIR) plus a built-in VerifEye\n"+
			"simulator on loopback. VERIFEYE_API_URL is ignored: dev never calls the real\n"+
			"API. VERIFEYE_API_KEY is the simulator's key and the webhook key; without it a\n"+
			"key is generated and printed. HTTP_ADDR defaults to 127.0.0.1:8080, LOG_FORMAT\n"+
			"to console, LOG_LEVEL to warn and RECONCILE_AFTER to 20s. The session ID picks the outcome: see send.",
		"verifeye-bridge dev", cfg.specs()...); err != nil {
		return err
	}
	generated := false
	if v, ok := os.LookupEnv("VERIFEYE_API_KEY"); !ok || v == "" {
		cfg.api.APIKey, generated = secret(newAPIKey()), true
	}
	if err := cfg.load(); err != nil {
		return err
	}
	// Dev's own defaults, where the variable is not set: loopback only (the key
	// is printed), and logs that leave the human lines readable.
	for env, set := range map[string]func(){
		"HTTP_ADDR":  func() { cfg.common.HTTPAddr = "127.0.0.1:8080" },
		"LOG_FORMAT": func() { cfg.common.LogFormat = "console" },
		"LOG_LEVEL":  func() { cfg.common.LogLevel = "warn" },
		// Reconciliation within a demo's patience.
		"RECONCILE_AFTER": func() { cfg.enrich.ReconcileAfter = 20 * time.Second },
	} {
		if _, ok := os.LookupEnv(env); !ok {
			set()
		}
	}
	log := newLogger(stderr, cfg.common.Logging)
	if cfg.api.APIURL != "" {
		log.Warn().Msg("VERIFEYE_API_URL is ignored: dev always uses its built-in simulator")
	}
	key := cfg.api.APIKey.value()

	simLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("simulator: %w", err)
	}
	// The simulator outlives serve: enrichments finishing during shutdown
	// still call it.
	simCtx, stopSim := context.WithCancel(context.WithoutCancel(ctx))
	simDone := make(chan error, 1)
	go func() {
		simDone <- serveSimulator(simCtx, simulator.New(key, simulator.Options{}), simLn, log.With().Str("component", "simulator").Logger())
	}()
	defer func() {
		stopSim()
		<-simDone
	}()
	var deps serviceDeps
	deps.client, err = verifeye.New("http://"+simLn.Addr().String(), key, verifeye.Options{Timeout: cfg.api.APITimeout, UserAgent: "verifeye-bridge/" + version, HTTPClient: tracedHTTPClient()})
	if err != nil {
		return fmt.Errorf("simulator client: %w", err)
	}

	ln, err := net.Listen("tcp", cfg.common.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: %w", err)
	}
	deps.onReady = func(addr string) {
		waitReady(ctx, addr)
		if ctx.Err() == nil {
			devBanner(stdout, cfg, addr, key, generated)
		}
	}
	return serve(ctx, cfg, deps, ln, log)
}

// newAPIKey returns a random key for the simulator: 32 hex digits.
func newAPIKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// waitReady polls GET /readyz at addr until it answers 200, for up to 30 s.
func waitReady(ctx context.Context, addr string) {
	url := "http://" + loopbackAddr(addr) + "/readyz"
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// loopbackAddr returns addr with an unspecified host (":8080", "0.0.0.0:8080",
// "[::]:8080") replaced by 127.0.0.1, for URLs a person can paste.
func loopbackAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// devBanner prints the human lines of dev: where to send webhooks, with which
// key, where NATS is, and commands ready to paste.
func devBanner(w io.Writer, cfg serviceConfig, addr, key string, generated bool) {
	base := "http://" + loopbackAddr(addr)
	hook := base + "/webhooks/verifeye"
	natsURL := "none (NATS_EMBEDDED_ADDR=-)"
	switch {
	case cfg.common.NATSURL != "":
		natsURL = redactURLs(cfg.common.NATSURL)
	case cfg.embedded.EmbeddedAddr != "-":
		natsURL = "nats://" + loopbackAddr(cfg.embedded.EmbeddedAddr)
		// nats.url holds the listener's real address: the port the
		// server got when NATS_EMBEDDED_ADDR asks for port 0.
		if s, _, err := readNATSURL(cfg.embedded.DataDir); err == nil {
			if u, err := url.Parse(s); err == nil {
				natsURL = "nats://" + u.Host
			}
		}
	}

	keyLine := key + "   (generated: the simulator's key, and the X-API-Key webhooks must send)"
	keyArg := key
	if !generated {
		keyLine = "$VERIFEYE_API_KEY   (yours: the simulator's key and the webhook key; never sent to VerifEye)"
		keyArg = "$VERIFEYE_API_KEY"
	}
	self := invokedAs(os.Args[0])
	sendCmd := self + " send --url " + base + " --api-key " + keyArg
	curlAuth := " -H 'X-API-Key: " + keyArg + "'"
	if !generated {
		curlAuth = ` -H "X-API-Key: $VERIFEYE_API_KEY"`
	}
	switch cfg.ingest.WebhookAuth {
	case "token":
		keyLine += "\n  webhook auth  WEBHOOK_AUTH=token: send ?token=$WEBHOOK_TOKEN or Authorization: Bearer $WEBHOOK_TOKEN"
		sendCmd = self + " send --url " + base + ` --token "$WEBHOOK_TOKEN"`
		curlAuth = ` -H "Authorization: Bearer $WEBHOOK_TOKEN"`
	case "none":
		keyLine += "\n  webhook auth  WEBHOOK_AUTH=none: webhooks need no credentials"
		sendCmd = self + " send --url " + base
		curlAuth = ""
	}
	watchCmd := self + " watch"
	urlFile := ""
	switch {
	case cfg.common.NATSURL != "":
		if natsURL != defaultToolNATSURL && strings.HasPrefix(natsURL, "nats://") {
			watchCmd = "NATS_URL=" + natsURL + " " + self + " watch"
		}
	case cfg.embedded.EmbeddedAddr != "-":
		// The tools find the embedded server, and its credentials, in
		// DATA_DIR/nats.url; DATA_DIR defaults to ./data for them too.
		dir := cfg.embedded.DataDir
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
		urlFile = filepath.Join(dir, natsURLFile)
		if filepath.Clean(cfg.embedded.DataDir) != "data" {
			watchCmd = "DATA_DIR=" + shellQuote(dir) + " " + self + " watch"
		}
	}
	sample := newSessionID()
	sample = sample[:24] + "0000" + sample[28:] // last group 0000…: passes

	var b strings.Builder
	fmt.Fprintf(&b, "\nverifeye-bridge dev is ready: ingest, enricher, NATS JetStream and a simulated\n")
	fmt.Fprintf(&b, "VerifEye API on this machine (the real API is never called).\n\n")
	fmt.Fprintf(&b, "  webhook URL   %s   (or %s/<source>)\n", hook, hook)
	fmt.Fprintf(&b, "  API key       %s\n", keyLine)
	fmt.Fprintf(&b, "  NATS          %s", natsURL)
	if cfg.common.NATSURL == "" {
		fmt.Fprintf(&b, "   (JetStream data in %s)", cfg.embedded.DataDir)
	}
	if urlFile != "" {
		fmt.Fprintf(&b, "\n  NATS login    in %s   (a nats:// URL with user and password; watch and dlq read it)", urlFile)
	}
	fmt.Fprintf(&b, "\n\nSend a webhook:\n  %s\n", sendCmd)
	fmt.Fprintf(&b, "  curl -i %s -H 'Content-Type: application/json'%s -d '{\"event\":\"VerificationCompleted\",\"verificationSessionId\":\"%s\"}'\n", hook, curlAuth, sample)
	fmt.Fprintf(&b, "Watch the outcomes (in another terminal):\n  %s\n", watchCmd)
	fmt.Fprintf(&b, "Pick the outcome with the last group of the session ID (send --session <id>):\n")
	fmt.Fprintf(&b, "  …-0000…     passed                 …-fa11ed…   failed (liveness)\n")
	fmt.Fprintf(&b, "  …-7e57…     passed, one verifier not_executed\n")
	fmt.Fprintf(&b, "  …-404404…   never found: retried, then dead-lettered (%s dlq list)\n", self)
	fmt.Fprintf(&b, "  …-500500…   API error 500: retried with backoff, then dead-lettered\n")
	fmt.Fprintf(&b, "  any other   passed or failed, decided by a hash of the ID\n")
	if cfg.internal != nil && cfg.internal.APIAddr != "-" {
		apiBase := "http://" + loopbackAddr(cfg.internal.APIAddr)
		auth := ""
		if cfg.internal.APIToken != "" {
			auth = ` -H "Authorization: Bearer $API_TOKEN"`
		}
		fmt.Fprintf(&b, "Sessions (internal API on %s):\n", apiBase)
		fmt.Fprintf(&b, "  %s session <id>                      the whole path of a session\n", self)
		fmt.Fprintf(&b, "  curl%s '%s/v1/sessions/<id>?wait=30s'   its outcome, as soon as it exists\n", auth, apiBase)
		fmt.Fprintf(&b, "  %s --forget 3   expect 3 sessions and \"forget\" their webhooks:\n", sendCmd)
		fmt.Fprintf(&b, "                 the bridge reconciles them after RECONCILE_AFTER (%v)\n", cfg.enrich.ReconcileAfter)
	}
	fmt.Fprintf(&b, "Stop with Ctrl-C.\n")
	_, _ = io.WriteString(w, b.String())
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@%+=,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// invokedAs returns how to run this program again from another terminal, for
// the commands dev prints: "go run ./cmd/verifeye-bridge" under `go run` (whose
// binary lives in a temporary build directory), the path it was started by
// (bin/verifeye-bridge), or its name when it was found on PATH.
func invokedAs(arg0 string) string {
	switch {
	case strings.Contains(arg0, "go-build"):
		return "go run ./cmd/verifeye-bridge"
	case strings.ContainsRune(arg0, filepath.Separator):
		return arg0
	}
	return "verifeye-bridge"
}
