package main

import (
	"strings"
	"testing"
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
