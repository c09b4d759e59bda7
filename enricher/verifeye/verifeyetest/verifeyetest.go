// Package verifeyetest is a scripted fake of the VerifEye Service API's Get Session
// Result endpoint, for tests: they drive the real client over real HTTP against it.
// It builds on package simulator (the stand-in `dev` serves) and answers like it by
// default: any well-formed session ID (8-4-4-4-12 hex) gets a realistic 200 body
// derived deterministically from the ID, and the ID's last group picks the outcome
// (see the simulator's package doc; [BodyFor], [OutcomeFor]). On top of that, per
// session, tests can [Server.Script] a queue of replies, [Server.Register] a specific
// body, switch to [Server.SetStrict] mode where only registered sessions exist, and
// set a global fault with [Server.SetFault]. Registering a body for an ID overrides
// the simulator's rules; scripted replies and a fault override everything.
//
// It does not import package testing, and nothing but tests imports it.
package verifeyetest

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/simulator"
)

// ResultPath is the path of the Get Session Result endpoint.
const ResultPath = simulator.ResultPath

// Reply is one scripted answer.
//
// A Reply with Status 0 stands for the session's default answer (generated or
// registered body, or 404 in strict mode), after Delay and with Header added. A Reply
// with a Status and a nil Body gets a body that fits: for 200, the session's default
// body; for other codes, a JSON error body. A non-nil Body, even empty, is sent as is.
type Reply struct {
	// Status is the HTTP status code; 0 means the session's default answer.
	Status int
	// Body is the response body; nil means a body that fits Status.
	Body []byte
	// Delay is waited before answering. The wait ends early, without an answer, when
	// the request's context is cancelled or the Server is closed.
	Delay time.Duration
	// Header is added to the response. Content-Type defaults to application/json.
	Header http.Header
}

// Status returns a Reply with the status code and a fitting body (see [Reply]).
func Status(code int) Reply {
	return Reply{Status: code}
}

// NotFoundFor returns n replies of 404, to script a result that lags behind the
// webhook: Script(id, NotFoundFor(2)...) answers 404 twice, then the default.
func NotFoundFor(n int) []Reply {
	replies := make([]Reply, n)
	for i := range replies {
		replies[i] = Status(http.StatusNotFound)
	}
	return replies
}

// RetryAfter returns a Reply with the status code (429 or 503, typically) and a
// Retry-After header of after in whole seconds, rounded up.
func RetryAfter(status int, after time.Duration) Reply {
	secs := int64((after + time.Second - 1) / time.Second)
	return Reply{
		Status: status,
		Header: http.Header{"Retry-After": {strconv.FormatInt(max(secs, 0), 10)}},
	}
}

// Slow returns a Reply that gives the session's default answer after d. Set d past
// the client's timeout to test timeouts; the wait ends when the client gives up.
func Slow(d time.Duration) Reply {
	return Reply{Delay: d}
}

// NonJSON returns a 200 Reply with an HTML body, as a misconfigured proxy might send.
func NonJSON() Reply {
	return Reply{
		Status: http.StatusOK,
		Body:   []byte("<html>oops</html>"),
		Header: http.Header{"Content-Type": {"text/html; charset=utf-8"}},
	}
}

// Server is the fake API, an http.Handler. Build it with [New] to mount it yourself
// or with [Start] to serve it on a loopback port. All methods are safe for
// concurrent use, also while requests are being served.
type Server struct {
	// URL is the base URL of the listener started by Start, such as
	// "http://127.0.0.1:41234"; empty for a Server built with New.
	URL string

	sim *simulator.Server
	ts  *httptest.Server

	mu      sync.Mutex
	strict  bool
	fault   *Reply
	scripts map[string][]Reply // by normalized session ID
	known   map[string][]byte  // registered bodies, by normalized session ID
	calls   map[string]int     // by normalized session ID
	total   int
}

// New returns a fake API accepting apiKey, not listening anywhere: mount it as an
// http.Handler. An empty apiKey accepts no request. Call Close when done if delays
// may be pending.
func New(apiKey string) *Server {
	s := &Server{
		scripts: make(map[string][]Reply),
		known:   make(map[string][]byte),
		calls:   make(map[string]int),
	}
	s.sim = simulator.New(apiKey, simulator.Options{Answer: s.answer})
	return s
}

// Start returns a fake API accepting apiKey, served by an httptest.Server on
// 127.0.0.1 at a random port; its base URL is in s.URL. It panics if it cannot
// listen. The caller must call Close.
func Start(apiKey string) *Server {
	s := New(apiKey)
	s.ts = httptest.NewServer(s)
	s.URL = s.ts.URL
	return s
}

// Close ends pending delays (their connections are dropped without an answer) and,
// for a Server from Start, shuts the listener down and waits for in-flight
// requests. It is safe to call more than once.
func (s *Server) Close() {
	s.sim.Close()
	if s.ts != nil {
		s.ts.Close()
	}
}

// SetAPIKey changes the key the fake accepts from now on, to simulate a key rotated
// on the VerifEye side or fixed in our configuration.
func (s *Server) SetAPIKey(key string) {
	s.sim.SetAPIKey(key)
}

