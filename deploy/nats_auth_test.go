package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/realeyes/verifeye-bridge/internal/streams"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// natsRoles are the NATS users every deployment ships, by role: the bridge's
// two roles, the services that read outcomes (the README's consumer example),
// and people with the terminal tools.
var natsRoles = []string{"ingest", "enrich", "downstream", "admin"}

// natsUsersSecret is the Kubernetes Secret holding the NATS users' passwords,
// one key per user, read by the NATS servers and by the bridge alike.
const natsUsersSecret = "verifeye-nats-users"

// natsServerVersion returns the nats-server version go.mod requires: the
// server the bridge embeds.
func natsServerVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 v(\d+\.\d+\.\d+)\s*$`).FindStringSubmatch(readFile(t, filepath.Join(root, "go.mod")))
	if m == nil {
		t.Fatal("go.mod: no github.com/nats-io/nats-server/v2 requirement")
	}
	return m[1]
}

// checkNATSTag fails unless an image tag runs the version line of want: the
// same version (2.15.2, 2.15.2-alpine) or its minor line (2.15, 2.15-alpine).
func checkNATSTag(t *testing.T, where, tag, want string) {
	t.Helper()
	core, _, _ := strings.Cut(tag, "-")
	minor := want[:strings.LastIndex(want, ".")]
	if core != want && core != minor {
		t.Errorf("%s runs NATS %q; want %s (or %s), the nats-server of go.mod", where, tag, want, minor)
	}
}

// TestNATSVersionsAgree: compose and the Helm values run the NATS server the
// bridge embeds and is tested against.
func TestNATSVersionsAgree(t *testing.T) {
	want := natsServerVersion(t)
	_, svcs := readCompose(t)
	n := 0
	for _, name := range sortedKeys(svcs) {
		if img := svcs[name].image; imageRepo(img) == "nats" {
			n++
			checkNATSTag(t, "compose service "+name, strings.TrimPrefix(img, "nats:"), want)
		}
	}
	if n == 0 {
		t.Error("compose: no nats image")
	}
	v := readYAML(t, filepath.Join(kubeDir, "nats", "values.yaml"))[0]
	checkNATSTag(t, "nats/values.yaml container.image.tag", str(v, "container", "image", "tag"), want)
}

// composeDefault expands compose's ${VAR:-default} and ${VAR} the way compose
// would with none of the variables set.
func composeDefault(s string) string {
	return regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}`).ReplaceAllString(s, "$1")
}

// login is a NATS user name and password, and the inbox prefix the user's
// clients set (NATS_INBOX_PREFIX; "" for the default _INBOX).
type login struct{ user, password, inbox string }

// TestComposeNATSUsers: the compose NATS servers require a login, with the
// users of natsRoles; the ingest and enrich services log in as their role's
// user, and a real server running nats.conf grants each role what it needs
// and refuses it what it must not do.
func TestComposeNATSUsers(t *testing.T) {
	_, svcs := readCompose(t)
	var natsSvc *composeService
	for _, name := range sortedKeys(svcs) {
		if s := svcs[name]; strings.HasPrefix(s.image, "nats:") {
			natsSvc = &s
			break
		}
	}
	if natsSvc == nil {
		t.Fatal("compose: no NATS service")
	}
	for k, v := range natsSvc.env {
		t.Setenv(k, composeDefault(v))
	}
	opts, err := server.ProcessConfigFile(filepath.Join("nats", "nats.conf"))
	if err != nil {
		t.Fatalf("nats.conf: %v", err)
	}
	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	logins := map[string]login{}
	for _, role := range natsRoles {
		u := users[role]
		if u == nil || u.Password == "" || u.Permissions == nil {
			t.Fatalf("nats.conf: no user %q with a password and permissions", role)
		}
		if strings.Contains(u.Password, "$") {
			t.Errorf("nats.conf: user %s's password %q is not resolved from the environment of compose service %s", role, u.Password, natsSvc.name)
		}
		logins[role] = login{role, u.Password, "_INBOX_" + role}
	}
	logins["admin"] = login{"admin", logins["admin"].password, ""}
	if opts.NoAuthUser != "" || len(opts.Nkeys) > 0 || opts.Authorization != "" {
		t.Errorf("nats.conf: a client may connect without a user of its own (no_auth_user %q, token set %v)", opts.NoAuthUser, opts.Authorization != "")
	}
	for _, role := range []string{"ingest", "enrich"} {
		var s *composeService
		for _, name := range sortedKeys(svcs) {
			if c := svcs[name]; imageRepo(c.image) == bridgeImage && len(c.command) == 1 && c.command[0] == role {
				s = &c
			}
		}
		if s == nil {
			t.Fatalf("compose: no service runs verifeye-bridge %s", role)
		}
		got := login{s.env["NATS_USER"], composeDefault(s.env["NATS_PASSWORD"]), s.env["NATS_INBOX_PREFIX"]}
		if got != logins[role] {
			t.Errorf("compose service %s: NATS_USER=%q, NATS_PASSWORD and NATS_INBOX_PREFIX=%q are not the login of NATS user %q (inbox %q)", s.name, got.user, got.inbox, role, logins[role].inbox)
		}
		logins[role] = got // the role check logs in with what the service uses
	}
	checkNATSRoles(t, opts.Users, logins)
}

