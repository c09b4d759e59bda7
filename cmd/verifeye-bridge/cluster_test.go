package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/enricher/verifeye/verifeyetest"
	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/natstest"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// This file is the scale-out test of deploy/: the shape of deploy/compose and
// deploy/kubernetes (a three-node JetStream cluster, STREAM_REPLICAS=3, two
// ingest replicas, two enrichers sharing one durable consumer), in-process.

const clusterKey = "sk-test-cluster-3n"

// clusterNode is one server of an in-process NATS cluster.
type clusterNode struct {
	name string
	url  string
	opts natsembed.Options

	mu sync.Mutex
	ns *server.Server
}

// shutdown stops the node; it may be called more than once.
func (n *clusterNode) shutdown() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns != nil {
		natsembed.Shutdown(n.ns)
		n.ns = nil
	}
}

// clusterStart starts a JetStream cluster of size servers on loopback, each with
// its own store, and waits until JetStream has a meta leader. The servers stop
// when the test ends.
func clusterStart(t *testing.T, size int) []*clusterNode {
	t.Helper()
	nodes := make([]*clusterNode, size)
	// Every node routes to every other, so the route ports are fixed up front
	// (natstest.FreePort, which may race another test for a port): a server
	// with JetStream in a cluster refuses to start without configured routes
	// ("JetStream cluster requires configured routes"), so even the first one
	// must name a peer's route port before any peer has bound one, and a
	// cluster port of 0 cannot be read back in time. The client ports are
	// whatever each server binds.
	var routes []string
	routePorts := make([]int, size)
	for i := range nodes {
		routePorts[i] = natstest.FreePort(t)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[i]))
	}
	for i := range nodes {
		name := fmt.Sprintf("n%d", i+1)
		n := &clusterNode{
			name: name,
			opts: natsembed.Options{
				Name:         name,
				StoreDir:     t.TempDir(),
				Addr:         "127.0.0.1:0",
				SyncInterval: time.Minute, // fast; a graceful Shutdown flushes anyway
				Cluster:      &server.ClusterOpts{Name: "verifeye-test", Host: "127.0.0.1", Port: routePorts[i]},
				Routes:       routes,
			},
		}
		ns, err := natsembed.Start(n.opts)
		if err != nil {
			t.Fatalf("start NATS server %s: %v", name, err)
		}
		n.ns = ns
		n.url = "nats://" + ns.Addr().String()
		t.Cleanup(n.shutdown)
		nodes[i] = n
	}
	js := clusterJetStream(t, nodes)
	natstest.WaitFor(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err
	})
	return nodes
}

// clusterURLs returns NATS_URL for nodes: every server, comma-separated.
func clusterURLs(nodes []*clusterNode) string {
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.url)
	}
	return strings.Join(urls, ",")
}

