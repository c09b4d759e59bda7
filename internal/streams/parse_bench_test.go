package streams_test

import (
	"testing"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// BenchmarkParseWebhook measures ParseWebhook on the body VerifEye sends.
//
//	go test -run '^$' -bench ParseWebhook -benchmem ./internal/streams/
func BenchmarkParseWebhook(b *testing.B) {
	body := []byte(`{"event":"VerificationCompleted","verificationSessionId":"3f2a9c1e-0000-4000-8000-000000000001"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := streams.ParseWebhook(body); err != nil {
			b.Fatal(err)
		}
	}
}
