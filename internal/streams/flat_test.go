package streams

import (
	"strings"
	"testing"
)

// FuzzFlatWebhook checks that ParseWebhook's fast path changes no verdict:
// whenever parseFlatWebhook accepts a body, the full parser accepts it too,
// with the same webhook. (It may decline what the full parser accepts; the
// full parser then decides.)
func FuzzFlatWebhook(f *testing.F) {
	for _, body := range []string{
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"}`,
		" {\n\t\"verificationSessionId\" : \"3F2A9C1E-ABCD-4000-8000-FA11ED000001\" , \"event\":\"x\",\"n\":-1.5e+3,\"b\":true,\"z\":null} \r\n",
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001","event":"Other"}`,
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001","a":1,"a":2}`,
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001","EVENT":"x"}`,
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"} {}`,
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001","n":01}`,
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001","n":1.}`,
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001","t":truex}`,
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001",}`,
		`{"event":"V C","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"}`,
		`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-00000000000"}`,
		`{"event":1,"verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"}`,
		`{}`,
	} {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := parseFlatWebhook(body)
		if !ok {
			return
		}
		full, err := parseWebhook(body)
		if err != nil || full != fast {
			t.Fatalf("parseFlatWebhook(%q) = %+v, but parseWebhook says %+v, %v", body, fast, full, err)
		}
	})
}

// TestFlatWebhookTakesTheFastPath: the bodies VerifEye sends, extra scalar
// fields included, are parsed by the fast path; the rest go to the full parser.
func TestFlatWebhookTakesTheFastPath(t *testing.T) {
	const id = "3f2a9c1e-0000-4000-8000-000000000001"
	tests := []struct {
		body string
		fast bool
	}{
		{`{"event":"VerificationCompleted","verificationSessionId":"` + id + `"}`, true},
		{` {"verificationSessionId": "` + id + `", "event": "VerificationCompleted", "score": 0.97, "ok": true, "note": null} `, true},
		{`{"event":"VerificationCompleted","verificationSessionId":"` + id + `","extra":{"a":1}}`, false},
		{`{"event":"VerificationCompleted","verificationSessionId":"` + id + `","note":"caf\u00e9"}`, false},
		{`{"event":"VerificationCompleted","verificationSessionId":"` + id + `","a":1,"a":1}`, false},
		{`{"event":"VerificationCompleted","verificationSessionId":"` + strings.ToUpper(id) + `","Event":"x"}`, false},
	}
	for _, tt := range tests {
		if _, ok := parseFlatWebhook([]byte(tt.body)); ok != tt.fast {
			t.Errorf("parseFlatWebhook(%s) ok = %v, want %v", tt.body, ok, tt.fast)
		}
	}
}
