package outbox_test

import (
	"reflect"
	"testing"
)

func TestTeardownStopsTrackingAndKeepsQueuedEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, productsSQL,
		`SELECT pg2kafka.setup('orders', 'customer', operations => '{INSERT,UPDATE}', filter => $$NEW.status <> 'draft'$$)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
	)
	b.exec(t, `CALL pg2kafka.backfill('orders')`)

	b.exec(t, `SELECT pg2kafka.teardown('orders')`,
		`INSERT INTO orders VALUES (2, 'bob', 'new', 20, NULL)`,
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
	)

	b.requireQueue(t,
		queued{ptr("ann"), "public", "orders", "INSERT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`},
		queued{ptr("ann"), "public", "orders", "SNAPSHOT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`},
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
	)
	if n := b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass`); n != 0 {
		t.Errorf("orders has %d triggers, want 0", n)
	}
	if n := b.triggers(t, "products"); n != 1 {
		t.Errorf("products has %d pg2kafka triggers, want 1", n)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.tracked_tables WHERE relation = 'orders'::regclass`); n != 0 {
		t.Errorf("orders still in the registry")
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.backfills`); n != 0 {
		t.Errorf("orders' backfill still recorded")
	}

	// Tracked again, it starts afresh.
	b.exec(t, `SELECT pg2kafka.setup('orders', 'customer', snapshot => false)`,
		`UPDATE orders SET status = 'paid' WHERE id = 2`)
	b.requireEvents(t,
		event{ptr("ann"), "INSERT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`, nil, nil},
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`, nil, nil},
		event{ptr("A1"), "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`, nil, nil},
		event{ptr("bob"), "UPDATE", `{"status": "paid"}`, nil, nil},
	)
}

func TestTeardownPurge(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, productsSQL,
		`SELECT pg2kafka.setup('orders', 'customer')`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`UPDATE orders SET status = 'paid'`,
	)

	b.exec(t, `SELECT pg2kafka.teardown('orders', purge => true)`)

	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
	)
	if n := b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass`); n != 0 {
		t.Errorf("orders has %d triggers, want 0", n)
	}
}

func TestTeardownUntrackedTable(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL)
	conn, notices := b.connect(t)

	if _, err := conn.Exec(b.ctx, `SELECT pg2kafka.teardown('orders')`); err != nil {
		t.Fatal(err)
	}

	want := []string{"NOTICE 00000 pg2kafka.teardown: public.orders is not tracked; nothing to do"}
	if got := noticeTexts(*notices); !reflect.DeepEqual(got, want) {
		t.Errorf("notices = %q, want %q", got, want)
	}
}
