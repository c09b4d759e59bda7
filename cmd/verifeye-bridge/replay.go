package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/realeyes/verifeye-bridge/internal/redrive"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

func cmdReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg toolConfig
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	since := fs.String("since", "", "start of the window: a duration back from now (1h) or an RFC 3339 time (required)")
	until := fs.String("until", "", "end of the window, like --since (default: now)")
	source := fs.String("source", "", "only webhooks of this source")
	dryRun := fs.Bool("dry-run", false, "print how many webhooks would be replayed, change nothing")
	if err := parseFlags(fs, args, stdout,
		"Re-enrich a time window of the webhooks stream: every VerificationCompleted\n"+
			"webhook received in the window is published again, once per session, so the\n"+
			"enricher fetches its result again and publishes one NEW outcome for it. A\n"+
			"replayed outcome is a distinct CloudEvent: its id (and Nats-Msg-Id) is\n"+
			"<sessionId>:replay:<sequence of the original webhook>. Running the same replay\n"+
			"again within STREAM_DUPLICATE_WINDOW adds nothing (an interrupted run can\n"+
			"simply be repeated); webhooks that are themselves replays are skipped.\n"+
			"Every webhook is validated as strictly as the ingest validates a request; an\n"+
			"invalid one is reported, not replayed, and the command then exits 1.",
		"verifeye-bridge replay --since 1h --dry-run", &cfg); err != nil {
		return err
	}
	if *since == "" {
		return usagef("--since: required (a duration such as 1h, or an RFC 3339 time)")
	}
	now := time.Now()
	from, err := parseSince(*since, now)
	if err != nil {
		return err
	}
	to := now
	if *until != "" {
		if to, err = parseSince(*until, now); err != nil {
			return usagef("--until: %v", strings.TrimPrefix(err.Error(), "--since "))
		}
		if !to.After(from) {
			return usagef("--until: must be after --since")
		}
	}
	if *source != "" && !streams.ValidSource(*source) {
		return usagef("--source %q: want [a-z0-9_-]{1,64}", *source)
	}
	subjects, nc, js, st, err := openTool(ctx, cfg, "replay", streams.Webhooks, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()

	syncStore, syncDone := cfg.storeSync(stderr)
	defer syncDone()

	prog := newProgress(stderr, "replay")
	r, err := redrive.Replay(ctx, js, st, subjects, redrive.Window{
		From: from, To: to, Source: *source, DryRun: *dryRun,
		Progress: prog.tick,
	})
	for _, rej := range r.Rejected {
		printLine(stdout, "invalid seq %d: not replayed: %v", rej.Seq, rej.Err)
	}
	if syncStore != nil && r.Replayed > 0 && !*dryRun {
		if serr := syncStore(); serr != nil {
			// Reported as not done: running the same replay again adds
			// only what is not stored yet.
			return fmt.Errorf("%d webhooks published, but not known to be on disk (run the same replay again): %w", r.Replayed, serr)
		}
	}
	window := fmt.Sprintf("%s to %s", from.Local().Format(time.RFC3339), to.Local().Format(time.RFC3339))
	if *dryRun {
		fmt.Fprintf(stdout, "would replay %d webhooks received %s%s\n", r.Replayed, window, skippedNote(r))
	} else {
		fmt.Fprintf(stdout, "replayed %d webhooks received %s (%s)", r.Replayed, window, prog.rate(r.Replayed+r.Duplicates))
		if r.Duplicates > 0 {
			fmt.Fprintf(stdout, "; %d were replayed already within the duplicate window", r.Duplicates)
		}
		fmt.Fprintf(stdout, "%s\n", skippedNote(r))
	}
	if err != nil {
		return fmt.Errorf("stopped after %d: %w", r.Replayed, err)
	}
	if len(r.Rejected) > 0 {
		return fmt.Errorf("%d messages of the window are not valid webhooks and were not replayed (see above)", len(r.Rejected))
	}
	return nil
}

func skippedNote(r redrive.ReplayResult) string {
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{r.EarlierReplays, "earlier replays"}, {r.Repeats, "sessions already in this run"}, {len(r.Rejected), "invalid webhooks"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; skipped " + strings.Join(parts, ", ")
}
