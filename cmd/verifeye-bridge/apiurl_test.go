package main

import (
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

// TestAPIURLCleartext checks which VERIFEYE_API_URL values may carry the API
// key: https anywhere, http only to loopback unless VERIFEYE_API_INSECURE.
func TestAPIURLCleartext(t *testing.T) {
	tests := []struct {
		url           string
		insecure      bool
		wantErr       bool
		wantCleartext bool
	}{
		{url: ""},
		{url: "https://verifeye-service-api-eu.realeyes.ai"},
		{url: "https://example.com:8443/base"},
		{url: "http://127.0.0.1:8090"},
		{url: "http://127.8.9.10:8090"},
		{url: "http://[::1]:8090"},
		{url: "http://localhost:8090"},
		{url: "http://LOCALHOST"},
		{url: "http://example.com", wantErr: true},
		{url: "http://example.com:80/", wantErr: true},
		{url: "http://192.0.2.1:8080", wantErr: true},
		{url: "http://0.0.0.0:8080", wantErr: true},
		{url: "http://localhost.example.com", wantErr: true},
		{url: "http://127.0.0.1.example.com", wantErr: true},
		{url: "http://example.com", insecure: true, wantCleartext: true},
		{url: "https://example.com", insecure: true},
		{url: "ftp://example.com", wantErr: true},
		{url: "example.com", wantErr: true},
	}
	for _, tt := range tests {
		c := apiConfig{APIURL: tt.url, Insecure: tt.insecure}
		cleartext, err := c.checkURL()
		if (err != nil) != tt.wantErr || cleartext != tt.wantCleartext {
			t.Errorf("checkURL(%q, insecure=%v) = %v, %v; want cleartext %v, error %v", tt.url, tt.insecure, cleartext, err, tt.wantCleartext, tt.wantErr)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "VERIFEYE_API_URL: ") {
			t.Errorf("checkURL(%q) error %q does not name VERIFEYE_API_URL", tt.url, err)
		}
	}
}

// TestAPIURLInsecureWarns: with VERIFEYE_API_INSECURE=true an http:// URL to
// another host is accepted, and the start says the key travels in clear text.
func TestAPIURLInsecureWarns(t *testing.T) {
	ns := natstest.Start(t)
	for k, v := range map[string]string{
		"NATS_URL":              ns.URL(),
		"VERIFEYE_API_KEY":      "insecure-rig-key-0123456789",
		"VERIFEYE_API_URL":      "http://verifeye.invalid:8090", // never called: no webhook is sent
		"VERIFEYE_API_INSECURE": "true",
	} {
		t.Setenv(k, v)
	}
	var logs ingestLog
	startServe(t, serviceConfig{name: "enrich", api: &apiConfig{}, enrich: &enrichConfig{}}, serviceDeps{}, true, zerolog.New(&logs))
	if got := strings.Count(logs.String(), "VERIFEYE_API_INSECURE=true"); got != 1 {
		t.Errorf("start logs hold %d lines about VERIFEYE_API_INSECURE; want 1:\n%s", got, logs.String())
	}
	if strings.Contains(logs.String(), "insecure-rig-key") {
		t.Errorf("start logs hold the API key:\n%s", logs.String())
	}
}
