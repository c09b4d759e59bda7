package deploy_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var kubeDir = filepath.Join("kubernetes")

// kubeObject is one Kubernetes manifest.
type kubeObject struct {
	kind, name string
	raw        map[string]any
}

func (o kubeObject) String() string { return o.kind + "/" + o.name }

func kubeObjects(docs []map[string]any) []kubeObject {
	var objs []kubeObject
	for _, d := range docs {
		objs = append(objs, kubeObject{kind: str(d, "kind"), name: str(d, "metadata", "name"), raw: d})
	}
	return objs
}

// readBase reads the files of the base kustomization, and checks that it lists
// every manifest in its directory.
func readBase(t *testing.T) []kubeObject {
	t.Helper()
	dir := filepath.Join(kubeDir, "base")
	k := readYAML(t, filepath.Join(dir, "kustomization.yaml"))
	var listed []string
	var docs []map[string]any
	for _, r := range list(k[0], "resources") {
		listed = append(listed, str(r))
		docs = append(docs, readYAML(t, filepath.Join(dir, str(r)))...)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(listed, b) {
			t.Errorf("%s is not listed in the base kustomization's resources", f)
		}
	}
	return kubeObjects(docs)
}

// matches reports whether every label of sel is on labels (an empty selector
// matches nothing here: the manifests never mean "every pod").
func matches(sel, labels map[string]any) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if str(labels, k) != str(v) {
			return false
		}
	}
	return true
}

// TestKubernetes checks the kustomize base, and the example overlay as
// kustomize renders it (when kubectl is installed), against the program and
// against themselves.
func TestKubernetes(t *testing.T) {
	prog := programEnv(t)
	cmds := programCommands(t)
	var bin string
	if !testing.Short() {
		bin = buildImageBinary(t)
	}
	natsReplicas := checkNATSValues(t)

	t.Run("base", func(t *testing.T) {
		checkKube(t, readBase(t), prog, cmds, bin, natsReplicas)
	})
	t.Run("overlays/example", func(t *testing.T) {
		kubectl, err := exec.LookPath("kubectl")
		if err != nil {
			t.Skip("kubectl not installed: cannot render the overlay with kustomize")
		}
		out, err := exec.Command(kubectl, "kustomize", filepath.Join(kubeDir, "overlays", "example")).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl kustomize overlays/example: %v\n%s", err, out)
		}
		objs := kubeObjects(decodeYAML(t, "kustomize output", out))
		checkKube(t, objs, prog, cmds, bin, natsReplicas)
		for _, o := range objs {
			if ns := str(o.raw, "metadata", "namespace"); ns == "" {
				t.Errorf("overlay: %s has no namespace", o)
			}
			for _, c := range list(o.raw, "spec", "template", "spec", "containers") {
				if img := str(c, "image"); strings.HasSuffix(img, ":latest") || !strings.Contains(img, ":") {
					t.Errorf("overlay: %s runs %s; want a pinned tag", o, img)
				}
			}
		}
	})
}

// checkNATSValues checks the NATS Helm values: a JetStream cluster on
// PersistentVolumeClaims. It returns the number of servers.
func checkNATSValues(t *testing.T) int {
	t.Helper()
	v := readYAML(t, filepath.Join(kubeDir, "nats", "values.yaml"))[0]
	n, _ := strconv.Atoi(str(v, "config", "cluster", "replicas"))
	for _, c := range []struct {
		path []any
		want string
	}{
		{[]any{"config", "cluster", "enabled"}, "true"},
		{[]any{"config", "jetstream", "enabled"}, "true"},
		{[]any{"config", "jetstream", "fileStore", "enabled"}, "true"},
		{[]any{"config", "jetstream", "fileStore", "pvc", "enabled"}, "true"},
	} {
		if got := str(v, c.path...); got != c.want {
			t.Errorf("nats/values.yaml %v = %q; want %q", c.path, got, c.want)
		}
	}
	if str(v, "config", "jetstream", "fileStore", "pvc", "size") == "" {
		t.Errorf("nats/values.yaml: no PVC size")
	}
	if n != 3 {
		t.Errorf("nats/values.yaml: %d servers; want 3", n)
	}
	return n
}

// natsPodRE is a pod of the NATS chart's StatefulSet (release "nats") behind
// its headless Service.
var natsPodRE = regexp.MustCompile(`^nats-(\d+)\.nats-headless(\.[a-z0-9.-]+)?:(\d+)$`)

