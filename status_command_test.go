package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// varying are the parts of pg2kafka status that differ from run to run.
var varying = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\b[0-9]+(\.[0-9]+)?(ms|s|m[0-9.]+s|h[0-9m.]+s)\b`), "AGE"},
	{regexp.MustCompile(`\b[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]+Z\b`), "TIME"},
	{regexp.MustCompile(`(?m)^  [0-9]+ `), "  PID "},
	{regexp.MustCompile(`id [0-9]+,`), "id ID,"},
	{regexp.MustCompile(`~[0-9]+ in the queue`), "~N in the queue"},
}

// steady replaces what varies, and the columns' padding, which varies with
// it.
func steady(s string) string {
	for _, v := range varying {
		s = v.re.ReplaceAllString(s, v.with)
	}
	return padding.ReplaceAllString(s, "$1  ")
}

var padding = regexp.MustCompile(`(\S) {2,}`)

func TestStatusCommand(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		`CREATE TABLE gone (id int PRIMARY KEY)`,
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug'), ('CM02-B', 'Blue Mug')`,
		`INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 30) g`,
		`INSERT INTO gone VALUES (1)`,
		`SELECT pg2kafka.setup('gone', 'id')`,
		`SELECT pg2kafka.teardown('gone')`, // its snapshot stays queued
		`SELECT pg2kafka.setup('products', 'sku', columns => '{sku,name}', include_old => true, filter => $$1 = 1$$, topic => 'shop.products')`,
		`SELECT pg2kafka.setup('orders', 'id', operations => '{INSERT,UPDATE}', snapshot => false)`,
		`SELECT pg2kafka.backfill_chunk('orders', 10)`,
	)
	deadLetter(t, pool, "products")
	env := map[string]string{"DATABASE_URL": url}

	// A shipper's connection, owning every lane.
	claimer := outbox.NewQueue(pool).NewClaimer(slog.New(slog.DiscardHandler), 10*time.Second)
	defer claimer.Close(t.Context())
	if err := claimer.Join(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the claimer to own every lane", func() bool {
		balanced, err := claimer.Rebalance(t.Context())
		return err == nil && balanced && len(claimer.Lanes()) == outbox.Lanes
	})

	got := runCommand(t, env, "status")
	want := strings.ReplaceAll(`schema:       version VERSION (this pg2kafka needs VERSION)
queued:       11 events, the oldest AGE old (id ID, public.gone)
dead letters: 2
dead rows:    ~N in the queue; no snapshot holds them

tables (2 tracked):
  TABLE            KEY  QUEUED  OLDEST  DEAD  BACKFILL          OPTIONS
  public.gone      -    1       AGE     0     -                 not tracked
  public.orders    id   10      AGE     0     10/30 rows (33%)  operations=INSERT,UPDATE
  public.products  sku  0       -       2     -                 columns=sku,name include-old filter="1 = 1" topic=shop.products

shippers:     1 connections, owning 64 of 64 lanes
  PID    FROM       SINCE  LANES
  PID  127.0.0.1  TIME   0-63

needs attention:
  - 2 dead letters: events the destination refused; see SELECT * FROM pg2kafka.dead_letter_events, then pg2kafka requeue
`, "VERSION", fmt.Sprint(outbox.LatestVersion()))
	if got.code != 1 || steady(got.stdout) != steady(want) {
		t.Errorf("exit status %d, stdout:\n%s\nwant 1, stdout:\n%s", got.code, got.stdout, want)
	}
	if want := "pg2kafka: needs attention: 2 dead letters: events the destination refused; see SELECT * FROM pg2kafka.dead_letter_events, then pg2kafka requeue\n"; got.stderr != want {
		t.Errorf("stderr = %q, want %q", got.stderr, want)
	}

	// Requeued, nothing needs attention, unless the oldest event is
	// older than -max-age.
	runCommand(t, env, "requeue")
	if got := runCommand(t, env, "status"); got.code != 0 || !strings.HasSuffix(got.stdout, "\nhealthy\n") || got.stderr != "" {
		t.Errorf("status after requeue: exit status %d, stdout:\n%s\nstderr:\n%s", got.code, got.stdout, got.stderr)
	}
	mustExec(t, pool, `UPDATE pg2kafka.outbound_event_queue SET created_at = now() - interval '1 hour' WHERE table_name = 'gone'`)
	got = runCommand(t, env, "status", "-max-age", "30m")
	if got.code != 1 || !strings.HasSuffix(steady(got.stdout), "\nneeds attention:\n  - the oldest queued event (id ID, public.gone) has waited AGE, longer than AGE\n") {
		t.Errorf("status -max-age 30m: exit status %d, stdout:\n%s", got.code, got.stdout)
	}
	if got := runCommand(t, env, "status", "-max-age", "2h"); got.code != 0 {
		t.Errorf("status -max-age 2h: exit status %d, stdout:\n%s", got.code, got.stdout)
	}

	// The same as JSON, for scripts and the status page.
	got = runCommand(t, env, "status", "-json", "-max-age=30m")
	var s struct {
		outbox.Status
		Healthy  bool     `json:"healthy"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(got.stdout), &s); err != nil {
		t.Fatalf("status -json: %v\n%s", err, got.stdout)
	}
	if got.code != 1 || s.Healthy || len(s.Problems) != 1 || s.Queue.Events != 13 || s.Queue.Estimated || s.Queue.Oldest == nil ||
		s.Queue.Oldest.Table != "public.gone" || time.Duration(s.Queue.Oldest.Age) < time.Hour || len(s.Tables) != 3 ||
		s.Tables[1].Backfill == nil || s.Tables[1].Backfill.RowsDone != 10 || s.Tables[2].Options.Topic != "shop.products" ||
		len(s.Shippers) != 1 || len(s.Shippers[0].Lanes) != 64 || s.SchemaVersion != outbox.LatestVersion() {
		t.Errorf("status -json: exit status %d:\n%s", got.code, got.stdout)
	}
	for _, field := range []string{`"schema_version": `, `"want_schema_version": `, `"age_seconds": `, `"oldest_age_seconds": `, `"key_column": "sku"`, `"rows_done": 10`, `"client_addr": "127.0.0.1"`, `"healthy": false`} {
		if !strings.Contains(got.stdout, field) {
			t.Errorf("status -json lacks %s:\n%s", field, got.stdout)
		}
	}
}

func TestStatusCommandWithoutPg2kafka(t *testing.T) {
	t.Parallel()
	_, url := pgtest.NewPool(t)
	got := runCommand(t, map[string]string{"DATABASE_URL": url}, "status")
	got.require(t, 1, strings.ReplaceAll(`schema:       version 0 (this pg2kafka needs VERSION)

needs attention:
  - pg2kafka is not installed in this database: run pg2kafka migrate (or start with PERFORM_MIGRATIONS=true)
`, "VERSION", fmt.Sprint(outbox.LatestVersion())), "pg2kafka: needs attention: pg2kafka is not installed in this database: run pg2kafka migrate (or start with PERFORM_MIGRATIONS=true)\n")
}

func TestStatusCommandOnAnEmptyQueue(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool, `CREATE TABLE orders (id int PRIMARY KEY)`, `SELECT pg2kafka.setup('orders', 'id')`)
	got := runCommand(t, map[string]string{"DATABASE_URL": url}, "status")
	want := strings.ReplaceAll(`schema:       version VERSION (this pg2kafka needs VERSION)
queued:       0 events
dead letters: 0
dead rows:    ~0 in the queue; no snapshot holds them

tables (1 tracked):
  TABLE          KEY  QUEUED  OLDEST  DEAD  BACKFILL  OPTIONS
  public.orders  id   0       -       0     -         -

shippers:     0 connections, owning 0 of 64 lanes

healthy
`, "VERSION", fmt.Sprint(outbox.LatestVersion()))
	got.require(t, 0, want, "")
}

func TestDescribeHorizon(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		h    outbox.Horizon
		want string
	}{
		{outbox.Horizon{DeadRows: 12}, "~12 in the queue; no snapshot holds them"},
		{outbox.Horizon{DeadRows: 1200000, Holder: "session", XIDAge: 9, Since: now.Add(-2 * time.Hour), PID: 4242, Name: "pg_dump",
			State: "active", QueryStart: now.Add(-2 * time.Hour)},
			"~1200000 in the queue; the oldest snapshot, which vacuum must keep them for, is 2h0m0s old, held by session (pid 4242, pg_dump, active, query since 2026-12-01T01:00:00Z)"},
		{outbox.Horizon{DeadRows: 5, Holder: "replication slot", XIDAge: 310, Name: "standby1"},
			"~5 in the queue; the oldest snapshot, which vacuum must keep them for, is 310 transactions old, held by replication slot (standby1)"},
	} {
		if got := describeHorizon(tt.h, now); got != tt.want {
			t.Errorf("describeHorizon(%+v)\n got %q\nwant %q", tt.h, got, tt.want)
		}
	}
}