// SetStrict switches strict mode. In strict mode a session that is neither
// registered nor scripted answers 404 instead of a generated 200 (the magic 500500
// IDs still answer 500).
func (s *Server) SetStrict(strict bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.strict = strict
}

// SetLatency sets a base delay added to every 200 answer (benchmarks use 50 ms).
// Like Reply.Delay, it ends early when the request is cancelled.
func (s *Server) SetLatency(d time.Duration) {
	s.sim.SetLatency(d)
}

// SetFault makes every authorized call answer with *f, whatever the session, until
// SetFault(nil) clears it: SetFault(&Reply{Status: 503}) is an API outage. Scripted
// replies are not consumed while a fault is set.
func (s *Server) SetFault(f *Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == nil {
		s.fault = nil
		return
	}
	r := cloneReply(*f)
	s.fault = &r
}

// Script queues replies for sessionID, consumed one per authorized, well-formed
// call; once the queue is empty the session's default answer applies again. Calls
// add to the queue. The replies are copied.
func (s *Server) Script(sessionID string, replies ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := normalize(sessionID)
	for _, r := range replies {
		s.scripts[key] = append(s.scripts[key], cloneReply(r))
	}
}

// Register makes sessionID a known session whose default answer is 200 with body,
// sent byte for byte (even if it is not JSON). It overrides the generated body, the
// magic session-ID rules and strict mode. The body is copied.
func (s *Server) Register(sessionID string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.known[normalize(sessionID)] = bytes.Clone(body)
}

// Calls returns how many requests for sessionID reached the endpoint, authorized or
// not, well-formed or not.
func (s *Server) Calls(sessionID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[normalize(sessionID)]
}

// TotalCalls returns how many requests the Server received, on any path.
func (s *Server) TotalCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// ServeHTTP answers GET ResultPath?verificationSessionId=<id>, in this order: 401
// without "Authorization: ApiKey <key>"; the fault, if set; 400 for a missing or
// malformed ID; the next scripted reply; the session's default answer. Other methods
// get 405, other paths 404, both before authentication.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.total++
	if r.URL.Path == ResultPath && r.Method == http.MethodGet {
		if id := r.URL.Query().Get("verificationSessionId"); id != "" {
			s.calls[normalize(id)]++
		}
	}
	s.mu.Unlock()
	s.sim.ServeHTTP(w, r)
}

// answer picks the reply to an authorized call, for the simulator.
func (s *Server) answer(id string) simulator.Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.fault != nil:
		// An outage does not care whether the ID is well-formed.
		return s.resolveLocked(id, *s.fault)
	case !simulator.ValidSessionID(id):
		return simulator.Answer(id) // 400
	}
	return s.nextLocked(id)
}

// nextLocked picks the answer for a well-formed, authorized call when no fault is
// set: the next scripted reply, else the default. s.mu must be held.
func (s *Server) nextLocked(id string) simulator.Reply {
	key := normalize(id)
	if q := s.scripts[key]; len(q) > 0 {
		r := q[0]
		if len(q) == 1 {
			delete(s.scripts, key)
		} else {
			s.scripts[key] = q[1:]
		}
		return s.resolveLocked(id, r)
	}
	return s.defaultLocked(id)
}

// resolveLocked turns r into a concrete reply (non-zero Status, body set) for id.
// s.mu must be held.
func (s *Server) resolveLocked(id string, r Reply) simulator.Reply {
	if r.Status == 0 {
		d := s.defaultLocked(id)
		d.Delay += r.Delay
		d.Header = r.Header
		return d
	}
	if r.Body == nil {
		if r.Status == http.StatusOK {
			r.Body = s.bodyLocked(id)
		} else {
			r.Body = simulator.ErrorBody(r.Status, http.StatusText(r.Status))
		}
	}
	return simulator.Reply(r)
}

// defaultLocked is the answer for an unscripted session: the registered body,
// else the simulator's answer, which strict mode turns from 200 to 404. s.mu
// must be held.
func (s *Server) defaultLocked(id string) simulator.Reply {
	if body, ok := s.known[normalize(id)]; ok {
		return simulator.Reply{Status: http.StatusOK, Body: body}
	}
	d := simulator.Answer(id)
	if s.strict && d.Status == http.StatusOK {
		return simulator.NotFound()
	}
	return d
}

// bodyLocked is the 200 body for id: registered, else generated. s.mu must be held.
func (s *Server) bodyLocked(id string) []byte {
	if body, ok := s.known[normalize(id)]; ok {
		return body
	}
	return BodyFor(id)
}

func cloneReply(r Reply) Reply {
	r.Body = bytes.Clone(r.Body)
	r.Header = r.Header.Clone()
	return r
}

// normalize is the map key for a session ID: UUIDs are case-insensitive.
func normalize(id string) string {
	return strings.ToLower(id)
}

// BodyFor returns the 200 body the fake answers for sessionID when it is neither
// registered nor scripted: [simulator.BodyFor]. The result depends only on
// sessionID, so tests can compare a client's result with it byte for byte.
func BodyFor(sessionID string) []byte {
	return simulator.BodyFor(sessionID)
}

// OutcomeFor returns the verificationResult of BodyFor(sessionID): "passed" or
// "failed" ([simulator.OutcomeFor]).
func OutcomeFor(sessionID string) string {
	return simulator.OutcomeFor(sessionID)
}
