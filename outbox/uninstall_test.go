package outbox_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// userTriggers counts the triggers on the tables outside pg2kafka.
func (b *bundle) userTriggers(t *testing.T) int {
	t.Helper()
	return b.count(t, `
		SELECT count(*) FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
		WHERE c.relnamespace::regnamespace::text NOT IN ('pg2kafka', 'pg_catalog') AND NOT tg.tgisinternal`)
}

func TestUninstallLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, productsSQL,
		`CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales"."Order Items" ("SKU" text PRIMARY KEY, qty int)`,
		`INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`INSERT INTO "Sales"."Order Items" VALUES ('S-1', 1)`,
		`SELECT pg2kafka.setup('orders', 'customer', operations => '{INSERT,UPDATE}', columns => '{id,status}',
			filter => $$NEW.status <> 'draft'$$, topic => 'shop.orders.v1', include_old => true)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`SELECT pg2kafka.setup('"Sales"."Order Items"', 'SKU', snapshot => false)`,
		// A trigger the registry forgot, and a tracked table dropped since.
		`DELETE FROM pg2kafka.tracked_tables WHERE relation = '"Sales"."Order Items"'::regclass`,
		`CREATE TABLE gone (k text PRIMARY KEY)`,
		`SELECT pg2kafka.setup('gone', 'k')`,
		`DROP TABLE gone`,
	)
	b.exec(t, `CALL pg2kafka.backfill('products')`)
	if n := b.userTriggers(t); n != 6 {
		t.Fatalf("%d triggers on user tables before uninstalling, want 6 (3 capture, 3 TRUNCATE guards)", n)
	}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{ReplaceAttr: dropTime}))

	if err := outbox.Uninstall(b.ctx, b.pool, logger); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}

	if n := b.count(t, `SELECT count(*) FROM pg_namespace WHERE nspname = 'pg2kafka'`); n != 0 {
		t.Errorf("schema pg2kafka still there")
	}
	if n := b.count(t, `SELECT count(*) FROM pg_proc WHERE proname IN ('setup', 'teardown', 'backfill', 'enqueue_event')`); n != 0 {
		t.Errorf("%d pg2kafka functions left", n)
	}
	if n := b.userTriggers(t); n != 0 {
		t.Errorf("%d triggers left on user tables", n)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_class WHERE relname LIKE '%goose%' OR relname LIKE '%event_queue%'`); n != 0 {
		t.Errorf("%d pg2kafka relations left", n)
	}
	// The user's tables and rows are untouched, and writable.
	b.exec(t,
		`INSERT INTO orders VALUES (2, 'bob', 'new', 20, NULL)`,
		`UPDATE products SET name = 'Big Widget'`,
		`DELETE FROM "Sales"."Order Items"`,
	)
	if n := b.count(t, `SELECT count(*) FROM orders`); n != 2 {
		t.Errorf("orders holds %d rows, want 2", n)
	}
	if n := b.count(t, `SELECT count(*) FROM products WHERE name = 'Big Widget'`); n != 1 {
		t.Errorf("products holds %d of its 1 row", n)
	}
	wantLogs := "level=WARN msg=\"discarding events that were never shipped\" events=3\n" +
		"level=INFO msg=\"pg2kafka uninstalled\"\n"
	if got := logs.String(); got != wantLogs {
		t.Errorf("logs:\n%s\nwant:\n%s", got, wantLogs)
	}

	// Uninstalling what is not installed does nothing; installing again works.
	if err := outbox.Uninstall(b.ctx, b.pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("second Uninstall: %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_namespace WHERE nspname = 'pg2kafka'`); n != 0 {
		t.Errorf("schema pg2kafka there after a second Uninstall")
	}
	if err := outbox.Migrate(b.ctx, b.pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("Migrate after Uninstall: %v", err)
	}
	b.exec(t, `SELECT pg2kafka.setup('products', 'sku')`)
	b.requireQueue(t, queued{ptr("A1"), "public", "products", "SNAPSHOT", `{"id": 1, "sku": "A1", "name": "Big Widget", "price": 9.5}`})
}

func TestUninstallRefusesToDropOthersObjects(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `SELECT pg2kafka.setup('products', 'sku')`,
		`CREATE VIEW queue_depth AS SELECT count(*) FROM pg2kafka.outbound_event_queue`)

	err := outbox.Uninstall(b.ctx, b.pool, slog.New(slog.DiscardHandler))
	if err == nil || !strings.HasSuffix(err.Error(), "(SQLSTATE 2BP01): view queue_depth depends on table pg2kafka.outbound_event_queue; drop them, or make them independent of pg2kafka, and uninstall again") {
		t.Fatalf("Uninstall: err = %v, want it to refuse dropping the view", err)
	}
	if n := b.count(t, `SELECT * FROM queue_depth`); n != 0 {
		t.Errorf("queue_depth = %d", n)
	}

	// Once the view is gone, uninstalling again carries on where it stopped.
	b.exec(t, `DROP VIEW queue_depth`)
	if err := outbox.Uninstall(b.ctx, b.pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_namespace WHERE nspname = 'pg2kafka'`); n != 0 {
		t.Errorf("schema pg2kafka still there")
	}
	if n := b.userTriggers(t); n != 0 {
		t.Errorf("%d triggers left on user tables", n)
	}
}

func dropTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}
