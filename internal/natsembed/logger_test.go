package natsembed

import (
	"syscall"
	"testing"

	"github.com/rs/zerolog"
)

// TestLoggerNoSpace: an error or warning of the server that names ENOSPC or
// EDQUOT calls OnNoSpace; any other does not.
func TestLoggerNoSpace(t *testing.T) {
	for _, tc := range []struct {
		log  func(logger, string, ...any)
		err  error
		want bool
	}{
		{logger.Errorf, syscall.ENOSPC, true},
		{logger.Warnf, syscall.EDQUOT, true},
		{logger.Errorf, syscall.EIO, false},
		{logger.Noticef, syscall.ENOSPC, false},
	} {
		called := false
		g := logger{l: zerolog.Nop(), noSpace: func() { called = true }}
		tc.log(g, "JetStream failed to store a msg on stream '%s': write 1.blk: %v", "S", tc.err)
		if called != tc.want {
			t.Errorf("server log naming %v: OnNoSpace called %v, want %v", tc.err, called, tc.want)
		}
	}
}
