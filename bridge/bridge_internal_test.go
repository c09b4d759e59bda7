package bridge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// TestAsAPIErrorTotal: every error has an answer; one that is not an
// *apiError is a 500 that keeps the error as its cause.
func TestAsAPIErrorTotal(t *testing.T) {
	plain := errors.New("boom")
	ae := &apiError{http.StatusBadRequest, "invalid_json", "bad", nil}
	for _, tc := range []struct {
		err        error
		wantStatus int
		wantCode   string
	}{
		{ae, http.StatusBadRequest, "invalid_json"},
		{fmt.Errorf("wrapped: %w", ae), http.StatusBadRequest, "invalid_json"},
		{plain, http.StatusInternalServerError, "internal"},
	} {
		got := asAPIError(tc.err)
		if got == nil || got.status != tc.wantStatus || got.code != tc.wantCode || got.message == "" {
			t.Errorf("asAPIError(%v) = %+v, want status %d code %q", tc.err, got, tc.wantStatus, tc.wantCode)
		}
	}
	if got := asAPIError(plain); !errors.Is(got, plain) {
		t.Errorf("asAPIError(%v) does not keep the cause", plain)
	}
}

// TestStorageRefusal: the JetStream answers that mean "cannot store" are told
// apart from everything else, which is no storage refusal.
func TestStorageRefusal(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum bytes exceeded"}, refusedStreamFull},
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum messages exceeded"}, refusedStreamFull},
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "no space left on device"}, refusedStore},
		{&jetstream.APIError{Code: 503, ErrorCode: 10023, Description: "insufficient resources"}, refusedResources},
		{&jetstream.APIError{Code: 400, ErrorCode: 10047, Description: "insufficient storage resources available"}, refusedResources},
		{fmt.Errorf("publish: %w", &jetstream.APIError{Code: 400, ErrorCode: 10002}), refusedResources},
		{&jetstream.APIError{Code: 400, ErrorCode: 10060, Description: "expected stream does not match"}, ""},
		{context.DeadlineExceeded, ""},
		{jetstream.ErrNoStreamResponse, ""},
	} {
		if got := storageRefusal(tc.err); got != tc.want {
			t.Errorf("storageRefusal(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestNoRoomRefusalEndsByProbe: a refusal in which the server never answered
// and storage had no room ends by the probe only when the probe also sees a
// failed write (ProbeSeesFailedWrites): room alone does not mend a
// nats-server stream whose write failed. Other refusals end by the probe.
func TestNoRoomRefusalEndsByProbe(t *testing.T) {
	room := func(context.Context) error { return nil }
	for _, tc := range []struct {
		why       string
		sees      bool
		wantReady bool
	}{
		{refusedNoRoom, false, false},
		{refusedNoRoom, true, true},
		{refusedStreamFull, false, true},
	} {
		h := New(nil, zerolog.Nop(), Options{Probe: room, ProbeSeesFailedWrites: tc.sees})
		h.h.setRefusing(tc.why)
		err := h.Ready(context.Background())
		if (err == nil) != tc.wantReady {
			t.Errorf("refusal %q, ProbeSeesFailedWrites %v, probe finds room: Ready = %v; want ready %v", tc.why, tc.sees, err, tc.wantReady)
		}
	}
}

// TestCapTracestate: whole members, left to right, at most MaxTracestateBytes;
// none when the first alone is too long.
func TestCapTracestate(t *testing.T) {
	member := func(k string, n int) string { return k + "=" + strings.Repeat("v", n) }
	short := member("a", 10) + "," + member("b", 10)
	exact := member("a", 300) + "," + member("b", MaxTracestateBytes-300-5) // a=…,b=… is exactly the limit
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{short, short},
		{exact, exact},
		{exact + ",c=1", exact},
		{member("a", 300) + "," + member("b", 300), member("a", 300)},
		{member("a", 600) + "," + member("b", 10), ""},
	} {
		h := nats.Header{}
		if tc.in != "" {
			h.Set("tracestate", tc.in)
		}
		capTracestate(h)
		if got := h.Get("tracestate"); got != tc.want || (tc.want == "" && len(h.Values("tracestate")) != 0) {
			t.Errorf("capTracestate(%d bytes) = %d bytes %.30q, want %d bytes", len(tc.in), len(got), got, len(tc.want))
		}
	}
}
