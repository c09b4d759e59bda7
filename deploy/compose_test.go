package deploy_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"

	"github.com/realeyes/verifeye-bridge/bridge"
	"github.com/realeyes/verifeye-bridge/internal/ops"
)

var composeDir = filepath.Join("compose")

// composeService is one service of compose.yaml, merge keys resolved.
type composeService struct {
	name    string
	image   string
	command []string
	env     map[string]string
	raw     map[string]any
}

func readCompose(t *testing.T) (map[string]any, map[string]composeService) {
	t.Helper()
	docs := readYAML(t, filepath.Join(composeDir, "compose.yaml"))
	if len(docs) != 1 {
		t.Fatalf("compose.yaml: %d documents; want 1", len(docs))
	}
	svcs := make(map[string]composeService)
	for name, v := range dict(docs[0], "services") {
		s := composeService{name: name, image: str(v, "image"), env: stringMap(dict(v, "environment")), raw: v.(map[string]any)}
		for _, c := range list(v, "command") {
			s.command = append(s.command, str(c))
		}
		svcs[name] = s
	}
	if len(svcs) == 0 {
		t.Fatal("compose.yaml: no services")
	}
	return docs[0], svcs
}

// checkServed fails unless the bridge's HTTP handler for role answers 200 on path.
func checkServed(t *testing.T, where, role, path string) {
	t.Helper()
	var webhooks http.Handler
	if role == "ingest" {
		webhooks = bridge.New(nil, zerolog.Nop(), bridge.Options{})
	}
	h := ops.New(ops.Options{Next: webhooks})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != http.StatusOK {
		t.Errorf("%s: GET %s on `verifeye-bridge %s` answers %d; want 200", where, path, role, rec.Code)
	}
}

