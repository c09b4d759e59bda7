package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"1h", now.Add(-time.Hour), false},
		{"90s", now.Add(-90 * time.Second), false},
		{"2026-11-26T10:00:00Z", time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC), false},
		{"2026-11-26T10:00:00.5+01:00", time.Date(2026, 11, 26, 9, 0, 0, 5e8, time.UTC), false},
		{"0s", time.Time{}, true},
		{"-1h", time.Time{}, true},
		{"yesterday", time.Time{}, true},
		{"2026-11-26", time.Time{}, true},
		{"", time.Time{}, true},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in, now)
		if tt.wantErr {
			if err == nil || !errors.As(err, new(usageError)) {
				t.Errorf("parseSince(%q): got %v, %v; want a usage error", tt.in, got, err)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseSince(%q): got %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestWebhookURL(t *testing.T) {
	tests := []struct {
		base, source, want string
		wantErr            bool
	}{
		{"http://127.0.0.1:8080", "default", "http://127.0.0.1:8080/webhooks/verifeye", false},
		{"http://127.0.0.1:8080/", "shop", "http://127.0.0.1:8080/webhooks/verifeye/shop", false},
		{"https://bridge.example:443", "default", "https://bridge.example:443/webhooks/verifeye", false},
		{"http://127.0.0.1:8080/webhooks/verifeye/kiosk?token=t", "default", "http://127.0.0.1:8080/webhooks/verifeye/kiosk?token=t", false},
		{"http://127.0.0.1:8080/webhooks/verifeye", "shop", "", true},
		{"127.0.0.1:8080", "default", "", true},
		{"ftp://127.0.0.1", "default", "", true},
	}
	for _, tt := range tests {
		got, err := webhookURL(tt.base, tt.source)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("webhookURL(%q, %q): got %q, %v; want %q (error: %v)", tt.base, tt.source, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNewSessionID(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := newSessionID()
		if !streams.ValidSessionID(id) || id[14] != '4' {
			t.Fatalf("newSessionID() = %q: not a version-4 UUID in 8-4-4-4-12 form", id)
		}
		if seen[id] {
			t.Fatalf("newSessionID() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestOutcomeLine(t *testing.T) {
	s, _ := streams.NewSubjects("verifeye")
	meta := &jetstream.MsgMetadata{Timestamp: time.Date(2026, 11, 26, 10, 0, 0, 0, time.Local)}
	tests := []struct {
		name, subject, data, want string
	}{
		{
			"failed",
			"verifeye.result.shop.failed",
			`{"id":"a","subject":"a","data":{"verificationResult":"failed","livenessResult":"failed","failedReason":"liveness_failed","age":30,"gender":"male"}}`,
			"2026-11-26 10:00:00  shop       failed   a  failedReason=liveness_failed livenessResult=failed",
		},
		{
			"replay",
			"verifeye.result.default.passed",
			`{"id":"a:replay:7","subject":"a","data":{"ageVerificationResult":"not_executed"}}`,
			"2026-11-26 10:00:00  default    passed   a  ageVerificationResult=not_executed  (replay a:replay:7)",
		},
		{
			"control sequences in the data and the ID",
			"verifeye.result.default.failed",
			"{\"id\":\"a\\u001b[2J\",\"subject\":\"a\",\"data\":{\"livenessResult\":\"\\u001b]0;x\\u0007\"}}",
			`2026-11-26 10:00:00  default    failed   a  livenessResult=\x1b]0;x\x07  (replay a\x1b[2J)`,
		},
		{
			"data not an object",
			"verifeye.result.default.unknown",
			`{"id":"b","subject":"b","data":[1,2]}`,
			"2026-11-26 10:00:00  default    unknown  b",
		},
	}
	for _, tt := range tests {
		if got := outcomeLine(s, tt.subject, []byte(tt.data), meta); got != tt.want {
			t.Errorf("outcomeLine(%s):\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

func TestRedactURLs(t *testing.T) {
	got := redactURLs("nats://user:pass@10.0.0.1:4222, nats://127.0.0.1:4223")
	if want := "nats://10.0.0.1:4222,nats://127.0.0.1:4223"; got != want {
		t.Errorf("redactURLs: got %q, want %q", got, want)
	}
}

func TestTermSafe(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"plain text 123 ~", "plain text 123 ~"},
		{"café 😀 ü", "café 😀 ü"},
		{"\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
		{"\x1b]0;title\x07", `\x1b]0;title\x07`},
		{"a\tb\nc\rd\x00e\x7f", `a\x09b\x0ac\x0dd\x00e\x7f`},
		{"\u009b31m \u0085", `\u009b31m \u0085`},
		{"\x9b31m", `\x9b31m`}, // a lone 8-bit CSI byte, not UTF-8
		{"abc\xff", `abc\xff`},
		{"\u202eevil\u202c \u2066x\u2069 \u200f", `\u202eevil\u202c \u2066x\u2069 \u200f`},
	}
	for _, tt := range tests {
		if got := termSafe(tt.in); got != tt.want {
			t.Errorf("termSafe(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestToolStoreSync: a tool that reached the embedded server through
// DATA_DIR's nats.url syncs that store before it reports its writes done; one
// given NATS_URL leaves durability to that server; a DATA_DIR it cannot open
// is a warning, not a failure.
func TestToolStoreSync(t *testing.T) {
	if !natsembed.GroupSyncSupported {
		t.Skip("no syncfs(2) here")
	}
	var warn strings.Builder
	embedded := toolConfig{DataDir: t.TempDir(), urlFile: "nats.url"}
	sync, done := embedded.storeSync(&warn)
	if sync == nil {
		t.Fatal("storeSync through DATA_DIR/nats.url: no sync")
	}
	if err := sync(); err != nil {
		t.Errorf("sync: %v", err)
	}
	done()

	if sync, done := (toolConfig{DataDir: t.TempDir()}).storeSync(&warn); sync != nil {
		t.Error("storeSync with NATS_URL given: a sync, want none")
	} else {
		done()
	}

	gone := toolConfig{DataDir: filepath.Join(t.TempDir(), "missing"), urlFile: "nats.url"}
	if sync, done := gone.storeSync(&warn); sync != nil {
		t.Error("storeSync of a DATA_DIR that cannot be opened: a sync, want none")
	} else {
		done()
	}
	if !strings.HasPrefix(warn.String(), "warning: ") || strings.Count(warn.String(), "\n") != 1 {
		t.Errorf("warnings = %q, want one line, for the DATA_DIR that cannot be opened", warn.String())
	}
}
