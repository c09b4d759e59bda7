package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/realeyes/verifeye-bridge/internal/natstest"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	stage int // index of its FROM stage; -1 before the first FROM
	cmd   string
	args  string
	line  int
}

func readDockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		out   []instruction
		cur   strings.Builder
		start int
		stage = -1
		n     int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, instruction{stage: stage, cmd: cmd, args: strings.Join(strings.Fields(args), " "), line: start})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// dockerBuild is what the Dockerfile's go build step does.
type dockerBuild struct {
	script string            // the shell command of the RUN line, flags removed
	args   map[string]string // the ARGs of its stage, with their defaults
	output string            // the -o path
	stage  int
}

var kvRE = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_.-]*)=("([^"]*)"|\S*)`)

// pairs parses KEY=value KEY="value" lists (ARG, ENV, LABEL).
func pairs(s string) map[string]string {
	m := make(map[string]string)
	for _, g := range kvRE.FindAllStringSubmatch(s, -1) {
		v := g[2]
		if strings.HasPrefix(v, `"`) {
			v = g[3]
		}
		m[g[1]] = v
	}
	return m
}

func findBuild(t *testing.T, ins []instruction) dockerBuild {
	t.Helper()
	var b dockerBuild
	found := 0
	for _, in := range ins {
		if in.cmd != "RUN" || !strings.Contains(in.args, " go build ") {
			continue
		}
		found++
		script := in.args
		for strings.HasPrefix(script, "--") {
			_, script, _ = strings.Cut(script, " ")
		}
		b.script, b.stage = script, in.stage
		f := strings.Fields(script)
		for i := range f {
			if f[i] == "-o" && i+1 < len(f) {
				b.output = f[i+1]
			}
		}
	}
	if found != 1 {
		t.Fatalf("Dockerfile: want exactly one RUN with `go build`, found %d", found)
	}
	b.args = make(map[string]string)
	for _, in := range ins {
		if in.stage == b.stage && in.cmd == "ARG" {
			for _, a := range strings.Fields(in.args) {
				k, v, _ := strings.Cut(a, "=")
				b.args[k] = v
			}
		}
	}
	return b
}

