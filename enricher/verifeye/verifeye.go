// Package verifeye is a client for the VerifEye Service API's Get Session Result
// endpoint, the one call the enricher makes for every webhook it consumes.
//
// The response's JSON shape is not published by Realeyes, so the client treats the
// body as opaque bytes to pass on unchanged and reads only verificationResult, and
// that tolerantly (see [Result.VerificationResult]). Every non-2xx answer comes back as an
// [*APIError] carrying the status and Retry-After, so the enricher's failure policy
// (DESIGN.md, "Enricher failure policy") can classify it with errors.As; a 2xx whose
// body is not a JSON object comes back as [ErrInvalidResponse]; anything else is a
// transport error (connection refused, reset, timeout) wrapped with %w.
//
// The API key travels only in the Authorization header, and only to the
// configured host: the client never follows a redirect (a 3xx comes back as an
// [*APIError] like any other non-2xx answer). No error this package returns
// contains it.
package verifeye

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	// resultPath is the Get Session Result endpoint, relative to the base URL.
	resultPath = "/v1/verification/get-session-result"

	defaultTimeout   = 10 * time.Second
	defaultUserAgent = "verifeye-bridge"

	// maxBodySize caps what a 2xx answer may hold. Results are a few hundred bytes;
	// anything near this is not a result.
	maxBodySize = 4 << 20
	// errBodySize is how much of a non-2xx body APIError keeps for diagnosis.
	errBodySize = 512
	// errDrainSize is how much more of a non-2xx body is read and discarded so the
	// connection can be reused.
	errDrainSize = 64 << 10
	// errExcerptSize is how much of APIError.Body its Error text quotes.
	errExcerptSize = 120
)

// ErrInvalidResponse is returned, wrapped, by [Client.GetSessionResult] when the API
// answers 2xx with a body that is not a JSON object (HTML from a proxy, an empty or
// truncated body, a body over 4 MiB). Retrying will not change the answer.
var ErrInvalidResponse = errors.New("verifeye: invalid response")

// DefaultURL returns the Service API base URL for region "eu" or "us". It returns an
// error for any other region; the base URL stays configurable because the documented
// host names are inconsistent (see verifeye-api.md).
func DefaultURL(region string) (string, error) {
	switch region {
	case "eu":
		return "https://verifeye-service-api-eu.realeyes.ai", nil
	case "us":
		return "https://verifeye-service-api-us.realeyes.ai", nil
	default:
		return "", fmt.Errorf("verifeye: unknown region %q (want eu or us)", region)
	}
}

// Options are the tunables of a [Client]. The zero value works.
type Options struct {
	// HTTPClient sends the requests. If nil, the Client uses its own http.Client
	// whose transport is [NewTransport]. Its Timeout, if any, applies on top of
	// Options.Timeout. Its CheckRedirect is ignored: the Client uses a copy that
	// never follows a redirect.
	HTTPClient *http.Client

	// Timeout bounds each call, from sending the request to reading the whole
	// body. Zero means 10 s.
	Timeout time.Duration

	// UserAgent is sent as the User-Agent header. Empty means "verifeye-bridge".
	UserAgent string

	// Now is the clock that Retry-After HTTP-dates are measured against. Nil means
	// time.Now; tests inject a fixed clock.
	Now func() time.Time
}

// Client calls the Get Session Result endpoint. Build it with [New]. A Client is safe
// for concurrent use by multiple goroutines and holds no resources that need closing
// beyond the idle connections of its HTTP client.
type Client struct {
	endpoint   string // base URL joined with resultPath
	apiKey     string
	httpClient *http.Client
	timeout    time.Duration
	userAgent  string
	now        func() time.Time
}

