package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryLeavesOutTestFakes checks that the shipped binary links the VerifEye
// simulator that dev and simulator serve, and none of the test helpers: the
// scripted fake, the NATS test rig, httptest.
func TestBinaryLeavesOutTestFakes(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps .: %v", err)
	}
	deps := make(map[string]bool)
	for _, p := range strings.Fields(string(out)) {
		deps[p] = true
	}
	const mod = "github.com/realeyes/verifeye-bridge/"
	if !deps[mod+"enricher/verifeye/simulator"] {
		t.Errorf("go list -deps . does not list %senricher/verifeye/simulator; dev and simulator serve it", mod)
	}
	for _, p := range []string{mod + "enricher/verifeye/verifeyetest", mod + "internal/natstest", "net/http/httptest", "testing"} {
		if deps[p] {
			t.Errorf("go list -deps . lists %s: a test helper in the shipped binary", p)
		}
	}
}
