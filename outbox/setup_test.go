package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// bundle is a fresh database with the pg2kafka schema installed.
type bundle struct {
	ctx        context.Context
	pool       *pgxpool.Pool
	connString string
}

// setup gives the test its own database, migrated to the newest version, and
// runs the statements in sql (a table to track, say) in it.
func setup(t *testing.T, sql ...string) *bundle {
	t.Helper()
	pool, connString := pgtest.NewPool(t)
	b := &bundle{ctx: t.Context(), pool: pool, connString: connString}
	if err := outbox.Migrate(b.ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	b.exec(t, sql...)
	return b
}

// exec runs each statement, failing the test on the first error.
func (b *bundle) exec(t *testing.T, sql ...string) {
	t.Helper()
	for _, s := range sql {
		if _, err := b.pool.Exec(b.ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// connect opens a connection of its own, which records the notices Postgres
// sends it. Notices arrive while a statement's results are read, so they are
// all recorded by the time Exec returns.
func (b *bundle) connect(t *testing.T) (*pgx.Conn, *[]*pgconn.Notice) {
	t.Helper()
	cfg, err := pgx.ParseConfig(b.connString)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var notices []*pgconn.Notice
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		defer mu.Unlock()
		notices = append(notices, n)
	}
	conn, err := pgx.ConnectConfig(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn, &notices
}

// queued is a row of pg2kafka.outbound_event_queue as a consumer sees it;
// data is jsonb's text form, whose key order and spacing are canonical.
type queued struct {
	ExternalID  *string `db:"external_id"`
	TableSchema string  `db:"table_schema"`
	TableName   string  `db:"table_name"`
	Statement   string  `db:"statement"`
	Data        string  `db:"data"`
}

func (q queued) String() string {
	id := "NULL"
	if q.ExternalID != nil {
		id = fmt.Sprintf("%q", *q.ExternalID)
	}
	return fmt.Sprintf("{%s %q.%q %s %s}", id, q.TableSchema, q.TableName, q.Statement, q.Data)
}

func ptr(s string) *string { return &s }

// requireQueue fails the test unless the queue holds exactly want, in id order.
func (b *bundle) requireQueue(t *testing.T, want ...queued) {
	t.Helper()
	rows, _ := b.pool.Query(b.ctx, `
		SELECT external_id, table_schema, table_name, statement, data::text AS data
		FROM pg2kafka.outbound_event_queue ORDER BY id`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByName[queued])
	if err != nil {
		t.Fatalf("read queue: %v", err)
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("queue:\n got %v\nwant %v", got, want)
	}
}

// count returns the single integer the query selects.
func (b *bundle) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(b.ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// triggers counts the pg2kafka triggers on the table.
func (b *bundle) triggers(t *testing.T, table string) int {
	t.Helper()
	return b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = 'pg2kafka_enqueue_event'`, table)
}

const productsSQL = `CREATE TABLE products (id int PRIMARY KEY, sku text, name text, price numeric)`

func TestSetupSnapshotsExistingRows(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5), (2, 'B2', NULL, NULL)`)

	b.exec(t, `SELECT pg2kafka.setup('products', 'sku')`,
		`INSERT INTO products VALUES (3, 'C3', 'Gadget', 1)`)

	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "SNAPSHOT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
		queued{ptr("B2"), "public", "products", "SNAPSHOT", `{"id": 2, "sku": "B2", "name": null, "price": null}`},
		queued{ptr("C3"), "public", "products", "INSERT", `{"id": 3, "sku": "C3", "name": "Gadget", "price": 1}`},
	)
}

func TestSetupOnEmptyTableSnapshotsNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL)

	b.exec(t, `SELECT pg2kafka.setup('products', 'sku')`)

	b.requireQueue(t)
}

func TestTriggerInsertShipsFullRow(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `SELECT pg2kafka.setup('products', 'sku')`)

	b.exec(t, `INSERT INTO products VALUES (1, 'A1', NULL, 2.50)`)

	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": null, "price": 2.50}`},
	)
}

func TestTriggerUpdateShipsChangedColumns(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`SELECT pg2kafka.setup('products', 'sku')`)

	b.exec(t,
		`UPDATE products SET price = 10, name = 'Widget'`, // name unchanged
		`UPDATE products SET name = NULL`,
		`UPDATE products SET sku = 'A2'`, // the event is keyed by the new value
	)

	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "SNAPSHOT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
		queued{ptr("A1"), "public", "products", "UPDATE", `{"price": 10}`},
		queued{ptr("A1"), "public", "products", "UPDATE", `{"name": null}`},
		queued{ptr("A2"), "public", "products", "UPDATE", `{"sku": "A2"}`},
	)
}

func TestTriggerUpdateChangingNothingShipsNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5), (2, 'B2', NULL, NULL)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`DELETE FROM pg2kafka.outbound_event_queue`) // the snapshot

	b.exec(t,
		`UPDATE products SET name = name`,
		`UPDATE products SET price = 9.5 WHERE id = 1`,
		`UPDATE products SET name = NULL WHERE id = 2`,
	)

	b.requireQueue(t)
}

func TestTriggerDeleteShipsEmptyData(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`DELETE FROM pg2kafka.outbound_event_queue`)

	b.exec(t, `DELETE FROM products WHERE id = 1`)

	b.requireQueue(t, queued{ptr("A1"), "public", "products", "DELETE", `{}`})
}

func TestTriggerNullExternalID(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, NULL, 'Old', NULL)`,
		`SELECT pg2kafka.setup('products', 'sku')`)

	b.exec(t,
		`INSERT INTO products VALUES (2, NULL, 'Widget', NULL)`,
		`UPDATE products SET name = 'New' WHERE id = 1`,
		`DELETE FROM products WHERE id = 2`,
	)

	b.requireQueue(t,
		queued{nil, "public", "products", "SNAPSHOT", `{"id": 1, "sku": null, "name": "Old", "price": null}`},
		queued{nil, "public", "products", "INSERT", `{"id": 2, "sku": null, "name": "Widget", "price": null}`},
		queued{nil, "public", "products", "UPDATE", `{"name": "New"}`},
		queued{nil, "public", "products", "DELETE", `{}`},
	)
}

func TestSetupQuotedMixedCaseNames(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales"."Order Items" ("SKU" text, "Qty" int)`,
		`INSERT INTO "Sales"."Order Items" VALUES ('S-1', 1)`)

	b.exec(t, `SELECT pg2kafka.setup('"Sales"."Order Items"', 'SKU')`,
		`INSERT INTO "Sales"."Order Items" VALUES ('S-2', 2)`)

	b.requireQueue(t,
		queued{ptr("S-1"), "Sales", "Order Items", "SNAPSHOT", `{"Qty": 1, "SKU": "S-1"}`},
		queued{ptr("S-2"), "Sales", "Order Items", "INSERT", `{"Qty": 2, "SKU": "S-2"}`},
	)
}

func TestSetupLongAndRepeatedTableNames(t *testing.T) {
	t.Parallel()
	// Postgres truncates identifiers to 63 bytes: these two names are at that
	// limit and share their first 50 bytes, so anything that derived a name
	// from them (a trigger, a function) by appending would collide.
	prefix := strings.Repeat("t", 50)
	long1, long2 := prefix+strings.Repeat("a", 13), prefix+strings.Repeat("b", 13)
	if len(long1) != 63 {
		t.Fatalf("len = %d", len(long1))
	}
	b := setup(t,
		`CREATE TABLE `+long1+` (k text)`,
		`CREATE TABLE `+long2+` (k text)`,
		`CREATE SCHEMA other`,
		`CREATE TABLE public.items (k text)`,
		`CREATE TABLE other.items (k text)`,
	)

	b.exec(t,
		`SELECT pg2kafka.setup('`+long1+`', 'k')`,
		`SELECT pg2kafka.setup('`+long2+`', 'k')`,
		`SELECT pg2kafka.setup('public.items', 'k')`,
		`SELECT pg2kafka.setup('other.items', 'k')`,
		`INSERT INTO `+long1+` VALUES ('1')`,
		`INSERT INTO `+long2+` VALUES ('2')`,
		`INSERT INTO public.items VALUES ('3')`,
		`INSERT INTO other.items VALUES ('4')`,
	)

	b.requireQueue(t,
		queued{ptr("1"), "public", long1, "INSERT", `{"k": "1"}`},
		queued{ptr("2"), "public", long2, "INSERT", `{"k": "2"}`},
		queued{ptr("3"), "public", "items", "INSERT", `{"k": "3"}`},
		queued{ptr("4"), "other", "items", "INSERT", `{"k": "4"}`},
	)
	for _, table := range []string{long1, long2, "public.items", "other.items"} {
		if n := b.triggers(t, table); n != 1 {
			t.Errorf("%s has %d pg2kafka triggers, want 1", table, n)
		}
	}
}