// TestKubernetesNATSUsers: the NATS Helm values define the users of natsRoles,
// their passwords from the Secret natsUsersSecret; the ingest and enrich
// Deployments log in as their role's user with the password the NATS servers
// read; and a real server with those users grants and refuses as it must.
func TestKubernetesNATSUsers(t *testing.T) {
	v := readYAML(t, filepath.Join(kubeDir, "nats", "values.yaml"))[0]
	// The password of each NATS container variable, by its Secret key.
	keyOfVar := map[string]string{}
	for name, e := range dict(v, "container", "env") {
		ref := dict(e, "valueFrom", "secretKeyRef")
		if str(ref, "name") == natsUsersSecret && str(ref, "key") != "" {
			keyOfVar[name] = str(ref, "key")
		}
	}
	ref := regexp.MustCompile(`^<<\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*>>$`)
	keyOfUser := map[string]string{}
	users := list(v, "config", "merge", "authorization", "users")
	for _, u := range users {
		m := ref.FindStringSubmatch(str(u, "password"))
		if m == nil || keyOfVar[m[1]] == "" {
			t.Errorf("nats/values.yaml: user %s's password %q is not << $VAR >> with VAR from the Secret %s in container.env", str(u, "user"), str(u, "password"), natsUsersSecret)
			continue
		}
		keyOfUser[str(u, "user")] = keyOfVar[m[1]]
		u.(map[string]any)["password"] = "test-password-" + keyOfVar[m[1]]
	}
	// nats-server's own parser reads the users (its config syntax takes JSON).
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // nats-server's parser knows no \u escapes
	if err := enc.Encode(map[string]any{"authorization": map[string]any{"users": users}}); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats/values.yaml authorization: nats-server cannot parse it: %v", err)
	}
	logins := map[string]login{}
	for _, role := range natsRoles {
		if keyOfUser[role] == "" {
			t.Fatalf("nats/values.yaml: no user %q", role)
		}
		inbox := "_INBOX_" + role
		if role == "admin" {
			inbox = ""
		}
		logins[role] = login{role, "test-password-" + keyOfUser[role], inbox}
	}

	found := map[string]bool{}
	for _, d := range readBase(t) {
		if d.kind != "Deployment" && d.kind != "StatefulSet" {
			continue
		}
		role := str(d.raw, "spec", "template", "spec", "containers", 0, "args", 0)
		var user, key, inbox string
		for _, e := range list(d.raw, "spec", "template", "spec", "containers", 0, "env") {
			switch str(e, "name") {
			case "NATS_USER":
				user = str(e, "value")
			case "NATS_INBOX_PREFIX":
				inbox = str(e, "value")
			case "NATS_PASSWORD":
				if r := dict(e, "valueFrom", "secretKeyRef"); str(r, "name") == natsUsersSecret {
					key = str(r, "key")
				}
			}
		}
		if user != role || key == "" || key != keyOfUser[role] || inbox != logins[role].inbox {
			t.Errorf("%s: NATS_USER=%q, NATS_PASSWORD from Secret %s key %q, NATS_INBOX_PREFIX=%q; want user %q, its key %q and inbox %q", d, user, natsUsersSecret, key, inbox, role, keyOfUser[role], logins[role].inbox)
			continue
		}
		found[role] = true
		logins[role] = login{user, "test-password-" + key, inbox}
	}
	for _, role := range []string{"ingest", "enrich"} {
		if !found[role] {
			t.Fatalf("no Deployment or StatefulSet logs in to NATS as %q", role)
		}
	}
	checkNATSRoles(t, opts.Users, logins)
}

