package outbox_test

import "testing"

func TestSetupOptionFullRow(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`SELECT pg2kafka.setup('orders', 'customer', full_row => true)`)

	b.exec(t,
		`INSERT INTO orders VALUES (2, 'bob', 'new', 20, NULL)`,
		`UPDATE orders SET status = 'paid', total = 12.50 WHERE id = 1`,
		`UPDATE orders SET status = 'paid' WHERE id = 1`, // no change, no event
		`UPDATE orders SET total = 12.5 WHERE id = 1`,    // equal as jsonb compares numbers: no event, as without full_row
		`UPDATE orders SET customer = 'cy' WHERE id = 2`, // the key itself
		`DELETE FROM orders WHERE id = 1`,
	)

	b.requireEvents(t,
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`, nil, nil},
		event{ptr("bob"), "INSERT", `{"id": 2, "note": null, "total": 20, "status": "new", "customer": "bob"}`, nil, nil},
		event{ptr("ann"), "UPDATE", `{"id": 1, "note": null, "total": 12.50, "status": "paid", "customer": "ann"}`,
			ptr(`{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`), nil},
		event{ptr("cy"), "UPDATE", `{"id": 2, "note": null, "total": 20, "status": "new", "customer": "cy"}`,
			ptr(`{"id": 2, "note": null, "total": 20, "status": "new", "customer": "bob"}`), nil},
		event{ptr("ann"), "DELETE", `{}`, ptr(`{"id": 1, "note": null, "total": 12.5, "status": "paid", "customer": "ann"}`), nil},
	)
	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "customer", Operations: allOperations, FullRow: true})
	var args int
	if err := b.pool.QueryRow(b.ctx, `SELECT tgnargs FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND tgname = 'pg2kafka_enqueue_event'`).Scan(&args); err != nil || args != 7 {
		t.Errorf("trigger has %d arguments (err %v), want 7", args, err)
	}
}

// The columns option cuts both rows, and decides what counts as a change.
func TestSetupOptionFullRowWithColumns(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, 'ring twice')`,
		`SELECT pg2kafka.setup('orders', 'customer', columns => '{id,status,total}', full_row => true, topic => 'orders.v2')`)

	b.exec(t,
		`UPDATE orders SET note = 'leave at door'`, // no kept column changes
		`UPDATE orders SET status = 'paid', note = NULL`,
		`UPDATE orders SET customer = 'bo'`, // the key, not kept: no event
		`DELETE FROM orders`,
	)

	topic := ptr("orders.v2")
	b.requireEvents(t,
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "total": 10, "status": "new"}`, nil, topic},
		event{ptr("ann"), "UPDATE", `{"id": 1, "total": 10, "status": "paid"}`, ptr(`{"id": 1, "total": 10, "status": "new"}`), topic},
		event{ptr("bo"), "DELETE", `{}`, ptr(`{"id": 1, "total": 10, "status": "paid"}`), topic},
	)
}

// include_old adds nothing to full_row; operations and filter apply as ever.
func TestSetupOptionFullRowWithOtherOptions(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'draft', 10, NULL)`,
		`SELECT pg2kafka.setup('orders', 'customer', operations => '{UPDATE,DELETE}', include_old => true,
			filter => $$OLD.status <> 'draft'$$, full_row => true)`)

	b.exec(t,
		`UPDATE orders SET status = 'new'`,
		`UPDATE orders SET total = 11`,
		`DELETE FROM orders`,
	)

	b.requireEvents(t,
		event{ptr("ann"), "UPDATE", `{"id": 1, "note": null, "total": 11, "status": "new", "customer": "ann"}`,
			ptr(`{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`), nil},
		event{ptr("ann"), "DELETE", `{}`, ptr(`{"id": 1, "note": null, "total": 11, "status": "new", "customer": "ann"}`), nil},
	)
}

// Calling setup() again without full_row turns it off, and the trigger is
// version 1's again: its events are byte for byte what they were.
func TestSetupOptionFullRowOff(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL,
		`SELECT pg2kafka.setup('orders', 'customer', full_row => true)`,
		`SELECT pg2kafka.setup('orders', 'customer', full_row => false, snapshot => false)`)

	b.exec(t,
		`INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`UPDATE orders SET status = 'paid'`,
		`DELETE FROM orders`,
	)

	b.requireEvents(t,
		event{ptr("ann"), "INSERT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`, nil, nil},
		event{ptr("ann"), "UPDATE", `{"status": "paid"}`, nil, nil},
		event{ptr("ann"), "DELETE", `{}`, nil, nil},
	)
	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "customer", Operations: allOperations})
	var args int
	if err := b.pool.QueryRow(b.ctx, `SELECT tgnargs FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND tgname = 'pg2kafka_enqueue_event'`).Scan(&args); err != nil || args != 3 {
		t.Errorf("trigger has %d arguments (err %v), want version 1's 3", args, err)
	}
}

// setup() keeps guarding the table whichever way it returns: when it changes
// options, and when it finds nothing to change.
func TestSetupFullRowKeepsTheGuard(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL,
		`SELECT pg2kafka.setup('orders', 'customer')`,
		`SELECT pg2kafka.setup('orders', 'customer', full_row => true)`,
		`SELECT pg2kafka.setup('orders', 'customer', full_row => true)`)
	if n := b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND tgenabled = 'A'`); n != 2 {
		t.Errorf("%d of the table's triggers fire ALWAYS, want both (the change trigger and the TRUNCATE guard)", n)
	}
}
