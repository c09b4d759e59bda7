// Package verifeyetest is a scripted fake of the VerifEye Service API's Get Session
// Result endpoint. Tests use it to drive the real client over real HTTP; the `dev`
// subcommand serves it as a simulator. It does not import package testing.
//
// By default the fake answers any well-formed session ID (8-4-4-4-12 hex) with a
// realistic 200 body derived deterministically from the ID (see [BodyFor]). On top
// of that, per session, tests can [Server.Script] a queue of replies, [Server.Register]
// a specific body, switch to [Server.SetStrict] mode where only registered sessions
// exist, and set a global fault with [Server.SetFault].
//
// # Picking an outcome with the session ID
//
// The last group of the session ID (its 12 final hex digits, case-insensitive)
// chooses the default answer when it starts with:
//
//	fa11ed   200, verificationResult "failed" (liveness failed)
//	0000     200, verificationResult "passed", every verifier passed
//	7e57     200, verificationResult "passed", one verifier "not_executed"
//	404404   404 on every call (a session the API never knows)
//	500500   500 on every call (a session that breaks the API)
//
// For example 3f2a9c1e-0000-4000-8000-fa11ed000001 fails and
// 3f2a9c1e-0000-4000-8000-000000000001 passes. Any other ID gets an outcome from a
// hash of the ID: about 80% passed, 15% failed (liveness), 5% passed with one
// verifier not_executed. Registering a body for an ID overrides these rules; scripted
// replies and a fault override everything.
//
// # Assumptions
//
// Realeyes does not publish the JSON shape of Get Session Result, nor of its error
// answers, nor whether it returns 404 or 429. The bodies generated here are an
// ASSUMPTION: a flat camelCase object with the keys the redirect flow documents
// (verifeye-api.md). Error bodies ({"error","message"}) are invented. Code under test
// must not depend on either beyond what verifeye-api.md marks as known.
package verifeyetest

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ResultPath is the path of the Get Session Result endpoint.
const ResultPath = "/v1/verification/get-session-result"

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

	ts        *httptest.Server
	done      chan struct{} // closed by Close; ends pending delays
	closeOnce sync.Once

	mu      sync.Mutex
	apiKey  string
	strict  bool
	latency time.Duration
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
	return &Server{
		done:    make(chan struct{}),
		apiKey:  apiKey,
		scripts: make(map[string][]Reply),
		known:   make(map[string][]byte),
		calls:   make(map[string]int),
	}
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
	s.closeOnce.Do(func() { close(s.done) })
	if s.ts != nil {
		s.ts.Close()
	}
}

// SetAPIKey changes the key the fake accepts from now on, to simulate a key rotated
// on the VerifEye side or fixed in our configuration.
func (s *Server) SetAPIKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiKey = key
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
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
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
	s.mu.Unlock()

	if r.URL.Path != ResultPath {
		writeError(w, http.StatusNotFound, "no such endpoint")
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, "use GET")
		return
	}
	id := r.URL.Query().Get("verificationSessionId")

	s.mu.Lock()
	if id != "" {
		s.calls[normalize(id)]++
	}
	want := "ApiKey " + s.apiKey
	got := r.Header.Get("Authorization")
	var reply Reply
	switch {
	case s.apiKey == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1:
		reply = Reply{
			Status: http.StatusUnauthorized,
			Body:   errorBody(http.StatusUnauthorized, "missing or invalid API key"),
			Header: http.Header{"Www-Authenticate": {"ApiKey"}},
		}
	case s.fault != nil:
		// An outage does not care whether the ID is well-formed.
		reply = s.resolveLocked(id, *s.fault)
	case !validSessionID(id):
		reply = Reply{
			Status: http.StatusBadRequest,
			Body:   errorBody(http.StatusBadRequest, "verificationSessionId is missing or not a UUID"),
		}
	default:
		reply = s.nextLocked(id)
	}
	if reply.Status == http.StatusOK {
		reply.Delay += s.latency
	}
	s.mu.Unlock()

	s.write(w, r, reply)
}

