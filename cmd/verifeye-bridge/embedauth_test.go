package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// embeddedURL returns the URL a bridge with the embedded server wrote to
// dataDir/nats.url, waiting for it for up to 30 s.
func embeddedURL(t *testing.T, dataDir string) string {
	t.Helper()
	var u string
	natstest.WaitFor(t, 30*time.Second, func() error {
		var err error
		u, _, err = readNATSURL(dataDir)
		return err
	})
	return u
}

// embeddedAddr returns the host:port of the URL in dataDir/nats.url: where an
// embedded server started with port 0 listens.
func embeddedAddr(t *testing.T, dataDir string) string {
	t.Helper()
	u, err := url.Parse(embeddedURL(t, dataDir))
	if err != nil {
		t.Fatalf("nats.url: %v", err)
	}
	return u.Host
}

// startEmbeddedServe runs serve in-process with the embedded NATS server
// listening on natsAddr and storing in dataDir, against a verifeyetest API.
// It returns the bridge's base URL; the service stops when t ends.
func startEmbeddedServe(t *testing.T, dataDir, natsAddr, key string, logs *ingestLog, set func(*embeddedConfig)) string {
	t.Helper()
	api := verifeyetest.Start(key)
	t.Cleanup(api.Close)
	cfg := serviceConfig{name: "serve", embedded: &embeddedConfig{}, ingest: &ingestConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}}
	if err := process(cfg.specs()...); err != nil {
		t.Fatal(err)
	}
	cfg.common.NATSURL, cfg.common.SubjectPrefix, cfg.common.ShutdownGrace = "", "verifeye", 10*time.Second
	cfg.common.LogLevel = "debug"
	cfg.embedded.EmbeddedAddr, cfg.embedded.DataDir, cfg.embedded.EmbeddedSync = natsAddr, dataDir, "1s"
	cfg.embedded.EmbeddedUser, cfg.embedded.EmbeddedPass = "", ""
	if set != nil {
		set(cfg.embedded)
	}
	cfg.ingest.WebhookAuth, cfg.ingest.WebhookKeyHash = "api-key", ""
	cfg.api.APIKey, cfg.api.APIURL, cfg.api.APITimeout = secret(key), api.URL, 5*time.Second
	cfg.enrich.RateLimit, cfg.enrich.BackoffBase = 0, 10*time.Millisecond
	return startServe(t, cfg, serviceDeps{}, false, zerolog.New(logs).Level(zerolog.DebugLevel))
}

// TestEmbeddedNATSRequiresCredentials: the embedded server refuses clients
// without credentials (so nobody can publish a forged outcome on it); it
// writes DATA_DIR/nats.url, private to its owner, whose URL connects; the
// terminal tools use that file with NATS_URL unset; a restart reuses the
// credentials; the password never reaches the log.
func TestEmbeddedNATSRequiresCredentials(t *testing.T) {
	t.Parallel()
	// The server takes a free port; nats.url says which.
	dataDir, key := t.TempDir(), "embedded-auth-key"
	var firstURL string
	var logs ingestLog

	t.Run("first start", func(t *testing.T) {
		base := startEmbeddedServe(t, dataDir, "127.0.0.1:0", key, &logs, nil)
		natsAddr := embeddedAddr(t, dataDir)
		// The start line names the port the server got, not port 0.
		if want := `"listen":"` + natsAddr + `"`; !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %s; logs:\n%s", want, logs.String())
		}

		for _, u := range []string{"nats://" + natsAddr, "nats://bridge-x:wrong@" + natsAddr} {
			nc, err := nats.Connect(u, nats.Timeout(5*time.Second))
			if err == nil {
				// Whatever the server let through must not reach the results.
				_, perr := nc.Request("verifeye.result.default.passed", []byte(`{}`), time.Second)
				nc.Close()
				t.Fatalf("connect %s without the credentials: accepted (publish: %v); want an authorization violation", redactURLs(u), perr)
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("connect %s: %v; want an authorization violation", redactURLs(u), err)
			}
		}

		for _, name := range []string{natsURLFile, natsCredsFile} {
			fi, err := os.Stat(filepath.Join(dataDir, name))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v; want 0600", name, fi.Mode().Perm())
			}
		}
		raw, err := os.ReadFile(filepath.Join(dataDir, natsURLFile))
		if err != nil {
			t.Fatal(err)
		}
		firstURL = strings.TrimSuffix(string(raw), "\n")
		u, err := url.Parse(firstURL)
		if err != nil || strings.Count(string(raw), "\n") != 1 || u.Scheme != "nats" || u.Hostname() != "127.0.0.1" || u.Port() == "0" {
			t.Fatalf("nats.url = %q; want one line nats://user:password@127.0.0.1:<the port listened on>", redactURLs(firstURL))
		}
		password, _ := u.User.Password()
		if u.User.Username() == "" || len(password) < 32 {
			t.Fatalf("nats.url: user %q, a password of %d characters; want a generated user and a long password", u.User.Username(), len(password))
		}
		nc, err := nats.Connect(firstURL, nats.Timeout(5*time.Second))
		if err != nil {
			t.Fatalf("connect with nats.url: %v", err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		if _, err := js.Stream(context.Background(), streams.Results); err != nil {
			t.Errorf("stream %s with nats.url's credentials: %v", streams.Results, err)
		}

		// send posts over HTTP; watch finds the server through DATA_DIR alone.
		session := "a1b2c3d4-0000-4000-8000-00000000e001"
		if out := mustRun(t, userEnv("VERIFEYE_API_KEY="+key), "send", "--url", base, "--session", session); !strings.HasPrefix(out, "202 ") {
			t.Fatalf("send: got %q, want 202", out)
		}
		out := mustRun(t, userEnv("DATA_DIR="+dataDir), "watch", "--json", "--since", "1m", "--count", "1", "--timeout", "30s")
		var ev struct{ ID string }
		if err := json.Unmarshal([]byte(out), &ev); err != nil || ev.ID != session {
			t.Errorf("watch with DATA_DIR: got %q (%v); want the outcome of %s", out, err, session)
		}
		if list := mustRun(t, userEnv("DATA_DIR="+dataDir), "dlq", "list"); !strings.Contains(list, "no DLQ entries") {
			t.Errorf("dlq list with DATA_DIR: got %q", list)
		}
		if strings.Contains(logs.String(), password) {
			t.Errorf("the log contains the generated password")
		}
	})
	if firstURL == "" {
		t.FailNow()
	}

	t.Run("restart", func(t *testing.T) {
		startEmbeddedServe(t, dataDir, "127.0.0.1:0", key, &logs, nil)
		// A new port, the same credentials.
		got, err := url.Parse(embeddedURL(t, dataDir))
		if err != nil {
			t.Fatal(err)
		}
		first, _ := url.Parse(firstURL)
		if got.User.String() != first.User.String() {
			t.Errorf("after a restart nats.url = %q; want the first start's credentials, %q", redactURLs(got.String()), redactURLs(firstURL))
		}
		first.Host = got.Host
		nc, err := nats.Connect(first.String(), nats.Timeout(5*time.Second))
		if err != nil {
			t.Fatalf("connect with the first start's credentials after a restart: %v", err)
		}
		nc.Close()
	})
}