func TestSetupTwiceIsNoOp(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`)
	conn, notices := b.connect(t)

	if _, err := conn.Exec(b.ctx, `SELECT pg2kafka.setup('products', 'sku')`); err != nil {
		t.Fatal(err)
	}
	if len(*notices) != 0 {
		t.Errorf("first setup() sent notices %v, want none", noticeTexts(*notices))
	}
	if _, err := conn.Exec(b.ctx, `SELECT pg2kafka.setup('products', 'sku')`); err != nil {
		t.Fatal(err)
	}

	want := []string{"NOTICE 00000 pg2kafka.setup: public.products is already tracked; nothing to do"}
	if got := noticeTexts(*notices); !reflect.DeepEqual(got, want) {
		t.Errorf("notices = %q, want %q", got, want)
	}
	if n := b.triggers(t, "products"); n != 1 {
		t.Errorf("products has %d pg2kafka triggers, want 1", n)
	}
	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "SNAPSHOT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
	)
}

func noticeTexts(notices []*pgconn.Notice) []string {
	var texts []string
	for _, n := range notices {
		texts = append(texts, n.Severity+" "+n.Code+" "+n.Message)
	}
	return texts
}

func TestSetupErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`CREATE VIEW products_view AS SELECT * FROM products`)

	// setup() runs with its search_path pinned to pg_catalog, so the table
	// it names in its messages is always schema-qualified.
	const columnHint = "external_id_name must name a column of the table, spelled exactly (names are case-sensitive)."
	tests := []struct {
		name string
		sql  string
		want pgconn.PgError
	}{
		{"missing table", `SELECT pg2kafka.setup('nope', 'sku')`,
			pgconn.PgError{Code: "42P01", Message: `relation "nope" does not exist`}},
		{"missing column", `SELECT pg2kafka.setup('products', 'sku2')`,
			pgconn.PgError{Code: "42703", Message: "pg2kafka.setup: table public.products has no column sku2", Hint: columnHint}},
		{"column in the wrong case", `SELECT pg2kafka.setup('products', 'SKU')`,
			pgconn.PgError{Code: "42703", Message: `pg2kafka.setup: table public.products has no column "SKU"`, Hint: columnHint}},
		{"system column", `SELECT pg2kafka.setup('products', 'ctid')`,
			pgconn.PgError{Code: "42703", Message: "pg2kafka.setup: table public.products has no column ctid", Hint: columnHint}},
		{"view", `SELECT pg2kafka.setup('products_view', 'sku')`,
			pgconn.PgError{Code: "42809", Message: "pg2kafka.setup: public.products_view is not a table", Hint: "Only ordinary and partitioned tables can be tracked."}},
		{"null table", `SELECT pg2kafka.setup(NULL, 'sku')`,
			pgconn.PgError{Code: "22004", Message: "pg2kafka.setup: table_name and external_id_name must not be null"}},
		{"null column", `SELECT pg2kafka.setup('products', NULL)`,
			pgconn.PgError{Code: "22004", Message: "pg2kafka.setup: table_name and external_id_name must not be null"}},
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

	// After every case: nothing tracked, nothing queued.
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.tracked_tables`); n != 0 {
		t.Errorf("%d tables tracked, want 0", n)
	}
	b.requireQueue(t)
}

// requirePgError fails the test unless err is a Postgres error with want's
// code, message and hint.
func requirePgError(t *testing.T, err error, want pgconn.PgError) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("err = %v, want Postgres error %s %s", err, want.Code, want.Message)
	}
	got := pgconn.PgError{Code: pgErr.Code, Message: pgErr.Message, Hint: pgErr.Hint}
	if got != want {
		t.Errorf("error:\n got code %s message %q hint %q\nwant code %s message %q hint %q",
			got.Code, got.Message, got.Hint, want.Code, want.Message, want.Hint)
	}
}