// TestDockerfile checks the Dockerfile's promises without Docker: the build
// line, the distroless non-root final stage, and that ENTRYPOINT, CMD,
// HEALTHCHECK, ENV, EXPOSE and the labels name what the program has.
func TestDockerfile(t *testing.T) {
	ins := readDockerfile(t)
	prog := programEnv(t)
	cmds := programCommands(t)
	b := findBuild(t, ins)

	if !regexp.MustCompile(`(^|\s)CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main\.version=\$\{VERSION\}" -o \S+ \./cmd/verifeye-bridge$`).MatchString(b.script) {
		t.Errorf("Dockerfile build line = %q; want CGO_ENABLED=0 go build -trimpath -ldflags \"-s -w -X main.version=${VERSION}\" -o <out> ./cmd/verifeye-bridge", b.script)
	}
	for _, m := range varRE.FindAllStringSubmatch(b.script, -1) {
		if _, ok := b.args[m[1]]; !ok {
			t.Errorf("Dockerfile build line uses ${%s}, which is no ARG of its stage (Docker would leave it empty)", m[1])
		}
	}

	final := ins[len(ins)-1].stage
	var (
		from, user, entry, cmd, health, copyDst string
		env                                     = map[string]string{}
		labels                                  = map[string]string{}
		volumes, exposed                        []string
	)
	for _, in := range ins {
		if in.stage != final {
			continue
		}
		switch in.cmd {
		case "FROM":
			from = in.args
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entry = in.args
		case "CMD":
			cmd = in.args
		case "HEALTHCHECK":
			health = in.args
		case "ENV":
			for k, v := range pairs(in.args) {
				env[k] = v
			}
		case "LABEL":
			for k, v := range pairs(in.args) {
				labels[k] = v
			}
		case "VOLUME":
			volumes = append(volumes, strings.Fields(in.args)...)
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		case "COPY":
			f := strings.Fields(in.args)
			if len(f) >= 2 && f[len(f)-2] == b.output {
				copyDst = f[len(f)-1]
			}
		}
	}
	if from != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("final stage FROM %q; want gcr.io/distroless/static-debian12:nonroot (CA certificates, non-root, no shell)", from)
	}
	if user != "65532:65532" && user != "nonroot" && user != "nonroot:nonroot" {
		t.Errorf("final stage USER %q; want the distroless nonroot user", user)
	}
	if copyDst != "/usr/local/bin/verifeye-bridge" {
		t.Errorf("the binary %s is copied to %q; want /usr/local/bin/verifeye-bridge (on distroless's PATH)", b.output, copyDst)
	}

	execForm := func(kw, s string) []string {
		var v []string
		if err := json.Unmarshal([]byte(s), &v); err != nil || len(v) == 0 {
			t.Errorf("%s %s: want the exec (JSON) form: the image has no shell", kw, s)
		}
		return v
	}
	if e := execForm("ENTRYPOINT", entry); len(e) != 1 || e[0] != filepath.Base(copyDst) {
		t.Errorf("ENTRYPOINT %v; want [%q]", e, filepath.Base(copyDst))
	}
	if c := execForm("CMD", cmd); len(c) == 0 || !cmds[c[0]] {
		t.Errorf("CMD %v; want a subcommand of verifeye-bridge", c)
	}
	_, hc, ok := strings.Cut(health, "CMD ")
	if h := execForm("HEALTHCHECK", hc); !ok || len(h) < 2 || h[0] != "verifeye-bridge" || h[1] != "healthcheck" || !cmds[h[1]] {
		t.Errorf("HEALTHCHECK %q; want CMD [\"verifeye-bridge\", \"healthcheck\", ...]", health)
	}

	for _, k := range sortedKeys(env) {
		if prog[k] == nil {
			t.Errorf("ENV %s: verifeye-bridge does not read it", k)
		}
	}
	if env["DATA_DIR"] == "" || !contains(volumes, env["DATA_DIR"]) {
		t.Errorf("ENV DATA_DIR=%q, VOLUME %v: want the data directory to be the volume", env["DATA_DIR"], volumes)
	}
	if want := strconv.Itoa(httpPort(t, env, prog)); !contains(exposed, want) && !contains(exposed, want+"/tcp") {
		t.Errorf("EXPOSE %v; want the HTTP_ADDR port %s", exposed, want)
	}

	mod := modulePath(t)
	for k, want := range map[string]string{
		"org.opencontainers.image.source":  "https://" + mod,
		"org.opencontainers.image.title":   "verifeye-bridge",
		"org.opencontainers.image.version": "${VERSION}",
	} {
		if labels[k] != want {
			t.Errorf("LABEL %s=%q; want %q", k, labels[k], want)
		}
	}
	if owner, repo, _ := strings.Cut(strings.TrimPrefix(mod, "github.com/"), "/"); bridgeImage != "ghcr.io/"+owner+"/"+repo {
		t.Errorf("image name %s does not follow the module path %s", bridgeImage, mod)
	}
	if ga := globalArg(ins, "GO_VERSION"); !strings.HasPrefix(goDirective(t), ga+".") {
		t.Errorf("ARG GO_VERSION=%s, but go.mod says go %s", ga, goDirective(t))
	}
}

func contains(l []string, s string) bool {
	for _, v := range l {
		if v == s {
			return true
		}
	}
	return false
}

func globalArg(ins []instruction, name string) string {
	for _, in := range ins {
		if in.stage == -1 && in.cmd == "ARG" {
			if k, v, _ := strings.Cut(in.args, "="); k == name {
				return v
			}
		}
	}
	return ""
}

func goModLine(t *testing.T, prefix string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("go.mod: no %q line", prefix)
	return ""
}

func modulePath(t *testing.T) string  { return goModLine(t, "module ") }
func goDirective(t *testing.T) string { return goModLine(t, "go ") }

// ignoreRule is one .dockerignore line.
type ignoreRule struct {
	re     *regexp.Regexp
	negate bool
}