// TestEmbeddedNATSExplicitCredentials: NATS_EMBEDDED_USER and
// NATS_EMBEDDED_PASSWORD replace the generated credentials, in nats.url too,
// whatever characters the password holds.
func TestEmbeddedNATSExplicitCredentials(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	const user, password = "ops", "p@ss:w,rd/#?%é"
	var logs ingestLog
	startEmbeddedServe(t, dataDir, "127.0.0.1:0", "explicit-auth-key", &logs, func(c *embeddedConfig) {
		c.EmbeddedUser, c.EmbeddedPass = user, secret(password)
	})
	natsAddr := embeddedAddr(t, dataDir)
	u := embeddedURL(t, dataDir)
	nc, err := nats.Connect(u, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect with nats.url: %v", err)
	}
	nc.Close()
	// An operator's password is hashed at bcrypt's default cost, which the
	// race detector on a loaded machine can stretch past the server's first
	// PING (2 s): that connection fails with "expected 'PONG', got 'PING'" and
	// a new one is tried, until a deadline.
	deadline := time.Now().Add(30 * time.Second)
	for {
		nc, err = nats.Connect("nats://"+natsAddr, nats.UserInfo(user, password), nats.Timeout(5*time.Second))
		if err == nil || !strings.Contains(err.Error(), "expected 'PONG'") || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("connect as NATS_EMBEDDED_USER: %v", err)
	}
	nc.Close()
	if _, err := os.Stat(filepath.Join(dataDir, natsCredsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s with explicit credentials: %v; want no generated credentials", natsCredsFile, err)
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("the log contains NATS_EMBEDDED_PASSWORD")
	}
}

// TestEmbeddedListenAddress: a NATS_EMBEDDED_ADDR other machines could reach
// needs credentials the operator chose.
func TestEmbeddedListenAddress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr     string
		explicit bool
		wantErr  bool
	}{
		{"127.0.0.1:4222", false, false},
		{"127.1.2.3:0", false, false},
		{"localhost:4222", false, false},
		{"[::1]:4222", false, false},
		{"-", false, false},
		{":4222", false, true},
		{"0.0.0.0:4222", false, true},
		{"[::]:4222", false, true},
		{"192.0.2.10:4222", false, true},
		{"nats.example:4222", false, true},
		{":4222", true, false},
		{"192.0.2.10:4222", true, false},
	}
	for _, tt := range tests {
		c := embeddedConfig{EmbeddedAddr: tt.addr}
		if tt.explicit {
			c.EmbeddedUser, c.EmbeddedPass = "ops", "secret-password"
		}
		err := c.validateListen()
		if (err != nil) != tt.wantErr || (err != nil && !strings.HasPrefix(err.Error(), "NATS_EMBEDDED_ADDR: ")) {
			t.Errorf("validateListen(%q, explicit credentials %v) = %v; want error %v, naming NATS_EMBEDDED_ADDR", tt.addr, tt.explicit, err, tt.wantErr)
		}
	}

	// From the outside: the program refuses to start, before it listens.
	for _, args := range [][]string{{"serve"}, {"dev"}} {
		r := runBin(t, userEnv("NATS_EMBEDDED_ADDR=:4222", "VERIFEYE_API_KEY=k", "DATA_DIR="+t.TempDir(), anyPort), args...)
		if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "NATS_EMBEDDED_ADDR") {
			t.Errorf("%s with NATS_EMBEDDED_ADDR=:4222: exit %d, stderr %q; want 2 and one line naming NATS_EMBEDDED_ADDR", args[0], r.code, r.stderr)
		}
	}
	r := runBin(t, userEnv("NATS_EMBEDDED_USER=ops", "VERIFEYE_API_KEY=k", "DATA_DIR="+t.TempDir()), "serve")
	if r.code != 2 || !strings.Contains(r.stderr, "NATS_EMBEDDED_PASSWORD") {
		t.Errorf("serve with NATS_EMBEDDED_USER alone: exit %d, stderr %q; want 2 naming NATS_EMBEDDED_PASSWORD", r.code, r.stderr)
	}
}
