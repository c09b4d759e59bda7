package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strings"
	"time"
)

// healthcheckConfig is read by healthcheck: the address of the process to check
// is the one that process listens on.
type healthcheckConfig struct {
	HTTPAddr string `envconfig:"HTTP_ADDR" default:":8080" desc:"listen address of the process to check; an empty host means 127.0.0.1"`
}

// cmdHealthcheck asks a running verifeye-bridge on this host whether it is ready.
// It exists because the container image has no shell and no curl: Docker's
// HEALTHCHECK runs it with the container's own environment, so HTTP_ADDR is the
// address the service listens on.
func cmdHealthcheck(ctx context.Context, args []string, stdout, _ io.Writer) error {
	var cfg healthcheckConfig
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	path := fs.String("path", "/readyz", "path to check: /readyz (ready for traffic) or /healthz (process alive)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := parseFlags(fs, args, stdout,
		"GET http://<HTTP_ADDR>/readyz on this host and exit 0 on 200, 1 otherwise,\nprinting one line. The container image's HEALTHCHECK runs it.",
		"HTTP_ADDR=:8080 verifeye-bridge healthcheck --path /healthz", &cfg); err != nil {
		return err
	}
	if err := process(&cfg); err != nil {
		return usageError{err}
	}
	if !strings.HasPrefix(*path, "/") {
		return usagef("--path: %q does not start with /", *path)
	}
	if *timeout <= 0 {
		return usagef("--timeout: must be positive")
	}
	if _, _, err := net.SplitHostPort(cfg.HTTPAddr); err != nil {
		return usagef("HTTP_ADDR: %q is not host:port", cfg.HTTPAddr)
	}
	// A listen address without a host, or with an unspecified one (0.0.0.0,
	// ::), is checked on loopback.
	url := "http://" + loopbackAddr(cfg.HTTPAddr) + *path

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return usageError{fmt.Errorf("healthcheck: %w", err)}
	}
	// A fresh transport: no proxy from the environment, nothing kept alive.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		var ue *neturl.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is already in the message
		}
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	fmt.Fprintf(stdout, "ok: GET %s: %s\n", url, resp.Status)
	return nil
}
