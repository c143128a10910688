package outbox_test

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// The bad input catalogue: each case either fails with a clear error or has
// the outcome asserted here, which the "Edge cases" table of docs/guarantees.md lists.
// Cases setup_test.go covers already (injection-shaped, missing, mixed-case
// and 63-byte table names) are not repeated.

func TestBadInputSetupNames(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("c", 63) // the longest identifier Postgres keeps
	colHint := "external_id_name must name a column of the table, spelled exactly (names are case-sensitive)."
	b := setup(t,
		fmt.Sprintf(`CREATE TABLE items (id int, %q text, dropped text)`, long),
		`ALTER TABLE items DROP COLUMN dropped`,
		`CREATE TABLE gone (id int)`,
		`DROP TABLE gone`,
	)
	tests := []struct {
		name string
		sql  string
		want pgconn.PgError
	}{
		// Postgres truncates a 64-byte identifier in SQL, but
		// external_id_name is a string: it must be the column's stored name.
		{"64-byte column name", fmt.Sprintf(`SELECT pg2kafka.setup('items', '%sc')`, long),
			pgconn.PgError{Code: "42703", Message: fmt.Sprintf("pg2kafka.setup: table public.items has no column %sc", long), Hint: colHint}},
		{"dropped column", `SELECT pg2kafka.setup('items', 'dropped')`,
			pgconn.PgError{Code: "42703", Message: "pg2kafka.setup: table public.items has no column dropped", Hint: colHint}},
		{"dropped table", `SELECT pg2kafka.setup('gone', 'id')`,
			pgconn.PgError{Code: "42P01", Message: `relation "gone" does not exist`}},
		{"injection-shaped 63-byte column", `SELECT pg2kafka.setup('items', '` + strings.Repeat("x", 40) + `"; DROP TABLE items; --')`,
			pgconn.PgError{Code: "42703", Message: `pg2kafka.setup: table public.items has no column "` + strings.Repeat("x", 40) + `""; DROP TABLE items; --"`, Hint: colHint}},
	}
	t.Run("cases", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				_, err := b.pool.Exec(b.ctx, tt.sql)
				requirePgError(t, err, tt.want)
			})
		}
	})
	b.requireQueue(t)

	// The 63-byte column itself keys events.
	b.exec(t, fmt.Sprintf(`SELECT pg2kafka.setup('items', '%s')`, long),
		fmt.Sprintf(`INSERT INTO items (id, %q) VALUES (1, 'k1')`, long))
	b.requireQueue(t,
		queued{ptr("k1"), "public", "items", "INSERT", fmt.Sprintf(`{"id": 1, "%s": "k1"}`, long)},
	)
}

func TestBadInputExternalIDValues(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("é", 5120) // 10 KB of UTF-8
	b := setup(t, `CREATE TABLE items (id int PRIMARY KEY, k text)`,
		`SELECT pg2kafka.setup('items', 'k')`)
	b.exec(t,
		`INSERT INTO items VALUES (1, NULL)`,
		`INSERT INTO items VALUES (2, '')`,
		`INSERT INTO items VALUES (3, repeat('é', 5120))`,
		`INSERT INTO items VALUES (4, 'ünï-😀')`,
		`INSERT INTO items VALUES (5, ' padded ')`,
	)
	b.requireQueue(t,
		queued{nil, "public", "items", "INSERT", `{"k": null, "id": 1}`},
		queued{ptr(""), "public", "items", "INSERT", `{"k": "", "id": 2}`},
		queued{ptr(big), "public", "items", "INSERT", `{"k": "` + big + `", "id": 3}`},
		queued{ptr("ünï-😀"), "public", "items", "INSERT", `{"k": "ünï-😀", "id": 4}`},
		queued{ptr(" padded "), "public", "items", "INSERT", `{"k": " padded ", "id": 5}`},
	)
}

// An UPDATE of the key column is one UPDATE event under the new key: the old
// key gets no event of its own. A consumer keyed by external_id that must
// forget the old key asks for include_old, whose "old" holds it.
func TestBadInputExternalIDChanged(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, ordersSQL,
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`SELECT pg2kafka.setup('products', 'sku', snapshot => false)`,
		`SELECT pg2kafka.setup('orders', 'customer', include_old => true, snapshot => false)`,
		`UPDATE products SET sku = 'A2'`,
		`UPDATE orders SET customer = 'bob', status = 'sent'`,
	)
	b.requireQueue(t,
		queued{ptr("A2"), "public", "products", "UPDATE", `{"sku": "A2"}`},
		queued{ptr("bob"), "public", "orders", "UPDATE", `{"status": "sent", "customer": "bob"}`},
	)
	var old *string
	if err := b.pool.QueryRow(b.ctx, `SELECT old::text FROM pg2kafka.outbound_event_queue WHERE table_name = 'orders'`).Scan(&old); err != nil {
		t.Fatal(err)
	}
	if want := `{"status": "new", "customer": "ann"}`; old == nil || *old != want {
		t.Errorf("old = %v, want %s", old, want)
	}
}