// clusterJetStream connects to every server of nodes (the connection moves
// when one stops) and returns a JetStream context; closed when the test ends.
func clusterJetStream(t *testing.T, nodes []*clusterNode) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(clusterURLs(nodes), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatalf("connect to the cluster: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// clusterServe runs one subcommand's service (cfg, loaded from the environment)
// in-process on a loopback port until the test ends, and returns its base URL
// once /readyz answers 200. serve must then return nil.
func clusterServe(t *testing.T, cfg serviceConfig) string {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Str("replica", cfg.name).Logger()
	return startServe(t, cfg, serviceDeps{}, true, log)
}

func clusterGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// clusterPost posts one webhook as VerifEye does: a 5 s timeout, and one retry
// when the first answer is not 2xx. It reports whether the webhook was accepted
// (202), and the last answer; unavailable counts the 503 answers.
func clusterPost(client *http.Client, bases []string, session string, unavailable *atomic.Int64) (bool, string) {
	body := fmt.Sprintf(`{"event":"VerificationCompleted","verificationSessionId":%q}`, session)
	last := ""
	for try := range 2 {
		req, err := http.NewRequest(http.MethodPost, bases[try%len(bases)]+"/webhooks/verifeye", strings.NewReader(body))
		if err != nil {
			return false, err.Error()
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", clusterKey)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			return true, ""
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			unavailable.Add(1)
		}
		last = fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	return false, last
}

// clusterSession returns the i-th test session ID; every fourth one fails
// verification (the simulator's fa11ed suffix), the others pass.
func clusterSession(i int) string {
	if i%4 == 0 {
		return fmt.Sprintf("c1a57e00-0000-4000-8000-fa11ed%06x", i)
	}
	return fmt.Sprintf("c1a57e00-0000-4000-8000-0000%08x", i)
}

var publishedRE = regexp.MustCompile(`(?m)^verifeye_bridge_enrichments_total\{[^}]*result="published"[^}]*\} (\S+)$`)

// clusterPublished returns how many outcomes the enricher at base published.
func clusterPublished(t *testing.T, base string) int {
	t.Helper()
	code, body, err := clusterGet(base + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s/metrics: %d %v", base, code, err)
	}
	n := 0
	for _, m := range publishedRE.FindAllStringSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		n += int(v)
	}
	return n
}

// TestClusterScaleOutSurvivesServerLoss runs the deployment's shape against a
// real three-node JetStream cluster: two ingest replicas and two enrichers
// (sharing one durable consumer) with STREAM_REPLICAS=3. While webhooks stream
// in, the server leading the webhooks stream is shut down. Every webhook
// answered 202 must end as exactly one outcome on VERIFEYE_RESULTS: none lost,
// none duplicated, and none invented.
func TestClusterScaleOutSurvivesServerLoss(t *testing.T) {
	// Three servers, four bridge processes and a server loss want the machine
	// to themselves: `make test-cluster` runs this alone, after `make test`.
	if os.Getenv("VERIFEYE_TEST_CLUSTER") == "" {
		t.Skip("starts a three-node NATS cluster and loses a server; run it with `make test-cluster` (VERIFEYE_TEST_CLUSTER=1)")
	}
	nodes := clusterStart(t, 3)
	api := verifeyetest.Start(clusterKey)
	t.Cleanup(api.Close)

	for k, v := range map[string]string{
		"NATS_URL":               clusterURLs(nodes),
		"STREAM_REPLICAS":        "3",
		"VERIFEYE_API_KEY":       clusterKey,
		"VERIFEYE_API_URL":       api.URL,
		"WEBHOOK_AUTH":           "api-key",
		"ENRICH_CONCURRENCY":     "4",
		"VERIFEYE_RATE_LIMIT":    "0",
		"ENRICH_ACK_WAIT":        "3s",
		"ENRICH_BACKOFF_BASE":    "100ms",
		"ENRICH_BACKOFF_MAX":     "2s",
		"ENRICH_MAX_ATTEMPTS":    "10",
		"ENRICH_NOT_FOUND_DELAY": "100ms",
		"SHUTDOWN_GRACE":         "15s",
		"OTEL_SDK_DISABLED":      "true",
	} {
		t.Setenv(k, v)
	}
	var ingests, enrichers []string
	for range 2 {
		// The store-and-forward spool is on (the default): each ingest has
		// its own DATA_DIR.
		t.Setenv("DATA_DIR", t.TempDir())
		ingests = append(ingests, clusterServe(t, serviceConfig{name: "ingest", ingest: &ingestConfig{}, spool: &spoolConfig{}, dataDir: &dataDirConfig{}, api: &apiConfig{}}))
		enrichers = append(enrichers, clusterServe(t, serviceConfig{name: "enrich", api: &apiConfig{}, enrich: &enrichConfig{}}))
	}

	js := clusterJetStream(t, nodes)
	ctx := context.Background()
	leaderOf := func(stream string) (string, error) {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		st, err := js.Stream(c, stream)
		if err != nil {
			return "", err
		}
		info, err := st.Info(c)
		if err != nil {
			return "", err
		}
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			return "", fmt.Errorf("stream %s: %d replicas, cluster %+v; want 3 replicas", stream, info.Config.Replicas, info.Cluster)
		}
		if info.Cluster.Leader == "" {
			return "", fmt.Errorf("stream %s has no leader", stream)
		}
		return info.Cluster.Leader, nil
	}
	var leader string
	natstest.WaitFor(t, 60*time.Second, func() (err error) {
		leader, err = leaderOf(streams.Webhooks)
		return err
	})
	resultsLeader, _ := leaderOf(streams.Results)

	// Post a stream of webhooks from a few concurrent senders; a third of the
	// way in, shut down the webhooks stream's leader.
	const total, senders = 240, 4
	var (
		next     atomic.Int64
		posted   atomic.Int64
		n503     atomic.Int64
		mu       sync.Mutex
		accepted = map[string]bool{}
		refused  = map[string]string{}
		killed   = make(chan struct{})
		killOnce sync.Once
		wg       sync.WaitGroup
	)
	client := &http.Client{Timeout: 5 * time.Second}
	for range senders {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				session := clusterSession(i)
				ok, why := clusterPost(client, []string{ingests[i%2], ingests[(i+1)%2]}, session, &n503)
				mu.Lock()
				if ok {
					accepted[session] = true
				} else {
					refused[session] = why
				}
				mu.Unlock()
				if posted.Add(1) == total/3 {
					killOnce.Do(func() { close(killed) })
				}
			}
		})
	}
	<-killed
	var victim *clusterNode
	for _, n := range nodes {
		if n.name == leader {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("the webhooks stream leader %q is none of the servers", leader)
	}
	t.Logf("shutting down %s, leader of %s (the leader of %s is %s), after %d webhooks", victim.name, streams.Webhooks, streams.Results, resultsLeader, posted.Load())
	victim.shutdown()
	wg.Wait()

	mu.Lock()
	t.Logf("%d webhooks accepted, %d refused (a refusal is allowed while a leader is elected; VerifEye then gives up)", len(accepted), len(refused))
	for s, why := range refused {
		t.Logf("refused %s: %s", s, why)
	}
	mu.Unlock()
	if len(accepted) < total/2 {
		t.Fatalf("only %d of %d webhooks accepted; the cluster should keep accepting with one server down", len(accepted), total)
	}
	// With the spool on, a leader election costs latency, never an answer.
	if n := n503.Load(); n > 0 {
		t.Errorf("%d requests answered 503; with the spool on, none may be", n)
	}
	if newLeader, err := leaderOf(streams.Webhooks); err == nil && newLeader == victim.name {
		t.Errorf("the stopped server %s still leads %s", victim.name, streams.Webhooks)
	}

	// Wait until the enrichers are done: every accepted webhook has an outcome,
	// and the shared consumer has nothing pending or unacknowledged.
	natstest.WaitFor(t, 90*time.Second, func() error {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		cons, err := js.Consumer(c, streams.Webhooks, "enricher")
		if err != nil {
			return err
		}
		info, err := cons.Info(c)
		if err != nil {
			return err
		}
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return fmt.Errorf("enricher consumer: %d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		st, err := js.Stream(c, streams.Results)
		if err != nil {
			return err
		}
		si, err := st.Info(c)
		if err != nil {
			return err
		}
		if int(si.State.Msgs) < len(accepted) {
			return fmt.Errorf("%d outcomes for %d accepted webhooks", si.State.Msgs, len(accepted))
		}
		return nil
	})

	outcomes := map[string]int{}
	for _, m := range natstest.Messages(t, js, streams.Results) {
		session := m.Headers().Get(streams.HeaderMsgID)
		outcomes[session]++
		if want := "verifeye.result.default." + verifeyetest.OutcomeFor(session); m.Subject() != want {
			t.Errorf("outcome of %s on %s; want %s", session, m.Subject(), want)
		}
	}
	for session := range accepted {
		if n := outcomes[session]; n != 1 {
			t.Errorf("accepted webhook %s has %d outcomes on %s; want exactly 1", session, n, streams.Results)
		}
	}
	for session, n := range outcomes {
		_, wasRefused := refused[session]
		switch {
		case !accepted[session] && !wasRefused:
			t.Errorf("outcome for %s, which was never posted", session)
		case wasRefused && n > 1:
			t.Errorf("refused webhook %s has %d outcomes; want at most 1", session, n)
		}
	}
	if n := natstest.Count(t, js, streams.DLQ); n != 0 {
		t.Errorf("%s holds %d events; want none (every session is valid)", streams.DLQ, n)
	}
	// The two enrichers share the one durable consumer: both did part of the work.
	for _, base := range enrichers {
		if n := clusterPublished(t, base); n == 0 {
			t.Errorf("enricher %s published no outcome; the replicas should share the consumer", base)
		}
	}
}
