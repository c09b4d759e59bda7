package main

import (
	"strings"
	"testing"
)

// TestBadFlagsChangeNothing: a flag out of range is refused before anything
// starts, with a clear message and exit code 2.
func TestBadFlagsChangeNothing(t *testing.T) {
	for _, args := range [][]string{{"-gomaxprocs=-1"}, {"-memory=sometimes"}, {"-rate=fast"}} {
		var out, errb strings.Builder
		if code := run(t.Context(), args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if !strings.HasPrefix(errb.String(), "bench: -") || out.Len() != 0 {
			t.Errorf("%v: stderr %q, stdout %q; want a message naming the flag and nothing on stdout", args, errb.String(), out.String())
		}
	}
}
