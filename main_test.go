package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// runAsMain makes the test binary behave as pg2kafka itself, so that tests
// can send it real signals and read its real exit status.
const runAsMain = "PG2KAFKA_TEST_RUN_AS_MAIN"

func TestMain(m *testing.M) {
	testHTTPAddr = "127.0.0.1:0"
	if os.Getenv(runAsMain) == "1" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

// pg2kafkaCommand returns a command running pg2kafka with env added to the
// test's environment.
func pg2kafkaCommand(t *testing.T, env ...string) (*exec.Cmd, *syncBuffer, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), append([]string{runAsMain + "=1"}, env...)...)
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd, stdout, stderr
}

func migratedDatabase(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	pool, url := pgtest.NewPool(t)
	if err := outbox.Migrate(context.Background(), pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	return pool, url
}

func mustExec(t *testing.T, pool *pgxpool.Pool, sql ...string) {
	t.Helper()
	for _, s := range sql {
		if _, err := pool.Exec(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

func queueLength(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg2kafka.outbound_event_queue`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDryRunWritesEventsToStdoutAndDrainsTheQueue(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug')`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`UPDATE products SET name = 'Big Red Coffee Mug <&>'`,
		`DELETE FROM products`,
	)
	var database string
	rows, err := pool.Query(context.Background(), `SELECT current_database(), coalesce(uuid, pg2kafka.event_uuid(id, created_at))::text AS uuid, created_at FROM pg2kafka.outbound_event_queue ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var uuids []string
	var times []time.Time
	for rows.Next() {
		var u string
		var at time.Time
		if err := rows.Scan(&database, &u, &at); err != nil {
			t.Fatal(err)
		}
		uuids, times = append(uuids, u), append(times, at)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	env := map[string]string{"DATABASE_URL": url, "DRY_RUN": "true", "POLL_INTERVAL": "10ms"}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, stdout, stderr) }()
	waitFor(t, "the queue to drain", func() bool { return queueLength(t, pool) == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}

	topic := "pg2kafka." + database + ".products"
	at := func(i int) string { return times[i].UTC().Format(time.RFC3339Nano) }
	headers := func(i int, statement string) string {
		return `"headers":{"pg2kafka-event-id":"` + uuids[i] + `","pg2kafka-statement":"` + statement + `","pg2kafka-table":"public.products"}`
	}
	want := strings.Join([]string{
		`{"topic":"` + topic + `","key":"CM01-R","value":{"uuid":"` + uuids[0] + `","external_id":"CM01-R","statement":"SNAPSHOT","data":{"sku":"CM01-R","name":"Red Mug"},"created_at":"` + at(0) + `"},` + headers(0, "SNAPSHOT") + `}`,
		`{"topic":"` + topic + `","key":"CM01-R","value":{"uuid":"` + uuids[1] + `","external_id":"CM01-R","statement":"UPDATE","data":{"name":"Big Red Coffee Mug <&>"},"created_at":"` + at(1) + `"},` + headers(1, "UPDATE") + `}`,
		`{"topic":"` + topic + `","key":"CM01-R","value":{"uuid":"` + uuids[2] + `","external_id":"CM01-R","statement":"DELETE","data":{},"created_at":"` + at(2) + `"},` + headers(2, "DELETE") + `}`,
	}, "\n") + "\n"
	if got := stdout.String(); got != want {
		t.Fatalf("stdout:\n%s\nwant:\n%s", got, want)
	}
	if strings.Contains(stderr.String(), "{") && !strings.Contains(stderr.String(), "level=") {
		t.Fatalf("stderr holds events rather than logs:\n%s", stderr)
	}
}

func TestConfigErrorExitsWithStatus2(t *testing.T) {
	t.Parallel()
	cmd, stdout, stderr := pg2kafkaCommand(t, "DATABASE_URL=postgres://app:hunter2@db/shop", "KAFKA_PRODUCER_URL=", "KAFKA_BROKER=", "DRY_RUN=perhaps")
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2", err)
	}
	if want := "pg2kafka: DRY_RUN=\"perhaps\": must be true or false\n"; stderr.String() != want {
		t.Fatalf("stderr = %q, want %q", stderr.String(), want)
	}
	if stdout.String() != "" {
		t.Fatalf("stdout = %q, want nothing", stdout.String())
	}
}

// TestSIGTERMMidStream stops a real pg2kafka process with SIGTERM while a
// writer keeps committing, and checks that it exits 0 and that every event
// is either on the topic, once, or still queued.
func TestSIGTERMMidStream(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		`SELECT pg2kafka.setup('orders', 'id')`,
	)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()

	cmd, _, stderr := pg2kafkaCommand(t,
		"DATABASE_URL="+url,
		"KAFKA_PRODUCER_URL=kafka://"+strings.Join(cluster.ListenAddrs(), ","),
		"KAFKA_CREATE_TOPICS=true",
		"BATCH_SIZE=50",
		"POLL_INTERVAL=5ms",
	)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	writerCtx, stopWriter := context.WithCancel(context.Background())
	writerDone := make(chan error, 1)
	go func() {
		for i := 0; writerCtx.Err() == nil && i < 2000; i++ {
			_, err := pool.Exec(context.Background(), `INSERT INTO orders SELECT g, 'new' FROM generate_series($1::int, $1 + 9) g`, i*10)
			if err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()

	client, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	admin := kadm.NewClient(client)
	var database string
	if err := pool.QueryRow(context.Background(), `SELECT current_database()`).Scan(&database); err != nil {
		t.Fatal(err)
	}
	topic := "pg2kafka." + database + ".orders"
	defer func() {
		if t.Failed() {
			t.Logf("pg2kafka stderr:\n%s", stderr)
		}
	}()
	waitFor(t, "records to flow", func() bool {
		ends, err := admin.ListEndOffsets(context.Background(), topic)
		var n int64
		if err == nil {
			ends.Each(func(o kadm.ListedOffset) { n += max(o.Offset, 0) })
		}
		return n >= 500
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("pg2kafka exited with %v after SIGTERM, want status 0\nstderr:\n%s", err, stderr)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("pg2kafka still running 10s after SIGTERM\nstderr:\n%s", stderr)
	}
	stopWriter()
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}

	var written []string
	rows, err := pool.Query(context.Background(), `SELECT id::text FROM orders ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		written = append(written, id)
	}
	var queued []string
	rows, err = pool.Query(context.Background(), `SELECT external_id FROM pg2kafka.outbound_event_queue`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		queued = append(queued, id)
	}
	shipped := readAll(t, cluster.ListenAddrs(), topic)

	seen := make(map[string]int)
	for _, id := range shipped {
		seen[id]++
		if seen[id] > 1 {
			t.Errorf("order %s shipped twice", id)
		}
	}
	for _, id := range queued {
		if seen[id] > 0 {
			t.Errorf("order %s shipped and still queued", id)
		}
		seen[id]++
	}
	for _, id := range written {
		if seen[id] != 1 {
			t.Errorf("order %s: on the topic or in the queue %d times, want once", id, seen[id])
		}
	}
	if len(seen) != len(written) {
		t.Errorf("%d orders accounted for, %d written", len(seen), len(written))
	}
	t.Logf("%d orders written, %d shipped before SIGTERM, %d left queued", len(written), len(shipped), len(queued))
}

// readAll returns the external IDs of every record on topic, in no
// particular order.
func readAll(t *testing.T, brokers []string, topic string) []string {
	t.Helper()
	client, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ends, err := kadm.NewClient(client).ListEndOffsets(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) { total += max(o.Offset, 0) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ids []string
	for int64(len(ids)) < total {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records", len(ids), total)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			var event struct {
				ExternalID string `json:"external_id"`
			}
			if err := json.Unmarshal(r.Value, &event); err != nil {
				t.Fatalf("record %s: %v", r.Value, err)
			}
			ids = append(ids, event.ExternalID)
		})
	}
	slices.Sort(ids)
	return ids
}

type syncBuffer = syncbuf.Buffer

// TestLogsNeverShowThePassword runs pg2kafka against a Postgres that is not
// there, so that it logs its connection attempts, and against one that
// refuses the login, and checks that neither the logs nor the error show the
// password.
func TestLogsNeverShowThePassword(t *testing.T) {
	t.Parallel()
	const password = "hunter2-s3cret"
	for _, url := range []string{
		"postgres://app:" + password + "@127.0.0.1:1/shop?connect_timeout=1",
		"postgres://no_such_role:" + password + "@127.0.0.1:5432/postgres",
		"host=127.0.0.1 port=1 user=app password=" + password + " dbname=shop",
	} {
		ctx, cancel := context.WithCancel(context.Background())
		stdout, stderr := &syncBuffer{}, &syncBuffer{}
		env := map[string]string{"DATABASE_URL": url, "DRY_RUN": "true", "LOG_LEVEL": "debug"}
		done := make(chan error, 1)
		go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, stdout, stderr) }()
		// Either it is refused at once, or it waits, logging its attempts.
		var err error
		waitFor(t, "a refusal or a logged attempt", func() bool {
			select {
			case err = <-done:
				return true
			default:
				if strings.Contains(stderr.String(), "waiting for Postgres") {
					cancel()
					err = <-done
					return true
				}
				return false
			}
		})
		cancel()
		if err != nil && strings.Contains(err.Error(), password) {
			t.Errorf("error shows the password: %v", err)
		}
		if strings.Contains(stderr.String(), password) {
			t.Errorf("logs show the password:\n%s", stderr)
		}
	}
}