// data is to_jsonb of the row: these are the types whose JSON a consumer
// might not guess.
func TestBadInputColumnTypes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		ddl    []string // before the table
		column string   // v's type
		value  string   // v's value, SQL
		want   string   // data
	}{
		{"bytea", nil, "bytea", `'\xdeadbeef'::bytea`, `{"k": "1", "v": "\\xdeadbeef"}`},
		{"numeric NaN", nil, "numeric", `'NaN'`, `{"k": "1", "v": "NaN"}`},
		{"1000-digit numeric", nil, "numeric", `repeat('9', 1000)::numeric`, `{"k": "1", "v": ` + strings.Repeat("9", 1000) + `}`},
		{"int array with null", nil, "int[]", `'{1,2,NULL}'`, `{"k": "1", "v": [1, 2, null]}`},
		{"2-d text array", nil, "text[]", `'{{a,b},{c,"d e"}}'`, `{"k": "1", "v": [["a", "b"], ["c", "d e"]]}`},
		{"json", nil, "json", `'{"b": 1,  "a": [true], "b": 2}'`, `{"k": "1", "v": {"a": [true], "b": 2}}`},
		{"jsonb", nil, "jsonb", `'{"b": 1, "a": null}'`, `{"k": "1", "v": {"a": null, "b": 1}}`},
		{"json string scalar", nil, "jsonb", `'"x"'`, `{"k": "1", "v": "x"}`},
		{"enum", []string{`CREATE TYPE mood AS ENUM ('sad', 'happy')`}, "mood", `'happy'`, `{"k": "1", "v": "happy"}`},
		{"domain", []string{`CREATE DOMAIN positive AS int CHECK (VALUE > 0)`}, "positive", `7`, `{"k": "1", "v": 7}`},
		{"money", nil, "money", `12.34`, `{"k": "1", "v": "$12.34"}`},
		{"timestamp infinity", nil, "timestamp", `'infinity'`, `{"k": "1", "v": "infinity"}`},
		{"timestamptz -infinity", nil, "timestamptz", `'-infinity'`, `{"k": "1", "v": "-infinity"}`},
		{"timestamptz", nil, "timestamptz", `'2024-02-29 12:00:00+00'`, `{"k": "1", "v": "2024-02-29T12:00:00+00:00"}`},
		{"interval", nil, "interval", `'1 mon 2 days 03:04:05.5'`, `{"k": "1", "v": "1 mon 2 days 03:04:05.5"}`},
		{"negative interval", nil, "interval", `'-1 day'`, `{"k": "1", "v": "-1 days"}`},
		{"composite", []string{`CREATE TYPE pair AS (a int, b text)`}, "pair", `ROW(1, 'x')`, `{"k": "1", "v": {"a": 1, "b": "x"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sql := append(tt.ddl,
				`CREATE TABLE items (k text, v `+tt.column+`)`,
				`SELECT pg2kafka.setup('items', 'k')`,
			)
			b := setup(t, sql...)
			// One connection: the time zone applies to the INSERT.
			err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(b.ctx, `SET LOCAL TIME ZONE 'UTC'`); err != nil {
					return err
				}
				_, err := tx.Exec(b.ctx, `INSERT INTO items VALUES ('1', `+tt.value+`)`)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			b.requireQueue(t, queued{ptr("1"), "public", "items", "INSERT", tt.want})
		})
	}
}

// A stored generated column is in data with its value, and in an UPDATE's
// data when it changed.
func TestBadInputGeneratedColumn(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE items (k text, n int, twice int GENERATED ALWAYS AS (n * 2) STORED)`,
		`SELECT pg2kafka.setup('items', 'k')`,
		`INSERT INTO items (k, n) VALUES ('1', 2)`,
		`UPDATE items SET n = 3`,
	)
	b.requireQueue(t,
		queued{ptr("1"), "public", "items", "INSERT", `{"k": "1", "n": 2, "twice": 4}`},
		queued{ptr("1"), "public", "items", "UPDATE", `{"n": 3, "twice": 6}`},
	)
}