// nextLocked picks the answer for a well-formed, authorized call when no fault is
// set: the next scripted reply, else the default. s.mu must be held.
func (s *Server) nextLocked(id string) Reply {
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
func (s *Server) resolveLocked(id string, r Reply) Reply {
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
			r.Body = errorBody(r.Status, http.StatusText(r.Status))
		}
	}
	return r
}

// defaultLocked is the answer for an unscripted session. s.mu must be held.
func (s *Server) defaultLocked(id string) Reply {
	if body, ok := s.known[normalize(id)]; ok {
		return Reply{Status: http.StatusOK, Body: body}
	}
	switch kindOf(id, hashOf(id)) {
	case kindAlways404:
		return Reply{Status: http.StatusNotFound, Body: errorBody(http.StatusNotFound, "verification session not found")}
	case kindAlways500:
		return Reply{Status: http.StatusInternalServerError, Body: errorBody(http.StatusInternalServerError, "internal error")}
	}
	if s.strict {
		return Reply{Status: http.StatusNotFound, Body: errorBody(http.StatusNotFound, "verification session not found")}
	}
	return Reply{Status: http.StatusOK, Body: BodyFor(id)}
}

// bodyLocked is the 200 body for id: registered, else generated. s.mu must be held.
func (s *Server) bodyLocked(id string) []byte {
	if body, ok := s.known[normalize(id)]; ok {
		return body
	}
	return BodyFor(id)
}

// write sends a resolved reply after its delay.
func (s *Server) write(w http.ResponseWriter, r *http.Request, reply Reply) {
	if reply.Delay > 0 {
		t := time.NewTimer(reply.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return // the client is gone
		case <-s.done:
			// Drop the connection rather than send a half-made answer.
			panic(http.ErrAbortHandler)
		}
	}

	h := w.Header()
	for k, vs := range reply.Header {
		h[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
	}
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/json")
	}
	w.WriteHeader(reply.Status)
	if bodyAllowed(reply.Status) {
		_, _ = w.Write(reply.Body)
	}
}

// bodyAllowed reports whether a response with this status may carry a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// writeError sends an error answer with a JSON body.
func writeError(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(errorBody(status, message))
}

