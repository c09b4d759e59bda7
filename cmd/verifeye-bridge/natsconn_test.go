package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
)

// TestUnusableNATSCredentials: every NATS credential setting that names a file
// the program cannot use stops it at start (services and tools alike), exit
// 2, one line naming the variable, never the file's content; usable files pass.
func TestUnusableNATSCredentials(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	user, _ := nkeys.CreateUser()
	seed, _ := user.Seed()
	certPEM, keyPEM := selfSigned(t)
	_, otherKeyPEM := selfSigned(t)
	missing := filepath.Join(dir, "missing")
	garbage := write("garbage", "GARBAGE-CONTENT-not-a-credential\n", 0o600)
	unreadable := write("unreadable", string(seed), 0o000)
	seedFile := write("user.nk", string(seed), 0o600)
	cert, key, otherKey := write("client.crt", certPEM, 0o600), write("client.key", keyPEM, 0o600), write("other.key", otherKeyPEM, 0o600)

	noNATS := "NATS_URL=nats://" + freeAddr(t)
	tests := []struct {
		name    string
		env     []string
		wantVar string // "" : usable, the tool fails to connect instead
	}{
		{"nkey missing", []string{"NATS_NKEY=" + missing}, "NATS_NKEY"},
		{"nkey garbage", []string{"NATS_NKEY=" + garbage}, "NATS_NKEY"},
		{"creds missing", []string{"NATS_CREDS=" + missing}, "NATS_CREDS"},
		{"creds garbage", []string{"NATS_CREDS=" + garbage}, "NATS_CREDS"},
		{"creds a bare seed", []string{"NATS_CREDS=" + seedFile}, "NATS_CREDS"},
		{"ca missing", []string{"NATS_TLS_CA=" + missing}, "NATS_TLS_CA"},
		{"ca garbage", []string{"NATS_TLS_CA=" + garbage}, "NATS_TLS_CA"},
		{"cert missing", []string{"NATS_TLS_CERT=" + missing, "NATS_TLS_KEY=" + key}, "NATS_TLS_CERT"},
		{"cert garbage", []string{"NATS_TLS_CERT=" + garbage, "NATS_TLS_KEY=" + key}, "NATS_TLS_CERT"},
		{"key missing", []string{"NATS_TLS_CERT=" + cert, "NATS_TLS_KEY=" + missing}, "NATS_TLS_KEY"},
		{"key of another cert", []string{"NATS_TLS_CERT=" + cert, "NATS_TLS_KEY=" + otherKey}, "NATS_TLS_KEY"},
		{"inbox prefix with a wildcard", []string{"NATS_INBOX_PREFIX=_INBOX.*"}, "NATS_INBOX_PREFIX"},
		{"inbox prefix with an empty token", []string{"NATS_INBOX_PREFIX=_INBOX..x"}, "NATS_INBOX_PREFIX"},
		{"inbox prefix ending in a dot", []string{"NATS_INBOX_PREFIX=_INBOX_ingest."}, "NATS_INBOX_PREFIX"},
		{"usable nkey, CA, key pair and inbox prefix", []string{"NATS_NKEY=" + seedFile, "NATS_TLS_CA=" + cert, "NATS_TLS_CERT=" + cert, "NATS_TLS_KEY=" + key, "NATS_INBOX_PREFIX=_INBOX_ingest"}, ""},
	}
	if os.Geteuid() != 0 { // root reads a mode-0 file
		tests = append(tests, struct {
			name    string
			env     []string
			wantVar string
		}{"nkey unreadable", []string{"NATS_NKEY=" + unreadable}, "NATS_NKEY"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runs := [][]string{{"dlq", "list"}}
			if tt.wantVar != "" {
				runs = append(runs, []string{"ingest"}, []string{"enrich"})
			}
			for _, args := range runs {
				env := userEnv(append([]string{noNATS, "VERIFEYE_API_KEY=k", anyPort}, tt.env...)...)
				r := runBin(t, env, args...)
				if strings.Contains(r.stderr, "GARBAGE-CONTENT") || strings.Contains(r.stderr, string(seed)) {
					t.Errorf("%v: stderr quotes a credential file: %q", args, r.stderr)
				}
				if tt.wantVar == "" {
					if r.code != 1 || !strings.Contains(r.stderr, "cannot connect to NATS") {
						t.Errorf("%v with usable files: exit %d, stderr %q; want 1, cannot connect", args, r.code, r.stderr)
					}
					continue
				}
				if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tt.wantVar+": ") {
					t.Errorf("%v: exit %d, stderr %q; want 2 and one line naming %s", args, r.code, r.stderr, tt.wantVar)
				}
			}
		})
	}
}

// selfSigned returns a PEM certificate and its PEM private key.
func selfSigned(t *testing.T) (string, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "verifeye-bridge test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
}

// TestRestartPacing: restarts of the embedded server that follow one another
// within a minute wait 2 s, 4 s, 8 s, … up to a minute between them; after a
// calm minute the next may come at once.
func TestRestartPacing(t *testing.T) {
	var p restartPacing
	now := time.Unix(0, 0)
	if !p.allow(now) {
		t.Fatal("the first restart is not allowed at once")
	}
	p.restarted(now)
	var waits []time.Duration
	for range 7 {
		at := now
		for !p.allow(at) {
			at = at.Add(100 * time.Millisecond)
		}
		waits = append(waits, at.Sub(now))
		now = at
		p.restarted(now)
	}
	want := []time.Duration{0, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute}
	if !slices.Equal(waits, want) {
		t.Errorf("waits between restarts in a row = %v, want %v", waits, want)
	}
	now = now.Add(2 * time.Minute)
	p.restarted(now) // after a calm spell
	if !p.allow(now) {
		t.Error("after a calm spell the next restart must be allowed at once")
	}
}
