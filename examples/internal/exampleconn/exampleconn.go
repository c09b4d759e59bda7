// Package exampleconn connects the example services to the bridge's NATS:
// NATS_URL; when that is empty, the URL the bridge's embedded server wrote in
// DATA_DIR/nats.url (DATA_DIR defaults to ./data); else nats://127.0.0.1:4222.
// A real service takes its NATS URL and credentials from its own configuration.
package exampleconn

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream connects as name and returns the JetStream context and a func that
// closes the connection.
func JetStream(name string) (jetstream.JetStream, func(), error) {
	nc, err := nats.Connect(URL(), nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}

// URL is NATS_URL, else the embedded server's DATA_DIR/nats.url, else the
// embedded server's default address.
func URL() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	dir := os.Getenv("DATA_DIR")
	if dir == "" {
		dir = "data"
	}
	if b, err := os.ReadFile(filepath.Join(dir, "nats.url")); err == nil {
		if u := strings.TrimSpace(string(b)); u != "" {
			return u
		}
	}
	return "nats://127.0.0.1:4222"
}
