package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realeyes/verifeye-bridge/internal/loadgen"
	"github.com/realeyes/verifeye-bridge/internal/natsembed"
	"github.com/realeyes/verifeye-bridge/internal/streams"
)

// benchEnv is what every measured process is started with.
type benchEnv struct {
	bin, self, tmp string
	apiKey, apiURL string
	logLevel       string
	// gomaxprocs, when positive, is the GOMAXPROCS of every bridge process
	// measured (the ceiling, the plain bridge, serve, ingest); not of the
	// load generator or a nats-server process.
	gomaxprocs int
}

// target is one measured process: the ceiling, serve with a sync setting, or
// ingest against an external NATS with the spool on or off.
type target struct {
	name    string
	ceiling bool
	sync    string // NATS_EMBEDDED_SYNC of serve
	// ingest: `ingest` against a NATS server this process runs for it (a
	// fresh store per run, synced every second), SPOOL=spool; natsDown: no
	// server at all, so every answer comes from the spool.
	ingest   bool
	spool    string
	natsDown bool
	// plain: the plain bridge (-role=plain); extNATS: its NATS server, and
	// ingest's when set, is a nats-server process with default settings.
	plain   bool
	extNATS bool
	// batch is INGEST_BATCH ("" the default): "1" publishes each webhook
	// alone, the baseline of group commit.
	batch string
	runs  int
	env   []string // more environment variables for the process
}

// measurement is one target under one phase.
type measurement struct {
	warm, res        *loadgen.Result
	cpu, genCPU      time.Duration // measured process and this process, during res
	natsCPU          time.Duration // the nats-server process, if any, during res
	stored, accepted int           // serve: messages on the webhooks stream; 202s that were not duplicates
	outcomes         int           // serve: outcomes the enricher published during res
	fsyncs           float64       // the disk's fsyncs per second just before, if measured
	syncWait, syncs  histogram     // serve with group sync: the waits for a sync, and the syncs, during res
	diskUnderLoad    fsyncStats    // serve at sync=always, paced: the disk's fsync latency sampled during res
	exitErr          error
}

func (m *measurement) cpuPerReq() time.Duration {
	if m.res.OK == 0 {
		return 0
	}
	return m.cpu / time.Duration(m.res.OK)
}

func (m *measurement) genPerReq() time.Duration {
	if m.res.OK == 0 {
		return 0
	}
	return m.genCPU / time.Duration(m.res.OK)
}

func (m *measurement) cores() float64 { return m.cpu.Seconds() / m.res.Elapsed.Seconds() }

// problems lists what makes the measurement invalid.
func (m *measurement) problems(name string) []string {
	var p []string
	for _, r := range []*loadgen.Result{m.warm, m.res} {
		if n := r.Failed(); n > 0 {
			p = append(p, fmt.Sprintf("%s: %d of %d requests not answered 202 (statuses %v, first error %v)", name, n, r.Sent, r.Status, r.FirstError))
		}
		if r.Duplicates > 0 {
			p = append(p, fmt.Sprintf("%s: %d answers were duplicates, but every session ID was new", name, r.Duplicates))
		}
	}
	if m.stored != m.accepted {
		p = append(p, fmt.Sprintf("%s: the webhooks stream holds %d messages, but %d webhooks were accepted", name, m.stored, m.accepted))
	}
	if m.exitErr != nil {
		p = append(p, fmt.Sprintf("%s: %v", name, m.exitErr))
	}
	return p
}

