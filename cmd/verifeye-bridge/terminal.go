package main

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// termSafe returns s fit to print on an operator's terminal: every C0 control
// character (tab and newline included), DEL and every byte that is not UTF-8 is
// written as \xNN, every C1 control character and Unicode bidirectional
// formatting character as \uNNNN. Data read from a stream or a server (an
// outcome's fields, a DLQ entry, an answer body) passes through it before any
// human-readable output, so that it cannot clear the screen, move the cursor,
// retitle the window or reorder what is shown; --json output is never escaped.
// It is the one escaping function of the terminal tools.
func termSafe(s string) string {
	i := 0
	for i < len(s) && s[i] >= 0x20 && s[i] < 0x7f {
		i++
	}
	if i == len(s) {
		return s // plain printable ASCII: the usual case
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r >= 0x80 && r <= 0x9f, bidiControl(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// bidiControl reports whether r is a Unicode bidirectional formatting
// character, which reorders the text around it on screen.
func bidiControl(r rune) bool {
	return r == 0x061c || r == 0x200e || r == 0x200f || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}

// printLine formats one line for a person and writes it to w, escaped with
// termSafe, followed by a newline.
func printLine(w io.Writer, format string, args ...any) {
	fmt.Fprintln(w, termSafe(fmt.Sprintf(format, args...)))
}
