// Package simulator is a stand-in for the VerifEye Service API's Get Session
// Result endpoint: the `dev` and `simulator` subcommands serve it so the whole
// pipeline runs without an account. It is never for production: it answers any
// well-formed session ID with a made-up result. Package verifeyetest builds the
// scripted fake that tests use on top of it.
//
// The simulator answers GET [ResultPath]?verificationSessionId=<id> carrying
// "Authorization: ApiKey <key>" with a realistic 200 body derived
// deterministically from the ID (see [BodyFor]); a missing or wrong key gets 401,
// an ID that is not 8-4-4-4-12 hex 400, another method 405, another path 404.
//
// # Picking an outcome with the session ID
//
// The last group of the session ID (its 12 final hex digits, case-insensitive)
// chooses the answer when it starts with:
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
// verifier not_executed.
//
// # Assumptions
//
// Realeyes does not publish the JSON shape of Get Session Result, nor of its error
// answers, nor whether it returns 404 or 429. The bodies generated here are an
// ASSUMPTION: a flat camelCase object with the keys the redirect flow documents
// (verifeye-api.md). Error bodies ({"error","message"}) are invented. Code under test
// must not depend on either beyond what verifeye-api.md marks as known.
package simulator

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/realeyes/verifeye-bridge/outcome"
)

// ResultPath is the path of the Get Session Result endpoint.
const ResultPath = "/v1/verification/get-session-result"

// Reply is one answer of the endpoint.
type Reply struct {
	// Status is the HTTP status code.
	Status int
	// Body is the response body, sent as is.
	Body []byte
	// Delay is waited before answering. The wait ends early, without an answer,
	// when the request's context is cancelled or the Server is closed.
	Delay time.Duration
	// Header is added to the response. Content-Type defaults to application/json.
	Header http.Header
}

// Options tune a [Server]. The zero value serves the simulator's answers.
type Options struct {
	// Latency is added to every 200 answer, to imitate a slower API.
	Latency time.Duration

	// Answer, if set, picks the reply to every authorized GET of ResultPath,
	// given the session ID as sent (possibly empty or malformed); a reply whose
	// Status is 200 also waits the latency. Nil means [Answer]. Package
	// verifeyetest scripts its replies here.
	Answer func(sessionID string) Reply
}

// Server is the simulated endpoint, an http.Handler. Build it with [New]. Its
// methods are safe for concurrent use, also while requests are being served.
type Server struct {
	answer    func(string) Reply
	done      chan struct{} // closed by Close; ends pending delays
	closeOnce sync.Once

	mu      sync.Mutex
	apiKey  string
	latency time.Duration
}

// New returns a Server accepting apiKey, not listening anywhere: mount it as an
// http.Handler. An empty apiKey accepts no request. Call Close when done if
// delays may be pending.
func New(apiKey string, opts Options) *Server {
	s := &Server{answer: opts.Answer, done: make(chan struct{}), apiKey: apiKey, latency: opts.Latency}
	if s.answer == nil {
		s.answer = Answer
	}
	return s
}

// Close ends pending delays: their connections are dropped without an answer.
// It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.done) })
}

// SetAPIKey changes the key the Server accepts from now on.
func (s *Server) SetAPIKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiKey = key
}

// SetLatency changes the delay added to every 200 answer.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// ServeHTTP answers GET ResultPath?verificationSessionId=<id>: 401 without
// "Authorization: ApiKey <key>", else the Options.Answer reply. Other methods
// get 405, other paths 404, both before authentication.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != ResultPath {
		writeError(w, http.StatusNotFound, "no such endpoint")
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, "use GET")
		return
	}
	s.mu.Lock()
	want, latency := "ApiKey "+s.apiKey, s.latency
	authorized := s.apiKey != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(want)) == 1
	s.mu.Unlock()

	reply := Reply{
		Status: http.StatusUnauthorized,
		Body:   ErrorBody(http.StatusUnauthorized, "missing or invalid API key"),
		Header: http.Header{"Www-Authenticate": {"ApiKey"}},
	}
	if authorized {
		reply = s.answer(r.URL.Query().Get("verificationSessionId"))
		if reply.Status == http.StatusOK {
			reply.Delay += latency
		}
	}
	s.write(w, r, reply)
}

// Answer is the simulator's reply for sessionID: 400 for a malformed ID, else
// the answer the ID picks (see the package doc).
func Answer(sessionID string) Reply {
	if !ValidSessionID(sessionID) {
		return Reply{
			Status: http.StatusBadRequest,
			Body:   ErrorBody(http.StatusBadRequest, "verificationSessionId is missing or not a UUID"),
		}
	}
	switch kindOf(sessionID, hashOf(sessionID)) {
	case kindAlways404:
		return NotFound()
	case kindAlways500:
		return Reply{Status: http.StatusInternalServerError, Body: ErrorBody(http.StatusInternalServerError, "internal error")}
	}
	return Reply{Status: http.StatusOK, Body: BodyFor(sessionID)}
}

// NotFound is the reply for a session the API does not know.
func NotFound() Reply {
	return Reply{Status: http.StatusNotFound, Body: ErrorBody(http.StatusNotFound, "verification session not found")}
}

// write sends a reply after its delay.
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
	_, _ = w.Write(ErrorBody(status, message))
}

// ErrorBody is the simulator's error body for status. Its shape is invented:
// VerifEye's is not published.
func ErrorBody(status int, message string) []byte {
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

// normalize is the map key for a session ID: UUIDs are case-insensitive.
func normalize(id string) string {
	return strings.ToLower(id)
}

// ValidSessionID reports whether id is 8-4-4-4-12 hex digits, either case: the
// session IDs the simulator answers; any other gets 400.
func ValidSessionID(id string) bool { return outcome.ValidSessionID(id) }

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
	if ValidSessionID(id) {
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

// BodyFor returns the 200 body the simulator answers for sessionID: a flat JSON object whose outcome follows the magic
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
		panic(fmt.Sprintf("simulator: marshal generated body: %v", err)) // cannot happen: fixed types
	}
	return out
}

// OutcomeFor returns the verificationResult of BodyFor(sessionID): "passed" or
// "failed" ("passed" also when a verifier is not_executed). For the magic 404404
// and 500500 IDs the simulator's answer carries no such body, but a scripted fake
// answering 200 would send this one.
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
