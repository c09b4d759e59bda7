package main

import (
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// logBufferMax is how many bytes of log lines a logBuffer holds before it
// writes them out without waiting for its interval.
const logBufferMax = 64 << 10

// logBuffer gathers log lines and writes them to w in one write at most every
// interval (LOG_FLUSH_INTERVAL), instead of one write system call per line:
// at the ingest's one line per webhook, that call was the largest cost of
// logging (docs/performance.md). Warnings and errors are written at once,
// with whatever was gathered before them, so the lines that explain a crash
// are out before it; Close writes the rest, and the service closes it on
// every way out of runService (SIGTERM, a fatal error, a panic in its
// goroutine). Only a SIGKILL, or a panic in another goroutine, can lose what
// was logged in the last interval. zerolog writes each line with one Write,
// so lines are never split. It is safe for concurrent use.
type logBuffer struct {
	w        io.Writer
	interval time.Duration

	mu      sync.Mutex
	buf     []byte
	timer   *time.Timer
	pending bool // the timer is set to write buf
	closed  bool
}

// newLogBuffer returns a logBuffer writing to w every interval; with interval
// zero or less it writes every line at once.
func newLogBuffer(w io.Writer, interval time.Duration) *logBuffer {
	return &logBuffer{w: w, interval: interval}
}

// Write buffers p, a log line of no level (as a zerolog.ConsoleWriter writes).
func (b *logBuffer) Write(p []byte) (int, error) { return b.WriteLevel(zerolog.NoLevel, p) }

// WriteLevel buffers p, a log line of level l, and writes the buffer out at
// once when l is warn or above, or the buffer is full.
func (b *logBuffer) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.interval <= 0 {
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	if (l >= zerolog.WarnLevel && l <= zerolog.PanicLevel) || len(b.buf) >= logBufferMax {
		return len(p), b.flushLocked()
	}
	if !b.pending {
		b.pending = true
		if b.timer == nil {
			b.timer = time.AfterFunc(b.interval, b.flushTimer)
		} else {
			b.timer.Reset(b.interval)
		}
	}
	return len(p), nil
}

func (b *logBuffer) flushTimer() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = false
	_ = b.flushLocked() // as an unbuffered writer's error, it has nowhere to go
}

// flushLocked writes the buffer out; b.mu is held.
func (b *logBuffer) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	if cap(b.buf) > 4*logBufferMax {
		b.buf = nil // a burst of long lines does not pin its buffer
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// Close writes out what is buffered; later lines are written at once, so a
// goroutine that logs after it loses nothing either.
func (b *logBuffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.timer != nil {
		b.timer.Stop()
	}
	b.pending, b.closed = false, true
	return b.flushLocked()
}
