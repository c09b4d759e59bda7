package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/realeyes/verifeye-bridge/internal/streams"
)

func cmdSend(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	base := fs.String("url", "http://127.0.0.1:8080", "the bridge's base URL (or a full webhook URL)")
	source := fs.String("source", streams.DefaultSource, "webhook source: posts to /webhooks/verifeye/<source>")
	event := fs.String("event", streams.EventCompleted, "the webhook's event")
	session := fs.String("session", "", "verification session ID (default: a new random UUID per request)")
	apiKey := fs.String("api-key", "", "X-API-Key to send (default: $VERIFEYE_API_KEY)")
	token := fs.String("token", "", "token for WEBHOOK_AUTH=token, sent as Authorization: Bearer (default: $WEBHOOK_TOKEN)")
	count := fs.Int("count", 1, "how many webhooks to send")
	perSec := fs.Float64("rate", 10, "webhooks per second when --count > 1 (0: as fast as possible)")
	timeout := fs.Duration("timeout", 10*time.Second, "timeout of each request")
	forget := fs.Int("forget", 0, "also expect this many new sessions through the internal API and \"forget\" to post their webhooks, as a lost webhook would: the bridge reconciles them after RECONCILE_AFTER")
	apiURL := fs.String("api-url", "http://127.0.0.1:8081", "the internal API's base URL (API_ADDR), for --forget")
	apiToken := fs.String("api-token", "", "bearer token of the internal API, for --forget (default: $API_TOKEN)")
	if err := parseFlags(fs, args, stdout,
		"Post a sample VerifEye webhook to a running bridge and print each answer\n(status and body, one line per request); with --count, then a summary.\nExits 1 when any request failed.\n\nThe session ID's last group picks the simulator's answer in `dev`: ...-0000...\npasses, ...-fa11ed... fails, ...-404404... is never found (DLQ).",
		"verifeye-bridge send --url http://127.0.0.1:8080 --api-key $VERIFEYE_API_KEY --count 20 --rate 5"); err != nil {
		return err
	}
	switch {
	case *count < 1 && !(*count == 0 && *forget > 0):
		return usagef("--count %d: must be at least 1 (or 0 with --forget)", *count)
	case *forget < 0 || *forget > 10000:
		return usagef("--forget %d: must be 0 to 10000", *forget)
	case *perSec < 0:
		return usagef("--rate %v: must not be negative", *perSec)
	case *timeout <= 0:
		return usagef("--timeout %v: must be positive", *timeout)
	case !streams.ValidSource(*source):
		return usagef("--source %q: want [a-z0-9_-]{1,64}", *source)
	}
	target, err := webhookURL(*base, *source)
	if err != nil {
		return err
	}
	if *apiKey == "" {
		*apiKey = os.Getenv("VERIFEYE_API_KEY")
	}
	if *token == "" {
		*token = os.Getenv("WEBHOOK_TOKEN")
	}
	s := sender{
		client: &http.Client{Timeout: *timeout},
		url:    target,
		event:  *event,
		apiKey: *apiKey,
		token:  *token,
		out:    stdout,
	}

	lim := rate.NewLimiter(rate.Inf, 1)
	if *perSec > 0 {
		lim = rate.NewLimiter(rate.Limit(*perSec), 1)
	}
	if *forget > 0 {
		if *apiToken == "" {
			*apiToken = os.Getenv("API_TOKEN")
		}
		if err := expectForgotten(ctx, s.client, *apiURL, *apiToken, *source, *forget, stdout); err != nil {
			return err
		}
		if *count == 0 {
			return nil
		}
	}
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := 0; i < *count; i++ {
		if lim.Wait(gctx) != nil {
			break
		}
		id := *session
		if id == "" {
			id = newSessionID()
		}
		g.Go(func() error { return s.send(gctx, id) })
	}
	// Only "nobody listens" ends the burst early; it is returned as the error.
	err = g.Wait()
	if *count > 1 {
		elapsed := time.Since(start)
		s.mu.Lock()
		fmt.Fprintf(stdout, "sent %d, accepted %d, duplicates %d, failed %d in %.1fs (%.1f/s)\n",
			s.sent, s.accepted, s.duplicates, s.failed, elapsed.Seconds(), float64(s.sent)/max(elapsed.Seconds(), 1e-3))
		s.mu.Unlock()
	}
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	if s.failed > 0 {
		return fmt.Errorf("%d of %d requests failed", s.failed, s.sent)
	}
	return nil
}

// webhookURL returns the webhook URL for source: base itself when it already
// has a path, else base + /webhooks/verifeye[/<source>].
func webhookURL(base, source string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usagef("--url %q: want http(s)://host:port", base)
	}
	if u.Path != "" && u.Path != "/" {
		if source != streams.DefaultSource {
			return "", usagef("--source: --url already names the webhook path %q", u.Path)
		}
		return u.String(), nil
	}
	u.Path = "/webhooks/verifeye"
	if source != streams.DefaultSource {
		u.Path += "/" + source
	}
	return u.String(), nil
}

// newSessionID returns a random (version 4) UUID.
func newSessionID() string { return uuid.NewString() }

// sender posts webhooks and tallies the answers; send is safe for concurrent use.
type sender struct {
	client *http.Client
	url    string
	event  string
	apiKey string
	token  string
	out    io.Writer

	mu                                 sync.Mutex
	sent, accepted, duplicates, failed int
}

// send posts one webhook and prints the answer. It returns an error only when
// nothing listens at the URL, which ends a burst.
func (s *sender) send(ctx context.Context, sessionID string) error {
	body, _ := json.Marshal(map[string]string{"event": s.event, "verificationSessionId": sessionID})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "verifeye-bridge-send/"+version)
	if s.apiKey != "" {
		req.Header.Set("X-API-Key", s.apiKey)
	}
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.sent++
		s.failed++
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("no bridge listening at %s (start one with: verifeye-bridge dev)", s.url)
		}
		if ctx.Err() == nil {
			printLine(s.out, "error %s: %v", sessionID, errors.Unwrap(err))
		}
		return nil
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var a struct {
		Duplicate bool `json:"duplicate"`
	}
	_ = json.Unmarshal(answer, &a)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent++
	switch {
	case resp.StatusCode/100 != 2:
		s.failed++
	case a.Duplicate:
		s.duplicates++
	default:
		s.accepted++
	}
	// The answer is the server's: escaped (a newline in it becomes a space first).
	printLine(s.out, "%d %s", resp.StatusCode, strings.TrimSpace(strings.ReplaceAll(string(answer), "\n", " ")))
	return nil
}

// expectForgotten announces n new sessions through the internal API at
// apiURL, and posts none of their webhooks.
func expectForgotten(ctx context.Context, client *http.Client, apiURL, token, source string, n int, out io.Writer) error {
	u, err := url.Parse(apiURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("--api-url %q: want http(s)://host:port", apiURL)
	}
	body, _ := json.Marshal(map[string]string{"source": source})
	for range n {
		id := newSessionID()
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, strings.TrimRight(u.String(), "/")+"/v1/sessions/"+id+"/expect", bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("request: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				return fmt.Errorf("no internal API listening at %s (API_ADDR of serve or dev)", apiURL)
			}
			return fmt.Errorf("expect %s: %w", id, errors.Unwrap(err))
		}
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Errorf("expect %s: %d %s", id, resp.StatusCode, strings.TrimSpace(string(answer)))
		}
		printLine(out, "expected %s, webhook forgotten: the bridge reconciles it", id)
	}
	return nil
}