// readDockerignore reads the rules with Docker's matching: * within one path
// element, ** across any number, and a matched directory excludes what is in it.
func readDockerignore(t *testing.T) []ignoreRule {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var rules []ignoreRule
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		r := ignoreRule{}
		if p, ok := strings.CutPrefix(l, "!"); ok {
			r.negate, l = true, p
		}
		l = strings.TrimPrefix(filepath.ToSlash(filepath.Clean(l)), "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(l); i++ {
			switch c := l[i]; {
			case c == '*' && i+1 < len(l) && l[i+1] == '*':
				i++
				if i+1 < len(l) && l[i+1] == '/' {
					i++
					re.WriteString("(.*/)?")
				} else {
					re.WriteString(".*")
				}
			case c == '*':
				re.WriteString("[^/]*")
			case c == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		re.WriteString("(/.*)?$")
		r.re = regexp.MustCompile(re.String())
		rules = append(rules, r)
	}
	return rules
}

func ignored(rules []ignoreRule, rel string) bool {
	ex := false
	for _, r := range rules {
		if r.re.MatchString(rel) {
			ex = !r.negate
		}
	}
	return ex
}

// TestDockerignore checks that no file the build reads (every Go and embedded
// file of every package of the binary, go.mod, go.sum) is left out of the
// Docker build context.
func TestDockerignore(t *testing.T) {
	rules := readDockerignore(t)
	for _, tc := range []struct {
		path string
		want bool
	}{
		{"deploy/deploy_test.go", true},
		{"bridge/testdata/fuzz/FuzzParseWebhook/1", true},
		{".git/HEAD", true},
		{"go.mod", false},
		{"cmd/verifeye-bridge/main.go", false},
	} {
		if got := ignored(rules, tc.path); got != tc.want {
			t.Errorf("ignored(.dockerignore, %q) = %v; want %v", tc.path, got, tc.want)
		}
	}

	cmd := exec.Command(goTool(t), "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{.Dir}}|{{join .GoFiles ","}}|{{join .EmbedFiles ","}}{{end}}{{end}}`,
		"./cmd/verifeye-bridge")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"go.mod", "go.sum"}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.Split(l, "|")
		if len(parts) != 3 {
			continue
		}
		dir, err := filepath.Rel(abs, parts[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range append(strings.Split(parts[1], ","), strings.Split(parts[2], ",")...) {
			if f != "" {
				files = append(files, filepath.ToSlash(filepath.Join(dir, f)))
			}
		}
	}
	if len(files) < 10 {
		t.Fatalf("go list found only %d files of the build:\n%s", len(files), out)
	}
	for _, f := range files {
		if ignored(rules, f) {
			t.Errorf(".dockerignore excludes %s, which the build needs", f)
		}
	}
}

var (
	imageOnce sync.Once
	imageBin  string
	imageErr  error
)

// imageVersion is stamped into the test build through the Dockerfile's VERSION ARG.
const imageVersion = "v0.0.0-imagetest"

// buildImageBinary runs the Dockerfile's go build line, as written, in a shell
// with the stage's ARGs set as Docker sets them, writing to a temporary
// directory instead of /out. It builds once per test run.
func buildImageBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary with the Dockerfile's build line; skipped with -short")
	}
	imageOnce.Do(func() {
		b := findBuild(t, readDockerfile(t))
		dir, err := os.MkdirTemp("", "verifeye-image-")
		if err != nil {
			imageErr = err
			return
		}
		tempMu.Lock()
		tempDirs = append(tempDirs, dir)
		tempMu.Unlock()
		outDir := filepath.Dir(b.output)
		script := strings.ReplaceAll(b.script, outDir+"/", dir+"/")
		env := append(os.Environ(), "PATH="+filepath.Dir(goTool(t))+string(os.PathListSeparator)+os.Getenv("PATH"))
		for k, v := range b.args {
			env = append(env, k+"="+v)
		}
		env = append(env, "TARGETOS="+runtime.GOOS, "TARGETARCH="+runtime.GOARCH, "VERSION="+imageVersion)
		cmd := exec.Command("sh", "-c", script)
		cmd.Dir = root
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			imageErr = fmt.Errorf("sh -c %q: %v\n%s", script, err, out)
			return
		}
		imageBin = filepath.Join(dir, filepath.Base(b.output))
	})
	if imageErr != nil {
		t.Fatalf("build with the Dockerfile's line: %v", imageErr)
	}
	if imageBin == "" {
		t.Fatal("the build with the Dockerfile's line failed in an earlier test")
	}
	return imageBin
}

// TestImageBuild runs the Dockerfile's build line and checks that the binary
// runs on distroless/static: no dynamic loader, no shared libraries; stripped,
// without local paths, and stamped with the version.
func TestImageBuild(t *testing.T) {
	bin := buildImageBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("elf: %v", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a PT_INTERP program header: dynamically linked, it cannot run on distroless/static", bin)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v (err %v); want none", bin, libs, err)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table; -ldflags -s should strip it", bin)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(root)
	if bytes.Contains(data, []byte(abs+"/")) {
		t.Errorf("%s contains the build directory %s; -trimpath should remove it", bin, abs)
	}

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "verifeye-bridge "+imageVersion) {
		t.Errorf("%s version = %q, %v; want it to start with %q", bin, out, err, "verifeye-bridge "+imageVersion)
	}
}

// runBin runs bin with args and env only (plus PATH), returning the exit code.
func runBin(t *testing.T, bin string, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return code, o.String(), e.String()
}

