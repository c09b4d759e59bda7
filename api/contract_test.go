package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/realeyes/verifeye-bridge/api"
	"github.com/realeyes/verifeye-bridge/enricher"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

const apiKey = "sk-test-contract-0123456789"

// emitted runs the real enricher against the fake VerifEye API and a real
// embedded JetStream server, feeds it webhooks the way the ingest stores
// them, and returns what it wrote on each stream.
func emitted(t *testing.T) (webhooks, results, dlq []jetstream.Msg) {
	t.Helper()
	js := natstest.Start(t).JetStream()
	subjects, err := streams.NewSubjects(outcome.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, subjects, streams.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	fake := verifeyetest.Start(apiKey)
	t.Cleanup(fake.Close)
	client, err := verifeye.New(fake.URL, apiKey, verifeye.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e := enricher.New(js, client, zerolog.Nop(), enricher.Options{
		Concurrency: 4, MaxAttempts: 3, AckWait: time.Second,
		Policy: enricher.Policy{BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, NotFoundDelay: 20 * time.Millisecond, NotFoundAttempts: 2},
	})
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = e.Run(runCtx) })
	defer func() { stop(); wg.Wait() }()

	webhook := func(source, session string, h map[string]string) {
		body := fmt.Appendf(nil, `{"event":%q,"verificationSessionId":%q,"extra":1}`, outcome.EventCompleted, session)
		m := nats.NewMsg(outcome.WebhookSubject(outcome.DefaultPrefix, source, outcome.EventCompleted))
		m.Data = body
		m.Header.Set(outcome.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
		for k, v := range h {
			m.Header.Set(k, v)
		}
		id := streams.WebhookMsgID(outcome.EventCompleted, session)
		if r := h[outcome.HeaderReplay]; r != "" {
			id = streams.ReplayMsgID(outcome.EventCompleted, session, 1)
		}
		if _, err := js.PublishMsg(ctx, m, jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	webhook("default", "3f2a9c1e-0000-4000-8000-000000000001", nil)               // passed
	webhook("kyc-eu", "3f2a9c1e-0000-4000-8000-fa11ed000001", nil)                // failed
	webhook("shop", "3F2A9C1E-0000-4000-8000-7E5700000001", nil)                  // a verifier not executed
	webhook("default", "3f2a9c1e-0000-4000-8000-000000000002", map[string]string{ // traced
		outcome.HeaderTraceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", outcome.HeaderTracestate: "v=1"})
	webhook("default", "3f2a9c1e-0000-4000-8000-000000000001", map[string]string{outcome.HeaderReplay: "1"}) // replayed
	webhook("default", "3f2a9c1e-0000-4000-8000-404404000001", nil)                                          // dead-lettered
	for i := range 20 {
		webhook("default", fmt.Sprintf("8e1b2c3d-1111-4222-8333-%012x", i*7919), nil) // the fake's mix
	}
	natstest.WaitFor(t, 60*time.Second, func() error {
		if n, d := natstest.Count(t, js, outcome.StreamResults), natstest.Count(t, js, outcome.StreamDLQ); n != 25 || d != 1 {
			return fmt.Errorf("%d outcomes, %d dead letters; want 25 and 1", n, d)
		}
		return nil
	})
	return natstest.Messages(t, js, outcome.StreamWebhooks), natstest.Messages(t, js, outcome.StreamResults), natstest.Messages(t, js, outcome.StreamDLQ)
}

func schema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(api.OutcomeSchema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("outcome.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("outcome.schema.json")
	if err != nil {
		t.Fatalf("compile outcome.schema.json: %v", err)
	}
	return s
}

func validate(t *testing.T, s *jsonschema.Schema, b []byte) error {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return err
	}
	return s.Validate(v)
}

// asyncAPI is the part of the AsyncAPI document the tests read.
type asyncAPI struct {
	AsyncAPI string `yaml:"asyncapi"`
	Channels map[string]struct {
		Address  string         `yaml:"address"`
		Stream   string         `yaml:"x-jetstream-stream"`
		Messages map[string]any `yaml:"messages"`
	} `yaml:"channels"`
	Operations map[string]struct {
		Action string `yaml:"action"`
	} `yaml:"operations"`
	Components struct {
		Messages map[string]struct {
			ContentType string `yaml:"contentType"`
			Headers     struct {
				Required   []string       `yaml:"required"`
				Properties map[string]any `yaml:"properties"`
			} `yaml:"headers"`
		} `yaml:"messages"`
	} `yaml:"components"`
}

func readAsyncAPI(t *testing.T) asyncAPI {
	t.Helper()
	var doc asyncAPI
	if err := yaml.Unmarshal(api.AsyncAPI, &doc); err != nil {
		t.Fatalf("asyncapi.yaml: %v", err)
	}
	return doc
}

// documented returns the header names the AsyncAPI document gives message m.
func (d asyncAPI) headers(m string) []string {
	return slices.Sorted(maps.Keys(d.Components.Messages[m].Headers.Properties))
}

func TestEmittedOutcomesMatchTheContract(t *testing.T) {
	webhooks, results, dlq := emitted(t)
	s := schema(t)
	doc := readAsyncAPI(t)
	byID := map[string]*outcome.Event{}
	for _, m := range results {
		b := m.Data()
		if err := validate(t, s, b); err != nil {
			t.Errorf("outcome %s does not validate against outcome.schema.json: %v\n%s", m.Subject(), err, b)
		}
		ev, err := outcome.Decode(b)
		if err != nil {
			t.Fatalf("outcome.Decode(%s) = %v", b, err)
		}
		byID[ev.ID] = ev
		if want := outcome.ResultSubject(outcome.DefaultPrefix, ev.Source, ev.Outcome); m.Subject() != want {
			t.Errorf("outcome %s on subject %s, want %s", ev.ID, m.Subject(), want)
		}
		checkHeaders(t, doc, "outcome", m.Headers())
		if got := m.Headers().Get(outcome.HeaderContentType); got != outcome.ContentType {
			t.Errorf("outcome %s Content-Type %q, want %q", ev.ID, got, outcome.ContentType)
		}
		if got := m.Headers().Get(outcome.HeaderMsgID); got != ev.ID {
			t.Errorf("outcome Nats-Msg-Id %q, want the event id %q", got, ev.ID)
		}
		interop(t, b, ev)
	}
	for id, want := range map[string]string{
		"3f2a9c1e-0000-4000-8000-000000000001":          "passed",
		"3f2a9c1e-0000-4000-8000-fa11ed000001":          "failed",
		"3F2A9C1E-0000-4000-8000-7E5700000001":          "passed",
		"3f2a9c1e-0000-4000-8000-000000000001:replay:1": "passed",
	} {
		if ev := byID[id]; ev == nil || ev.Outcome != want {
			t.Errorf("outcome %s = %+v, want outcome %s", id, ev, want)
		}
	}
	if ev := byID["3F2A9C1E-0000-4000-8000-7E5700000001"]; ev != nil {
		n := 0
		for _, f := range []func() (string, bool){ev.Liveness, ev.FaceRecognition, ev.AgeVerification, ev.GenderVerification} {
			if v, ok := f(); ok && v == outcome.ResultNotExecuted {
				n++
			}
		}
		if n != 1 {
			t.Errorf("not-executed outcome has %d verifiers not_executed, want 1: %s", n, ev.Data)
		}
	}
	for _, m := range webhooks {
		checkHeaders(t, doc, "webhook", m.Headers())
	}
	if len(dlq) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dlq))
	}
	checkHeaders(t, doc, "deadLetter", dlq[0].Headers())
}

// checkHeaders fails for a header the AsyncAPI message does not document, or
// a required one that is missing.
func checkHeaders(t *testing.T, doc asyncAPI, message string, h nats.Header) {
	t.Helper()
	documented := doc.headers(message)
	for k := range h {
		if !slices.Contains(documented, k) {
			t.Errorf("%s message carries header %q, which asyncapi.yaml does not document (it documents %v)", message, k, documented)
		}
	}
	for _, k := range doc.Components.Messages[message].Headers.Required {
		if h.Get(k) == "" {
			t.Errorf("%s message lacks the required header %q", message, k)
		}
	}
}

// interop reads b with the CloudEvents Go SDK and compares it with ev.
func interop(t *testing.T, b []byte, ev *outcome.Event) {
	t.Helper()
	ce := cloudevents.New()
	if err := json.Unmarshal(b, &ce); err != nil {
		t.Fatalf("CloudEvents SDK: unmarshal %s: %v", b, err)
	}
	if err := ce.Validate(); err != nil {
		t.Errorf("CloudEvents SDK: %s invalid: %v", ev.ID, err)
	}
	got := []string{ce.SpecVersion(), ce.ID(), ce.Type(), ce.Source(), ce.Subject(), ce.DataContentType()}
	want := []string{"1.0", ev.ID, outcome.EventType, outcome.CloudEventSource(ev.Source), ev.SessionID, outcome.DataContentType}
	if !slices.Equal(got, want) {
		t.Errorf("CloudEvents SDK read %v, want %v", got, want)
	}
	if !ce.Time().Equal(ev.Time) {
		t.Errorf("CloudEvents SDK time %v, want %v", ce.Time(), ev.Time)
	}
	if !bytes.Equal(ce.Data(), ev.Data) {
		t.Errorf("CloudEvents SDK data %q, want %q byte for byte", ce.Data(), ev.Data)
	}
	ext := ce.Extensions()
	if ext["verifeyesource"] != ev.Source || ext["verifeyeoutcome"] != ev.Outcome {
		t.Errorf("CloudEvents SDK extensions %v, want verifeyesource %s, verifeyeoutcome %s", ext, ev.Source, ev.Outcome)
	}
}

func TestSchemaAcceptsAndRefuses(t *testing.T) {
	s := schema(t)
	ev := &outcome.Event{SessionID: "3f2a9c1e-0000-4000-8000-000000000001", Source: "default", Outcome: "passed",
		Time: time.Now(), Reconciled: true, Data: json.RawMessage(`{"verificationResult":7,"new":{"shape":[]}}`)}
	good, err := outcome.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate(t, s, good); err != nil {
		t.Errorf("reconciled event with an odd data shape: %v\n%s", err, good)
	}
	for name, edit := range map[string]func(map[string]any){
		"no data":       func(m map[string]any) { delete(m, "data") },
		"other type":    func(m map[string]any) { m["type"] = "x" },
		"bad subject":   func(m map[string]any) { m["subject"] = "{3f2a9c1e-0000-4000-8000-000000000001}" },
		"bad time":      func(m map[string]any) { m["time"] = "yesterday" },
		"bad source":    func(m map[string]any) { m["source"] = "elsewhere/default" },
		"spec 0.3":      func(m map[string]any) { m["specversion"] = "0.3" },
		"data an array": func(m map[string]any) { m["data"] = []any{} },
	} {
		var m map[string]any
		_ = json.Unmarshal(good, &m)
		edit(m)
		b, _ := json.Marshal(m)
		if err := validate(t, s, b); err == nil {
			t.Errorf("schema accepts an event with %s: %s", name, b)
		}
	}
}

func TestAsyncAPINamesTheContract(t *testing.T) {
	doc := readAsyncAPI(t)
	if !strings.HasPrefix(doc.AsyncAPI, "3.") {
		t.Errorf("asyncapi: %q, want 3.x", doc.AsyncAPI)
	}
	var addresses, streamNames []string
	for _, c := range doc.Channels {
		addresses = append(addresses, c.Address)
		streamNames = append(streamNames, c.Stream)
	}
	p, src := "{prefix}", "{source}"
	wantAddr := []string{
		outcome.WebhookSubject(p, src, "{event}"), outcome.ResultSubject(p, src, "{outcome}"),
		outcome.DLQSubject(p, src, "{event}"), outcome.ExpectSubject(p, src),
	}
	slices.Sort(addresses)
	slices.Sort(wantAddr)
	if !slices.Equal(addresses, wantAddr) {
		t.Errorf("asyncapi channel addresses %v, want exactly %v", addresses, wantAddr)
	}
	wantStreams := []string{outcome.StreamDLQ, outcome.StreamExpectations, outcome.StreamResults, outcome.StreamWebhooks}
	slices.Sort(streamNames)
	if !slices.Equal(streamNames, wantStreams) {
		t.Errorf("asyncapi streams %v, want exactly %v", streamNames, wantStreams)
	}
	if !strings.Contains(string(api.AsyncAPI), outcome.BucketSessions) {
		t.Errorf("asyncapi.yaml does not name the ledger bucket %s", outcome.BucketSessions)
	}
	if got := doc.Components.Messages["outcome"].ContentType; got != outcome.ContentType {
		t.Errorf("asyncapi outcome contentType %q, want %q", got, outcome.ContentType)
	}

	// Every header constant of package outcome, and nothing else.
	headers := map[string]bool{}
	for _, m := range doc.Components.Messages {
		for k := range m.Headers.Properties {
			headers[k] = true
		}
	}
	got := slices.Sorted(maps.Keys(headers))
	want := []string{
		outcome.HeaderMsgID, outcome.HeaderExpectedStream, outcome.HeaderContentType, outcome.HeaderReceivedAt, outcome.HeaderReconciled,
		outcome.HeaderReplay, outcome.HeaderSpooledAt, outcome.HeaderError, outcome.HeaderErrorDetail,
		outcome.HeaderLastStatus, outcome.HeaderAttempts, outcome.HeaderOrigSubject, outcome.HeaderOrigSeq,
		outcome.HeaderTraceparent, outcome.HeaderTracestate,
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("asyncapi headers %v, want exactly %v", got, want)
	}
	if n := headerConsts(t); n != len(want) {
		t.Errorf("package outcome declares %d Header constants, this test lists %d: document the new one in asyncapi.yaml and here", n, len(want))
	}
}

// headerConsts counts the Header* constants of package outcome.
func headerConsts(t *testing.T) int {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../outcome/contract.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	ast.Inspect(f, func(node ast.Node) bool {
		if vs, ok := node.(*ast.ValueSpec); ok {
			for _, id := range vs.Names {
				if strings.HasPrefix(id.Name, "Header") && id.IsExported() {
					n++
				}
			}
		}
		return true
	})
	return n
}
