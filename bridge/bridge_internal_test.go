package bridge

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

// TestAsAPIErrorTotal: every error has an answer; one that is not an
// *apiError is a 500 that keeps the error as its cause.
func TestAsAPIErrorTotal(t *testing.T) {
	plain := errors.New("boom")
	ae := &apiError{http.StatusBadRequest, "invalid_json", "bad", nil}
	for _, tc := range []struct {
		err        error
		wantStatus int
		wantCode   string
	}{
		{ae, http.StatusBadRequest, "invalid_json"},
		{fmt.Errorf("wrapped: %w", ae), http.StatusBadRequest, "invalid_json"},
		{plain, http.StatusInternalServerError, "internal"},
	} {
		got := asAPIError(tc.err)
		if got == nil || got.status != tc.wantStatus || got.code != tc.wantCode || got.message == "" {
			t.Errorf("asAPIError(%v) = %+v, want status %d code %q", tc.err, got, tc.wantStatus, tc.wantCode)
		}
	}
	if got := asAPIError(plain); !errors.Is(got, plain) {
		t.Errorf("asAPIError(%v) does not keep the cause", plain)
	}
}
