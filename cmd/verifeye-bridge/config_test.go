package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// envNames returns the environment variables that specs read.
func envNames(specs ...any) []string {
	var names []string
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if name := f.Tag.Get("envconfig"); name != "" {
				names = append(names, name)
			} else if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
			}
		}
	}
	for _, s := range specs {
		walk(reflect.TypeOf(s).Elem())
	}
	return names
}

// setEnv gives the process an environment holding only env among the
// variables the program reads; the test's end restores the old one.
func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, name := range envNames(&commonConfig{}, &embeddedConfig{}, &ingestConfig{}, &apiConfig{}, &enrichConfig{}, &observeConfig{}, &simulatorConfig{}, &toolConfig{}, &internalAPIConfig{}) {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	// No internal API unless a test asks: its default port may be taken.
	t.Setenv("API_ADDR", "-")
	for k, v := range env {
		t.Setenv(k, v)
	}
}

// TestConfigErrors: every setting is checked against a sane range at start.
// A bad value makes the program exit 2 at once, with one line on stderr that
// names the variable and does not repeat a secret, and no stack trace.
func TestConfigErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const token = "0123456789abcdef"
	// Where nothing listens: a start that got past the checks fails otherwise.
	const noNATS = "nats://127.0.0.1:1"
	tests := []struct {
		cmd     string
		env     map[string]string
		wantVar string
	}{
		{"serve", map[string]string{"WEBHOOK_AUTH": "token", "WEBHOOK_TOKEN": " "}, "WEBHOOK_TOKEN"},
		{"serve", map[string]string{"WEBHOOK_AUTH": "token", "WEBHOOK_TOKEN": "+"}, "WEBHOOK_TOKEN"},
		{"serve", map[string]string{"WEBHOOK_AUTH": "token", "WEBHOOK_TOKEN": "short-token"}, "WEBHOOK_TOKEN"},
		{"serve", map[string]string{"WEBHOOK_AUTH": "token", "WEBHOOK_TOKEN": " " + token}, "WEBHOOK_TOKEN"},
		{"serve", map[string]string{"WEBHOOK_AUTH": "token", "WEBHOOK_TOKEN": token + "\n"}, "WEBHOOK_TOKEN"},
		{"serve", map[string]string{"WEBHOOK_AUTH": "token", "WEBHOOK_TOKEN": "01234567 89abcdef"}, "WEBHOOK_TOKEN"},
		{"serve", map[string]string{"VERIFEYE_API_KEY": "secret-key "}, "VERIFEYE_API_KEY"},
		{"serve", map[string]string{"VERIFEYE_API_KEY": " secret-key"}, "VERIFEYE_API_KEY"},
		{"serve", map[string]string{"VERIFEYE_API_KEY": "secret\nkey"}, "VERIFEYE_API_KEY"},
		{"serve", map[string]string{"VERIFEYE_API_KEY": "secret\x7fkey"}, "VERIFEYE_API_KEY"},
		{"serve", map[string]string{"VERIFEYE_API_URL": "ftp://s3cr3t@api.example"}, "VERIFEYE_API_URL"},
		{"serve", map[string]string{"VERIFEYE_API_URL": "https://api.example/?key=s3cr3t"}, "VERIFEYE_API_URL"},
		{"serve", map[string]string{"VERIFEYE_API_URL": "https://"}, "VERIFEYE_API_URL"},
		{"serve", map[string]string{"VERIFEYE_API_URL": "https://api.example/?q=1"}, "VERIFEYE_API_URL"},
		{"serve", map[string]string{"VERIFEYE_REGION": "mars"}, "VERIFEYE_REGION"},
		{"serve", map[string]string{"VERIFEYE_API_TIMEOUT": "0s"}, "VERIFEYE_API_TIMEOUT"},
		{"serve", map[string]string{"VERIFEYE_API_TIMEOUT": "1h"}, "VERIFEYE_API_TIMEOUT"},
		{"serve", map[string]string{"WEBHOOKS_MAX_AGE": "-1h"}, "WEBHOOKS_MAX_AGE"},
		{"serve", map[string]string{"WEBHOOKS_MAX_AGE": "1m"}, "WEBHOOKS_MAX_AGE"}, // shorter than the duplicate window
		{"serve", map[string]string{"RESULTS_MAX_AGE": "-1s"}, "RESULTS_MAX_AGE"},
		{"serve", map[string]string{"DLQ_MAX_AGE": "-1m"}, "DLQ_MAX_AGE"},
		{"serve", map[string]string{"WEBHOOKS_MAX_BYTES": "10"}, "WEBHOOKS_MAX_BYTES"},
		{"serve", map[string]string{"WEBHOOKS_MAX_BYTES": "0"}, "WEBHOOKS_MAX_BYTES"},
		{"serve", map[string]string{"WEBHOOKS_MAX_BYTES": "-2"}, "WEBHOOKS_MAX_BYTES"},
		{"serve", map[string]string{"RESULTS_MAX_BYTES": "1024"}, "RESULTS_MAX_BYTES"},
		{"serve", map[string]string{"DLQ_MAX_BYTES": "0"}, "DLQ_MAX_BYTES"},
		{"serve", map[string]string{"STREAM_REPLICAS": "3"}, "STREAM_REPLICAS"}, // the embedded server is one server
		{"serve", map[string]string{"STREAM_REPLICAS": "7"}, "STREAM_REPLICAS"},
		{"serve", map[string]string{"STREAM_DUPLICATE_WINDOW": "0s"}, "STREAM_DUPLICATE_WINDOW"},
		{"serve", map[string]string{"STREAM_DUPLICATE_WINDOW": "10ms"}, "STREAM_DUPLICATE_WINDOW"},
		{"serve", map[string]string{"STREAM_DUPLICATE_WINDOW": "1000h"}, "STREAM_DUPLICATE_WINDOW"},
		{"serve", map[string]string{"VERIFEYE_RATE_LIMIT": "NaN"}, "VERIFEYE_RATE_LIMIT"},
		{"serve", map[string]string{"VERIFEYE_RATE_LIMIT": "+Inf"}, "VERIFEYE_RATE_LIMIT"},
		{"serve", map[string]string{"VERIFEYE_RATE_LIMIT": "1e-300"}, "VERIFEYE_RATE_LIMIT"},
		{"serve", map[string]string{"VERIFEYE_RATE_LIMIT": "-1"}, "VERIFEYE_RATE_LIMIT"},
		{"serve", map[string]string{"VERIFEYE_RATE_LIMIT": "1e9"}, "VERIFEYE_RATE_LIMIT"},
		{"serve", map[string]string{"SHUTDOWN_GRACE": "0s"}, "SHUTDOWN_GRACE"},
		{"serve", map[string]string{"SHUTDOWN_GRACE": "3h"}, "SHUTDOWN_GRACE"},
		{"serve", map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{"serve", map[string]string{"LOG_LEVEL": "5"}, "LOG_LEVEL"},
		{"serve", map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{"serve", map[string]string{"HTTP_ADDR": "8080"}, "HTTP_ADDR"},
		{"serve", map[string]string{"HTTP_ADDR": ""}, "HTTP_ADDR"},
		{"serve", map[string]string{"HTTP_ADDR": "127.0.0.1:70000"}, "HTTP_ADDR"},
		{"serve", map[string]string{"SUBJECT_PREFIX": "a.b"}, "SUBJECT_PREFIX"},
		{"serve", map[string]string{"NATS_EMBEDDED_ADDR": "4222"}, "NATS_EMBEDDED_ADDR"},
		{"serve", map[string]string{"NATS_EMBEDDED_ADDR": "127.0.0.1:port"}, "NATS_EMBEDDED_ADDR"},
		{"serve", map[string]string{"NATS_EMBEDDED_SYNC": "0s"}, "NATS_EMBEDDED_SYNC"},
		{"serve", map[string]string{"NATS_EMBEDDED_SYNC": "1h"}, "NATS_EMBEDDED_SYNC"},
		{"serve", map[string]string{"DATA_DIR": ""}, "DATA_DIR"},
		{"serve", map[string]string{"DATA_DIR": filepath.Join(file, "data")}, "DATA_DIR"}, // unwritable, even for root
		{"serve", map[string]string{"INGEST_PUBLISH_TIMEOUT": "0s"}, "INGEST_PUBLISH_TIMEOUT"},
		{"serve", map[string]string{"INGEST_PUBLISH_TIMEOUT": "1m"}, "INGEST_PUBLISH_TIMEOUT"},
		{"serve", map[string]string{"INGEST_BATCH": "0"}, "INGEST_BATCH"},
		{"serve", map[string]string{"INGEST_BATCH": "1001"}, "INGEST_BATCH"},
		{"ingest", map[string]string{"NATS_URL": noNATS, "INGEST_BATCH": "many"}, "INGEST_BATCH"},
		{"serve", map[string]string{"ENRICH_CONCURRENCY": "0"}, "ENRICH_CONCURRENCY"},
		{"serve", map[string]string{"ENRICH_CONCURRENCY": "100000"}, "ENRICH_CONCURRENCY"},
		{"serve", map[string]string{"ENRICH_MAX_ATTEMPTS": "0"}, "ENRICH_MAX_ATTEMPTS"},
		{"serve", map[string]string{"ENRICH_MAX_ATTEMPTS": "100000"}, "ENRICH_MAX_ATTEMPTS"},
		{"serve", map[string]string{"ENRICH_CONSUMER": "a.b"}, "ENRICH_CONSUMER"},
		{"serve", map[string]string{"ENRICH_ACK_WAIT": "10ms"}, "ENRICH_ACK_WAIT"},
		{"serve", map[string]string{"ENRICH_ACK_WAIT": "2h"}, "ENRICH_ACK_WAIT"},
		{"serve", map[string]string{"ENRICH_BACKOFF_BASE": "0s"}, "ENRICH_BACKOFF_BASE"},
		{"serve", map[string]string{"ENRICH_BACKOFF_MAX": "1ms"}, "ENRICH_BACKOFF_MAX"}, // below the base
		{"serve", map[string]string{"ENRICH_BACKOFF_MAX": "100h"}, "ENRICH_BACKOFF_MAX"},
		{"serve", map[string]string{"ENRICH_NOT_FOUND_DELAY": "0s"}, "ENRICH_NOT_FOUND_DELAY"},
		{"serve", map[string]string{"ENRICH_NOT_FOUND_ATTEMPTS": "0"}, "ENRICH_NOT_FOUND_ATTEMPTS"},
		{"serve", map[string]string{"ENRICH_AUTH_RETRY": "0s"}, "ENRICH_AUTH_RETRY"},
		{"serve", map[string]string{"ENRICH_AUTH_RETRY": "100h"}, "ENRICH_AUTH_RETRY"},
		{"serve", map[string]string{"RECONCILE_AFTER": "0s"}, "RECONCILE_AFTER"},
		{"serve", map[string]string{"RECONCILE_AFTER": "48h"}, "RECONCILE_AFTER"},
		{"serve", map[string]string{"RECONCILE_AFTER": "10m", "RECONCILE_GIVE_UP": "5m"}, "RECONCILE_GIVE_UP"},
		{"serve", map[string]string{"RECONCILE_GIVE_UP": "1000h"}, "RECONCILE_GIVE_UP"}, // past SESSIONS_MAX_AGE
		{"serve", map[string]string{"SESSIONS_MAX_AGE": "10s"}, "SESSIONS_MAX_AGE"},
		{"serve", map[string]string{"API_ADDR": "0.0.0.0:8081"}, "API_TOKEN"},
		{"serve", map[string]string{"API_ADDR": ":8081"}, "API_TOKEN"},
		{"enrich", map[string]string{"NATS_URL": noNATS, "API_ADDR": "10.0.0.1:8081"}, "API_TOKEN"},
		{"serve", map[string]string{"API_ADDR": "127.0.0.1:8081", "API_TOKEN": "short"}, "API_TOKEN"},
		{"serve", map[string]string{"API_ADDR": "8081"}, "API_ADDR"},
		{"serve", map[string]string{"API_ADDR": ":8080", "HTTP_ADDR": ":8080", "API_TOKEN": token}, "API_ADDR"},
		{"serve", map[string]string{"METRICS_SAMPLE_INTERVAL": "-1s"}, "METRICS_SAMPLE_INTERVAL"},
		{"serve", map[string]string{"METRICS_SAMPLE_INTERVAL": "1ms"}, "METRICS_SAMPLE_INTERVAL"},
		{"dev", map[string]string{"VERIFEYE_API_KEY": "secret-key\t"}, "VERIFEYE_API_KEY"},
		{"dev", map[string]string{"STREAM_REPLICAS": "3"}, "STREAM_REPLICAS"},
		{"ingest", map[string]string{"NATS_URL": "http://s3cr3t-token@nats.example:4222"}, "NATS_URL"},
		{"ingest", map[string]string{"NATS_URL": noNATS + ", "}, "NATS_URL"},
		{"ingest", map[string]string{"NATS_URL": noNATS, "WEBHOOK_AUTH": "token", "WEBHOOK_TOKEN": "tok en-0123456789abcdef"}, "WEBHOOK_TOKEN"},
		{"ingest", map[string]string{"NATS_URL": noNATS, "VERIFEYE_API_KEY": "secret-key\r"}, "VERIFEYE_API_KEY"},
		{"enrich", map[string]string{"NATS_URL": noNATS, "VERIFEYE_RATE_LIMIT": "NaN"}, "VERIFEYE_RATE_LIMIT"},
		{"enrich", map[string]string{"NATS_URL": noNATS, "STREAM_REPLICAS": "0"}, "STREAM_REPLICAS"},
		{"simulator", map[string]string{"VERIFEYE_API_KEY": "secret-key "}, "VERIFEYE_API_KEY"},
		{"simulator", map[string]string{"SIMULATOR_LATENCY": "-1s"}, "SIMULATOR_LATENCY"},
		{"simulator", map[string]string{"SIMULATOR_LATENCY": "1h"}, "SIMULATOR_LATENCY"},
		{"simulator", map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{"simulator", map[string]string{"HTTP_ADDR": "8080"}, "HTTP_ADDR"},
		{"watch", map[string]string{"NATS_URL": "http://nats.example:4222"}, "NATS_URL"},
		{"watch", map[string]string{"SUBJECT_PREFIX": "a b"}, "SUBJECT_PREFIX"},
		{"replay", map[string]string{"NATS_URL": "nats://"}, "NATS_URL"},
	}
	for _, tc := range tests {
		var name []string
		for k, v := range tc.env {
			name = append(name, k+"="+v)
		}
		slices.Sort(name)
		t.Run(tc.cmd+" "+strings.Join(name, " "), func(t *testing.T) {
			env := map[string]string{
				"VERIFEYE_API_KEY":   "secret-key",
				"HTTP_ADDR":          "127.0.0.1:0",
				"NATS_EMBEDDED_ADDR": "-",
				"DATA_DIR":           t.TempDir(),
			}
			for k, v := range tc.env {
				env[k] = v
			}
			setEnv(t, env)
			args := []string{tc.cmd}
			if tc.cmd == "replay" {
				args = append(args, "--since", "1h")
			}
			// A start that got past the checks is stopped, and fails the test.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			code := run(ctx, args, &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("%s with %s: exit %d, want %d (stderr %q)", tc.cmd, strings.Join(name, " "), code, exitUsage, stderr.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, ": "+tc.wantVar+":") {
				t.Errorf("%s with %s: stderr %q, want one line naming %s", tc.cmd, strings.Join(name, " "), msg, tc.wantVar)
			}
			for _, secretVar := range []string{"VERIFEYE_API_KEY", "WEBHOOK_TOKEN", "API_TOKEN"} {
				if v := strings.TrimSpace(env[secretVar]); len(v) > 3 && strings.Contains(msg, v) {
					t.Errorf("%s with %s: stderr %q repeats %s", tc.cmd, strings.Join(name, " "), msg, secretVar)
				}
			}
			if strings.Contains(msg, "s3cr3t") {
				t.Errorf("%s with %s: stderr %q repeats the credentials of a URL", tc.cmd, strings.Join(name, " "), msg)
			}
			if strings.Contains(msg, "goroutine ") || strings.Contains(msg, "panic") {
				t.Errorf("%s: stderr has a stack trace: %q", tc.cmd, msg)
			}
			if stdout.Len() != 0 {
				t.Errorf("%s with %s: stdout %q, want nothing", tc.cmd, strings.Join(name, " "), stdout.String())
			}
		})
	}
}

// TestConfigAcceptsItsLimits: the values at the edges of each range, and the
// defaults, start the service; the checks refuse nothing the docs allow.
func TestConfigAcceptsItsLimits(t *testing.T) {
	for _, env := range []map[string]string{
		{},
		{"WEBHOOK_AUTH": "token", "WEBHOOK_TOKEN": "0123456789abcdef"},
		{"WEBHOOKS_MAX_AGE": "0s", "RESULTS_MAX_AGE": "10m", "DLQ_MAX_AGE": "0s", "STREAM_DUPLICATE_WINDOW": "10m"},
		{"WEBHOOKS_MAX_BYTES": "-1", "RESULTS_MAX_BYTES": "1048576", "DLQ_MAX_BYTES": "-1"},
		{"VERIFEYE_RATE_LIMIT": "0"},
		{"VERIFEYE_RATE_LIMIT": "0.01"},
		{"INGEST_BATCH": "1"},
		{"INGEST_BATCH": "1000"},
		{"NATS_EMBEDDED_SYNC": "1s", "METRICS_SAMPLE_INTERVAL": "0s", "STREAM_REPLICAS": "1"},
		{"VERIFEYE_API_URL": "http://127.0.0.1:1/base/", "LOG_LEVEL": "trace", "LOG_FORMAT": "console"},
	} {
		var name []string
		for k, v := range env {
			name = append(name, k+"="+v)
		}
		slices.Sort(name)
		t.Run(strings.Join(name, " "), func(t *testing.T) {
			all := map[string]string{
				"VERIFEYE_API_KEY":   "secret-key",
				"HTTP_ADDR":          "127.0.0.1:0",
				"NATS_EMBEDDED_ADDR": "-",
				"DATA_DIR":           filepath.Join(t.TempDir(), "made", "by", "serve"),
				"SHUTDOWN_GRACE":     "5s",
			}
			for k, v := range env {
				all[k] = v
			}
			setEnv(t, all)
			cfg := serviceConfig{name: "serve", embedded: &embeddedConfig{}, ingest: &ingestConfig{}, api: &apiConfig{}, enrich: &enrichConfig{}}
			if err := cfg.load(); err != nil {
				t.Fatalf("serve with %s: load() = %v, want nil", strings.Join(name, " "), err)
			}
			if fi, err := os.Stat(all["DATA_DIR"]); err != nil || !fi.IsDir() {
				t.Errorf("serve with %s: DATA_DIR not created: %v", strings.Join(name, " "), err)
			}
			if entries, _ := os.ReadDir(all["DATA_DIR"]); len(entries) != 0 {
				t.Errorf("serve with %s: the DATA_DIR probe left %d files behind", strings.Join(name, " "), len(entries))
			}
		})
	}
}
