package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper/webhook"
)

func TestChooseDestination(t *testing.T) {
	t.Parallel()
	kafkaSetup := map[string]string{
		"DATABASE_URL":        testDatabaseURL,
		"KAFKA_PRODUCER_URL":  "kafka://localhost:9092",
		"KAFKA_COMPRESSION":   "zstd",
		"KAFKA_CREATE_TOPICS": "true",
		"BATCH_SIZE":          "100",
	}
	// A user switches from Kafka by changing one variable: the Kafka
	// settings left behind are no obstacle.
	switched := func(from, to, value string) map[string]string {
		env := map[string]string{}
		for k, v := range kafkaSetup {
			env[k] = v
		}
		delete(env, from)
		env[to] = value
		return env
	}
	cases := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"kafka", kafkaSetup, destKafka},
		{"webhook", switched("KAFKA_PRODUCER_URL", "WEBHOOK_URL", "https://hooks.example.com/{table}"), destWebhook},
		{"rabbitmq", func() map[string]string {
			env := switched("KAFKA_PRODUCER_URL", "RABBITMQ_URL", "amqp://guest:guest@localhost:5672/")
			env["RABBITMQ_EXCHANGE"] = "pg2kafka"
			return env
		}(), destRabbitMQ},
		{"dry run", switched("KAFKA_PRODUCER_URL", "DRY_RUN", "true"), destDryRun},
		{"stream only", func() map[string]string {
			env := switched("KAFKA_PRODUCER_URL", "STREAM_ONLY", "true")
			env["STREAM_TOKEN"] = "t0ken"
			return env
		}(), destStream},
	}
	for _, c := range cases {
		cfg, err := parseConfig(nil, configEnv(c.env), io.Discard)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if cfg.Destination != c.want {
			t.Errorf("%s: destination %q; want %q", c.name, cfg.Destination, c.want)
		}
	}

	cfg, err := parseConfig(nil, configEnv(map[string]string{
		"DATABASE_URL":        testDatabaseURL,
		"WEBHOOK_URL":         "https://hooks.example.com/{schema}/{table}",
		"WEBHOOK_HEADERS":     "Authorization: Bearer t0ken\nX-Tenant: shop",
		"WEBHOOK_SECRET":      "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		"WEBHOOK_TIMEOUT":     "3s",
		"WEBHOOK_CA_FILE":     "ca.pem",
		"WEBHOOK_BATCH_SIZE":  "100",
		"WEBHOOK_CONCURRENCY": "4",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.Webhook
	if w.URL != "https://hooks.example.com/{schema}/{table}" || w.Headers.Get("Authorization") != "Bearer t0ken" || w.Headers.Get("X-Tenant") != "shop" ||
		w.Secret != "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" || w.Timeout != 3*time.Second || w.CAFile != "ca.pem" || w.BatchSize != 100 || w.Concurrency != 4 {
		t.Errorf("webhook settings %+v", w)
	}
}

func TestChooseDestinationErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"KAFKA_PRODUCER_URL": "k:9092", "WEBHOOK_URL": "https://h/x"},
			"KAFKA_PRODUCER_URL and WEBHOOK_URL are both set, but pg2kafka ships to one destination: keep one of them (see docs/destinations.md)"},
		{map[string]string{"KAFKA_PRODUCER_URL": "k:9092", "DRY_RUN": "true"},
			"KAFKA_PRODUCER_URL and DRY_RUN=true are both set"},
		{map[string]string{"WEBHOOK_URL": "https://h/x", "RABBITMQ_URL": "amqp://u:hunter2@h/", "STREAM_ONLY": "true"},
			"WEBHOOK_URL, RABBITMQ_URL and STREAM_ONLY=true are all set"},
		{map[string]string{}, noDestination},
		{map[string]string{"RABBITMQ_URL": "amqp://u:hunter2@h/"}, "RABBITMQ_EXCHANGE is not set"},
		{map[string]string{"RABBITMQ_URL": "mqtt://u:hunter2@h/", "RABBITMQ_EXCHANGE": "x"}, `RABBITMQ_URL="mqtt://u:xxxxx@h/"`},
		{map[string]string{"WEBHOOK_URL": "https://h/{tabel}"}, "WEBHOOK_URL=\"https://h/{tabel}\": unknown placeholder {tabel}"},
		{map[string]string{"WEBHOOK_URL": "https://h/", "WEBHOOK_BATCH_SIZE": "0"}, `WEBHOOK_BATCH_SIZE="0": must be a whole number from 1 to 1000`},
		{map[string]string{"WEBHOOK_URL": "https://h/", "WEBHOOK_HEADERS": "Authorization Bearer hunter2"}, "WEBHOOK_HEADERS: line 1 is not \"Name: value\""},
		{map[string]string{"WEBHOOK_URL": "https://h/", "WEBHOOK_SECRET": "whsec_hunter2!"}, "WEBHOOK_SECRET starts with whsec_ but what follows is not base64"},
	}
	for _, c := range cases {
		c.env["DATABASE_URL"] = testDatabaseURL
		_, err := parseConfig(nil, configEnv(c.env), io.Discard)
		var cfgErr *configError
		if !errors.As(err, &cfgErr) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v; want a configuration error (exit 2) containing %q", c.env, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%v: error %q shows a secret", c.env, err)
		}
	}
}

// threeProductChanges returns a migrated database whose products table has
// queued an INSERT, an UPDATE and a DELETE of one product, and its URL.
func threeProductChanges(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug')`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`UPDATE products SET name = 'Big Red Coffee Mug'`,
		`DELETE FROM products`,
	)
	return pool, url
}