func TestSetupRejectsInjection(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`)

	tests := []struct {
		name          string
		table, column string
		want          pgconn.PgError
	}{
		{"column", "products", "sku'); DROP TABLE products; --",
			pgconn.PgError{Code: "42703", Message: `pg2kafka.setup: table public.products has no column "sku'); DROP TABLE products; --"`,
				Hint: "external_id_name must name a column of the table, spelled exactly (names are case-sensitive)."}},
		{"table", "products; DROP TABLE products", "sku",
			pgconn.PgError{Code: "42602", Message: "invalid name syntax"}},
		{"quoted table", `"products""; DROP TABLE products; --"`, "sku",
			pgconn.PgError{Code: "42P01", Message: `relation "products"; DROP TABLE products; --" does not exist`}},
	}
	t.Run("cases", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				// As a client passes them: as parameters of an ordinary call.
				_, err := b.pool.Exec(b.ctx, `SELECT pg2kafka.setup($1, $2)`, tt.table, tt.column)
				requirePgError(t, err, tt.want)
			})
		}
	})

	if n := b.count(t, `SELECT count(*) FROM products WHERE id = 1 AND sku = 'A1'`); n != 1 {
		t.Errorf("products holds %d of its rows, want 1", n)
	}
	if n := b.triggers(t, "products"); n != 0 {
		t.Errorf("products has %d pg2kafka triggers, want 0", n)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.tracked_tables`); n != 0 {
		t.Errorf("%d tables tracked, want 0", n)
	}
	b.requireQueue(t)
}

func TestSetupTableNameWithQuoteAndSemicolon(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE "it's; odd" ("key'); --" text, "v" int)`,
		`INSERT INTO "it's; odd" VALUES ('k1', 1)`)

	if _, err := b.pool.Exec(b.ctx, `SELECT pg2kafka.setup($1, $2)`, `"it's; odd"`, `key'); --`); err != nil {
		t.Fatal(err)
	}
	b.exec(t,
		`INSERT INTO "it's; odd" VALUES ('k2', 2)`,
		`UPDATE "it's; odd" SET v = 3 WHERE "key'); --" = 'k2'`,
		`DELETE FROM "it's; odd" WHERE "key'); --" = 'k1'`,
	)

	b.requireQueue(t,
		queued{ptr("k1"), "public", "it's; odd", "SNAPSHOT", `{"v": 1, "key'); --": "k1"}`},
		queued{ptr("k2"), "public", "it's; odd", "INSERT", `{"v": 2, "key'); --": "k2"}`},
		queued{ptr("k2"), "public", "it's; odd", "UPDATE", `{"v": 3}`},
		queued{ptr("k1"), "public", "it's; odd", "DELETE", `{}`},
	)
}

func TestCreatedAtIgnoresSessionTimeZone(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `SELECT pg2kafka.setup('products', 'sku')`)
	conn, _ := b.connect(t)

	err := pgx.BeginFunc(b.ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(b.ctx, `SET TimeZone = 'America/New_York'`); err != nil {
			return err
		}
		if _, err := tx.Exec(b.ctx, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`); err != nil {
			return err
		}
		var now, createdAt time.Time
		var equal bool
		if err := tx.QueryRow(b.ctx, `
			SELECT now(), created_at, created_at = now()
			FROM pg2kafka.outbound_event_queue`).Scan(&now, &createdAt, &equal); err != nil {
			return err
		}
		if !equal || !createdAt.Equal(now) {
			t.Errorf("created_at = %v, want the transaction's now() %v", createdAt, now)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSetupIsTransactional(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`)

	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(b.ctx, `SELECT pg2kafka.setup('products', 'sku')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `INSERT INTO products VALUES (2, 'B2', 'Gadget', 1)`)

	if n := b.triggers(t, "products"); n != 0 {
		t.Errorf("products has %d pg2kafka triggers, want 0", n)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.tracked_tables`); n != 0 {
		t.Errorf("%d tables tracked, want 0", n)
	}
	b.requireQueue(t)
}

func TestTrackedTablesRegistry(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `CREATE SCHEMA "Sales"`, `CREATE TABLE "Sales"."Order Items" ("SKU" text)`)

	b.exec(t, `SELECT pg2kafka.setup('products', 'sku')`,
		`SELECT pg2kafka.setup('"Sales"."Order Items"', 'SKU')`)

	type tracked struct {
		Relation         string `db:"relation"`
		TableSchema      string `db:"table_schema"`
		TableName        string `db:"table_name"`
		ExternalIDColumn string `db:"external_id_column"`
	}
	rows, _ := b.pool.Query(b.ctx, `
		SELECT relation::text AS relation, table_schema, table_name, external_id_column
		FROM pg2kafka.tracked_tables ORDER BY table_name`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByName[tracked])
	if err != nil {
		t.Fatal(err)
	}
	want := []tracked{
		{`"Sales"."Order Items"`, "Sales", "Order Items", "SKU"},
		{"products", "public", "products", "sku"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("tracked_tables:\n got %+v\nwant %+v", got, want)
	}
}
