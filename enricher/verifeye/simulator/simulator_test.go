package simulator_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye"
	"github.com/realeyes/verifeye-bridge/enricher/verifeye/simulator"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

const testKey = "sim-key-0123456789"

// TestSimulatorWithTheClient drives the real client against the simulator and
// checks the answers the package doc promises for each kind of session ID.
func TestSimulatorWithTheClient(t *testing.T) {
	sim := simulator.New(testKey, simulator.Options{})
	defer sim.Close()
	ts := httptest.NewServer(sim)
	defer ts.Close()
	client, err := verifeye.New(ts.URL, testKey, verifeye.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id          string
		wantOutcome string
		wantStatus  int // of the APIError; 0 for a result
	}{
		{"3f2a9c1e-0000-4000-8000-fa11ed000001", "failed", 0},
		{"3f2a9c1e-0000-4000-8000-000000000001", "passed", 0},
		{"3f2a9c1e-0000-4000-8000-7E5700000001", "passed", 0},
		{"3f2a9c1e-0000-4000-8000-404404000001", "", http.StatusNotFound},
		{"3f2a9c1e-0000-4000-8000-500500000001", "", http.StatusInternalServerError},
		{"not-a-session", "", http.StatusBadRequest},
	}
	for _, tt := range tests {
		res, err := client.GetSessionResult(context.Background(), tt.id)
		if tt.wantStatus != 0 {
			var apiErr *verifeye.APIError
			if !asAPIError(err, &apiErr) || apiErr.Status != tt.wantStatus {
				t.Errorf("GetSessionResult(%q) = %v, %v; want HTTP %d", tt.id, res, err, tt.wantStatus)
			}
			continue
		}
		if err != nil || streams.Outcome(res.VerificationResult) != tt.wantOutcome || streams.Outcome(res.VerificationResult) != simulator.OutcomeFor(tt.id) || string(res.Body) != string(simulator.BodyFor(tt.id)) {
			t.Errorf("GetSessionResult(%q) = %v, %v; want outcome %q with BodyFor's body", tt.id, res, err, tt.wantOutcome)
		}
	}

	wrong, err := verifeye.New(ts.URL, "other-key", verifeye.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var apiErr *verifeye.APIError
	if _, err := wrong.GetSessionResult(context.Background(), tests[0].id); !asAPIError(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
		t.Errorf("GetSessionResult with a wrong key error = %v; want HTTP 401", err)
	}
}

func asAPIError(err error, target **verifeye.APIError) bool {
	return errors.As(err, target)
}

// TestSimulatorRouting checks the answers outside the endpoint: 404 on another
// path and 405 for another method, both JSON, before authentication.
func TestSimulatorRouting(t *testing.T) {
	sim := simulator.New(testKey, simulator.Options{})
	defer sim.Close()
	for _, tt := range []struct {
		method, target string
		want           int
	}{
		{http.MethodGet, "/", http.StatusNotFound},
		{http.MethodPost, simulator.ResultPath, http.StatusMethodNotAllowed},
		{http.MethodGet, simulator.ResultPath + "?verificationSessionId=3f2a9c1e-0000-4000-8000-000000000001", http.StatusUnauthorized},
	} {
		rec := httptest.NewRecorder()
		sim.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.target, nil))
		body, _ := io.ReadAll(rec.Body)
		var m map[string]any
		if rec.Code != tt.want || json.Unmarshal(body, &m) != nil {
			t.Errorf("%s %s = %d %s; want %d with a JSON body", tt.method, tt.target, rec.Code, body, tt.want)
		}
	}
}