// checkNATSRoles runs a JetStream server with users and plays each role of
// natsRoles, logged in as logins[role]: what the program does in that role
// must succeed, and publishing where the role must not (a forged outcome
// above all) must change nothing.
func checkNATSRoles(t *testing.T, users []*server.User, logins map[string]login) {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir(), Users: users,
	})
	if err != nil {
		t.Fatalf("nats server with the deployed users: %v", err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	as := func(role string) jetstream.JetStream {
		t.Helper()
		l := logins[role]
		// Refusals are the point here: no async error lines for them.
		opts := []nats.Option{nats.UserInfo(l.user, l.password), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})}
		if l.inbox != "" {
			opts = append(opts, nats.CustomInboxPrefix(l.inbox))
		}
		nc, err := nats.Connect(ns.ClientURL(), opts...)
		if err != nil {
			t.Fatalf("log in as %s (%s): %v", role, l.user, err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	if _, err := nats.Connect(ns.ClientURL()); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("connect without a login: %v; want an authorization violation", err)
	}
	subjects, _ := streams.NewSubjects("verifeye")
	limits := streams.Limits{Replicas: 1, Duplicates: time.Minute, WebhooksMaxAge: time.Hour, WebhooksMaxBytes: 1 << 24,
		ResultsMaxAge: time.Hour, ResultsMaxBytes: 1 << 24, DLQMaxAge: time.Hour, DLQMaxBytes: 1 << 24}
	admin := as("admin")
	count := func(stream string) uint64 {
		t.Helper()
		st, err := admin.Stream(ctx, stream)
		if err != nil {
			t.Fatalf("admin: stream %s: %v", stream, err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatalf("admin: stream %s: %v", stream, err)
		}
		return info.State.Msgs
	}
	refused := func(role string, js jetstream.JetStream, subject string) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if _, err := js.Publish(c, subject, []byte(`{"forged":true}`)); err == nil {
			t.Errorf("%s may publish to %s", role, subject)
		}
	}
	session := "0f1e2d3c-0000-4000-8000-000000000a01"
	webhook := []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + session + `"}`)

	// ingest: creates the streams, publishes webhooks, and nothing else.
	ingest := as("ingest")
	if err := streams.Ensure(ctx, ingest, subjects, limits); err != nil {
		t.Fatalf("ingest: create the streams: %v", err)
	}
	if _, err := ingest.Publish(ctx, subjects.Webhook("default", streams.EventCompleted), webhook); err != nil {
		t.Errorf("ingest: publish a webhook: %v", err)
	}
	// Group commit: concurrent webhooks as one atomic batch (the same
	// subjects, the PubAck on _INBOX).
	msgs := make([]*nats.Msg, 3)
	for i := range msgs {
		msgs[i] = nats.NewMsg(subjects.Webhook("default", streams.EventCompleted))
		msgs[i].Data = webhook
		msgs[i].Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("auth-batch-%d", i))
		msgs[i].Header.Set(jetstream.ExpectedStreamHeader, streams.Webhooks)
	}
	if _, err := jetstreamext.PublishMsgBatch(ctx, ingest, msgs); err != nil {
		t.Errorf("ingest: publish webhooks as an atomic batch: %v", err)
	}
	refused("ingest", ingest, subjects.Result("default", "passed"))
	refused("ingest", ingest, subjects.DLQ("default", streams.EventCompleted))
	c, cancelC := context.WithTimeout(ctx, 2*time.Second)
	if _, err := ingest.CreateOrUpdateConsumer(c, streams.Webhooks, jetstream.ConsumerConfig{Durable: "enricher"}); err == nil {
		t.Errorf("ingest may create a consumer on %s", streams.Webhooks)
	}
	cancelC()

	// enrich: updates the streams, consumes webhooks, publishes outcomes and
	// dead letters; it cannot inject a webhook.
	enrich := as("enrich")
	if err := streams.Ensure(ctx, enrich, subjects, limits); err != nil {
		t.Fatalf("enrich: create or update the streams: %v", err)
	}
	cons, err := enrich.CreateOrUpdateConsumer(ctx, streams.Webhooks, jetstream.ConsumerConfig{
		Durable: "enricher", FilterSubject: subjects.CompletedFilter(), AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatalf("enrich: create its consumer: %v", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatalf("enrich: fetch: %v", err)
	}
	n := 0
	for m := range batch.Messages() {
		n++
		if err := m.DoubleAck(ctx); err != nil {
			t.Errorf("enrich: ack: %v", err)
		}
	}
	if n != 1 {
		t.Errorf("enrich: fetched %d webhooks (%v); want 1", n, batch.Error())
	}
	if _, err := enrich.Publish(ctx, subjects.Result("default", "passed"), []byte(`{"id":"`+session+`"}`)); err != nil {
		t.Errorf("enrich: publish an outcome: %v", err)
	}
	if _, err := enrich.Publish(ctx, subjects.DLQ("default", streams.EventCompleted), webhook); err != nil {
		t.Errorf("enrich: publish a dead letter: %v", err)
	}
	refused("enrich", enrich, subjects.Webhook("default", "SessionStarted"))

	// enrich keeps the session ledger, takes expectations (the internal API),
	// consumes them (the reconciler) and injects the missing webhook.
	kv, err := enrich.KeyValue(ctx, outcome.BucketSessions)
	if err != nil {
		t.Fatalf("enrich: open the session ledger: %v", err)
	}
	if _, err := kv.Create(ctx, outcome.SessionKey(session), []byte(`{"sessionId":"`+session+`","source":"default","state":"received"}`)); err != nil {
		t.Errorf("enrich: write the ledger: %v", err)
	}
	if e, err := kv.Get(ctx, outcome.SessionKey(session)); err != nil {
		t.Errorf("enrich: read the ledger: %v", err)
	} else if _, err := kv.Update(ctx, outcome.SessionKey(session), []byte(`{"sessionId":"`+session+`","source":"default","state":"enriched"}`), e.Revision()); err != nil {
		t.Errorf("enrich: update the ledger: %v", err)
	}
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		t.Errorf("enrich: watch the ledger: %v", err)
	} else {
		_ = w.Stop()
	}
	expected := "0f1e2d3c-0000-4000-8000-000000000a02"
	if err := outcome.Expect(ctx, enrich, "default", expected); err != nil {
		t.Errorf("enrich: publish an expectation: %v", err)
	}
	ec, err := enrich.CreateOrUpdateConsumer(ctx, streams.Expectations, jetstream.ConsumerConfig{Durable: "reconciler", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("enrich: create the reconciler's consumer: %v", err)
	}
	batch, err = ec.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatalf("enrich: fetch an expectation: %v", err)
	}
	n = 0
	for m := range batch.Messages() {
		n++
		if err := m.NakWithDelay(time.Hour); err != nil {
			t.Errorf("enrich: nak an expectation: %v", err)
		}
	}
	if n != 1 {
		t.Errorf("enrich: fetched %d expectations (%v); want 1", n, batch.Error())
	}
	injected := nats.NewMsg(subjects.Webhook("default", streams.EventCompleted))
	injected.Data = []byte(`{"event":"VerificationCompleted","verificationSessionId":"` + expected + `"}`)
	injected.Header.Set(outcome.HeaderReconciled, "true")
	if _, err := enrich.PublishMsg(ctx, injected); err != nil {
		t.Errorf("enrich: inject a webhook: %v", err)
	}

	// downstream: reads outcomes on a durable consumer of its own, and can
	// neither forge one nor touch the other streams.
	down := as("downstream")
	rc, err := down.CreateOrUpdateConsumer(ctx, streams.Results, jetstream.ConsumerConfig{Durable: "kyc-service", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("downstream: create a consumer on %s: %v", streams.Results, err)
	}
	batch, err = rc.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatalf("downstream: fetch: %v", err)
	}
	n = 0
	for m := range batch.Messages() {
		n++
		if err := m.Ack(); err != nil {
			t.Errorf("downstream: ack: %v", err)
		}
	}
	if n != 1 {
		t.Errorf("downstream: fetched %d outcomes (%v); want 1", n, batch.Error())
	}
	// It reads the session ledger and announces sessions, but writes no entry.
	if s, err := outcome.Lookup(ctx, down, session); err != nil || s.State != outcome.StateEnriched {
		t.Errorf("downstream: outcome.Lookup = %+v, %v; want the enriched entry", s, err)
	}
	wc, cancelW := context.WithTimeout(ctx, 5*time.Second)
	if s, err := outcome.Wait(wc, down, session); err != nil || s.State != outcome.StateEnriched {
		t.Errorf("downstream: outcome.Wait = %+v, %v; want the enriched entry", s, err)
	}
	cancelW()
	if err := outcome.Expect(ctx, down, "default", "0f1e2d3c-0000-4000-8000-000000000a03"); err != nil {
		t.Errorf("downstream: outcome.Expect: %v", err)
	}
	refused("downstream", down, "$KV."+outcome.BucketSessions+"."+outcome.SessionKey(session))
	refused("downstream", down, subjects.Result("default", "passed"))
	refused("downstream", down, subjects.Webhook("default", streams.EventCompleted))
	c, cancelC = context.WithTimeout(ctx, 2*time.Second)
	if err := down.DeleteStream(c, streams.Results); err == nil {
		t.Errorf("downstream may delete %s", streams.Results)
	}
	if _, err := down.CreateOrUpdateConsumer(c, streams.Webhooks, jetstream.ConsumerConfig{Durable: "peek"}); err == nil {
		t.Errorf("downstream may read %s", streams.Webhooks)
	}
	cancelC()

	// Whatever was refused left no trace.
	// The webhooks stream: two webhooks published alone, three in a batch.
	for stream, want := range map[string]uint64{streams.Webhooks: 2 + 3, streams.Results: 1, streams.DLQ: 1, streams.Expectations: 2, "KV_" + outcome.BucketSessions: 1} {
		if got := count(stream); got != want {
			t.Errorf("%s holds %d messages after the refused publishes; want %d", stream, got, want)
		}
	}

	// Each role reads answers on its own inbox prefix only: not on the
	// default _INBOX, not on another role's.
	roles := []string{"ingest", "enrich", "downstream"}
	for _, role := range roles {
		l := logins[role]
		errs := make(chan error, 8)
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(l.user, l.password), nats.CustomInboxPrefix(l.inbox),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err != nil {
			t.Fatalf("log in as %s: %v", role, err)
		}
		others := []string{"_INBOX.>"}
		for _, o := range roles {
			if o != role {
				others = append(others, logins[o].inbox+".>")
			}
		}
		for _, subject := range others {
			if _, err := nc.Subscribe(subject, func(*nats.Msg) {}); err != nil {
				t.Fatal(err)
			}
			_ = nc.Flush()
			select {
			case err := <-errs:
				if !errors.Is(err, nats.ErrPermissionViolation) {
					t.Errorf("%s subscribing to %s: %v; want a permissions violation", role, subject, err)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("%s may subscribe to %s", role, subject)
			}
		}
		nc.Close()
	}
}