// TestImageHealthcheck runs the image's HEALTHCHECK command against a server
// that is ready, one that is not, and nothing at all.
func TestImageHealthcheck(t *testing.T) {
	bin := buildImageBinary(t)
	ready := http.NewServeMux()
	ready.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"status":"ready"}`) })
	readySrv := httptest.NewServer(ready)
	defer readySrv.Close()
	unready := http.NewServeMux()
	unready.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	unready.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"status":"ok"}`) })
	unreadySrv := httptest.NewServer(unready)
	defer unreadySrv.Close()
	_, readyPort, _ := net.SplitHostPort(readySrv.Listener.Addr().String())
	// A closed port: nothing must listen there.
	nothing := "127.0.0.1:" + strconv.Itoa(natstest.FreePort(t))

	for _, tc := range []struct {
		name     string
		httpAddr string
		args     []string
		want     int
	}{
		{"ready", readySrv.Listener.Addr().String(), nil, 0},
		{"ready, host left out of HTTP_ADDR", ":" + readyPort, nil, 0},
		{"ready, 0.0.0.0 in HTTP_ADDR", "0.0.0.0:" + readyPort, nil, 0},
		{"not ready", unreadySrv.Listener.Addr().String(), nil, 1},
		{"not ready but alive, --path /healthz", unreadySrv.Listener.Addr().String(), []string{"--path", "/healthz"}, 0},
		{"no path on the server", readySrv.Listener.Addr().String(), []string{"--path", "/healthz"}, 1},
		{"nothing listening", nothing, nil, 1},
		{"bad HTTP_ADDR", "nonsense", nil, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runBin(t, bin, []string{"HTTP_ADDR=" + tc.httpAddr}, append([]string{"healthcheck"}, tc.args...)...)
			if code != tc.want {
				t.Fatalf("HTTP_ADDR=%s healthcheck %v: exit %d; want %d (stdout %q, stderr %q)", tc.httpAddr, tc.args, code, tc.want, stdout, stderr)
			}
			out := stdout
			if code != 0 {
				out = stderr
			}
			if n := strings.Count(out, "\n"); n != 1 || stdout != "" && stderr != "" {
				t.Errorf("healthcheck %v: want one line on one stream; got stdout %q, stderr %q", tc.args, stdout, stderr)
			}
		})
	}
}

// TestImageSimulator runs the compose file's VerifEye stand-in the way the
// container does, checks it with the image's HEALTHCHECK, asks it for a result
// and stops it with SIGTERM.
func TestImageSimulator(t *testing.T) {
	bin := buildImageBinary(t)
	// Port 0: the simulator's start line (a warning) says which port it got.
	cmd := exec.Command(bin, "simulator")
	cmd.Env = []string{"HTTP_ADDR=127.0.0.1:0", "VERIFEYE_API_KEY=sim-key", "LOG_LEVEL=warn"}
	var logs natstest.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
	}()

	var addr string
	natstest.WaitFor(t, 15*time.Second, func() error {
		for _, l := range strings.Split(logs.String(), "\n") {
			var line struct {
				Message  string `json:"message"`
				HTTPAddr string `json:"http_addr"`
			}
			if json.Unmarshal([]byte(l), &line) == nil && strings.HasPrefix(line.Message, "VerifEye SIMULATOR started") && line.HTTPAddr != "" {
				addr = line.HTTPAddr
				return nil
			}
		}
		return fmt.Errorf("no start line with http_addr yet; logs:\n%s", logs.String())
	})
	natstest.WaitFor(t, 15*time.Second, func() error {
		if code, _, stderr := runBin(t, bin, []string{"HTTP_ADDR=" + addr}, "healthcheck"); code != 0 {
			return fmt.Errorf("healthcheck: exit %d: %s", code, stderr)
		}
		return nil
	})

	get := func(key string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/verification/get-session-result?verificationSessionId=3f2a9c1e-0000-4000-8000-fa11ed000001", nil)
		if key != "" {
			req.Header.Set("Authorization", "ApiKey "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	if code, body := get("sim-key"); code != http.StatusOK || body["verificationResult"] != "failed" {
		t.Errorf("simulator GET with the key: %d %v; want 200 with verificationResult failed", code, body)
	}
	if code, _ := get("wrong"); code != http.StatusUnauthorized {
		t.Errorf("simulator GET with a wrong key: %d; want 401", code)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("simulator after SIGTERM: %v; want exit 0\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("simulator did not stop within 15s of SIGTERM\n%s", logs.String())
	}
}