// New returns a Client for the API at baseURL (for example the result of
// [DefaultURL]), authenticating with apiKey. It returns an error if baseURL is not
// an absolute http or https URL without query or fragment, or if apiKey is empty or
// not a valid header value. The error never contains the key.
func New(baseURL, apiKey string, opts Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("verifeye: invalid base URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("verifeye: invalid base URL %q: want an absolute http or https URL", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("verifeye: invalid base URL %q: must not have a query or fragment", u.Redacted())
	}
	if apiKey == "" {
		return nil, errors.New("verifeye: API key is empty")
	}
	for i := 0; i < len(apiKey); i++ {
		if c := apiKey[i]; c < 0x20 || c == 0x7f {
			return nil, errors.New("verifeye: API key contains a control character")
		}
	}

	hc := &http.Client{Transport: NewTransport()}
	if opts.HTTPClient != nil {
		cp := *opts.HTTPClient
		hc = &cp
	}
	// A redirect would carry the API key to a host nobody configured, and its
	// answer would be published as the session's outcome: never follow one.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c := &Client{
		endpoint:   strings.TrimRight(u.String(), "/") + resultPath,
		apiKey:     apiKey,
		httpClient: hc,
		timeout:    opts.Timeout,
		userAgent:  opts.UserAgent,
		now:        opts.Now,
	}
	if c.timeout <= 0 {
		c.timeout = defaultTimeout
	}
	if c.userAgent == "" {
		c.userAgent = defaultUserAgent
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// NewTransport returns a transport like http.DefaultTransport but keeping more idle
// connections per host: the enricher runs many workers against one host, and the
// default of 2 would make most calls open a new TLS connection. Callers that wrap
// the transport (to trace the calls) start from this one.
func NewTransport() http.RoundTripper {
	dt, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return http.DefaultTransport
	}
	t := dt.Clone()
	t.MaxIdleConnsPerHost = 64
	return t
}

// Result is a 2xx answer of Get Session Result.
type Result struct {
	// Body is exactly the bytes the API returned. It is always a JSON object.
	Body []byte

	// VerificationResult is the raw string value of the body's top-level
	// verificationResult key (matched case-insensitively, also as
	// verification_result), or "" if it is missing, null or not a string.
	VerificationResult string

	// Status is the HTTP status code, normally 200.
	Status int
}

// APIError is a non-2xx answer of the API. Match it with errors.As; the enricher's
// failure policy decides on Status (401/403: configuration, 404: not yet or never,
// 429/5xx: retry after RetryAfter or a backoff, 3xx: a redirect, never followed).
type APIError struct {
	// Status is the HTTP status code.
	Status int

	// RetryAfter is the delay the Retry-After header asked for, given either as
	// seconds or as an HTTP-date; 0 if the header is absent, unparsable or in the
	// past.
	RetryAfter time.Duration

	// Body is the start of the response body (at most 512 bytes, valid UTF-8), for
	// diagnosis only: its shape is undocumented. Any occurrence of the API key is
	// replaced by "[redacted]".
	Body string
}

// Error returns a text like `verifeye: get session result: HTTP 503 (retry after
// 2s): "upstream unavailable"`.
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "verifeye: get session result: HTTP %d", e.Status)
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if body := strings.TrimSpace(e.Body); body != "" {
		fmt.Fprintf(&b, ": %q", truncateUTF8(body, errExcerptSize))
	}
	return b.String()
}

