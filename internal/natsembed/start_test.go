package natsembed_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/realeyes/verifeye-bridge/internal/natsembed"
)

// TestStartReportsWhyJetStreamFailed: a store the server cannot use makes
// Start return the server's own reason, instead of waiting out its deadline
// and saying only that the server was not ready.
func TestStartReportsWhyJetStreamFailed(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ns, err := natsembed.Start(natsembed.Options{StoreDir: filepath.Join(file, "data"), Addr: "-"})
	if err == nil {
		natsembed.Shutdown(ns)
		t.Fatal("Start with a store under a regular file: got a server, want an error")
	}
	if !strings.Contains(err.Error(), "JetStream") || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Start with a store under a regular file: error %q, want the server's reason (JetStream, not a directory)", err)
	}
}
