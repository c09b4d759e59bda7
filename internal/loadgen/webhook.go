package loadgen

import (
	"strconv"
)

// Webhooks builds VerificationCompleted webhook requests, each with its own
// session ID, so every request is a real publish and never a duplicate.
type Webhooks struct {
	// Host is the Host header, such as "127.0.0.1:8080".
	Host string
	// Path is the request path; "/webhooks/verifeye" when empty.
	Path string
	// APIKey, when set, is sent as X-API-Key.
	APIKey string
	// Run is the first group of every session ID, so that runs do not collide.
	Run uint32
}

// SessionID returns the seq-th session ID of run: run-hhhh-4000-8000-llllllllllll
// in 8-4-4-4-12 hex, with seq's high 16 bits in the second group and its low 48
// bits in the last. Below 2^32 the last group starts with "0000", which the
// simulator answers with a 200 "passed".
func SessionID(run uint32, seq uint64) string {
	return string(appendSessionID(nil, run, seq))
}

func appendSessionID(dst []byte, run uint32, seq uint64) []byte {
	dst = appendHex(dst, uint64(run), 8)
	dst = append(dst, '-')
	dst = appendHex(dst, seq>>48, 4)
	dst = append(dst, "-4000-8000-"...)
	return appendHex(dst, seq&(1<<48-1), 12)
}

func appendHex(dst []byte, v uint64, width int) []byte {
	const digits = "0123456789abcdef"
	for i := width - 1; i >= 0; i-- {
		dst = append(dst, digits[(v>>(4*uint(i)))&0xf])
	}
	return dst
}

const (
	bodyHead = `{"event":"VerificationCompleted","verificationSessionId":"`
	bodyTail = `"}`
	// bodyLen is the length of every body: the session ID has 36 characters.
	bodyLen = len(bodyHead) + 36 + len(bodyTail)
)

// Append appends the seq-th request to dst: a POST with a JSON body and
// Content-Length, on a keep-alive connection. It has the signature of
// Options.Request.
func (w Webhooks) Append(dst []byte, seq uint64) []byte {
	path := w.Path
	if path == "" {
		path = "/webhooks/verifeye"
	}
	dst = append(dst, "POST "...)
	dst = append(dst, path...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, w.Host...)
	dst = append(dst, "\r\nUser-Agent: verifeye-bridge-loadgen\r\nContent-Type: application/json\r\n"...)
	if w.APIKey != "" {
		dst = append(dst, "X-API-Key: "...)
		dst = append(dst, w.APIKey...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, int64(bodyLen), 10)
	dst = append(dst, "\r\n\r\n"...)
	dst = append(dst, bodyHead...)
	dst = appendSessionID(dst, w.Run, seq)
	return append(dst, bodyTail...)
}
