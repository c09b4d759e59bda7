// Package sessionapi is the bridge's internal HTTP API over the session
// ledger (DESIGN.md, "Session ledger"): GET /v1/sessions/{id}, with an
// optional long poll ?wait=, and PUT /v1/sessions/{id}/expect. It is served
// on API_ADDR, never on the public ingest listener.
//
// Long polls are driven by one key-value watch of the whole ledger per
// process, fanned out to the waiters: a thousand waiters cost a thousand map
// entries and parked goroutines, not a thousand NATS subscriptions or polls.
package sessionapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/ops"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// MaxWait is the longest ?wait= accepted.
const MaxWait = 60 * time.Second

// maxBody bounds the body of PUT .../expect.
const maxBody = 4 << 10

// Options configure the API.
type Options struct {
	// Token, when set, is required as "Authorization: Bearer <Token>".
	Token string
	// Prefix is the subject prefix (SUBJECT_PREFIX); empty means "verifeye".
	Prefix string
	Log    zerolog.Logger
	// Sync, when set, is called after an expectation is stored and before it
	// is answered 202: the embedded server at NATS_EMBEDDED_SYNC=always
	// leaves syncing to its callers (natsembed.Syncer).
	Sync func() error
}

// API serves the internal API. Build it with New; run its shared ledger
// watch with Run.
type API struct {
	js    jetstream.JetStream
	opts  Options
	token [32]byte

	mu      sync.Mutex
	kv      jetstream.KeyValue
	waiters map[string]map[chan *outcome.Session]struct{}
}

// New returns the API over js's ledger and expectations.
func New(js jetstream.JetStream, opts Options) *API {
	if opts.Prefix == "" {
		opts.Prefix = outcome.DefaultPrefix
	}
	a := &API{js: js, opts: opts, waiters: make(map[string]map[chan *outcome.Session]struct{})}
	if opts.Token != "" {
		a.token = sha256.Sum256([]byte(opts.Token))
	}
	return a
}

// Run watches the ledger and wakes the waiters of each updated session until
// ctx ends; it returns nil then. Without Run, a ?wait= answers only at the end
// of its wait.
func (a *API) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := a.watch(ctx); err != nil && ctx.Err() == nil {
			a.opts.Log.Warn().Err(err).Msg("session ledger watch failed; retrying in a second")
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

func (a *API) watch(ctx context.Context) error {
	kv, err := a.bucket(ctx)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	// Updates from now on come through w; what happened before it started,
	// the waiters read from the ledger again.
	a.recheckAll()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch ended")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			a.notify(e.Key(), e.Value())
		}
	}
}

func (a *API) notify(key string, value []byte) {
	a.mu.Lock()
	ws := a.waiters[key]
	if len(ws) == 0 {
		a.mu.Unlock()
		return
	}
	chans := make([]chan *outcome.Session, 0, len(ws))
	for c := range ws {
		chans = append(chans, c)
	}
	a.mu.Unlock()
	var s outcome.Session
	if err := json.Unmarshal(value, &s); err != nil {
		return
	}
	send(chans, &s)
}

// recheckAll tells every waiter to read the ledger again (a nil update).
func (a *API) recheckAll() {
	a.mu.Lock()
	var chans []chan *outcome.Session
	for _, ws := range a.waiters {
		for c := range ws {
			chans = append(chans, c)
		}
	}
	a.mu.Unlock()
	send(chans, nil)
}

// send gives s to each waiter of chans; each holds the newest update only,
// one not read yet is replaced (the one watch goroutine is the only sender).
func send(chans []chan *outcome.Session, s *outcome.Session) {
	for _, c := range chans {
		for sent := false; !sent; {
			select {
			case c <- s:
				sent = true
			default:
				select {
				case <-c:
				default:
				}
			}
		}
	}
}

func (a *API) subscribe(key string) (chan *outcome.Session, func()) {
	c := make(chan *outcome.Session, 1)
	a.mu.Lock()
	ws := a.waiters[key]
	if ws == nil {
		ws = make(map[chan *outcome.Session]struct{})
		a.waiters[key] = ws
	}
	ws[c] = struct{}{}
	a.mu.Unlock()
	return c, func() {
		a.mu.Lock()
		delete(ws, c)
		if len(ws) == 0 {
			delete(a.waiters, key)
		}
		a.mu.Unlock()
	}
}

// Waiters returns the number of long polls waiting now.
func (a *API) Waiters() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, ws := range a.waiters {
		n += len(ws)
	}
	return n
}

func (a *API) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.kv != nil {
		return a.kv, nil
	}
	kv, err := a.js.KeyValue(ctx, outcome.BucketSessions)
	if err != nil {
		return nil, fmt.Errorf("session ledger %s: %w", outcome.BucketSessions, err)
	}
	a.kv = kv
	return kv, nil
}