// pg2kafka with WEBHOOK_URL POSTs each event to the endpoint, in order, and
// deletes it once the endpoint answered 2xx; a shipper to Kafka on the same
// database then refuses to start, naming the webhook.
func TestShipsToAWebhook(t *testing.T) {
	t.Parallel()
	pool, url := threeProductChanges(t)
	var mu sync.Mutex
	var paths []string
	var bodies []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e map[string]any
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &e); err != nil {
			t.Errorf("body %s: %v", body, err)
		}
		key, _ := webhook.SigningKey("s3cret")
		if sig := webhook.Sign(key, r.Header.Get("Webhook-Id"), r.Header.Get("Webhook-Timestamp"), body); r.Header.Get("Webhook-Signature") != sig {
			t.Errorf("signature %q; want %q", r.Header.Get("Webhook-Signature"), sig)
		}
		mu.Lock()
		paths, bodies = append(paths, r.URL.Path), append(bodies, e)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &syncBuffer{}
	env := map[string]string{"DATABASE_URL": url, "WEBHOOK_URL": srv.URL + "/hooks/{table}", "WEBHOOK_SECRET": "s3cret", "POLL_INTERVAL": "10ms"}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, io.Discard, stderr) }()
	waitFor(t, "the queue to drain", func() bool { return queueLength(t, pool) == 0 })
	waitFor(t, "the startup check's line", func() bool {
		return strings.Contains(stderr.String(), `msg="webhook endpoint reachable" webhook_address=`+srv.Listener.Addr().String())
	})

	// While it runs, a shipper of another kind is refused.
	other := map[string]string{"DATABASE_URL": url, "KAFKA_PRODUCER_URL": "127.0.0.1:1", "POLL_INTERVAL": "10ms"}
	err := run(context.Background(), nil, func(k string) string { return other[k] }, io.Discard, io.Discard)
	if conflict, ok := errors.AsType[*outbox.DestinationConflictError](err); !ok || conflict.Mine != outbox.DestinationKafka || conflict.Theirs[0] != outbox.DestinationWebhook {
		t.Errorf("a Kafka shipper beside a webhook one: %v; want it refused, naming both", err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var statements []string
	for i, b := range bodies {
		statements = append(statements, b["statement"].(string))
		if paths[i] != "/hooks/products" || b["external_id"] != "CM01-R" {
			t.Errorf("request %d to %s: %v", i, paths[i], b)
		}
	}
	if got := strings.Join(statements, ","); got != "SNAPSHOT,UPDATE,DELETE" {
		t.Errorf("statements in order received: %s; want SNAPSHOT,UPDATE,DELETE", got)
	}
	if !strings.Contains(stderr.String(), "destination=webhook") || !strings.Contains(stderr.String(), "webhook_url="+srv.URL+"/hooks/{table}") || strings.Contains(stderr.String(), "s3cret") {
		t.Errorf("log does not say where events go, or shows the secret:\n%s", stderr)
	}
}

// pg2kafka with RABBITMQ_URL in place of KAFKA_PRODUCER_URL, as the README
// shows, creates its exchange and publishes each event to it with the
// routing key schema.table, in order.
func TestShipsToRabbitMQ(t *testing.T) {
	t.Parallel()
	pool, url := threeProductChanges(t)
	brokerURL := cmp.Or(os.Getenv("PG2KAFKA_TEST_RABBITMQ_URL"), "amqp://guest:guest@127.0.0.1:5672/")
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatalf("RabbitMQ at %s: %v (script/test starts it)", brokerURL, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	exchange := "pg2kafka-test-" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// The exchange as RABBITMQ_CREATE_EXCHANGE declares it, so that a queue
	// can be bound before pg2kafka starts.
	if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.ExchangeDelete(exchange, false, false) })
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "public.products", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &syncBuffer{}
	env := map[string]string{"DATABASE_URL": url, "RABBITMQ_URL": brokerURL, "RABBITMQ_EXCHANGE": exchange,
		"RABBITMQ_CREATE_EXCHANGE": "true", "POLL_INTERVAL": "10ms"}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, io.Discard, stderr) }()

	var statements []string
	for len(statements) < 3 {
		select {
		case d := <-deliveries:
			var e map[string]any
			if err := json.Unmarshal(d.Body, &e); err != nil {
				t.Fatalf("body %s: %v", d.Body, err)
			}
			if d.RoutingKey != "public.products" || d.ContentType != "application/json" || e["external_id"] != "CM01-R" {
				t.Errorf("message with routing key %q, content type %q: %v", d.RoutingKey, d.ContentType, e)
			}
			statements = append(statements, e["statement"].(string))
		case <-time.After(20 * time.Second):
			t.Fatalf("received %v within 20s; want 3 messages\n%s", statements, stderr)
		}
	}
	if got := strings.Join(statements, ","); got != "SNAPSHOT,UPDATE,DELETE" {
		t.Errorf("statements in order received: %s; want SNAPSHOT,UPDATE,DELETE", got)
	}
	waitFor(t, "the queue to drain", func() bool { return queueLength(t, pool) == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if !strings.Contains(stderr.String(), "destination=rabbitmq") || !strings.Contains(stderr.String(), `msg="connected to RabbitMQ"`) || strings.Contains(stderr.String(), "guest:guest") {
		t.Errorf("log does not say where events go, or shows the password:\n%s", stderr)
	}
}