// TestCompose checks deploy/compose against the program and against itself:
// commands, environment variables, the NATS cluster (its config parsed by
// nats-server itself), the ports nginx and Prometheus use, and the mounted files.
func TestCompose(t *testing.T) {
	doc, svcs := readCompose(t)
	prog := programEnv(t)
	cmds := programCommands(t)
	var bin string
	if !testing.Short() {
		bin = buildImageBinary(t)
	}

	byCommand := make(map[string][]composeService)
	var natsSvcs []string
	for _, name := range sortedKeys(svcs) {
		s := svcs[name]
		switch {
		case imageRepo(s.image) == bridgeImage:
			if len(s.command) != 1 || !cmds[s.command[0]] {
				t.Errorf("compose service %s: command %v; want one verifeye-bridge subcommand", name, s.command)
				continue
			}
			byCommand[s.command[0]] = append(byCommand[s.command[0]], s)
			checkEnv(t, "compose service "+name, s.command[0], s.env, prog, bin)
			if ctx := str(s.raw, "build", "context"); ctx == "" || !fileExists(filepath.Join(composeDir, ctx, "Dockerfile")) {
				t.Errorf("compose service %s: build context %q has no Dockerfile", name, ctx)
			}
			if hc := list(s.raw, "healthcheck", "test"); hc != nil {
				t.Errorf("compose service %s overrides the image's HEALTHCHECK with %v", name, hc)
			}
		case strings.HasPrefix(s.image, "nats:"):
			natsSvcs = append(natsSvcs, name)
		}
		for dep := range dict(s.raw, "depends_on") {
			if _, ok := svcs[dep]; !ok {
				t.Errorf("compose service %s depends on %s, which is not a service", name, dep)
			}
		}
		for _, v := range list(s.raw, "volumes") {
			src, _, _ := strings.Cut(str(v), ":")
			if strings.HasPrefix(src, ".") && !fileExists(filepath.Join(composeDir, src)) {
				t.Errorf("compose service %s mounts %s, which does not exist", name, src)
			}
		}
	}
	for _, role := range []string{"ingest", "enrich", "simulator"} {
		if len(byCommand[role]) != 1 {
			t.Fatalf("compose: %d services run `verifeye-bridge %s`; want 1", len(byCommand[role]), role)
		}
	}
	ingest, enrich, sim := byCommand["ingest"][0], byCommand["enrich"][0], byCommand["simulator"][0]
	for _, s := range []composeService{ingest, enrich} {
		if n, _ := strconv.Atoi(str(s.raw, "deploy", "replicas")); n < 2 {
			t.Errorf("compose service %s: %d replicas; want at least 2", s.name, n)
		}
	}

	t.Run("spool volume", func(t *testing.T) {
		// The ingest's spool lives in DATA_DIR: a volume of its own per
		// replica (an anonymous one), never the read-only image filesystem
		// and never a named volume the replicas would share.
		if ingest.env["SPOOL"] == "off" {
			return
		}
		dataDir := cmpOr(ingest.env["DATA_DIR"], "/data")
		found := false
		for _, v := range list(ingest.raw, "volumes") {
			parts := strings.Split(str(v), ":")
			switch {
			case len(parts) == 1 && parts[0] == dataDir:
				found = true
			case len(parts) > 1 && parts[1] == dataDir:
				t.Errorf("compose service %s mounts %s at DATA_DIR; its %s replicas would share one spool: want an anonymous volume (- %s)",
					ingest.name, parts[0], str(ingest.raw, "deploy", "replicas"), dataDir)
			}
		}
		if !found {
			t.Errorf("compose service %s: no volume at DATA_DIR %s for its spool", ingest.name, dataDir)
		}
	})

	t.Run("nats cluster", func(t *testing.T) {
		if len(natsSvcs) != 3 {
			t.Fatalf("compose: NATS services %v; want 3", natsSvcs)
		}
		natsOpts := checkNATSConf(t, svcs, natsSvcs)
		// Every process that talks to NATS must agree on the streams it creates.
		shared := func(s composeService) map[string]string {
			m := make(map[string]string)
			for k, v := range s.env {
				// SPOOL_MAX_BYTES is the ingest's local spool, not a stream.
				if k == "NATS_URL" || k == "SUBJECT_PREFIX" || strings.HasPrefix(k, "STREAM_") ||
					strings.HasSuffix(k, "_MAX_AGE") || (strings.HasSuffix(k, "_MAX_BYTES") && !strings.HasPrefix(k, "SPOOL_")) {
					m[k] = v
				}
			}
			return m
		}
		if diff := cmp.Diff(shared(ingest), shared(enrich)); diff != "" {
			t.Errorf("compose: ingest and enrich disagree on NATS and stream settings (-ingest +enrich):\n%s", diff)
		}
		if got := ingest.env["STREAM_REPLICAS"]; got != "3" {
			t.Errorf("compose: STREAM_REPLICAS=%q; want 3 (one replica per NATS server)", got)
		}
		var hosts []string
		for _, h := range natsHosts(t, ingest.env["NATS_URL"]) {
			host, port, _ := net.SplitHostPort(h)
			hosts = append(hosts, host)
			if port != strconv.Itoa(natsOpts.Port) {
				t.Errorf("NATS_URL names %s; the NATS servers listen on port %d", h, natsOpts.Port)
			}
		}
		slices.Sort(hosts)
		if diff := cmp.Diff(natsSvcs, hosts); diff != "" {
			t.Errorf("NATS_URL hosts differ from the NATS services (-services +NATS_URL):\n%s", diff)
		}
	})

	t.Run("simulator", func(t *testing.T) {
		u, err := url.Parse(enrich.env["VERIFEYE_API_URL"])
		if err != nil || u.Hostname() != sim.name || u.Port() != strconv.Itoa(httpPort(t, sim.env, prog)) {
			t.Errorf("enrich VERIFEYE_API_URL=%q; want http://%s:%d, the simulator", enrich.env["VERIFEYE_API_URL"], sim.name, httpPort(t, sim.env, prog))
		}
		if sim.env["VERIFEYE_API_KEY"] != enrich.env["VERIFEYE_API_KEY"] || sim.env["VERIFEYE_API_KEY"] != ingest.env["VERIFEYE_API_KEY"] {
			t.Errorf("simulator, enrich and ingest use different VERIFEYE_API_KEY values: %q, %q, %q",
				sim.env["VERIFEYE_API_KEY"], enrich.env["VERIFEYE_API_KEY"], ingest.env["VERIFEYE_API_KEY"])
		}
	})

	t.Run("load balancer", func(t *testing.T) {
		conf := readFile(t, filepath.Join(composeDir, "nginx.conf"))
		up := regexp.MustCompile(`(?m)^\s*server\s+([\w.-]+):(\d+)\b`).FindAllStringSubmatch(conf, -1)
		if len(up) != 1 || up[0][1] != ingest.name || up[0][2] != strconv.Itoa(httpPort(t, ingest.env, prog)) {
			t.Errorf("nginx.conf upstream servers %v; want %s:%d, the ingest service", up, ingest.name, httpPort(t, ingest.env, prog))
		}
		listen := regexp.MustCompile(`(?m)^\s*listen\s+(\d+)\s*;`).FindStringSubmatch(conf)
		var lb *composeService
		for _, s := range svcs {
			if strings.HasPrefix(s.image, "nginx:") {
				lb = &s
			}
		}
		if lb == nil || listen == nil {
			t.Fatalf("compose: no nginx service, or nginx.conf has no listen port")
		}
		var published []string
		for _, p := range list(lb.raw, "ports") {
			ps := strings.Split(str(p), ":")
			published = append(published, ps[len(ps)-1])
		}
		if !slices.Contains(published, listen[1]) {
			t.Errorf("compose service %s publishes %v; nginx listens on %s", lb.name, published, listen[1])
		}
		// Secrets never reach a log line: not ?token= (in $request, $request_uri,
		// $args, $query_string) and no request header.
		for _, f := range regexp.MustCompile(`(?s)log_format\s+\w+(.*?);`).FindAllStringSubmatch(conf, -1) {
			if regexp.MustCompile(`\$(request|request_uri|args|query_string|arg_\w+|http_\w+)\b`).MatchString(f[1]) {
				t.Errorf("nginx.conf log_format logs the query string or a header: %s", strings.TrimSpace(f[1]))
			}
		}
		if !strings.Contains(conf, "log_format") || strings.Contains(conf, "access_log /dev/stdout combined") {
			t.Errorf("nginx.conf: want a log_format without the query string")
		}
	})

	t.Run("prometheus", func(t *testing.T) {
		docs := readYAML(t, filepath.Join("prometheus", "prometheus.yml"))
		for _, f := range list(docs[0], "rule_files") {
			if !fileExists(filepath.Join("prometheus", str(f))) {
				t.Errorf("prometheus.yml loads rule file %s, which is not beside it", str(f))
			}
		}
		jobs := map[string]bool{}
		for _, job := range list(docs[0], "scrape_configs") {
			path := str(job, "metrics_path")
			if path == "" {
				path = "/metrics"
			}
			for _, sd := range list(job, "dns_sd_configs") {
				port := str(sd, "port")
				for _, n := range list(sd, "names") {
					s, ok := svcs[str(n)]
					if !ok || imageRepo(s.image) != bridgeImage {
						t.Errorf("prometheus job %s scrapes %s, which is no bridge service", str(job, "job_name"), str(n))
						continue
					}
					if port != strconv.Itoa(httpPort(t, s.env, prog)) {
						t.Errorf("prometheus job %s scrapes %s on port %s; it listens on %d", str(job, "job_name"), s.name, port, httpPort(t, s.env, prog))
					}
					checkServed(t, "prometheus job "+str(job, "job_name"), s.command[0], path)
					jobs[s.name] = true
				}
			}
		}
		for _, s := range []composeService{ingest, enrich} {
			if !jobs[s.name] {
				t.Errorf("prometheus.yml does not scrape compose service %s", s.name)
			}
		}
	})

	if _, ok := doc["name"]; !ok {
		t.Errorf("compose.yaml: no project name")
	}
	// The image's HEALTHCHECK asks /readyz; compose's depends_on waits for it.
	for _, role := range []string{"ingest", "enrich"} {
		checkServed(t, "image HEALTHCHECK", role, "/readyz")
	}
}