// lookup returns the session's entry, nil when the ledger holds none.
func (a *API) lookup(ctx context.Context, id string) (*outcome.Session, error) {
	kv, err := a.bucket(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, outcome.SessionKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s outcome.Session
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Routes returns the API's routes (OpenAPI path templates) and their
// methods; GET also answers HEAD.
func Routes() map[string][]string {
	return map[string][]string{
		"/v1/sessions/{id}":        {http.MethodGet},
		"/v1/sessions/{id}/expect": {http.MethodPut},
	}
}

// ServeHTTP routes the API's requests.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if !a.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="verifeye-bridge"`)
		ops.WriteError(w, r, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token")
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/sessions/")
	if !ok || rest == "" {
		ops.Error(w, r, http.StatusNotFound)
		return
	}
	id, action, _ := strings.Cut(rest, "/")
	switch action {
	case "":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			ops.Error(w, r, http.StatusMethodNotAllowed)
			return
		}
		if !a.validID(w, r, id) {
			return
		}
		a.get(w, r, id)
	case "expect":
		if r.Method != http.MethodPut {
			w.Header().Set("Allow", "PUT")
			ops.Error(w, r, http.StatusMethodNotAllowed)
			return
		}
		if !a.validID(w, r, id) {
			return
		}
		a.expect(w, r, id)
	default:
		ops.Error(w, r, http.StatusNotFound)
	}
}

func (a *API) authorized(r *http.Request) bool {
	if a.opts.Token == "" {
		return true
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	h := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(h[:], a.token[:]) == 1
}

func (a *API) validID(w http.ResponseWriter, r *http.Request, id string) bool {
	if outcome.ValidSessionID(id) {
		return true
	}
	ops.WriteError(w, r, http.StatusBadRequest, "invalid_session_id", "the session ID must be a UUID (8-4-4-4-12 hex)")
	return false
}

func (a *API) get(w http.ResponseWriter, r *http.Request, id string) {
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > MaxWait {
			ops.WriteError(w, r, http.StatusBadRequest, "invalid_wait", "wait must be a duration between 0s and 60s, such as 30s")
			return
		}
		wait = d
	}
	ctx := r.Context()
	var updates chan *outcome.Session
	if wait > 0 {
		c, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		ctx = c
		var unsubscribe func()
		// Subscribe before reading, so an update between the two is not lost.
		updates, unsubscribe = a.subscribe(outcome.SessionKey(id))
		defer unsubscribe()
	}
	s, err := a.lookup(r.Context(), id)
	if err != nil {
		a.unavailable(w, r, err)
		return
	}
	for wait > 0 && (s == nil || !s.Final()) {
		select {
		case u := <-updates:
			if u == nil { // read the ledger again
				if u, err = a.lookup(ctx, id); err != nil {
					break
				}
			}
			s = u
			continue
		case <-ctx.Done():
		}
		if r.Context().Err() != nil {
			return // the client left
		}
		// The end of the wait: the current state, read once more.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		s, err = a.lookup(lctx, id)
		cancel()
		if err != nil {
			a.unavailable(w, r, err)
			return
		}
		break
	}
	if s == nil {
		ops.WriteError(w, r, http.StatusNotFound, "not_found", "the ledger holds no session "+outcome.SessionKey(id))
		return
	}
	writeJSON(w, r, http.StatusOK, s)
}

// expectBody is the optional body of PUT .../expect.
type expectBody struct {
	Source string `json:"source"`
}

func (a *API) expect(w http.ResponseWriter, r *http.Request, id string) {
	source := outcome.DefaultSource
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		ops.WriteError(w, r, http.StatusBadRequest, "invalid_body", "cannot read the body")
		return
	}
	if len(b) > maxBody {
		ops.WriteError(w, r, http.StatusRequestEntityTooLarge, "too_large", "the body is larger than 4 KiB")
		return
	}
	if len(strings.TrimSpace(string(b))) > 0 {
		var body expectBody
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			ops.WriteError(w, r, http.StatusBadRequest, "invalid_body", `the body must be {"source":"<source>"} or empty`)
			return
		}
		if body.Source != "" {
			source = body.Source
		}
	}
	if !outcome.ValidSource(source) {
		ops.WriteError(w, r, http.StatusBadRequest, "invalid_source", "the source must match [a-z0-9_-]{1,64}")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if err := outcome.Expect(ctx, a.js, source, id, outcome.WithPrefix(a.opts.Prefix)); err != nil {
		a.unavailable(w, r, err)
		return
	}
	if a.opts.Sync != nil {
		if err := a.opts.Sync(); err != nil {
			a.unavailable(w, r, err)
			return
		}
	}
	writeJSON(w, r, http.StatusAccepted, map[string]string{"sessionId": outcome.SessionKey(id), "source": source, "state": outcome.StateExpected})
}

func (a *API) unavailable(w http.ResponseWriter, r *http.Request, err error) {
	a.opts.Log.Warn().Err(err).Msg("session API: NATS unavailable")
	ops.WriteError(w, r, http.StatusServiceUnavailable, "unavailable", "the session ledger is not reachable; try again")
}

func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		ops.Error(w, r, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(append(b, '\n'))
	}
}