// A 5 MB value, TOASTed, is in the INSERT's data whole, and left out of an
// UPDATE that does not change it.
func TestBadInputToastedText(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE items (k text, n int, body text)`,
		`SELECT pg2kafka.setup('items', 'k')`,
		`INSERT INTO items VALUES ('1', 1, repeat('0123456789', 524288))`,
		`UPDATE items SET n = 2`,
	)
	if n := b.count(t, `
		SELECT count(*) FROM pg2kafka.outbound_event_queue
		WHERE statement = 'INSERT' AND external_id = '1' AND data ->> 'body' = repeat('0123456789', 524288)
		  AND octet_length(data ->> 'body') = 5242880`); n != 1 {
		t.Errorf("%d INSERT events carry the 5 MB body, want 1", n)
	}
	rows, _ := b.pool.Query(b.ctx, `SELECT statement || ' ' || data::text FROM pg2kafka.outbound_event_queue WHERE statement = 'UPDATE'`)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{`UPDATE {"n": 2}`}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("UPDATE events = %q, want %q", got, want)
	}
}

// Columns added, dropped or renamed while a table is tracked: events after
// the change have the table's new shape. Renaming the key column leaves the
// trigger looking for the old name, so external_id is null until setup() is
// called again with the new name.
func TestBadInputAlterTrackedTable(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `SELECT pg2kafka.setup('products', 'sku')`)
	conn, notices := b.connect(t)
	b.exec(t,
		`ALTER TABLE products ADD COLUMN stock int DEFAULT 0`,
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`UPDATE products SET stock = 5`,
		`ALTER TABLE products DROP COLUMN price`,
		`INSERT INTO products VALUES (2, 'B2', 'Gadget')`,
		`ALTER TABLE products RENAME COLUMN name TO title`,
		`UPDATE products SET title = 'Gizmo' WHERE id = 2`,
		`ALTER TABLE products RENAME COLUMN sku TO code`,
		`INSERT INTO products VALUES (3, 'C3', 'Doohickey')`,
	)
	if _, err := conn.Exec(b.ctx, `SELECT pg2kafka.setup('products', 'code')`); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `INSERT INTO products VALUES (4, 'D4', 'Thing')`)
	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5, "stock": 0}`},
		queued{ptr("A1"), "public", "products", "UPDATE", `{"stock": 5}`},
		queued{ptr("B2"), "public", "products", "INSERT", `{"id": 2, "sku": "B2", "name": "Gadget", "stock": 0}`},
		queued{ptr("B2"), "public", "products", "UPDATE", `{"title": "Gizmo"}`},
		queued{nil, "public", "products", "INSERT", `{"id": 3, "code": "C3", "stock": 0, "title": "Doohickey"}`},
		queued{ptr("D4"), "public", "products", "INSERT", `{"id": 4, "code": "D4", "stock": 0, "title": "Thing"}`},
	)
	if got, want := noticeTexts(*notices), []string{"NOTICE 00000 pg2kafka.setup: public.products is already tracked; its options are changed"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("notices = %q, want %q", got, want)
	}
}

