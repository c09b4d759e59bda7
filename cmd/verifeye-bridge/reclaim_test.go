package main

import (
	"runtime/metrics"
	"testing"

	"github.com/rs/zerolog"
)

var sink [][]byte

// TestIdleReclaim: garbage left by a burst is collected and returned to the
// system at the first look after the process goes quiet, not while it is
// busy, and a quiet process with little garbage is left alone.
func TestIdleReclaim(t *testing.T) {
	r := newIdleReclaim(zerolog.Nop())
	for range 64 { // a burst: 64 MiB, garbage at once
		sink = append(sink, make([]byte, 1<<20))
	}
	sink = nil
	if r.check() {
		t.Fatal("reclaimed right after allocating 64 MiB; want it to wait until the process is quiet")
	}
	released := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	before := released()
	if !r.check() {
		t.Fatal("quiet with 64 MiB of garbage: not reclaimed")
	}
	if after := released(); after < before+32<<20 {
		t.Errorf("heap released to the system: %d MiB more, want at least 32", (after-before)>>20)
	}
	if r.check() {
		t.Error("reclaimed again with nothing new to reclaim")
	}
}
