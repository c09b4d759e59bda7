// Command verifeye-bridge turns VerifEye webhooks into a durable, de-duplicated,
// enriched event stream on NATS JetStream. Run `verifeye-bridge --help`.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