// pg2kafka stops at start, saying what to run, unless the schema is at its
// own version: a shipper and a schema out of step would ship events wrongly.
func TestRefusesASchemaOfAnotherVersion(t *testing.T) {
	t.Parallel()
	const install = "run pg2kafka migrate (or start with PERFORM_MIGRATIONS=true) as the owner of the database"
	latest := outbox.LatestVersion()
	for _, tt := range []struct {
		name    string
		prepare func(context.Context, *pgxpool.Pool) error
		want    string
	}{
		{"not installed", func(context.Context, *pgxpool.Pool) error { return nil },
			"pg2kafka: outbox: pg2kafka is not installed in this database: " + install},
		{"older", func(ctx context.Context, pool *pgxpool.Pool) error {
			if err := outbox.Migrate(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
				return err
			}
			return outbox.MigrateDownTo(ctx, pool, latest-1)
		}, fmt.Sprintf("pg2kafka: outbox: the pg2kafka schema is at version %d and this pg2kafka needs version %d: %s", latest-1, latest, install)},
		{"newer", func(ctx context.Context, pool *pgxpool.Pool) error {
			if err := outbox.Migrate(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
				return err
			}
			_, err := pool.Exec(ctx, `INSERT INTO pg2kafka.goose_db_version (version_id, is_applied) VALUES ($1, true)`, latest+1)
			return err
		}, fmt.Sprintf("pg2kafka: outbox: the pg2kafka schema is at version %d, newer than this pg2kafka knows (%d): run the pg2kafka release that installed it, or a newer one", latest+1, latest)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool, url := pgtest.NewPool(t)
			if err := tt.prepare(t.Context(), pool); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{"DATABASE_URL": url, "DRY_RUN": "true"}
			var stdout, stderr syncBuffer
			err := run(t.Context(), nil, func(k string) string { return env[k] }, &stdout, &stderr)
			var report strings.Builder
			if code := exitCode(err, &report); code != 1 || report.String() != tt.want+"\n" {
				t.Errorf("exit status %d, stderr ends %q; want 1, %q", code, report.String(), tt.want+"\n")
			}
			if stdout.String() != "" {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}