func checkKube(t *testing.T, objs []kubeObject, prog map[string][]string, cmds map[string]bool, bin string, natsReplicas int) {
	byKind := make(map[string][]kubeObject)
	for _, o := range objs {
		byKind[o.kind] = append(byKind[o.kind], o)
		if str(o.raw, "metadata", "labels", "app.kubernetes.io/part-of") != "verifeye-bridge" {
			t.Errorf("%s: no label app.kubernetes.io/part-of: verifeye-bridge", o)
		}
	}
	grace := 25 * time.Second
	if defs := prog["SHUTDOWN_GRACE"]; len(defs) == 1 {
		grace, _ = time.ParseDuration(defs[0])
	}

	// Workloads (Deployments, and the ingest's StatefulSet): one per role, each
	// fully checked.
	type workload struct {
		obj   kubeObject
		role  string
		pod   map[string]any // template labels
		ports map[string]int // container ports by name
		env   map[string]string
	}
	var workloads []workload
	roles := map[string]bool{}
	for _, d := range append(slices.Clone(byKind["Deployment"]), byKind["StatefulSet"]...) {
		pod := dict(d.raw, "spec", "template", "metadata", "labels")
		if !matches(dict(d.raw, "spec", "selector", "matchLabels"), pod) {
			t.Errorf("%s: selector does not match its pod labels", d)
		}
		podSpec := dict(d.raw, "spec", "template", "spec")
		containers := list(podSpec, "containers")
		if len(containers) != 1 {
			t.Errorf("%s: %d containers; want 1", d, len(containers))
			continue
		}
		c := containers[0]
		w := workload{obj: d, pod: pod, ports: map[string]int{}, env: map[string]string{}}
		if img := str(c, "image"); imageRepo(img) != bridgeImage {
			t.Errorf("%s: image %s; want %s", d, img, bridgeImage)
		}
		if args := list(c, "args"); len(args) != 1 || !cmds[str(args[0])] {
			t.Errorf("%s: args %v; want one verifeye-bridge subcommand", d, args)
			continue
		}
		w.role = str(c, "args", 0)
		roles[w.role] = true
		if got := str(pod, "app.kubernetes.io/component"); got != w.role {
			t.Errorf("%s: component label %q; want %q", d, got, w.role)
		}
		for _, e := range list(c, "env") {
			name := str(e, "name")
			w.env[name] = str(e, "value")
			// NATS_PASSWORD comes from the NATS users' Secret, one key per
			// role (TestKubernetesNATSUsers).
			if ref := dict(e, "valueFrom", "secretKeyRef"); ref != nil && name != "NATS_PASSWORD" {
				if str(ref, "name") != "verifeye-bridge" || str(ref, "key") != name {
					t.Errorf("%s: %s from secret %s key %s; want secret verifeye-bridge, key %s", d, name, str(ref, "name"), str(ref, "key"), name)
				}
			}
		}
		checkEnv(t, d.String(), w.role, w.env, prog, bin)
		for _, secret := range []string{"VERIFEYE_API_KEY", "WEBHOOK_API_KEY_SHA256", "WEBHOOK_TOKEN", "NATS_PASSWORD", "NATS_TOKEN"} {
			if v, ok := w.env[secret]; ok && v != "" {
				t.Errorf("%s: %s is a literal value; want a secretKeyRef", d, secret)
			}
		}
		for _, p := range list(c, "ports") {
			n, _ := strconv.Atoi(str(p, "containerPort"))
			w.ports[str(p, "name")] = n
		}
		if want := httpPort(t, w.env, prog); w.ports["http"] != want {
			t.Errorf("%s: containerPort http = %d; HTTP_ADDR listens on %d", d, w.ports["http"], want)
		}
		for probe, want := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
			path, port := str(c, probe, "httpGet", "path"), str(c, probe, "httpGet", "port")
			if path != want {
				t.Errorf("%s: %s path %q; want %s", d, probe, path, want)
			}
			checkServed(t, d.String()+" "+probe, w.role, path)
			if n, err := strconv.Atoi(port); (err == nil && n != w.ports["http"]) || (err != nil && w.ports[port] == 0) {
				t.Errorf("%s: %s port %q is not the container's HTTP port", d, probe, port)
			}
		}

		// Security: non-root, read-only, no privilege escalation, no
		// capabilities, the runtime's seccomp profile; bounded resources.
		sc := dict(c, "securityContext")
		for _, f := range []struct {
			path []any
			want string
		}{
			{[]any{"readOnlyRootFilesystem"}, "true"},
			{[]any{"allowPrivilegeEscalation"}, "false"},
		} {
			if got := str(sc, f.path...); got != f.want {
				t.Errorf("%s: securityContext %v = %q; want %s", d, f.path, got, f.want)
			}
		}
		if str(sc, "runAsNonRoot") != "true" && str(podSpec, "securityContext", "runAsNonRoot") != "true" {
			t.Errorf("%s: runAsNonRoot is not set", d)
		}
		if str(sc, "seccompProfile", "type") != "RuntimeDefault" && str(podSpec, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
			t.Errorf("%s: seccompProfile is not RuntimeDefault", d)
		}
		if drop := fmt.Sprint(list(sc, "capabilities", "drop")); drop != "[ALL]" {
			t.Errorf("%s: capabilities drop %s; want [ALL]", d, drop)
		}
		for _, r := range [][]any{{"requests", "cpu"}, {"requests", "memory"}, {"limits", "memory"}} {
			if str(c, append([]any{"resources"}, r...)...) == "" {
				t.Errorf("%s: resources %v not set", d, r)
			}
		}
		if w.role == "ingest" && w.env["SPOOL"] != "off" {
			checkSpoolVolume(t, d, c, w.env)
		}
		tg, _ := strconv.Atoi(str(podSpec, "terminationGracePeriodSeconds"))
		pre, _ := strconv.Atoi(str(c, "lifecycle", "preStop", "sleep", "seconds"))
		if time.Duration(tg-pre)*time.Second < grace {
			t.Errorf("%s: terminationGracePeriodSeconds %d (preStop %ds) leaves less than SHUTDOWN_GRACE %v to finish in-flight work", d, tg, pre, grace)
		}
		workloads = append(workloads, w)
	}
	for _, role := range []string{"ingest", "enrich"} {
		if !roles[role] {
			t.Errorf("no Deployment runs `verifeye-bridge %s`", role)
		}
	}

	// NATS: every process agrees on the servers and the stream settings, and
	// names each server of the chart's StatefulSet.
	for i, w := range workloads {
		for _, k := range []string{"NATS_URL", "STREAM_REPLICAS", "SUBJECT_PREFIX", "STREAM_DUPLICATE_WINDOW"} {
			if w.env[k] != workloads[0].env[k] {
				t.Errorf("%s and %s disagree on %s: %q, %q", workloads[0].obj, w.obj, k, workloads[0].env[k], w.env[k])
			}
		}
		if i > 0 {
			continue
		}
		if got := w.env["STREAM_REPLICAS"]; got != strconv.Itoa(natsReplicas) {
			t.Errorf("%s: STREAM_REPLICAS=%q; want %d, the NATS servers of nats/values.yaml", w.obj, got, natsReplicas)
		}
		var pods []int
		for _, h := range natsHosts(t, w.env["NATS_URL"]) {
			m := natsPodRE.FindStringSubmatch(h)
			if m == nil || m[3] != "4222" {
				t.Errorf("%s: NATS_URL host %s is not nats-<i>.nats-headless:4222", w.obj, h)
				continue
			}
			n, _ := strconv.Atoi(m[1])
			pods = append(pods, n)
		}
		slices.Sort(pods)
		if want := seq(natsReplicas); fmt.Sprint(pods) != fmt.Sprint(want) {
			t.Errorf("%s: NATS_URL names pods %v; want %v", w.obj, pods, want)
		}
	}

	selected := func(where string, sel map[string]any) []workload {
		var out []workload
		for _, w := range workloads {
			if matches(sel, w.pod) {
				out = append(out, w)
			}
		}
		if len(out) != 1 {
			t.Errorf("%s: selector %v matches %d Deployments; want 1", where, sel, len(out))
		}
		return out
	}
	portOK := func(w workload, p string) bool {
		if n, err := strconv.Atoi(p); err == nil {
			return slices.Contains(mapValues(w.ports), n)
		}
		return w.ports[p] != 0
	}

	svcPorts := map[string][]string{} // Service name → port names
	svcRoles := map[string]string{}
	for _, s := range byKind["Service"] {
		for _, w := range selected(s.String(), dict(s.raw, "spec", "selector")) {
			svcRoles[s.name] = w.role
			for _, p := range list(s.raw, "spec", "ports") {
				svcPorts[s.name] = append(svcPorts[s.name], str(p, "name"))
				if tp := str(p, "targetPort"); !portOK(w, tp) {
					t.Errorf("%s: targetPort %s is not a port of %s", s, tp, w.obj)
				}
			}
		}
	}
	for _, h := range byKind["HorizontalPodAutoscaler"] {
		ref := dict(h.raw, "spec", "scaleTargetRef")
		if !slices.ContainsFunc(workloads, func(w workload) bool { return str(ref, "kind") == w.obj.kind && str(ref, "name") == w.obj.name }) {
			t.Errorf("%s: scales %s/%s, which does not exist", h, str(ref, "kind"), str(ref, "name"))
		}
		lo, _ := strconv.Atoi(str(h.raw, "spec", "minReplicas"))
		hi, _ := strconv.Atoi(str(h.raw, "spec", "maxReplicas"))
		if lo < 2 || hi < lo {
			t.Errorf("%s: min %d, max %d replicas; want 2 <= min <= max", h, lo, hi)
		}
	}
	pdbRoles := map[string]bool{}
	for _, p := range byKind["PodDisruptionBudget"] {
		for _, w := range selected(p.String(), dict(p.raw, "spec", "selector", "matchLabels")) {
			pdbRoles[w.role] = true
		}
	}
	for _, np := range byKind["NetworkPolicy"] {
		for _, w := range selected(np.String(), dict(np.raw, "spec", "podSelector", "matchLabels")) {
			var in []string
			for _, r := range list(np.raw, "spec", "ingress") {
				for _, p := range list(r, "ports") {
					in = append(in, str(p, "port"))
				}
			}
			if !slices.ContainsFunc(in, func(p string) bool { return portOK(w, p) }) {
				t.Errorf("%s: ingress ports %v do not include the HTTP port of %s", np, in, w.obj)
			}
			var out []string
			for _, r := range list(np.raw, "spec", "egress") {
				for _, p := range list(r, "ports") {
					out = append(out, str(p, "port"))
				}
			}
			for _, need := range []string{"4222", "53"} {
				if !slices.Contains(out, need) {
					t.Errorf("%s: egress ports %v; want %s (NATS, DNS)", np, out, need)
				}
			}
			if w.role == "enrich" && !slices.Contains(out, "443") {
				t.Errorf("%s: egress ports %v; the enricher needs 443 for the VerifEye API", np, out)
			}
		}
	}
	for _, role := range []string{"ingest", "enrich"} {
		if !pdbRoles[role] {
			t.Errorf("no PodDisruptionBudget covers the %s pods", role)
		}
	}
	scraped := map[string]bool{}
	for _, sm := range byKind["ServiceMonitor"] {
		sel := dict(sm.raw, "spec", "selector", "matchLabels")
		for _, s := range byKind["Service"] {
			if !matches(sel, dict(s.raw, "metadata", "labels")) {
				continue
			}
			for _, ep := range list(sm.raw, "spec", "endpoints") {
				if !slices.Contains(svcPorts[s.name], str(ep, "port")) {
					t.Errorf("%s: endpoint port %q is not a port name of %s", sm, str(ep, "port"), s)
				}
				checkServed(t, sm.String(), svcRoles[s.name], str(ep, "path"))
			}
			scraped[svcRoles[s.name]] = true
		}
	}
	for _, role := range []string{"ingest", "enrich"} {
		if !scraped[role] {
			t.Errorf("no ServiceMonitor scrapes the %s pods", role)
		}
	}
	for _, ing := range byKind["Ingress"] {
		for _, r := range list(ing.raw, "spec", "rules") {
			for _, p := range list(r, "http", "paths") {
				svc, port := str(p, "backend", "service", "name"), str(p, "backend", "service", "port", "name")
				if svcRoles[svc] != "ingest" || !slices.Contains(svcPorts[svc], port) {
					t.Errorf("%s: backend %s:%s is not the ingest Service's port", ing, svc, port)
				}
				if path := str(p, "path"); !strings.HasPrefix(path, "/webhooks/verifeye") {
					t.Errorf("%s: exposes %s; want only the webhook path", ing, path)
				}
			}
		}
	}
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func mapValues(m map[string]int) []int {
	var v []int
	for _, x := range m {
		v = append(v, x)
	}
	return v
}

