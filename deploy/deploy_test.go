// Package deploy_test checks the deployment files (Dockerfile, compose,
// Kubernetes, NATS configs) against the program they deploy: the image's build
// line is run as written, and every environment variable, subcommand, port,
// probe path, label and image name in the manifests is checked against what the
// program really reads and serves.
package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
)

// root is the module root; tests run in deploy/.
const root = ".."

// cmdDir is the program's package.
var cmdDir = filepath.Join(root, "cmd", "verifeye-bridge")

// bridgeImage is the image repository of the program, everywhere it is named.
const bridgeImage = "ghcr.io/realeyes/verifeye-bridge"

// runtimeEnv are variables read by the Go runtime rather than by the program.
var runtimeEnv = map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true, "GODEBUG": true, "GOGC": true}

// tempDirs are removed by TestMain; the image binary outlives a single test.
var (
	tempMu   sync.Mutex
	tempDirs []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	tempMu.Lock()
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	tempMu.Unlock()
	os.Exit(code)
}

// programEnv returns every environment variable the program reads, with its
// defaults (one per struct that reads it), parsed from the envconfig struct tags
// of cmd/verifeye-bridge.
func programEnv(t *testing.T) map[string][]string {
	t.Helper()
	fset := token.NewFileSet()
	matches, err := filepath.Glob(filepath.Join(cmdDir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	vars := make(map[string][]string)
	for _, path := range matches {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatalf("parse %s: %v", path, err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			field, ok := n.(*ast.Field)
			if !ok || field.Tag == nil {
				return true
			}
			raw, err := strconv.Unquote(field.Tag.Value)
			if err != nil {
				return true
			}
			tag := reflect.StructTag(raw)
			if name, ok := tag.Lookup("envconfig"); ok {
				if def := tag.Get("default"); !slices.Contains(vars[name], def) {
					vars[name] = append(vars[name], def)
				}
			}
			return true
		})
	}
	if len(vars) < 10 {
		t.Fatalf("programEnv: found only %d envconfig variables in %s; is the parser still right?", len(vars), cmdDir)
	}
	return vars
}

// programCommands returns the subcommand names of commands() in run.go.
func programCommands(t *testing.T) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(cmdDir, "run.go"), nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	cmds := make(map[string]bool)
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "commands" {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok || len(lit.Elts) == 0 {
				return true
			}
			if s, ok := lit.Elts[0].(*ast.BasicLit); ok && s.Kind == token.STRING {
				name, _ := strconv.Unquote(s.Value)
				cmds[name] = true
			}
			return true
		})
	}
	for _, want := range []string{"serve", "ingest", "enrich", "healthcheck", "simulator", "version"} {
		if !cmds[want] {
			t.Fatalf("programCommands: %q missing from commands() in run.go (found %v)", want, cmds)
		}
	}
	return cmds
}

// helpEnv runs `bin cmd --help` and returns the environment variables it lists:
// exactly those the subcommand reads.
func helpEnv(t *testing.T, bin, cmd string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, cmd, "--help").Output()
	if err != nil {
		t.Fatalf("%s %s --help: %v", bin, cmd, err)
	}
	vars := make(map[string]bool)
	in := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Environment") {
			in = true
			continue
		}
		if in {
			if f := strings.Fields(line); len(f) > 0 {
				vars[f[0]] = true
			}
		}
	}
	if len(vars) == 0 {
		t.Fatalf("%s --help lists no environment variables:\n%s", cmd, out)
	}
	return vars
}

// checkEnv reports every variable of env that subcommand cmd does not read. bin
// may be empty (under -short): then only the program-wide list is used.
func checkEnv(t *testing.T, where, cmd string, env map[string]string, prog map[string][]string, bin string) {
	t.Helper()
	var perCmd map[string]bool
	if bin != "" {
		perCmd = helpEnv(t, bin, cmd)
	}
	for _, name := range sortedKeys(env) {
		switch {
		case runtimeEnv[name]:
		case perCmd != nil && !perCmd[name]:
			t.Errorf("%s: sets %s, which `verifeye-bridge %s` does not read (see its --help)", where, name, cmd)
		case prog[name] == nil:
			t.Errorf("%s: sets %s, which verifeye-bridge does not read", where, name)
		}
	}
}

// httpPort returns the port of the HTTP_ADDR in env, or of its default.
func httpPort(t *testing.T, env map[string]string, prog map[string][]string) int {
	t.Helper()
	addr, ok := env["HTTP_ADDR"]
	if !ok {
		if defs := prog["HTTP_ADDR"]; len(defs) == 1 {
			addr = defs[0]
		} else {
			t.Fatalf("HTTP_ADDR is not set and its default is not one value: %q", defs)
		}
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("HTTP_ADDR %q: %v", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("HTTP_ADDR %q: %v", addr, err)
	}
	return p
}

// natsHosts splits a NATS_URL into host:port pairs.
func natsHosts(t *testing.T, natsURL string) []string {
	t.Helper()
	var hosts []string
	for _, s := range strings.Split(natsURL, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.Scheme != "nats" || u.Port() == "" {
			t.Errorf("NATS_URL %q: %q is not nats://host:port", natsURL, s)
			continue
		}
		hosts = append(hosts, u.Host)
	}
	return hosts
}

// readYAML decodes every document of path.
func readYAML(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decodeYAML(t, path, b)
}

func decodeYAML(t *testing.T, name string, b []byte) []map[string]any {
	t.Helper()
	var docs []map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	return docs
}

// get walks a decoded YAML tree by keys (map keys, or list indexes as ints).
func get(v any, path ...any) any {
	for _, k := range path {
		switch key := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[key]
		case int:
			l, ok := v.([]any)
			if !ok || key >= len(l) {
				return nil
			}
			v = l[key]
		}
	}
	return v
}

func str(v any, path ...any) string {
	switch x := get(v, path...).(type) {
	case string:
		return x
	case nil:
		return ""
	default:
		return fmt.Sprint(x)
	}
}

func list(v any, path ...any) []any {
	l, _ := get(v, path...).([]any)
	return l
}

func dict(v any, path ...any) map[string]any {
	m, _ := get(v, path...).(map[string]any)
	return m
}

// stringMap converts a YAML mapping of scalars.
func stringMap(m map[string]any) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = str(v)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// imageRepo strips the tag (and digest) from an image reference.
func imageRepo(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// goTool returns the go command that runs these tests.
func goTool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the image binary with")
	}
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// varRE matches a shell or Dockerfile variable reference.
var varRE = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)
