package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// Files the embedded server keeps beside its store in DATA_DIR, both mode 0600.
const (
	// natsCredsFile holds the generated user and password, reused on restart.
	natsCredsFile = "nats-credentials.json"
	// natsURLFile is one line, nats://user:password@host:port, reaching the
	// embedded server: the terminal tools use it when NATS_URL is empty.
	natsURLFile = "nats.url"
)

type storedCredentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// embeddedCredentials returns the user and password the embedded server
// requires: NATS_EMBEDDED_USER and NATS_EMBEDDED_PASSWORD when set, else the
// ones generated at first start and kept in DATA_DIR (generated reports a
// fresh pair). Errors name DATA_DIR.
func embeddedCredentials(c embeddedConfig) (user, password string, generated bool, err error) {
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return "", "", false, fmt.Errorf("DATA_DIR: %w", err)
	}
	if c.EmbeddedUser != "" {
		return c.EmbeddedUser, c.EmbeddedPass.value(), false, nil
	}
	path := filepath.Join(c.DataDir, natsCredsFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var sc storedCredentials
		if json.Unmarshal(b, &sc) != nil || sc.User == "" || sc.Password == "" {
			return "", "", false, fmt.Errorf("DATA_DIR: %s is not a credentials file of verifeye-bridge (delete it to generate new credentials)", path)
		}
		// Whoever loosened it, only this user may read the password.
		if err := os.Chmod(path, 0o600); err != nil {
			return "", "", false, fmt.Errorf("DATA_DIR: %w", err)
		}
		return sc.User, sc.Password, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", "", false, fmt.Errorf("DATA_DIR: %w", err)
	}
	sc := storedCredentials{User: "bridge-" + randomText(4, hex.EncodeToString), Password: randomText(32, base64.RawURLEncoding.EncodeToString)}
	b, _ = json.Marshal(sc)
	if err := writePrivate(path, append(b, '\n')); err != nil {
		return "", "", false, fmt.Errorf("DATA_DIR: %w", err)
	}
	return sc.User, sc.Password, true, nil
}

// randomText returns n random bytes, encoded.
func randomText(n int, encode func([]byte) string) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return encode(b)
}

// writeNATSURL writes DATA_DIR/nats.url for the listener of ns and returns its
// path. Without a listener (NATS_EMBEDDED_ADDR=-) nothing can use the file: it
// removes one a previous run left and returns "".
func writeNATSURL(dataDir string, ns *server.Server, user, password string) (string, error) {
	path := filepath.Join(dataDir, natsURLFile)
	addr := ns.Addr()
	if addr == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		return "", nil
	}
	// NATS_URL is a comma-separated list: a comma in the credentials must not
	// split it (net/url leaves commas in user information as they are).
	userinfo := strings.ReplaceAll(url.UserPassword(user, password).String(), ",", "%2C")
	return path, writePrivate(path, []byte("nats://"+userinfo+"@"+loopbackAddr(addr.String())+"\n"))
}

// readNATSURL returns the URL in DATA_DIR/nats.url and the file's path; an
// error wraps fs.ErrNotExist when there is none. Errors never quote the file.
func readNATSURL(dataDir string) (string, string, error) {
	path := filepath.Join(dataDir, natsURLFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", path, err
	}
	s := strings.TrimSpace(string(b))
	if u, err := url.Parse(s); err != nil || u.Scheme != "nats" || u.Host == "" || strings.ContainsAny(s, "\n,") {
		return "", path, fmt.Errorf("%s: not one nats:// URL", path)
	}
	return s, path, nil
}

// writePrivate replaces path with b, readable by its owner only. A reader
// sees the old file or the new one, never a part.
func writePrivate(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after the rename: nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