// errorBody is the fake's error body. Its shape is invented: VerifEye's is not
// published.
func errorBody(status int, message string) []byte {
	slug := strings.ToLower(strings.ReplaceAll(http.StatusText(status), " ", "_"))
	if slug == "" {
		slug = "error"
	}
	b, _ := json.Marshal(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{slug, message})
	return b
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

// validSessionID reports whether id is 8-4-4-4-12 hex digits, either case.
func validSessionID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// kind is the default answer class of a session.
type kind int

const (
	kindPassed kind = iota
	kindFailed
	kindNotExecuted // overall passed, one verifier not_executed
	kindAlways404
	kindAlways500
)

// hashOf is the seed of everything generated for id.
func hashOf(id string) [32]byte {
	return sha256.Sum256([]byte(normalize(id)))
}

// kindOf applies the magic session-ID rules (see the package doc), else spreads IDs
// by hash: 80% passed, 15% failed, 5% not_executed.
func kindOf(id string, h [32]byte) kind {
	if validSessionID(id) {
		last := normalize(id[24:])
		switch {
		case strings.HasPrefix(last, "fa11ed"):
			return kindFailed
		case strings.HasPrefix(last, "0000"):
			return kindPassed
		case strings.HasPrefix(last, "7e57"):
			return kindNotExecuted
		case strings.HasPrefix(last, "404404"):
			return kindAlways404
		case strings.HasPrefix(last, "500500"):
			return kindAlways500
		}
	}
	switch p := binary.BigEndian.Uint16(h[0:2]) % 100; {
	case p < 80:
		return kindPassed
	case p < 95:
		return kindFailed
	default:
		return kindNotExecuted
	}
}

// resultBody is the ASSUMED shape of a Get Session Result body: Realeyes does not
// publish it. Keys are those the redirect flow documents (verifeye-api.md); field
// order is fixed so bodies are reproducible byte for byte.
type resultBody struct {
	VerificationSessionID    string `json:"verificationSessionId"`
	VerificationResult       string `json:"verificationResult"`
	LivenessResult           string `json:"livenessResult"`
	FaceRecognitionResult    string `json:"faceRecognitionResult"`
	AgeVerificationResult    string `json:"ageVerificationResult"`
	GenderVerificationResult string `json:"genderVerificationResult"`
	FaceID                   string `json:"faceId,omitempty"`
	Age                      *int   `json:"age,omitempty"`
	Gender                   string `json:"gender,omitempty"`
	CorrelationID            string `json:"correlationId,omitempty"`
	ExternalID               string `json:"externalId,omitempty"`
	TotalFaceCount           int    `json:"totalFaceCount"`
	FailedReason             string `json:"failedReason,omitempty"`
	// ProcessingTimeMs is not a documented key: some bodies carry it so consumers
	// prove they ignore keys they do not know.
	ProcessingTimeMs int `json:"processingTimeMs,omitempty"`
}

// BodyFor returns the 200 body the fake generates for sessionID when it is neither
// registered nor scripted: a flat JSON object whose outcome follows the magic
// session-ID rules or the ID's hash (see the package doc). The result depends only
// on sessionID (the ID is echoed as given; everything else ignores case), so tests
// can compare a client's result with it byte for byte. About a quarter of bodies omit
// correlationId, a third omit externalId, and a fifth carry an undocumented extra key.
func BodyFor(sessionID string) []byte {
	h := hashOf(sessionID)
	h2 := sha256.Sum256(h[:])
	age := 18 + int(h[7]%50)
	b := resultBody{
		VerificationSessionID:    sessionID,
		VerificationResult:       "passed",
		LivenessResult:           "passed",
		FaceRecognitionResult:    "passed",
		AgeVerificationResult:    "passed",
		GenderVerificationResult: "passed",
		FaceID:                   hex.EncodeToString(h[16:32]),
		Age:                      &age,
		Gender:                   [2]string{"male", "female"}[h[8]%2],
		CorrelationID:            formatUUID(h2[0:16]),
		ExternalID:               "ext-" + hex.EncodeToString(h2[16:20]),
		TotalFaceCount:           1,
	}
	switch kindOf(sessionID, h) {
	case kindFailed:
		b.VerificationResult = "failed"
		b.LivenessResult = "failed"
		b.FailedReason = "liveness_failed"
	case kindNotExecuted:
		switch h[3] % 3 {
		case 0:
			b.FaceRecognitionResult = "not_executed"
			b.FaceID = ""
		case 1:
			b.AgeVerificationResult = "not_executed"
			b.Age = nil
		case 2:
			b.GenderVerificationResult = "not_executed"
			b.Gender = ""
		}
	}
	if h[4]%4 == 0 {
		b.CorrelationID = ""
	}
	if h[5]%3 == 0 {
		b.ExternalID = ""
	}
	if h[6]%5 == 0 {
		b.ProcessingTimeMs = 300 + int(binary.BigEndian.Uint16(h[9:11])%2000)
	}
	out, err := json.Marshal(b)
	if err != nil {
		panic(fmt.Sprintf("verifeyetest: marshal generated body: %v", err)) // cannot happen: fixed types
	}
	return out
}

// OutcomeFor returns the verificationResult of BodyFor(sessionID): "passed" or
// "failed" ("passed" also when a verifier is not_executed). For the magic 404404
// and 500500 IDs the default answer carries no body, but a scripted Status(200)
// would send this one.
func OutcomeFor(sessionID string) string {
	if kindOf(sessionID, hashOf(sessionID)) == kindFailed {
		return "failed"
	}
	return "passed"
}

// formatUUID formats 16 bytes as a version-4 style UUID string.
func formatUUID(b []byte) string {
	var u [16]byte
	copy(u[:], b)
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	x := hex.EncodeToString(u[:])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}