// checkNATSConf parses deploy/nats/nats.conf with nats-server's own parser, once
// per NATS service with that service's environment, and checks that the three
// form one JetStream cluster. It returns the first node's options.
func checkNATSConf(t *testing.T, svcs map[string]composeService, natsSvcs []string) *server.Options {
	t.Helper()
	var first *server.Options
	for _, name := range natsSvcs {
		s := svcs[name]
		cmd := s.command
		i := slices.Index(cmd, "--config")
		if i < 0 || i+1 >= len(cmd) {
			t.Fatalf("compose service %s: command %v has no --config", name, cmd)
		}
		mounted := ""
		for _, v := range list(s.raw, "volumes") {
			parts := strings.Split(str(v), ":")
			if len(parts) >= 2 && parts[1] == cmd[i+1] {
				mounted = filepath.Join(composeDir, parts[0])
			}
		}
		if mounted == "" {
			t.Fatalf("compose service %s: %s is not mounted", name, cmd[i+1])
		}
		for k, v := range s.env {
			t.Setenv(k, composeDefault(v))
		}
		opts, err := server.ProcessConfigFile(mounted)
		if err != nil {
			t.Fatalf("nats-server cannot parse %s for %s: %v", mounted, name, err)
		}
		if opts.ServerName != name {
			t.Errorf("%s as %s: server_name %q; want the service name %q (NATS_SERVER_NAME)", mounted, name, opts.ServerName, name)
		}
		if !opts.JetStream || opts.StoreDir == "" {
			t.Errorf("%s: JetStream %v, store_dir %q; want JetStream on file storage", mounted, opts.JetStream, opts.StoreDir)
		}
		var dataMounted bool
		for _, v := range list(s.raw, "volumes") {
			parts := strings.Split(str(v), ":")
			dataMounted = dataMounted || (len(parts) >= 2 && parts[1] == opts.StoreDir && !strings.HasPrefix(parts[0], "."))
		}
		if !dataMounted {
			t.Errorf("compose service %s: store_dir %s is not on a named volume", name, opts.StoreDir)
		}
		var routes []string
		for _, r := range opts.Routes {
			routes = append(routes, r.Hostname())
			if r.Port() != strconv.Itoa(opts.Cluster.Port) {
				t.Errorf("%s: route %s; the cluster listens on port %d", mounted, r, opts.Cluster.Port)
			}
		}
		slices.Sort(routes)
		if diff := cmp.Diff(natsSvcs, routes); diff != "" {
			t.Errorf("%s: cluster routes differ from the NATS services (-services +routes):\n%s", mounted, diff)
		}
		if opts.Cluster.Name == "" {
			t.Errorf("%s: the cluster has no name", mounted)
		}
		if hc := strings.Join(strings.Fields(strings.Trim(str(s.raw, "healthcheck", "test"), "[]")), " "); !strings.Contains(hc, ":"+strconv.Itoa(opts.HTTPPort)+"/healthz") {
			t.Errorf("compose service %s: healthcheck %q does not ask /healthz on the monitoring port %d", name, hc, opts.HTTPPort)
		}
		if first == nil {
			first = opts
		}
	}
	return first
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
