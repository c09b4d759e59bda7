package loadgen

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		line string
		want time.Duration
	}{
		{"plain", "1234 (verifeye-bridge) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 100 0 0", 3250 * time.Millisecond},
		{"name with spaces and parens", "77 (a) b (c)) R 1 77 77 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 0 0", 30 * time.Millisecond},
	}
	for _, tt := range tests {
		got, err := parseStat([]byte(tt.line))
		if err != nil {
			t.Errorf("parseStat(%s): %v", tt.name, err)
			continue
		}
		if got != tt.want {
			t.Errorf("parseStat(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
	if _, err := parseStat([]byte("no parens at all")); err == nil {
		t.Errorf("parseStat(malformed) = nil error, want an error")
	}
}

func TestSessionIDIsValidAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, seq := range []uint64{0, 1, 15, 1 << 32, 1<<48 - 1, 1 << 48, 1<<64 - 1} {
		id := SessionID(0xdeadbeef, seq)
		if !streams.ValidSessionID(id) {
			t.Errorf("SessionID(_, %d) = %q, not a valid session ID", seq, id)
		}
		if seen[id] {
			t.Errorf("SessionID(_, %d) = %q, already returned for another seq", seq, id)
		}
		seen[id] = true
	}
	if got, want := SessionID(1, 2), "00000001-0000-4000-8000-000000000002"; got != want {
		t.Errorf("SessionID(1, 2) = %q, want %q", got, want)
	}
}

// TestWebhooksAreAcceptedByTheBridge proves the generated requests are what
// the ingest accepts: parsed by net/http and by streams.ParseWebhook.
func TestWebhooksAreAcceptedByTheBridge(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		wh, err := streams.ParseWebhook(body)
		if err != nil || r.Header.Get("X-API-Key") != "k" || r.URL.Path != "/webhooks/verifeye/src" {
			t.Errorf("request %s %q key %q: %v", r.URL.Path, body, r.Header.Get("X-API-Key"), err)
		}
		mu.Lock()
		got = append(got, wh.SessionID)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	wh := Webhooks{Host: addr, Path: "/webhooks/verifeye/src", APIKey: "k", Run: 7}
	// A pace of 200/s for 100 ms is 20 requests, all due before the end.
	res, err := Run(t.Context(), Options{Addr: addr, Conns: 4, Duration: 100 * time.Millisecond, Rate: 200, Request: wh.Append, First: 5})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.OK != 20 || res.Failed() != 0 || res.Next != 25 {
		t.Errorf("Run paced 200/s for 100ms: OK %d, failed %d (%v), next seq %d; want 20, 0, 25", res.OK, res.Failed(), res.FirstError, res.Next)
	}
	want := map[string]bool{}
	for seq := uint64(5); seq < 25; seq++ {
		want[SessionID(7, seq)] = true
	}
	gotSet := map[string]bool{}
	for _, id := range got {
		gotSet[id] = true
	}
	if diff := cmp.Diff(want, gotSet); diff != "" {
		t.Errorf("session IDs received (-want +got):\n%s", diff)
	}
	if res.Percentile(0.5) <= 0 || res.Percentile(0.5) > res.Percentile(1) {
		t.Errorf("Percentile(0.5) = %v, Percentile(1) = %v: want 0 < p50 <= max", res.Percentile(0.5), res.Percentile(1))
	}
}

// TestRunCountsStatusesAndDuplicates runs closed-loop against a server that
// answers 202, 202 duplicate and 503 in turn.
func TestRunCountsStatusesAndDuplicates(t *testing.T) {
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		i := n
		n++
		mu.Unlock()
		switch i % 3 {
		case 0:
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"status":"accepted"}`)
		case 1:
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"status":"accepted","duplicate":true}`)
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	res, err := Run(t.Context(), Options{Addr: addr, Conns: 3, Duration: 50 * time.Millisecond, Request: Webhooks{Host: addr}.Append})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	served := n
	mu.Unlock()
	if res.Sent != served || res.Sent < 3 {
		t.Fatalf("Run closed-loop: sent %d, server saw %d; want equal and at least 3", res.Sent, served)
	}
	if got, want := res.OK+res.Status[http.StatusServiceUnavailable], res.Sent; got != want || res.Errors != 0 {
		t.Errorf("Run: OK %d + 503s %d (errors %d: %v), want %d answers", res.OK, res.Status[503], res.Errors, res.FirstError, want)
	}
	if want := (served + 1) / 3; res.Duplicates != want {
		t.Errorf("Run: duplicates %d, want %d of %d answers", res.Duplicates, want, served)
	}
	if want := served / 3; res.Status[http.StatusServiceUnavailable] != want {
		t.Errorf("Run: 503s %d, want %d", res.Status[503], want)
	}
}
