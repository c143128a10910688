package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// deadLetter moves the queued events of table to the dead-letter table, as
// the shipper does with events Kafka refuses, and returns their ids.
func deadLetter(t *testing.T, pool *pgxpool.Pool, table string) []int64 {
	t.Helper()
	rows, err := pool.Query(t.Context(), `
		WITH taken AS (
		    DELETE FROM pg2kafka.outbound_event_queue WHERE table_name = $1
		    RETURNING id, coalesce(uuid, pg2kafka.event_uuid(id, created_at)) AS uuid, external_id, table_schema, table_name, statement, data, created_at
		)
		INSERT INTO pg2kafka.dead_letter_events (id, uuid, external_id, table_schema, table_name, statement, data, created_at, error, attempts, first_failed_at, last_failed_at)
		SELECT id, uuid, external_id, table_schema, table_name, statement, data, created_at, 'MESSAGE_TOO_LARGE', 1, now(), now() FROM taken
		RETURNING id`, table)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func queryString(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := pool.QueryRow(t.Context(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestSetupCommand(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text, price numeric)`,
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug', 9.5), ('CM02-B', 'Blue Mug', 8)`,
	)
	env := map[string]string{"DATABASE_URL": url}

	runCommand(t, env, "setup", "products", "sku", "-operations", "insert, update", "-columns=sku,name", "-include-old", "-topic", "shop.products.v1").
		require(t, 0, "public.products is tracked, keyed by sku; 2 SNAPSHOT events queued\n", "")
	if got, want := queryString(t, pool, `SELECT format('%s %s %s %s %s %s', external_id_column, operations, columns, include_old, filter, topic) FROM pg2kafka.tracked_tables`),
		"sku {INSERT,UPDATE} {sku,name} t  shop.products.v1"; got != want {
		t.Errorf("tracked_tables: %s, want %s", got, want)
	}
	if got, want := queryString(t, pool, `SELECT string_agg(format('%s %s %s', statement, data, topic), '; ' ORDER BY id) FROM pg2kafka.outbound_event_queue`),
		`SNAPSHOT {"sku": "CM01-R", "name": "Red Mug"} shop.products.v1; SNAPSHOT {"sku": "CM02-B", "name": "Blue Mug"} shop.products.v1`; got != want {
		t.Errorf("queue: %s\nwant %s", got, want)
	}

	// The same options again: Postgres' notice says nothing changed. Flags
	// may come after the arguments or before them.
	runCommand(t, env, "setup", "-operations=INSERT,UPDATE", "products", "-columns", "sku,name", "sku", "-include-old", "-topic=shop.products.v1").
		require(t, 0, "public.products is tracked, keyed by sku; 0 SNAPSHOT events queued\n",
			"level=INFO msg=\"postgres notice\" message=\"pg2kafka.setup: public.products is already tracked; nothing to do\"\n")

	// Options left out go back to their defaults; -snapshot asks for one.
	runCommand(t, env, "setup", "products", "sku", "-snapshot").
		require(t, 0, "public.products is tracked, keyed by sku; 2 SNAPSHOT events queued\n",
			"level=INFO msg=\"postgres notice\" message=\"pg2kafka.setup: public.products is already tracked; its options are changed\"\n")
	if got, want := queryString(t, pool, `SELECT format('%s %s %s %s', operations, columns, include_old, topic) FROM pg2kafka.tracked_tables`), "{INSERT,UPDATE,DELETE}  f "; got != want {
		t.Errorf("tracked_tables after setup without options: %s, want %s", got, want)
	}

	runCommand(t, env, "setup", "products", "sku", "-full-row").
		require(t, 0, "public.products is tracked, keyed by sku; 0 SNAPSHOT events queued\n",
			"level=INFO msg=\"postgres notice\" message=\"pg2kafka.setup: public.products is already tracked; its options are changed\"\n")
	if got, want := queryString(t, pool, `SELECT full_row::text FROM pg2kafka.tracked_tables`), "true"; got != want {
		t.Errorf("tracked_tables after setup -full-row: full_row %s, want %s", got, want)
	}

	// A change that fails says so, and nothing else: no notice that the
	// options changed.
	runCommand(t, env, "setup", "products", "sku", "-filter", "NEW.name <> 'x'").
		require(t, 1, "", "pg2kafka: pg2kafka.setup: filter does not compile: DELETE trigger's WHEN condition cannot reference NEW values (SQLSTATE 42P17); "+
			"hint: On INSERT there is no OLD row and on DELETE no NEW row: a filter on NEW needs operations => '{INSERT,UPDATE}', one on OLD operations => '{UPDATE,DELETE}'.\n")

	mustExec(t, pool, `CREATE TABLE "Order Items" (id int PRIMARY KEY)`, `INSERT INTO "Order Items" VALUES (1)`)
	runCommand(t, env, "setup", `"Order Items"`, "id", "-snapshot=false").
		require(t, 0, "public.Order Items is tracked, keyed by id; 0 SNAPSHOT events queued\n", "")

	// Postgres' errors, as setup() raises them.
	runCommand(t, env, "setup", "nope", "id").require(t, 1, "", "pg2kafka: relation \"nope\" does not exist (SQLSTATE 42P01)\n")
	runCommand(t, env, "setup", "products", "nope").require(t, 1, "", "pg2kafka: pg2kafka.setup: table public.products has no column nope (SQLSTATE 42703); hint: external_id_name must name a column of the table, spelled exactly (names are case-sensitive).\n")
	runCommand(t, env, "setup", "products", "sku", "-operations", "insert,truncate").
		require(t, 1, "", "pg2kafka: pg2kafka.setup: operations: unknown operation 'truncate' (SQLSTATE 22023); hint: operations lists some of INSERT, UPDATE and DELETE, e.g. '{INSERT,UPDATE}'.\n")

	// Mistakes on the command line.
	runCommand(t, env, "setup", "products").require(t, 2, "", "pg2kafka: setup takes a table and its key column, e.g. pg2kafka setup orders id; got 1 arguments (see pg2kafka setup -help)\n")
	runCommand(t, env, "setup", "products", "sku", "-snapshot=perhaps").require(t, 2, "", "pg2kafka: invalid boolean value \"perhaps\" for -snapshot: must be true or false (see pg2kafka setup -help)\n")
}

func TestTeardownCommand(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`CREATE TABLE orders (id int PRIMARY KEY)`,
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug'), ('CM02-B', 'Blue Mug')`,
		`INSERT INTO orders VALUES (1)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`SELECT pg2kafka.setup('orders', 'id')`,
	)
	env := map[string]string{"DATABASE_URL": url}

	runCommand(t, env, "teardown", "orders").require(t, 0, "orders is no longer tracked; its queued events still ship\n", "")
	runCommand(t, env, "teardown", "products", "-purge").require(t, 0, "products is no longer tracked; 2 queued events dropped\n", "")
	if got := queryString(t, pool, `SELECT format('%s tracked, queued: %s', (SELECT count(*) FROM pg2kafka.tracked_tables), (SELECT string_agg(table_name, ',') FROM pg2kafka.outbound_event_queue))`); got != "0 tracked, queued: orders" {
		t.Errorf("after teardown: %s, want 0 tracked, queued: orders", got)
	}
	runCommand(t, env, "teardown", "products").
		require(t, 0, "", "level=INFO msg=\"postgres notice\" message=\"pg2kafka.teardown: public.products is not tracked; nothing to do\"\n")
	runCommand(t, env, "teardown", "nope").require(t, 1, "", "pg2kafka: relation \"nope\" does not exist (SQLSTATE 42P01)\n")
	runCommand(t, env, "teardown").require(t, 2, "", "pg2kafka: teardown takes one table, e.g. pg2kafka teardown orders; got 0 arguments (see pg2kafka teardown -help)\n")
}

func TestRequeueCommand(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`INSERT INTO products SELECT 'sku-' || g, 'mug' FROM generate_series(1, 3) g`,
		`SELECT pg2kafka.setup('products', 'sku')`,
	)
	ids := deadLetter(t, pool, "products")
	env := map[string]string{"DATABASE_URL": url}

	runCommand(t, env, "requeue", fmt.Sprint(ids[1]), fmt.Sprint(ids[1])).require(t, 0, "requeued 1 dead letters\n", "")
	if got := queryString(t, pool, `SELECT string_agg(external_id, ',' ORDER BY id) FROM pg2kafka.outbound_event_queue`); got != "sku-2" {
		t.Errorf("queued after requeueing one: %s, want sku-2", got)
	}
	runCommand(t, env, "requeue", fmt.Sprint(ids[1])).require(t, 1, "", "pg2kafka: requeued 0 dead letters; 1 of the ids given are not in pg2kafka.dead_letter_events\n")
	runCommand(t, env, "requeue").require(t, 0, "requeued 2 dead letters\n", "")
	if got := queryString(t, pool, `SELECT string_agg(external_id, ',' ORDER BY id) FROM pg2kafka.outbound_event_queue`); got != "sku-2,sku-1,sku-3" {
		t.Errorf("queued after requeueing all: %s, want sku-2,sku-1,sku-3", got)
	}
	runCommand(t, env, "requeue", "4711x").require(t, 2, "", "pg2kafka: \"4711x\" is not an event id: give the ids of dead letters (SELECT id FROM pg2kafka.dead_letter_events), or none for every one (see pg2kafka requeue -help)\n")
}

func TestTableCommandsHelp(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		command string
		flags   []string
	}{
		{"setup", []string{"-columns list", "-filter condition", "-full-row", "-include-old", "-operations list", "-snapshot", "-topic string"}},
		{"teardown", []string{"-purge"}},
		{"requeue", nil},
		{"backfill", []string{"-chunk-size int (default 10000)"}},
	} {
		got := runCommand(t, nil, tt.command, "-help")
		if got.code != 0 || !strings.HasPrefix(got.stdout, "pg2kafka "+tt.command+" ") {
			t.Errorf("pg2kafka %s -help: exit status %d, usage:\n%s", tt.command, got.code, got.stdout)
		}
		var flags []string
		for line := range strings.Lines(got.stdout) {
			if strings.HasPrefix(line, "  -") {
				flags = append(flags, strings.TrimSpace(line))
			}
		}
		if fmt.Sprint(flags) != fmt.Sprint(tt.flags) {
			t.Errorf("pg2kafka %s -help lists the flags %q, want %q", tt.command, flags, tt.flags)
		}
		if listed := settingsListed(got.stdout); fmt.Sprint(listed) != "[DATABASE_URL LOG_LEVEL LOG_FORMAT]" {
			t.Errorf("pg2kafka %s -help lists the settings %v", tt.command, listed)
		}
	}
}