// checkSpoolVolume: an ingest with the spool on is a StatefulSet whose
// DATA_DIR is a volume from its volumeClaimTemplates. A spool on emptyDir (or
// the container's own filesystem) dies with its pod, and the webhooks in it.
func checkSpoolVolume(t *testing.T, w kubeObject, container any, env map[string]string) {
	t.Helper()
	if w.kind != "StatefulSet" {
		t.Errorf("%s runs the ingest with its spool; want a StatefulSet with a PersistentVolumeClaim for DATA_DIR", w)
		return
	}
	dataDir := env["DATA_DIR"]
	if dataDir == "" {
		dataDir = "/data" // the image's DATA_DIR
	}
	claims := map[string]bool{}
	for _, c := range list(w.raw, "spec", "volumeClaimTemplates") {
		claims[str(c, "metadata", "name")] = true
		if str(c, "spec", "resources", "requests", "storage") == "" {
			t.Errorf("%s: volumeClaimTemplate %s requests no storage", w, str(c, "metadata", "name"))
		}
	}
	for _, m := range list(container, "volumeMounts") {
		if str(m, "mountPath") == dataDir {
			if !claims[str(m, "name")] {
				t.Errorf("%s: DATA_DIR %s is volume %s, not one of its volumeClaimTemplates", w, dataDir, str(m, "name"))
			}
			return
		}
	}
	t.Errorf("%s: nothing is mounted at DATA_DIR %s; the spool would be on the container's filesystem", w, dataDir)
}
