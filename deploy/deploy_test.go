package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"gopkg.in/yaml.v3"

	"github.com/pg2kafka/pg2kafka/internal/httpserver"
	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/internal/stream"
	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// settingNames are the variables of docs/configuration.md's tables: the
// only ones pg2kafka reads.
func settingNames(t *testing.T) []string {
	t.Helper()
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([A-Z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		names = append(names, m[1])
	}
	if len(names) < 20 {
		t.Fatalf("found %d settings in docs/configuration.md: %q", len(names), names)
	}
	return names
}

// obj walks a parsed YAML document: obj(doc, "spec", "template") and so
// on, failing the test where a key is missing.
func obj(t *testing.T, v any, path ...string) any {
	t.Helper()
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%v: not a mapping at %q", path, k)
		}
		if v, ok = m[k]; !ok {
			t.Fatalf("%v: no %q", path, k)
		}
	}
	return v
}

func TestKubernetesExample(t *testing.T) {
	t.Parallel()
	f, err := os.ReadFile("kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]map[string]any{}
	dec := yaml.NewDecoder(bytes.NewReader(f))
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("kubernetes.yaml: %v", err)
		}
		kind, _ := d["kind"].(string)
		if d["apiVersion"] == nil || kind == "" || obj(t, d, "metadata", "name") == nil {
			t.Fatalf("a document without apiVersion, kind or name: %v", d)
		}
		docs[kind] = d
	}
	for _, kind := range []string{"Secret", "Deployment", "PodDisruptionBudget", "Service"} {
		if docs[kind] == nil {
			t.Fatalf("kubernetes.yaml has no %s", kind)
		}
	}
	settings := settingNames(t)

	dep := docs["Deployment"]
	if n := obj(t, dep, "spec", "replicas"); n != 2 {
		t.Errorf("replicas: %v, want 2", n)
	}
	labels := obj(t, dep, "spec", "template", "metadata", "labels").(map[string]any)
	for k, v := range obj(t, dep, "spec", "selector", "matchLabels").(map[string]any) {
		if labels[k] != v {
			t.Errorf("the Deployment's selector %s=%v does not match its pods' labels %v", k, v, labels)
		}
	}
	pod := obj(t, dep, "spec", "template", "spec")
	if obj(t, pod, "securityContext", "runAsNonRoot") != true {
		t.Error("pods do not run as non-root")
	}
	containers := obj(t, pod, "containers").([]any)
	if len(containers) != 1 {
		t.Fatalf("%d containers, want 1", len(containers))
	}
	c := containers[0]
	env := map[string]string{}
	for _, e := range obj(t, c, "env").([]any) {
		name := obj(t, e, "name").(string)
		env[name], _ = obj(t, e, "value").(string)
		if !slices.Contains(settings, name) {
			t.Errorf("the Deployment sets %s, which is no pg2kafka setting", name)
		}
	}
	// The secret ones come from the Secret, never from the manifest.
	secretName := obj(t, docs["Secret"], "metadata", "name")
	refs := obj(t, c, "envFrom").([]any)
	if len(refs) != 1 || obj(t, refs[0], "secretRef", "name") != secretName {
		t.Errorf("envFrom %v, want the Secret %v", refs, secretName)
	}
	for name := range obj(t, docs["Secret"], "stringData").(map[string]any) {
		if !slices.Contains(settings, name) {
			t.Errorf("the Secret holds %s, which is no pg2kafka setting", name)
		}
	}
	if _, ok := env["DATABASE_URL"]; ok {
		t.Error("DATABASE_URL is in the Deployment; it belongs in the Secret")
	}

	// Probes on the endpoints pg2kafka serves, on the port it listens on.
	var port int
	for _, p := range obj(t, c, "ports").([]any) {
		if obj(t, p, "name") == "http" {
			port = obj(t, p, "containerPort").(int)
		}
	}
	if want := ":" + strconv.Itoa(port); env["HTTP_ADDR"] != want {
		t.Errorf("HTTP_ADDR=%q, but the container port is %d", env["HTTP_ADDR"], port)
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if got := obj(t, c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %v, want %s", probe, got, path)
		}
		if got := obj(t, c, probe, "httpGet", "port"); got != "http" {
			t.Errorf("%s port %v, want http", probe, got)
		}
	}
	for _, k := range []string{"requests", "limits"} {
		if obj(t, c, "resources", k, "memory") == nil {
			t.Errorf("no memory %s", k)
		}
	}
	if obj(t, c, "securityContext", "allowPrivilegeEscalation") != false || obj(t, c, "securityContext", "readOnlyRootFilesystem") != true {
		t.Error("the container may escalate privileges or write its root filesystem")
	}

	pdb := docs["PodDisruptionBudget"]
	if obj(t, pdb, "spec", "minAvailable") != 1 {
		t.Errorf("PodDisruptionBudget minAvailable %v, want 1", obj(t, pdb, "spec", "minAvailable"))
	}
	for k, v := range obj(t, pdb, "spec", "selector", "matchLabels").(map[string]any) {
		if labels[k] != v {
			t.Errorf("the PodDisruptionBudget selects %s=%v, which the pods do not carry", k, v)
		}
	}
}

