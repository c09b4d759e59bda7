package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// The causes of a storage refusal, as Ready and the log name them.
const (
	refusedStreamFull = "stream full"
	refusedStore      = "store failed"
	refusedResources  = "insufficient storage resources"
	refusedNoRoom     = "no answer, and storage has no room"
)

// JetStream API error codes (nats-server's jetstream_errors_generated.go) that
// mean the server answered, at once, that it cannot store the message.
const (
	jsAccountResourcesExceeded = 10002
	jsInsufficientResources    = 10023
	jsStorageResourcesExceeded = 10047
	jsStreamStoreFailed        = 10077
)

// storageRefusal returns why JetStream refused to store a message, or "" when
// err is not a refusal of storage (a timeout, a lost connection, …).
func storageRefusal(err error) string {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return ""
	}
	switch apiErr.ErrorCode {
	case jsStreamStoreFailed:
		// The server answers a stream at MaxBytes or MaxMsgs under the discard
		// new policy with this code and the limit in the description.
		if d := strings.ToLower(apiErr.Description); strings.HasPrefix(d, "maximum bytes") || strings.HasPrefix(d, "maximum messages") {
			return refusedStreamFull
		}
		return refusedStore
	case jsInsufficientResources, jsStorageResourcesExceeded, jsAccountResourcesExceeded:
		return refusedResources
	}
	return ""
}

// storing records that JetStream stored a webhook: setRefusing(""), without
// its allocation on the path of every webhook.
func (h *handler) storing() {
	if h.refusing.Load() != nil {
		h.setRefusing("")
	}
}

// setRefusing records why storage refuses writes, or that it stores them
// again (why == "").
func (h *handler) setRefusing(why string) {
	if why == "" {
		if h.refusing.Load() != nil && h.refusing.Swap(nil) != nil {
			h.metrics.refusing.Set(0)
			h.log.Info().Msg("JetStream stores webhooks again")
		}
		return
	}
	if prev := h.refusing.Swap(&why); prev == nil {
		h.metrics.refusing.Set(1)
	}
}

// probe runs Options.Probe with a second of its own (ctx may be spent); nil
// without a probe.
func (h *handler) probe(ctx context.Context) error {
	if h.opts.Probe == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return h.opts.Probe(ctx)
}

func (h *handler) storageReady(ctx context.Context) error {
	why := h.refusing.Load()
	if why == nil {
		return nil
	}
	if *why == refusedNoRoom && !h.opts.ProbeSeesFailedWrites {
		// A write the server never answered, with the disk full: nats-server
		// keeps that stream failed until it restarts, so room alone does not
		// end this; a webhook stored again (after a restart) does.
		return fmt.Errorf("JetStream refuses to store webhooks: %s; free disk space and restart", *why)
	}
	if h.opts.Probe != nil {
		if err := h.opts.Probe(ctx); err == nil {
			h.setRefusing("")
			return nil
		}
	}
	return fmt.Errorf("JetStream refuses to store webhooks: %s", *why)
}

// MaxTracestateBytes is the most of an incoming tracestate header a webhook
// message carries on: whole list members, left to right, as W3C Trace Context
// allows a vendor to drop members. The webhooks stream's MaxMsgSize has room
// for a full body with it (streams.MaxWebhookHeaderBytes).
const MaxTracestateBytes = 512

// capTracestate cuts the tracestate in h to at most MaxTracestateBytes of
// whole members, dropping the header when not even the first fits.
func capTracestate(h nats.Header) {
	ts := h.Get(streams.HeaderTracestate)
	if len(ts) <= MaxTracestateBytes {
		return
	}
	end := 0
	for i := 0; i <= MaxTracestateBytes && i < len(ts); i++ {
		if ts[i] == ',' {
			end = i
		}
	}
	kept := strings.TrimRight(ts[:end], " \t,")
	if kept == "" {
		h.Del(streams.HeaderTracestate)
		return
	}
	h.Set(streams.HeaderTracestate, kept)
}