// DROP TABLE takes the trigger with it; the events queued before it still
// ship. The registry row stays, naming the table's old OID, until teardown()
// of that OID removes it.
func TestBadInputDropTrackedTable(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `SELECT pg2kafka.setup('products', 'sku')`,
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
	)
	var oid uint32
	if err := b.pool.QueryRow(b.ctx, `SELECT 'products'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `DROP TABLE products`)
	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
	)
	if n := b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgname = 'pg2kafka_enqueue_event'`); n != 0 {
		t.Errorf("%d pg2kafka triggers left, want 0", n)
	}
	var relation string
	if err := b.pool.QueryRow(b.ctx, `SELECT relation::text FROM pg2kafka.tracked_tables WHERE table_name = 'products'`).Scan(&relation); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint(oid); relation != want {
		t.Errorf("registry relation = %s, want the dropped table's OID %s", relation, want)
	}

	// The cleanup docs/guarantees.md gives.
	b.exec(t, `SELECT pg2kafka.teardown(relation) FROM pg2kafka.tracked_tables WHERE NOT EXISTS (SELECT FROM pg_class WHERE oid = relation)`)
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.tracked_tables`); n != 0 {
		t.Errorf("%d registry rows left, want 0", n)
	}
	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
	)
	// A new table of the same name is a new table to set up.
	b.exec(t, productsSQL, `INSERT INTO products VALUES (2, 'B2', 'Gadget', 1)`)
	if n := b.triggers(t, "products"); n != 0 {
		t.Errorf("new products has %d pg2kafka triggers, want 0", n)
	}
}

// TRUNCATE fires no row triggers: its rows would leave no DELETE events. A
// tracked table refuses it, naming the way out; once torn down, the table
// can be truncated again, and that ships nothing.
func TestBadInputTruncateRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `CREATE SCHEMA "Sales"`, `CREATE TABLE "Sales"."Order Items" ("SKU" text, qty int)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`SELECT pg2kafka.setup('"Sales"."Order Items"', 'SKU')`,
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
	)
	tests := []struct {
		name  string
		sql   string
		table string
		fix   string
	}{
		{"plain", `TRUNCATE products`, "public.products", "DELETE FROM public.products"},
		{"quoted", `TRUNCATE "Sales"."Order Items"`, `"Sales"."Order Items"`, `DELETE FROM "Sales"."Order Items"`},
		{"with another table", `TRUNCATE "Sales"."Order Items", products CASCADE`, `"Sales"."Order Items"`, `DELETE FROM "Sales"."Order Items"`},
	}
	t.Run("cases", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				_, err := b.pool.Exec(b.ctx, tt.sql)
				requirePgError(t, err, pgconn.PgError{
					Code:    "55000",
					Message: "pg2kafka: TRUNCATE of tracked table " + tt.table + " is refused: it would remove rows without DELETE events",
					Hint: "Use " + tt.fix + ", which ships a DELETE event per row, or stop tracking the table first with SELECT pg2kafka.teardown('" +
						strings.ReplaceAll(tt.table, "'", "''") + "').",
				})
			})
		}
	})
	// Refused under the replica role too.
	err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(b.ctx, `SET LOCAL session_replication_role = replica`); err != nil {
			return err
		}
		_, err := tx.Exec(b.ctx, `TRUNCATE products`)
		return err
	})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55000" {
		t.Errorf("TRUNCATE under replica role: err = %v, want the refusal", err)
	}
	b.exec(t, `DELETE FROM products`)
	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
		queued{ptr("A1"), "public", "products", "DELETE", `{}`},
	)

	b.exec(t, `SELECT pg2kafka.teardown('products')`,
		`INSERT INTO products VALUES (2, 'B2', 'Gadget', 1)`,
		`TRUNCATE products`)
	if n := b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'products'::regclass`); n != 0 {
		t.Errorf("products has %d triggers after teardown, want 0", n)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 2 {
		t.Errorf("queue holds %d events, want the 2 from before teardown", n)
	}
}

// Ordinary triggers do not fire under session_replication_role = replica
// (pg_restore --disable-triggers, logical replication's apply workers): a
// tracked table's triggers are ENABLE ALWAYS, so those writes ship too.
func TestBadInputReplicaRoleStillCaptured(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL,
		`SELECT pg2kafka.setup('products', 'sku')`,
		// Changed options replace the trigger, which must stay ALWAYS.
		`SELECT pg2kafka.setup('products', 'sku', operations => '{INSERT,UPDATE}')`,
	)
	err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		for _, sql := range []string{
			`SET LOCAL session_replication_role = replica`,
			`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
			`UPDATE products SET price = 10`,
		} {
			if _, err := tx.Exec(b.ctx, sql); err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
		queued{ptr("A1"), "public", "products", "UPDATE", `{"price": 10}`},
	)
	requireTriggerStates(t, b, "products", "pg2kafka_enqueue_event A", "pg2kafka_refuse_truncate A")
}

// requireTriggerStates fails the test unless the table's triggers are want,
// each "name tgenabled", by name.
func requireTriggerStates(t *testing.T, b *bundle, table string, want ...string) {
	t.Helper()
	rows, _ := b.pool.Query(b.ctx, `SELECT tgname || ' ' || tgenabled::text FROM pg_trigger WHERE tgrelid = $1::regclass ORDER BY tgname`, table)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("%s triggers = %q, want %q", table, got, want)
	}
}

// Migration 5 guards the tables tracked before it, and its Down takes the
// guards away and sets the triggers back to plain ENABLE.
func TestBadInputGuardMigration(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL)
	if err := outbox.MigrateDownTo(b.ctx, b.pool, 4); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `SELECT pg2kafka.setup('products', 'sku')`)
	requireTriggerStates(t, b, "products", "pg2kafka_enqueue_event O")

	if err := outbox.Migrate(b.ctx, b.pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	requireTriggerStates(t, b, "products", "pg2kafka_enqueue_event A", "pg2kafka_refuse_truncate A")
	if _, err := b.pool.Exec(b.ctx, `TRUNCATE products`); err == nil {
		t.Error("TRUNCATE of a table tracked before migration 5 succeeded, want it refused")
	}

	if err := outbox.MigrateDownTo(b.ctx, b.pool, 4); err != nil {
		t.Fatal(err)
	}
	requireTriggerStates(t, b, "products", "pg2kafka_enqueue_event O")
}
