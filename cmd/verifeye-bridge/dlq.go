package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/realeyes/verifeye-bridge/internal/redrive"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

const dlqSummary = "List and replay dead-lettered webhooks (the " + streams.DLQ + " stream).\n\n" +
	"Subcommands:\n" +
	"  list     print a table of the DLQ entries\n" +
	"  replay   send entries back to the enricher, then delete them from the DLQ"

func cmdDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" || args[0] == "help" {
		fmt.Fprintf(stdout, "Usage: verifeye-bridge dlq <list|replay> [flags]\n\n%s\n\nExample:\n  verifeye-bridge dlq list --reason not_found\n  verifeye-bridge dlq replay --session 3f2a9c1e-0000-4000-8000-000000000001\n\nRun 'verifeye-bridge dlq <subcommand> --help' for its flags.\n", dlqSummary)
		if len(args) == 0 {
			return usagef("want a subcommand: list or replay")
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "list":
		return cmdDLQList(ctx, args[1:], stdout, stderr)
	case "replay":
		return cmdDLQReplay(ctx, args[1:], stdout, stderr)
	}
	return usagef("unknown subcommand %q: want list or replay", args[0])
}

func dlqFlags(fs *flag.FlagSet, f *redrive.Filter) {
	fs.StringVar(&f.SessionID, "session", "", "only the entry of this verification session ID")
	fs.StringVar(&f.Reason, "reason", "", "only entries with this reason (not_found, bad_request, attempts_exhausted, ...)")
	fs.StringVar(&f.Source, "source", "", "only entries of this webhook source")
}

func cmdDLQList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	var f redrive.Filter
	fs := flag.NewFlagSet("dlq list", flag.ContinueOnError)
	dlqFlags(fs, &f)
	if err := parseFlags(fs, args, stdout,
		"Print the dead-lettered webhooks as a table: sequence, time dead-lettered,\nsource, session, reason, last API status, attempts and detail. Entries that\nare not valid DLQ entries (damaged or forged) are listed after the table with\nwhat is wrong; dlq replay never sends them.",
		"verifeye-bridge dlq list --reason not_found", &cfg); err != nil {
		return err
	}
	if f.Source != "" && !streams.ValidSource(f.Source) {
		return usagef("--source %q: want [a-z0-9_-]{1,64}", f.Source)
	}
	subjects, nc, _, st, err := openTool(ctx, cfg, "dlq list", streams.DLQ, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	entries, err := redrive.DeadLetters(ctx, st, subjects, f)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		fmt.Fprintln(stdout, "no DLQ entries match")
		return nil
	}
	var valid, invalid []redrive.Entry
	for _, e := range entries {
		if e.Err != nil {
			invalid = append(invalid, e)
		} else {
			valid = append(valid, e)
		}
	}
	if len(valid) > 0 {
		tw := tabwriter.NewWriter(stdout, 1, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tSOURCE\tSESSION\tREASON\tLAST STATUS\tATTEMPTS\tDETAIL")
		for _, e := range valid {
			l := e.Letter
			// Every field read from the stream is escaped on its own: the
			// tabs are the table's.
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", e.Seq, e.Time.Local().Format("2006-01-02 15:04:05"),
				termSafe(l.Source), termSafe(dash(l.SessionID)), termSafe(l.Reason), l.LastStatus, l.Attempts, termSafe(dash(shorten(l.Detail, 80))))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	for _, e := range invalid {
		printLine(stdout, "invalid seq %d (%s): %v", e.Seq, e.Time.Local().Format("2006-01-02 15:04:05"), e.Err)
	}
	if len(invalid) > 0 {
		fmt.Fprintf(stdout, "%d entries, %d of them invalid\n", len(entries), len(invalid))
		return nil
	}
	fmt.Fprintf(stdout, "%d entries\n", len(entries))
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func cmdDLQReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	var f redrive.Filter
	fs := flag.NewFlagSet("dlq replay", flag.ContinueOnError)
	dlqFlags(fs, &f)
	all := fs.Bool("all", false, "replay every entry")
	dryRun := fs.Bool("dry-run", false, "print what would be replayed, change nothing")
	if err := parseFlags(fs, args, stdout,
		"Send dead-lettered webhooks back to the enricher (to the webhook subject they\ncame from, with the original body and receive time), then delete each from the\nDLQ once the webhooks stream has stored it. Replaying an entry twice cannot\nduplicate it. Choose entries with --session, --reason or --source, or --all.\n\nEvery entry is validated as strictly as the ingest validates a webhook; an\ninvalid one (damaged or forged) is reported, not sent, and stays on the DLQ,\nand the command then exits 1. Entries whose body is not a webhook with a\nsession ID are skipped (exit 0).",
		"verifeye-bridge dlq replay --reason not_found --dry-run", &cfg); err != nil {
		return err
	}
	selected := f != (redrive.Filter{})
	switch {
	case *all && selected:
		return usagef("--all: not with --session, --reason or --source")
	case !*all && !selected:
		return usagef("choose entries with --session, --reason or --source, or --all")
	case f.Source != "" && !streams.ValidSource(f.Source):
		return usagef("--source %q: want [a-z0-9_-]{1,64}", f.Source)
	}
	subjects, nc, js, st, err := openTool(ctx, cfg, "dlq replay", streams.DLQ, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	if _, err := openStream(ctx, js, streams.Webhooks); err != nil {
		return err
	}
	syncStore, syncDone := cfg.storeSync(stderr)
	defer syncDone()

	var done, skipped, invalid, failed int
	prog := newProgress(stderr, "dlq replay")
	err = redrive.EachDeadLetter(ctx, st, subjects, f, func(e redrive.Entry) error {
		l := e.Letter
		switch {
		case e.Err != nil:
			invalid++
			printLine(stdout, "invalid seq %d: not replayed, it stays on the DLQ: %v", e.Seq, e.Err)
			return nil
		case !e.Redrivable():
			skipped++
			printLine(stdout, "skip    seq %d: not a webhook with a session ID (reason %s); delete it or fix it by hand", e.Seq, l.Reason)
			return nil
		case *dryRun:
			done++
			printLine(stdout, "would replay seq %d session %s (%s) to %s", e.Seq, l.SessionID, l.Reason, l.OrigSubject)
			return nil
		}
		ack, err := redrive.Redrive(ctx, js, st, subjects, e, syncStore)
		if err != nil {
			failed++
			printLine(stdout, "failed  seq %d session %s: %v", e.Seq, l.SessionID, err)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
		done++
		note := ""
		if ack.Duplicate {
			note = " (already replayed before; now removed from the DLQ)"
		}
		printLine(stdout, "replayed seq %d session %s (%s) to %s seq %d%s", e.Seq, l.SessionID, l.Reason, l.OrigSubject, ack.Sequence, note)
		prog.tick(done)
		return nil
	})
	verb := "replayed"
	if *dryRun {
		verb = "would replay"
	}
	fmt.Fprintf(stdout, "%s %d, skipped %d, invalid %d, failed %d (%s)\n", verb, done, skipped, invalid, failed, prog.rate(done))
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d entries could not be replayed; they stay on the DLQ", failed)
	}
	if invalid > 0 {
		return fmt.Errorf("%d entries are not valid DLQ entries and were not replayed; they stay on the DLQ (see above)", invalid)
	}
	return nil
}
