package main

import (
	"slices"
	"strings"
	"testing"
)

// TestBadFlagsChangeNothing: a flag out of range is refused before anything
// starts, with a clear message and exit code 2.
func TestBadFlagsChangeNothing(t *testing.T) {
	for _, args := range [][]string{{"-gomaxprocs=-1"}, {"-pairs=-2"}, {"-memory=sometimes"}, {"-rate=fast"}} {
		var out, errb strings.Builder
		if code := run(t.Context(), args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if !strings.HasPrefix(errb.String(), "bench: -") || out.Len() != 0 {
			t.Errorf("%v: stderr %q, stdout %q; want a message naming the flag and nothing on stdout", args, errb.String(), out.String())
		}
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		in := slices.Clone(c.in)
		if got := median(in); got != c.want || !slices.Equal(in, c.in) {
			t.Errorf("median(%v) = %v (input now %v), want %v and the input unchanged", c.in, got, in, c.want)
		}
	}
}