// GetSessionResult fetches the result of the verification session sessionID.
//
// It returns a *Result for any 2xx answer whose body is a JSON object, whatever the
// object holds. Otherwise it returns an error:
//   - *APIError for any non-2xx answer, a 3xx included: redirects are not
//     followed;
//   - an error wrapping ErrInvalidResponse for a 2xx body that is not a JSON object;
//   - an error wrapping the transport's error (connection refused or reset, DNS,
//     context cancelled). When the per-call Timeout or ctx's deadline expires,
//     errors.Is(err, context.DeadlineExceeded) reports true; when ctx is cancelled,
//     errors.Is(err, context.Canceled) does.
//
// No returned error contains the API key.
func (c *Client) GetSessionResult(ctx context.Context, sessionID string) (*Result, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		c.endpoint+"?verificationSessionId="+url.QueryEscape(sessionID), nil)
	if err != nil {
		return nil, fmt.Errorf("verifeye: get session result: %w", err)
	}
	req.Header.Set("Authorization", "ApiKey "+c.apiKey)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)

	resp, err := c.httpClient.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, c.apiError(resp)
	}

	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodySize+1))
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	if len(body) > maxBodySize {
		return nil, fmt.Errorf("verifeye: get session result: HTTP %d: body exceeds %d bytes: %w",
			resp.StatusCode, maxBodySize, ErrInvalidResponse)
	}
	fields, ok := jsonObject(body)
	if !ok {
		return nil, fmt.Errorf("verifeye: get session result: HTTP %d: body (%s, %d bytes) is not a JSON object: %w",
			resp.StatusCode, contentType(resp), len(body), ErrInvalidResponse)
	}
	return &Result{
		Body:               body,
		VerificationResult: verificationResult(fields),
		Status:             resp.StatusCode,
	}, nil
}

// transportError wraps err from sending the request or reading the body. The
// standard transport already wraps the context's error, but a custom
// Options.HTTPClient need not, so when the call's context has ended its error is
// wrapped too: callers classify timeouts with errors.Is(err,
// context.DeadlineExceeded) whatever the transport.
func (c *Client) transportError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("verifeye: get session result: %w (%w)", err, ctxErr)
	}
	return fmt.Errorf("verifeye: get session result: %w", err)
}

// apiError builds the APIError for a non-2xx response, reading a bounded part of
// the body.
func (c *Client) apiError(resp *http.Response) *APIError {
	// Read enough past errBodySize that a key starting inside the excerpt is
	// redacted whole before the excerpt is cut.
	buf, _ := io.ReadAll(io.LimitReader(resp.Body, int64(errBodySize+len(c.apiKey))))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, errDrainSize))
	buf = bytes.ReplaceAll(buf, []byte(c.apiKey), []byte("[redacted]"))
	return &APIError{
		Status:     resp.StatusCode,
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), c.now()),
		Body:       truncateUTF8(string(buf), errBodySize),
	}
}

// parseRetryAfter reads a Retry-After value, either delta-seconds or an HTTP-date
// relative to now (RFC 9110, section 10.2.3). It returns 0 for an empty, invalid or
// past value.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		// Clamp rather than overflow: a century is "do not retry soon" either way.
		const maxSecs = 100 * 365 * 24 * 3600
		return time.Duration(min(secs, maxSecs)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// jsonObject reports whether body is a valid JSON object and returns its top-level
// members.
func jsonObject(body []byte) (map[string]json.RawMessage, bool) {
	if !json.Valid(body) {
		return nil, false
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, false
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, false
	}
	return fields, true
}

// verificationResult returns the string value of the top-level verificationResult
// member, or "". The shape of the body is not published, so the key is matched
// ignoring case and underscores (verificationResult, VerificationResult,
// verification_result); the exact camelCase key wins, then the first match in
// sorted order, so the choice never depends on map iteration.
func verificationResult(fields map[string]json.RawMessage) string {
	raw, ok := fields["verificationResult"]
	if !ok {
		var keys []string
		for k := range fields {
			if strings.EqualFold(strings.ReplaceAll(k, "_", ""), "verificationresult") {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			return ""
		}
		sort.Strings(keys)
		raw = fields[keys[0]]
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "" // null, number, object, array, bool
	}
	return s
}

// contentType returns the response's Content-Type for error messages.
func contentType(resp *http.Response) string {
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		return truncateUTF8(ct, 64)
	}
	return "no content type"
}

// truncateUTF8 replaces invalid UTF-8 in s and cuts it to at most n bytes without
// splitting a rune.
func truncateUTF8(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
