package streams_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

func TestOutcome(t *testing.T) {
	tests := []struct{ in, want string }{
		{"passed", "passed"},
		{"Passed", "passed"},
		{"FAILED", "failed"},
		{"  failed\n", "failed"},
		{"not_executed", "not_executed"},
		{"needs-review", "needs-review"},
		{"a2", "a2"},
		{strings.Repeat("x", 32), strings.Repeat("x", 32)},
		{strings.Repeat("x", 33), "unknown"},
		{"", "unknown"},
		{"passed.failed", "unknown"},
		{"passed*", "unknown"},
		{">", "unknown"},
		{"two words", "unknown"},
		{"2fa", "unknown"},
		{"_x", "unknown"},
		{"réussi", "unknown"},
		{"pass\x00ed", "unknown"},
	}
	for _, tc := range tests {
		if got := streams.Outcome(tc.in); got != tc.want {
			t.Errorf("Outcome(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSubjects(t *testing.T) {
	for _, bad := range []string{"", "a.b", "a*", ">", "a b", strings.Repeat("p", 65), "vérif"} {
		if _, err := streams.NewSubjects(bad); err == nil {
			t.Errorf("NewSubjects(%q) = nil error, want an error", bad)
		}
	}
	s, err := streams.NewSubjects("acme-Prod_1")
	if err != nil {
		t.Fatalf("NewSubjects: %v", err)
	}
	got := []string{
		s.Prefix(),
		s.Webhook("shop-1", "VerificationCompleted"),
		s.Result("shop-1", "passed"),
		s.DLQ("default", "VerificationCompleted"),
		s.WebhooksAll(), s.ResultsAll(), s.DLQAll(), s.CompletedFilter(),
	}
	want := []string{
		"acme-Prod_1",
		"acme-Prod_1.webhook.shop-1.VerificationCompleted",
		"acme-Prod_1.result.shop-1.passed",
		"acme-Prod_1.dlq.default.VerificationCompleted",
		"acme-Prod_1.webhook.>", "acme-Prod_1.result.>", "acme-Prod_1.dlq.>", "acme-Prod_1.webhook.*.VerificationCompleted",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("subjects (-want +got):\n%s", diff)
	}

	for _, tc := range []struct{ subject, kind, source, name string }{
		{s.Webhook("shop-1", "X"), "webhook", "shop-1", "X"},
		{s.Result("default", "failed"), "result", "default", "failed"},
		{s.DLQ("a_b", "VerificationCompleted"), "dlq", "a_b", "VerificationCompleted"},
	} {
		kind, source, name, err := s.Parse(tc.subject)
		if err != nil || kind != tc.kind || source != tc.source || name != tc.name {
			t.Errorf("Parse(%q) = %q, %q, %q, %v; want %q, %q, %q, nil", tc.subject, kind, source, name, err, tc.kind, tc.source, tc.name)
		}
	}
	for _, bad := range []string{"", "acme-Prod_1.webhook.shop-1", "acme-Prod_1.webhook.shop-1.X.Y", "verifeye.webhook.shop-1.X",
		// Tokens no ingest writes: wildcards, bad sources, events and outcomes, other kinds.
		"acme-Prod_1.webhook.*.VerificationCompleted", "acme-Prod_1.webhook.>.X", "acme-Prod_1.dlq.Shop.X",
		"acme-Prod_1.webhook.shop-1.*", "acme-Prod_1.webhook.shop-1.1X", "acme-Prod_1.result.shop-1.Passed",
		"acme-Prod_1.result.shop-1.*", "acme-Prod_1.other.shop-1.X", "acme-Prod_1.webhook..X"} {
		if _, _, _, err := s.Parse(bad); !errors.Is(err, streams.ErrBadSubject) {
			t.Errorf("Parse(%q) error = %v, want ErrBadSubject", bad, err)
		}
	}
}

func TestValidNames(t *testing.T) {
	tests := []struct {
		fn   string
		f    func(string) bool
		good []string
		bad  []string
	}{{
		"ValidSource", streams.ValidSource,
		[]string{"default", "shop-1", "a_b", "0", strings.Repeat("z", 64)},
		[]string{"", "Shop", "a.b", "a*", ">", " ", "a b", "a\x00", strings.Repeat("z", 65), "é"},
	}, {
		"ValidEvent", streams.ValidEvent,
		[]string{"VerificationCompleted", "x", "A_b-9", "E" + strings.Repeat("e", 63)},
		[]string{"", "1x", "-x", "_x", "A.B", "A*", "A>", "A B", "A\x00", "A\t", "E" + strings.Repeat("e", 64), "Événement"},
	}, {
		"ValidSessionID", streams.ValidSessionID,
		[]string{"3f2a9c1e-0000-4000-8000-000000000001", "3F2A9C1E-ABCD-4000-8000-FA11ED000001", "00000000-0000-0000-0000-000000000000"},
		[]string{"", "{3f2a9c1e-0000-4000-8000-000000000001}", "urn:uuid:3f2a9c1e-0000-4000-8000-000000000001",
			"3f2a9c1e000040008000000000000001", "3f2a9c1e-0000-4000-8000-00000000001", "3f2a9c1e-0000-4000-8000-0000000000011",
			"3f2a9c1e-0000-4000-8000-00000000000g", " 3f2a9c1e-0000-4000-8000-000000000001", "3f2a9c1e-0000-4000-8000-000000000001\n"},
	}}
	for _, tc := range tests {
		for _, s := range tc.good {
			if !tc.f(s) {
				t.Errorf("%s(%q) = false, want true", tc.fn, s)
			}
		}
		for _, s := range tc.bad {
			if tc.f(s) {
				t.Errorf("%s(%q) = true, want false", tc.fn, s)
			}
		}
	}
}

func TestWebhookMsgID(t *testing.T) {
	id := streams.WebhookMsgID("VerificationCompleted", "3F2A9C1E-ABCD-4000-8000-FA11ED000001")
	if want := "VerificationCompleted:3f2a9c1e-abcd-4000-8000-fa11ed000001"; id != want {
		t.Errorf("WebhookMsgID = %q, want %q", id, want)
	}
	event, session, ok := streams.ParseWebhookMsgID(id)
	if !ok || event != "VerificationCompleted" || session != "3f2a9c1e-abcd-4000-8000-fa11ed000001" {
		t.Errorf("ParseWebhookMsgID(%q) = %q, %q, %v", id, event, session, ok)
	}
	for _, bad := range []string{"", "VerificationCompleted", "VerificationCompleted:", ":3f2a9c1e-0000-4000-8000-000000000001",
		"A.B:3f2a9c1e-0000-4000-8000-000000000001", "A:not-a-uuid", "A:3f2a9c1e-0000-4000-8000-000000000001:x"} {
		if e, s, ok := streams.ParseWebhookMsgID(bad); ok || e != "" || s != "" {
			t.Errorf("ParseWebhookMsgID(%q) = %q, %q, %v; want \"\", \"\", false", bad, e, s, ok)
		}
	}
}

func TestConfigs(t *testing.T) {
	s, _ := streams.NewSubjects("verifeye")
	l := streams.DefaultLimits()
	l.Replicas = 0
	l.Duplicates = time.Hour
	l.WebhooksMaxAge = 30 * time.Minute // shorter than the duplicate window
	cfgs := streams.Configs(s, l)
	byName := make(map[string]jetstream.StreamConfig)
	for _, c := range cfgs {
		byName[c.Name] = c
	}
	if len(byName) != 4 {
		t.Fatalf("Configs returned %d streams, want 4", len(cfgs))
	}
	w := byName[streams.Webhooks]
	if w.Duplicates != 30*time.Minute {
		t.Errorf("webhooks Duplicates = %v, want it clipped to MaxAge 30m", w.Duplicates)
	}
	if w.Discard != jetstream.DiscardNew || w.Retention != jetstream.LimitsPolicy || w.Storage != jetstream.FileStorage {
		t.Errorf("webhooks stream: discard %v, retention %v, storage %v; want DiscardNew, Limits, File", w.Discard, w.Retention, w.Storage)
	}
	if w.MaxMsgSize <= streams.MaxWebhookBytes {
		t.Errorf("webhooks MaxMsgSize = %d, want room for a %d-byte body plus headers", w.MaxMsgSize, streams.MaxWebhookBytes)
	}
	if r := byName[streams.Results]; r.Duplicates != time.Hour || r.Retention != jetstream.LimitsPolicy {
		t.Errorf("results stream: Duplicates %v, retention %v; want 1h, Limits", r.Duplicates, r.Retention)
	}
	for _, c := range cfgs {
		if c.Replicas != 1 {
			t.Errorf("%s: Replicas = %d, want at least 1", c.Name, c.Replicas)
		}
	}
}

// TestEnsureAndReady: Ensure is idempotent, and Ready (the /readyz check)
// follows the connection and the presence of the webhooks stream.
func TestEnsureAndReady(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := streams.Ready(ctx, nc, js); err == nil {
		t.Errorf("Ready before Ensure = nil, want an error (no stream)")
	}
	s, _ := streams.NewSubjects("verifeye")
	for i := range 2 {
		if err := streams.Ensure(ctx, js, s, streams.DefaultLimits()); err != nil {
			t.Fatalf("Ensure #%d: %v", i+1, err)
		}
	}
	if err := streams.Ready(ctx, nc, js); err != nil {
		t.Errorf("Ready after Ensure = %v, want nil", err)
	}
	// Each probe gets its own deadline, as a /readyz request does.
	ready := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return streams.Ready(ctx, nc, js)
	}
	srv.Shutdown()
	natstest.WaitFor(t, 10*time.Second, func() error {
		if ready() == nil {
			return errors.New("Ready = nil with the server down")
		}
		return nil
	})
	srv.Restart()
	natstest.WaitFor(t, 20*time.Second, ready)
}

// TestValidatorsMatchTheirExpressions holds each byte-loop validator to the
// regular expression of the contract, over edge cases and random strings.
func TestValidatorsMatchTheirExpressions(t *testing.T) {
	tests := []struct {
		name string
		f    func(string) bool
		re   *regexp.Regexp
	}{
		{"ValidSource", streams.ValidSource, regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)},
		{"ValidEvent", streams.ValidEvent, regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}$`)},
		{"ValidSessionID", streams.ValidSessionID, regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)},
		{"ValidPrefix", streams.ValidPrefix, regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)},
		{"ValidOutcome", streams.ValidOutcome, regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)},
		{"ValidToken", streams.ValidToken, regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)},
	}
	inputs := []string{"", "a", "A", "0", "_", "-", "a.b", "a b", "a*", ">", "é", "\x00", "\x7f",
		strings.Repeat("a", 64), strings.Repeat("a", 65), "Aa0_-", "@", "[", "`", "{", "/", ":", "G", "g",
		"3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4", "3F2A9C1E-5B7D-4E21-9C3A-0000B1C2D3E4",
		"3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3eg", "3f2a9c1e5b7d-4e21-9c3a-0000b1c2d3e4-", "{3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e4}",
		"3f2a9c1e-5b7d-4e21-9c3a-0000b1c2d3e", "3f2a9c1e-5b7d-4e21-9c3a_0000b1c2d3e4"}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := "abcfgAFGZz09_-.-* \x00é{}:/@[`"
	for range 20000 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		if rng.IntN(4) == 0 { // UUID-shaped, now and then with one wrong byte
			const hex = "0123456789abcdefABCDEF"
			b = make([]byte, 36)
			for i := range b {
				b[i] = hex[rng.IntN(len(hex))]
			}
			for _, i := range []int{8, 13, 18, 23} {
				b[i] = '-'
			}
			if rng.IntN(2) == 0 {
				b[rng.IntN(36)] = alphabet[rng.IntN(len(alphabet))]
			}
		}
		inputs = append(inputs, string(b))
	}
	for _, tt := range tests {
		for _, in := range inputs {
			if got, want := tt.f(in), tt.re.MatchString(in); got != want {
				t.Errorf("%s(%q) = %v, want %v (the expression %s)", tt.name, in, got, want, tt.re)
			}
		}
	}
}