// measure starts a fresh process for t, warms it up, measures one run and
// stops it gracefully.
func measure(ctx context.Context, env benchEnv, t *target, opts loadgen.Options, warmup time.Duration, run uint32) (*measurement, error) {
	t.runs++
	slug := strings.NewReplacer(" ", "", ",", "-", "=", "-", "(", "", ")", "").Replace(t.name) + "-" + strconv.Itoa(t.runs)
	p, err := start(ctx, env, t, filepath.Join(env.tmp, slug))
	if err != nil {
		return nil, err
	}
	defer p.kill()
	if err := p.waitReady(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, p.logTail())
	}

	// serve: a client of the embedded server (ingest: of its NATS server),
	// to count what was stored.
	var js jetstream.JetStream
	if p.natsURL != "" {
		nc, err := nats.Connect(p.natsURL)
		if err != nil {
			return nil, fmt.Errorf("nats: %w", err)
		}
		defer nc.Close()
		if js, err = jetstream.New(nc); err != nil {
			return nil, err
		}
	}

	wh := loadgen.Webhooks{Host: p.addr, APIKey: env.apiKey, Run: run<<24 | uint32(t.runs)<<16}
	opts.Addr, opts.Request = p.addr, wh.Append
	warmOpts := opts
	warmOpts.Duration = warmup
	m := &measurement{}
	if m.warm, err = loadgen.Run(ctx, warmOpts); err != nil {
		return nil, err
	}
	opts.First = m.warm.Next

	var before []int
	if js != nil {
		if before, err = streamMsgs(ctx, js, streams.Results); err != nil {
			return nil, err
		}
	}
	cpu0, err := loadgen.ProcCPU(p.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	var nats0 time.Duration
	if p.natsProc != nil {
		if nats0, err = loadgen.ProcCPU(p.natsProc.cmd.Process.Pid); err != nil {
			return nil, err
		}
	}
	gen0, err := loadgen.ProcCPU(os.Getpid())
	if err != nil {
		return nil, err
	}
	wait0, _ := scrapeHistogram(ctx, p.addr, syncWaitMetric) // none but serve at sync=always has it
	syncs0, _ := scrapeHistogram(ctx, p.addr, syncMetric)
	// serve syncing every write, paced: the disk's fsync latency while the
	// target works, sampled beside it (one small append + fsync every 10 ms).
	var sampled chan fsyncStats
	stopSampling := func() {}
	if t.sync == "always" && opts.Rate > 0 {
		sctx, cancel := context.WithCancel(ctx)
		sampled = make(chan fsyncStats, 1)
		go func() { sampled <- fsyncSampler(sctx, env.tmp, 10*time.Millisecond) }()
		stopSampling = cancel
	}
	m.res, err = loadgen.Run(ctx, opts)
	stopSampling()
	if sampled != nil {
		m.diskUnderLoad = <-sampled
	}
	if err != nil {
		return nil, err
	}
	if wait1, err := scrapeHistogram(ctx, p.addr, syncWaitMetric); err == nil {
		m.syncWait = wait1.minus(wait0)
	}
	if syncs1, err := scrapeHistogram(ctx, p.addr, syncMetric); err == nil {
		m.syncs = syncs1.minus(syncs0)
	}
	cpu1, err := loadgen.ProcCPU(p.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	gen1, _ := loadgen.ProcCPU(os.Getpid())
	m.cpu, m.genCPU = cpu1-cpu0, gen1-gen0
	if p.natsProc != nil {
		nats1, err := loadgen.ProcCPU(p.natsProc.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		m.natsCPU = nats1 - nats0
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	accepted := m.warm.OK - m.warm.Duplicates + m.res.OK - m.res.Duplicates
	if js != nil {
		after, err := streamMsgs(ctx, js, streams.Results, streams.Webhooks)
		if err != nil {
			return nil, err
		}
		m.outcomes, m.stored = after[0]-before[0], after[1]
		m.accepted = accepted
	}
	if err := p.stop(30 * time.Second); err != nil {
		m.exitErr = fmt.Errorf("%w\n%s", err, p.logTail())
	}
	if t.natsDown {
		// Everything answered 202 must be in the spool the process left.
		if m.stored, err = spooled(ctx, filepath.Join(p.dataDir, "spool")); err != nil {
			return nil, err
		}
		m.accepted = accepted
	}
	return m, nil
}

// spooled opens a stopped ingest's spool directory and counts its events.
func spooled(ctx context.Context, dir string) (int, error) {
	ns, err := natsembed.Start(natsembed.Options{StoreDir: dir, Addr: "-"})
	if err != nil {
		return 0, fmt.Errorf("open spool %s: %w", dir, err)
	}
	defer natsembed.Shutdown(ns)
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	n, err := streamMsgs(ctx, js, streams.Spool)
	if err != nil {
		return 0, err
	}
	return n[0], nil
}

// streamMsgs returns the number of messages on each of names.
func streamMsgs(ctx context.Context, js jetstream.JetStream, names ...string) ([]int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out := make([]int, len(names))
	for i, name := range names {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		out[i] = int(info.State.Msgs)
	}
	return out, nil
}

// process is a started target.
type process struct {
	cmd      *exec.Cmd
	addr     string // HTTP host:port, known once waitReady returns
	startMsg string // the message of the log line that reports addr
	embedded bool   // serve: waitReady reads natsURL from DATA_DIR/nats.url
	natsURL  string // the embedded server's URL (serve, once waitReady returns), or ingest's NATS server's
	dataDir  string
	ns       *server.Server // ingest: the NATS server run for it
	natsProc *natsProcess   // plain, and ingest with extNATS: the nats-server process run for it
	logPath  string
	done     chan struct{}
	waitErr  error
}

func start(ctx context.Context, env benchEnv, t *target, dir string) (*process, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// The process binds port 0 and logs the address it got (waitReady reads
	// it), unless LOG_LEVEL drops that line: then it gets an address that was
	// free a moment ago.
	p := &process{dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "log"), done: make(chan struct{}), startMsg: "verifeye-bridge started"}
	addr := "127.0.0.1:0"
	var err error
	switch {
	case t.ceiling:
		p.startMsg = ceilingStarted // logged at any level
	case t.plain:
		p.startMsg = plainStarted // its only log line
	case !startLineLogged(env.logLevel):
		if addr, err = freeAddr(); err != nil {
			return nil, err
		}
		p.addr = addr
	}
	// Only what the process needs: no NATS_URL or other setting leaks in from
	// the caller's environment.
	vars := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	if env.gomaxprocs > 0 {
		vars = append(vars, "GOMAXPROCS="+strconv.Itoa(env.gomaxprocs))
	}
	switch {
	case t.ceiling:
		p.cmd = exec.Command(env.self, "-role=ceiling", "-addr="+addr, "-api-key="+env.apiKey, "-log-level="+env.logLevel)
	case t.plain:
		if p.natsProc, err = startNATSProcess(ctx, env.self, filepath.Join(dir, "nats")); err != nil {
			return nil, err
		}
		p.natsURL = p.natsProc.url
		p.cmd = exec.Command(env.self, "-role=plain", "-addr="+addr, "-nats-url="+p.natsURL)
	case t.ingest:
		natsURL := "nats://"
		if t.extNATS {
			if p.natsProc, err = startNATSProcess(ctx, env.self, filepath.Join(dir, "nats")); err != nil {
				return nil, err
			}
			natsURL = p.natsProc.url
			p.natsURL = natsURL
		} else if t.natsDown {
			// Nothing listens there: every publish fails at once. A closed
			// port is what "down" means, so it is picked ahead.
			down, err := freeAddr()
			if err != nil {
				return nil, err
			}
			natsURL += down
		} else {
			p.ns, err = natsembed.Start(natsembed.Options{StoreDir: filepath.Join(dir, "nats"), SyncInterval: time.Second})
			if err != nil {
				return nil, err
			}
			natsURL += p.ns.Addr().String()
			p.natsURL = natsURL
		}
		p.cmd = exec.Command(env.bin, "ingest")
		vars = append(vars,
			"HTTP_ADDR="+addr,
			"NATS_URL="+natsURL,
			"DATA_DIR="+p.dataDir,
			"SPOOL="+t.spool,
			"SHUTDOWN_GRACE=2s",
			"VERIFEYE_API_KEY="+env.apiKey,
			"LOG_LEVEL="+env.logLevel,
		)
	default:
		p.cmd, p.embedded = exec.Command(env.bin, "serve"), true
		vars = append(vars,
			"HTTP_ADDR="+addr,
			"NATS_EMBEDDED_ADDR=127.0.0.1:0", // waitReady reads DATA_DIR/nats.url
			"DATA_DIR="+filepath.Join(dir, "data"),
			"NATS_EMBEDDED_SYNC="+t.sync,
			"API_ADDR=-", // the internal API's fixed default port may be taken; nothing here uses it
			"VERIFEYE_API_KEY="+env.apiKey,
			"VERIFEYE_API_URL="+env.apiURL,
			"LOG_LEVEL="+env.logLevel,
		)
	}
	if t.batch != "" {
		vars = append(vars, "INGEST_BATCH="+t.batch)
	}
	p.cmd.Env = append(vars, t.env...)
	logf, err := os.Create(p.logPath)
	if err != nil {
		p.stopNATS()
		return nil, err
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		p.stopNATS()
		return nil, err
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		logf.Close()
		p.stopNATS()
		close(p.done)
	}()
	return p, nil
}

// stopNATS stops the NATS server run for an ingest or the plain bridge, if any.
func (p *process) stopNATS() {
	if p.ns != nil {
		natsembed.Shutdown(p.ns)
	}
	if p.natsProc != nil {
		p.natsProc.stop()
	}
}

// freeAddr returns a loopback address that was free a moment ago and is
// closed now: for a NATS that must be down, and for HTTP_ADDR when LOG_LEVEL
// hides the line that reports the port a process got.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startLineLogged reports whether a process at LOG_LEVEL level logs its
// "verifeye-bridge started" line (an info line).
func startLineLogged(level string) bool {
	switch strings.ToLower(level) {
	case "trace", "debug", "info":
		return true
	}
	return false
}

// startedAddr returns the http_addr of the first line of the JSON log at path
// whose message is msg, or "" if there is none yet.
func startedAddr(path, msg string) string {
	b, _ := os.ReadFile(path)
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		var l struct {
			Message  string `json:"message"`
			HTTPAddr string `json:"http_addr"`
		}
		if json.Unmarshal(line, &l) == nil && l.Message == msg && l.HTTPAddr != "" {
			return l.HTTPAddr
		}
	}
	return ""
}

// waitReady learns the process's HTTP address from its start line (unless
// it was picked ahead), polls GET /readyz until it answers 200 and then, for
// serve, reads its embedded NATS server's URL.
func (p *process) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for p.addr == "" {
		if p.addr = startedAddr(p.logPath, p.startMsg); p.addr != "" {
			break
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before it was ready: %v", p.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q line with http_addr within %v", p.startMsg, timeout)
		}
	}
	for {
		select {
		case <-p.done:
			return fmt.Errorf("exited before it was ready: %v", p.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := client.Get("http://" + p.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p.readNATSURL()
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readNATSURL reads serve's DATA_DIR/nats.url (written before it serves):
// the embedded server's address, the port it got, and its credentials.
func (p *process) readNATSURL() error {
	if !p.embedded {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(p.dataDir, "nats.url"))
	if err != nil {
		return fmt.Errorf("the embedded server's URL: %w", err)
	}
	p.natsURL = strings.TrimSpace(string(b))
	return nil
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop(timeout time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.waitErr != nil {
			return fmt.Errorf("exit after SIGTERM: %w", p.waitErr)
		}
		return nil
	case <-time.After(timeout):
		p.kill()
		return errors.New("did not exit within " + timeout.String() + " of SIGTERM")
	}
}

// kill ends the process if it still runs, and waits for it.
func (p *process) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logTail returns the end of the process's log.
func (p *process) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}