func TestComposeExample(t *testing.T) {
	t.Parallel()
	f, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose map[string]any
	if err := yaml.Unmarshal(f, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	services := obj(t, compose, "services").(map[string]any)
	for _, s := range []string{"postgres", "kafka", "pg2kafka"} {
		if services[s] == nil {
			t.Fatalf("no %s service", s)
		}
	}
	broker := obj(t, services, "kafka", "environment").(map[string]any)
	if roles := broker["KAFKA_PROCESS_ROLES"]; roles != "broker,controller" {
		t.Errorf("Kafka's process roles %v: want broker,controller (KRaft)", roles)
	}
	for name := range broker {
		if strings.Contains(strings.ToLower(name), "zookeeper") {
			t.Errorf("Kafka is configured for ZooKeeper (%s); KRaft needs none", name)
		}
	}
	if _, err := os.Stat(obj(t, services, "pg2kafka", "build", "context").(string) + "/Dockerfile"); err != nil {
		t.Errorf("pg2kafka's build context has no Dockerfile: %v", err)
	}
	env := obj(t, services, "pg2kafka", "environment").(map[string]any)
	settings := settingNames(t)
	for name := range env {
		if !slices.Contains(settings, name) {
			t.Errorf("pg2kafka is given %s, which is no pg2kafka setting", name)
		}
	}
	if db := env["DATABASE_URL"].(string); !strings.Contains(db, "@postgres:5432/") {
		t.Errorf("DATABASE_URL %q does not name the postgres service", db)
	}
	if k := env["KAFKA_PRODUCER_URL"].(string); !strings.Contains(broker["KAFKA_ADVERTISED_LISTENERS"].(string), strings.TrimPrefix(k, "kafka://")) {
		t.Errorf("KAFKA_PRODUCER_URL %q is not what Kafka advertises (%v)", k, broker["KAFKA_ADVERTISED_LISTENERS"])
	}
	if ports := obj(t, services, "pg2kafka", "ports").([]any); !slices.Contains(ports, any("8080:8080")) || env["HTTP_ADDR"] != ":8080" {
		t.Errorf("pg2kafka's listener (%v) is not published on 8080 (%v)", env["HTTP_ADDR"], ports)
	}
}

// metricNames are the metric names a PromQL expression reads.
func metricNames(expr string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`\b((?:pg2kafka|go|process)_[a-zA-Z0-9_]+)\b`).FindAllString(expr, -1) {
		out = append(out, m)
	}
	return out
}

func TestDashboardAsksForMetricsPg2kafkaServes(t *testing.T) {
	t.Parallel()
	f, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(f, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	families := scrape(t)
	asked := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			names := metricNames(target.Expr)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q reads no metric", p.Title, target.Expr)
			}
			for _, name := range names {
				asked++
				if !served(families, name) {
					t.Errorf("panel %q asks for %s, which /metrics does not serve", p.Title, name)
				}
			}
		}
	}
	if asked < 20 {
		t.Errorf("the dashboard reads %d metrics; it has lost its panels", asked)
	}
}

// served reports whether the scrape has the metric: a family of its name,
// or a histogram's _bucket, _sum or _count.
func served(families map[string]string, name string) bool {
	if _, ok := families[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && families[base] == "HISTOGRAM" {
			return true
		}
	}
	return false
}

// scrape runs a pg2kafka shipper to an in-process Kafka with its HTTP
// server, ships an event, has it settle an acknowledged, a failed and a
// refused event (so that every counter has a table), and returns the
// metric families /metrics serves, with their types.
func scrape(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	if err := outbox.Migrate(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`CREATE TABLE products (sku text PRIMARY KEY)`, `SELECT pg2kafka.setup('products', 'sku')`, `INSERT INTO products VALUES ('A1')`} {
		if _, err := pool.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	database, err := outbox.CurrentDatabase(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "pg2kafka."+database+".products"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	hub := stream.NewHub(0)
	stats := httpserver.NewStats(hub)
	sink, err := kafka.New(kafka.Config{Brokers: cluster.ListenAddrs()}, kgo.WithHooks(stats.KafkaHooks()))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	s := shipper.New(shipper.Config{Database: database, PollInterval: 10 * time.Millisecond, OnSettled: stats.Settled}, outbox.NewQueue(pool), sink)
	srv := httpserver.New(httpserver.Config{Stats: stats, Hub: hub, StreamToken: "t", BacklogInterval: time.Millisecond})
	srv.Attach(httpserver.Parts{Pool: pool, Shipper: s, Destination: sink.Reachable})
	ln, err := httpserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer func() { srv.Close(); <-served }()
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- s.Run(runCtx) }()
	defer func() { stop(); <-ran }()

	url := "http://" + ln.Addr().String() + "/metrics"
	get := func() map[string]string {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for name, mf := range mfs {
			out[name] = mf.GetType().String()
		}
		return out
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if fams := get(); fams["pg2kafka_events_shipped_total"] != "" && fams["pg2kafka_kafka_produce_records_total"] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing shipped within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A failed and a refused event, as the shipper reports them.
	now := time.Now()
	stats.Settled(&shipper.Settled{
		Events:   []outbox.Event{{TableSchema: "public", TableName: "products", CreatedAt: now}, {TableSchema: "public", TableName: "products", CreatedAt: now}},
		Messages: make([]shipper.Message, 2),
		Errs:     []error{errors.New("unavailable"), &shipper.RejectedError{Err: errors.New("too large")}},
		Claimed:  now, Acknowledged: now, Committed: now,
	})
	return get()
}
