package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/rs/zerolog"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes: 0 ok, 1 failure, 2 usage or configuration error.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is an error in the command line or the environment: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the ingest and the enricher (embedded NATS when NATS_URL is empty)", cmdServe},
		{"ingest", "run the HTTP ingest alone", cmdIngest},
		{"enrich", "run the enricher alone", cmdEnrich},
		{"dev", "serve plus a built-in VerifEye simulator: try it all with no configuration", cmdDev},
		{"send", "post a sample webhook (or a burst) to a running bridge", cmdSend},
		{"watch", "print outcomes as they arrive on the results stream", cmdWatch},
		{"dlq", "list and replay dead-lettered webhooks", cmdDLQ},
		{"replay", "re-enrich the webhooks of a time window (new outcomes)", cmdReplay},
		{"session", "print a session's whole path: webhooks, DLQ entries, outcome, ledger state", cmdSession},
		{"expect", "announce a session, so its outcome is fetched even if its webhook never comes", cmdExpect},
		{"healthcheck", "exit 0 if the service on HTTP_ADDR is ready (the image's HEALTHCHECK)", cmdHealthcheck},
		{"simulator", "serve a stand-in VerifEye API (demos and compose; never production)", cmdSimulator},
		{"version", "print the version", cmdVersion},
	}
}

// run is the whole program; it returns the exit code. It owns the signals:
// SIGINT and SIGTERM cancel ctx, which starts a graceful shutdown.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		topUsage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil || errors.Is(err, flag.ErrHelp):
			return exitOK
		case errors.As(err, new(usageError)):
			printLine(stderr, "verifeye-bridge %s: %v", c.name, err)
			return exitUsage
		default:
			// An error may quote a server or a stream: escaped like all output.
			printLine(stderr, "verifeye-bridge %s: %v", c.name, err)
			return exitFailure
		}
	}
	printLine(stderr, "verifeye-bridge: unknown command %q (see verifeye-bridge --help)", args[0])
	return exitUsage
}

func topUsage(w io.Writer) {
	fmt.Fprintln(w, "verifeye-bridge: VerifEye webhooks to a durable, enriched NATS JetStream event stream.")
	fmt.Fprintln(w, "\nUsage: verifeye-bridge <command> [flags]   (configuration is environment variables)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'verifeye-bridge <command> --help' for its flags and environment variables.")
}

// parseFlags parses args into fs, whose usage prints summary, the flags and the
// environment variables of specs. Usage errors come back as usageError.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer, summary, example string, specs ...any) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stdout, "Usage: verifeye-bridge %s [flags]\n\n%s\n", fs.Name(), summary)
		if example != "" {
			fmt.Fprintf(stdout, "\nExample:\n  %s\n", example)
		}
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(stdout, "\nFlags:")
			fs.SetOutput(stdout)
			fs.PrintDefaults()
		}
		if len(specs) > 0 {
			fmt.Fprintln(stdout)
			printEnv(stdout, specs...)
		}
		return flag.ErrHelp
	}
	if err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func cmdVersion(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if err := parseFlags(fs, args, stdout, "Print the version and build information.", "verifeye-bridge version"); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "verifeye-bridge %s", version)
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Fprintf(stdout, " (%s", bi.GoVersion)
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				fmt.Fprintf(stdout, ", commit %.12s", s.Value)
			}
		}
		fmt.Fprint(stdout, ")")
	}
	fmt.Fprintln(stdout)
	return nil
}

// newLogger returns the zerolog logger of LOG_LEVEL and LOG_FORMAT.
func newLogger(w io.Writer, c Logging) zerolog.Logger {
	if c.LogFormat == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	lvl, _ := zerolog.ParseLevel(c.LogLevel)
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}
