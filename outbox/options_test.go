package outbox_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// event is a queued event with the columns that capture options fill: data
// and old in jsonb's canonical text, topic as setup() chose it.
type event struct {
	ExternalID *string `db:"external_id"`
	Statement  string  `db:"statement"`
	Data       string  `db:"data"`
	Old        *string `db:"old"`
	Topic      *string `db:"topic"`
}

func (e event) String() string {
	s := fmt.Sprintf("{%s %s %s", deref(e.ExternalID), e.Statement, e.Data)
	if e.Old != nil {
		s += " old=" + *e.Old
	}
	if e.Topic != nil {
		s += " topic=" + *e.Topic
	}
	return s + "}"
}

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return fmt.Sprintf("%q", *s)
}

// requireEvents fails the test unless the queue holds exactly want, in id
// order.
func (b *bundle) requireEvents(t *testing.T, want ...event) {
	t.Helper()
	rows, _ := b.pool.Query(b.ctx, `
		SELECT external_id, statement, data::text AS data, old::text AS old, topic
		FROM pg2kafka.outbound_event_queue ORDER BY id`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByName[event])
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

// trackedOptions is a table's options as pg2kafka.tracked_tables shows them.
type trackedOptions struct {
	ExternalIDColumn string   `db:"external_id_column"`
	Operations       []string `db:"operations"`
	Columns          []string `db:"columns"`
	IncludeOld       bool     `db:"include_old"`
	Filter           *string  `db:"filter"`
	Topic            *string  `db:"topic"`
	FullRow          bool     `db:"full_row"`
}

func (b *bundle) requireOptions(t *testing.T, table string, want trackedOptions) {
	t.Helper()
	rows, _ := b.pool.Query(b.ctx, `
		SELECT external_id_column, operations, columns, include_old, filter, topic, full_row
		FROM pg2kafka.tracked_tables WHERE relation = $1::regclass`, table)
	got, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[trackedOptions])
	if err != nil {
		t.Fatalf("read the options of %s: %v", table, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("options of %s:\n got %+v\nwant %+v", table, got, want)
	}
}

var allOperations = []string{"INSERT", "UPDATE", "DELETE"}

const ordersSQL = `CREATE TABLE orders (id int PRIMARY KEY, customer text, status text, total numeric, note text)`

func TestSetupWithoutOptionsShowsDefaults(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `SELECT pg2kafka.setup('orders', 'customer')`)

	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "customer", Operations: allOperations})
	var args int
	if err := b.pool.QueryRow(b.ctx, `SELECT tgnargs FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND tgname = 'pg2kafka_enqueue_event'`).Scan(&args); err != nil || args != 3 {
		t.Errorf("trigger has %d arguments (err %v), want version 1's 3", args, err)
	}
}

func TestSetupOptionOperations(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`SELECT pg2kafka.setup('orders', 'customer', operations => '{delete,INSERT}')`)

	b.exec(t,
		`INSERT INTO orders VALUES (2, 'bob', 'new', 20, NULL)`,
		`UPDATE orders SET status = 'paid'`,
		`DELETE FROM orders WHERE id = 1`,
	)

	b.requireEvents(t,
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`, nil, nil},
		event{ptr("bob"), "INSERT", `{"id": 2, "note": null, "total": 20, "status": "new", "customer": "bob"}`, nil, nil},
		event{ptr("ann"), "DELETE", `{}`, nil, nil},
	)
	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "customer", Operations: []string{"INSERT", "DELETE"}})
}

func TestSetupOptionColumns(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, 'ring twice')`,
		// In any order; the key column need not be among them.
		`SELECT pg2kafka.setup('orders', 'customer', columns => '{total,id,status,id}')`)

	b.exec(t,
		`INSERT INTO orders VALUES (2, 'bob', 'new', 20, 'fragile')`,
		`UPDATE orders SET note = 'leave at door' WHERE id = 1`, // no kept column changes
		`UPDATE orders SET status = 'paid', note = NULL WHERE id = 1`,
		`UPDATE orders SET customer = 'cy' WHERE id = 2`, // the key, not kept: no event
		`DELETE FROM orders WHERE id = 2`,
	)

	b.requireEvents(t,
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "total": 10, "status": "new"}`, nil, nil},
		event{ptr("bob"), "INSERT", `{"id": 2, "total": 20, "status": "new"}`, nil, nil},
		event{ptr("ann"), "UPDATE", `{"status": "paid"}`, nil, nil},
		event{ptr("cy"), "DELETE", `{}`, nil, nil},
	)
	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "customer", Operations: allOperations,
		Columns: []string{"id", "status", "total"}})
}

func TestSetupOptionIncludeOld(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`SELECT pg2kafka.setup('orders', 'customer', include_old => true)`)

	b.exec(t,
		`INSERT INTO orders VALUES (2, 'bob', 'new', 20, NULL)`,
		`UPDATE orders SET status = 'paid', total = 12, note = NULL WHERE id = 1`, // note unchanged
		`UPDATE orders SET note = 'x' WHERE id = 2`,
		`DELETE FROM orders WHERE id = 1`,
	)

	b.requireEvents(t,
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`, nil, nil},
		event{ptr("bob"), "INSERT", `{"id": 2, "note": null, "total": 20, "status": "new", "customer": "bob"}`, nil, nil},
		event{ptr("ann"), "UPDATE", `{"total": 12, "status": "paid"}`, ptr(`{"total": 10, "status": "new"}`), nil},
		event{ptr("bob"), "UPDATE", `{"note": "x"}`, ptr(`{"note": null}`), nil},
		event{ptr("ann"), "DELETE", `{}`, ptr(`{"id": 1, "note": null, "total": 12, "status": "paid", "customer": "ann"}`), nil},
	)
}

func TestSetupOptionFilter(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL,
		`INSERT INTO orders VALUES (1, 'ann', 'draft', 10, NULL), (2, 'bob', 'new', 20, NULL)`,
		`SELECT pg2kafka.setup('orders', 'customer', operations => '{INSERT,UPDATE}', filter => $$NEW.status <> 'draft'$$)`)

	b.exec(t,
		`INSERT INTO orders VALUES (3, 'cy', 'draft', 30, NULL)`,
		`UPDATE orders SET total = 11 WHERE id = 1`,     // still a draft
		`UPDATE orders SET status = 'new' WHERE id = 1`, // no longer
		`DELETE FROM orders WHERE id = 2`,               // not captured
	)

	// The snapshot leaves drafts out too.
	b.requireEvents(t,
		event{ptr("bob"), "SNAPSHOT", `{"id": 2, "note": null, "total": 20, "status": "new", "customer": "bob"}`, nil, nil},
		event{ptr("ann"), "UPDATE", `{"status": "new"}`, nil, nil},
	)
	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "customer", Operations: []string{"INSERT", "UPDATE"},
		Filter: ptr(`NEW.status <> 'draft'`)})
}

func TestSetupOptionFilterOnOld(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL,
		`INSERT INTO orders VALUES (1, 'ann', 'paid', 10, NULL), (2, 'bob', 'new', 20, NULL)`,
		// Only changes to orders that were paid.
		`SELECT pg2kafka.setup('orders', 'customer', operations => '{UPDATE,DELETE}', snapshot => false,
			filter => $$OLD.status = 'paid'$$)`)

	b.exec(t,
		`UPDATE orders SET total = 21 WHERE id = 2`,
		`UPDATE orders SET status = 'paid' WHERE id = 2`,
		`UPDATE orders SET total = 11 WHERE id = 1`,
		`DELETE FROM orders WHERE id = 2`,
		`DELETE FROM orders WHERE id = 1`,
	)

	b.requireEvents(t,
		event{ptr("ann"), "UPDATE", `{"total": 11}`, nil, nil},
		event{ptr("bob"), "DELETE", `{}`, nil, nil},
		event{ptr("ann"), "DELETE", `{}`, nil, nil},
	)
}

func TestSetupOptionFilterWithoutRows(t *testing.T) {
	t.Parallel()
	// A filter on neither row applies to every operation: here, changes made
	// by a session that says it is replaying data are not captured.
	b := setup(t, ordersSQL,
		`SELECT pg2kafka.setup('orders', 'customer', filter => $$current_setting('app.replaying', true) IS DISTINCT FROM 'on'$$)`)
	conn, _ := b.connect(t)

	for _, sql := range []string{
		`INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`SET app.replaying = on`,
		`INSERT INTO orders VALUES (2, 'bob', 'new', 20, NULL)`,
		`DELETE FROM orders WHERE id = 1`,
		`RESET app.replaying`,
		`DELETE FROM orders WHERE id = 2`,
	} {
		if _, err := conn.Exec(b.ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	b.requireEvents(t,
		event{ptr("ann"), "INSERT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`, nil, nil},
		event{ptr("bob"), "DELETE", `{}`, nil, nil},
	)
}

func TestSetupOptionTopic(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`SELECT pg2kafka.setup('orders', 'customer', topic => 'shop.orders.v1')`)

	b.exec(t,
		`UPDATE orders SET status = 'paid'`,
		`DELETE FROM orders`,
	)

	topic := ptr("shop.orders.v1")
	b.requireEvents(t,
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "note": null, "total": 10, "status": "new", "customer": "ann"}`, nil, topic},
		event{ptr("ann"), "UPDATE", `{"status": "paid"}`, nil, topic},
		event{ptr("ann"), "DELETE", `{}`, nil, topic},
	)
	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "customer", Operations: allOperations, Topic: topic})
}

func TestSetupOptionSnapshotFalse(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`SELECT pg2kafka.setup('orders', 'customer', snapshot => false)`)

	b.exec(t, `INSERT INTO orders VALUES (2, 'bob', 'new', 20, NULL)`)

	b.requireEvents(t,
		event{ptr("bob"), "INSERT", `{"id": 2, "note": null, "total": 20, "status": "new", "customer": "bob"}`, nil, nil},
	)
	// snapshot is not an option: the table is tracked as without it.
	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "customer", Operations: allOperations})
}

func TestSetupOptionsCombined(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL,
		`INSERT INTO orders VALUES (1, 'ann', 'new', 10, 'a'), (2, 'bob', 'draft', 20, 'b')`,
		`SELECT pg2kafka.setup('orders', 'customer',
			operations  => '{INSERT,UPDATE}',
			columns     => '{id,status,total}',
			include_old => true,
			filter      => $$NEW.status <> 'draft'$$,
			topic       => 'shop.orders.v1',
			snapshot    => true)`)

	b.exec(t,
		`INSERT INTO orders VALUES (3, 'cy', 'new', 30, 'c')`,
		`INSERT INTO orders VALUES (4, 'dee', 'draft', 40, 'd')`,
		`UPDATE orders SET status = 'paid', total = 11, note = 'z' WHERE id = 1`,
		`UPDATE orders SET note = 'y' WHERE id = 3`, // only a column not kept
		`DELETE FROM orders WHERE id = 3`,
	)

	topic := ptr("shop.orders.v1")
	b.requireEvents(t,
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "total": 10, "status": "new"}`, nil, topic},
		event{ptr("cy"), "INSERT", `{"id": 3, "total": 30, "status": "new"}`, nil, topic},
		event{ptr("ann"), "UPDATE", `{"total": 11, "status": "paid"}`, ptr(`{"total": 10, "status": "new"}`), topic},
	)
	b.requireOptions(t, "orders", trackedOptions{
		ExternalIDColumn: "customer",
		Operations:       []string{"INSERT", "UPDATE"},
		Columns:          []string{"id", "status", "total"},
		IncludeOld:       true,
		Filter:           ptr(`NEW.status <> 'draft'`),
		Topic:            topic,
	})
	if n := b.triggers(t, "orders"); n != 1 {
		t.Errorf("orders has %d pg2kafka triggers, want 1", n)
	}
}

func TestSetupOptionsWithDeleteAndColumnsAndOld(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, 'a')`,
		`SELECT pg2kafka.setup('orders', 'customer', columns => '{id,status}', include_old => true, snapshot => false)`)

	b.exec(t, `DELETE FROM orders`)

	b.requireEvents(t, event{ptr("ann"), "DELETE", `{}`, ptr(`{"id": 1, "status": "new"}`), nil})
}

func TestSetupOptionErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`)

	const (
		opsHint    = "operations lists some of INSERT, UPDATE and DELETE, e.g. '{INSERT,UPDATE}'."
		colsHint   = "columns must name columns of the table, spelled exactly (names are case-sensitive)."
		filterHint = "filter is a boolean condition on NEW and OLD, as in a trigger's WHEN clause, e.g. NEW.status <> 'draft'."
		rowsHint   = "On INSERT there is no OLD row and on DELETE no NEW row: a filter on NEW needs operations => '{INSERT,UPDATE}', one on OLD operations => '{UPDATE,DELETE}'."
		topicHint  = `A topic name is 1 to 249 of the characters a-z, A-Z, 0-9, ".", "_" and "-", and is not "." or "..".`
	)
	tests := []struct {
		name    string
		options string
		want    pgconn.PgError
	}{
		{"unknown operation", `operations => '{INSERT,TRUNCATE}'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: operations: unknown operation 'TRUNCATE'", Hint: opsHint}},
		{"null operation", `operations => '{INSERT,NULL}'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: operations: unknown operation NULL", Hint: opsHint}},
		{"no operation", `operations => '{}'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: operations is empty",
				Hint: "operations lists some of INSERT, UPDATE and DELETE, e.g. '{INSERT,UPDATE}'; to stop tracking the table, call pg2kafka.teardown()."}},
		{"missing column", `columns => '{id,nope}'`,
			pgconn.PgError{Code: "42703", Message: "pg2kafka.setup: columns: table public.orders has no column nope", Hint: colsHint}},
		{"column in the wrong case", `columns => '{ID}'`,
			pgconn.PgError{Code: "42703", Message: `pg2kafka.setup: columns: table public.orders has no column "ID"`, Hint: colsHint}},
		{"no column", `columns => '{}'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: columns is empty",
				Hint: "columns names the columns that go into data; leave it out (or pass NULL) for all of them."}},
		{"filter syntax", `filter => 'NEW.status ='`,
			pgconn.PgError{Code: "42601", Message: `pg2kafka.setup: filter does not compile: syntax error at or near ")"`, Hint: filterHint}},
		{"filter column", `filter => 'NEW.nope = 1'`,
			pgconn.PgError{Code: "42703", Message: "pg2kafka.setup: filter does not compile: column new.nope does not exist", Hint: filterHint}},
		{"filter not boolean", `operations => '{INSERT}', filter => 'NEW.status'`,
			pgconn.PgError{Code: "42804", Message: "pg2kafka.setup: filter does not compile: argument of WHEN must be type boolean, not type text", Hint: filterHint}},
		{"filter subquery", `filter => 'NEW.id IN (SELECT 1)'`,
			pgconn.PgError{Code: "0A000", Message: "pg2kafka.setup: filter does not compile: cannot use subquery in trigger WHEN condition", Hint: filterHint}},
		{"filter on NEW with DELETE", `filter => $$NEW.status <> 'draft'$$`,
			pgconn.PgError{Code: "42P17", Message: "pg2kafka.setup: filter does not compile: DELETE trigger's WHEN condition cannot reference NEW values", Hint: rowsHint}},
		{"filter on OLD with INSERT", `operations => '{INSERT,UPDATE}', filter => $$OLD.status <> 'draft'$$`,
			pgconn.PgError{Code: "42P17", Message: "pg2kafka.setup: filter does not compile: INSERT trigger's WHEN condition cannot reference OLD values", Hint: rowsHint}},
		{"filter of two statements", `filter => 'true); DROP TABLE orders; SELECT (true'`,
			pgconn.PgError{Code: "42P11", Message: "pg2kafka.setup: filter does not compile: it must be one SQL expression", Hint: filterHint}},
		{"filter empty", `filter => ' '`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: filter is empty",
				Hint: "filter is a boolean condition on NEW and OLD, e.g. NEW.status <> 'draft'; leave it out (or pass NULL) for none."}},
		{"topic with space", `topic => 'shop orders'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: topic 'shop orders' is not a valid Kafka topic name", Hint: topicHint}},
		{"topic empty", `topic => ''`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: topic '' is not a valid Kafka topic name", Hint: topicHint}},
		{"topic dot", `topic => '.'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: topic '.' is not a valid Kafka topic name", Hint: topicHint}},
		{"topic dot dot", `topic => '..'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: topic '..' is not a valid Kafka topic name", Hint: topicHint}},
		{"topic too long", `topic => '` + strings.Repeat("t", 250) + `'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: topic '" + strings.Repeat("t", 250) + "' is not a valid Kafka topic name", Hint: topicHint}},
		{"topic not ASCII", `topic => 'bestellungen.ä'`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.setup: topic 'bestellungen.ä' is not a valid Kafka topic name", Hint: topicHint}},
	}
	t.Run("cases", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				_, err := b.pool.Exec(b.ctx, `SELECT pg2kafka.setup('orders', 'customer', `+tt.options+`)`)
				requirePgError(t, err, tt.want)
			})
		}
	})

	// The longest legal topic is fine.
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(b.ctx, `SELECT pg2kafka.setup('orders', 'customer', topic => '`+strings.Repeat("t", 249)+`')`); err != nil {
		t.Errorf("a topic of 249 characters: %v", err)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}

	// After every case: nothing installed, nothing queued, the table intact.
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.tracked_tables`); n != 0 {
		t.Errorf("%d tables tracked, want 0", n)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass`); n != 0 {
		t.Errorf("orders has %d triggers, want 0", n)
	}
	if n := b.count(t, `SELECT count(*) FROM orders`); n != 1 {
		t.Errorf("orders holds %d rows, want its 1", n)
	}
	b.requireQueue(t)
}

func TestSetupReconfigures(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, 'a')`)
	conn, notices := b.connect(t)
	run := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(b.ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	run(`SELECT pg2kafka.setup('orders', 'customer')`)
	run(`UPDATE orders SET note = 'b'`)
	// New options take effect at once, with no new snapshot.
	run(`SELECT pg2kafka.setup('orders', 'customer', columns => '{id,status}', topic => 'shop.orders.v1')`)
	run(`UPDATE orders SET note = 'c'`) // not kept: no event
	run(`UPDATE orders SET status = 'paid'`)
	// The same options again: nothing to do.
	run(`SELECT pg2kafka.setup('orders', 'customer', columns => '{status,id}', topic => 'shop.orders.v1')`)
	// Options that do not compile change nothing.
	if _, err := conn.Exec(b.ctx, `SELECT pg2kafka.setup('orders', 'customer', filter => 'NEW.nope')`); err == nil {
		t.Fatal("setup() with a bad filter succeeded")
	}
	run(`UPDATE orders SET status = 'sent'`)
	// The same options with snapshot => true: a snapshot, as they say.
	run(`SELECT pg2kafka.setup('orders', 'customer', columns => '{id,status}', topic => 'shop.orders.v1', snapshot => true)`)
	// Back to no options, which is a change too; and a new key column.
	run(`SELECT pg2kafka.setup('orders', 'id')`)
	run(`UPDATE orders SET note = 'd'`)

	topic := ptr("shop.orders.v1")
	b.requireEvents(t,
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "note": "a", "total": 10, "status": "new", "customer": "ann"}`, nil, nil},
		event{ptr("ann"), "UPDATE", `{"note": "b"}`, nil, nil},
		event{ptr("ann"), "UPDATE", `{"status": "paid"}`, nil, topic},
		event{ptr("ann"), "UPDATE", `{"status": "sent"}`, nil, topic},
		event{ptr("ann"), "SNAPSHOT", `{"id": 1, "status": "sent"}`, nil, topic},
		event{ptr("1"), "UPDATE", `{"note": "d"}`, nil, nil},
	)
	want := []string{
		"NOTICE 00000 pg2kafka.setup: public.orders is already tracked; its options are changed",
		"NOTICE 00000 pg2kafka.setup: public.orders is already tracked; nothing to do",
		"NOTICE 00000 pg2kafka.setup: public.orders is already tracked; its options are changed",
	}
	if got := noticeTexts(*notices); !reflect.DeepEqual(got, want) {
		t.Errorf("notices:\n got %q\nwant %q", got, want)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass`); n != 2 {
		t.Errorf("orders has %d triggers, want 2 (the capture and the TRUNCATE guard)", n)
	}
	b.requireOptions(t, "orders", trackedOptions{ExternalIDColumn: "id", Operations: allOperations})
}

func TestDeadLetteredEventKeepsTopicAndOld(t *testing.T) {
	t.Parallel()
	b := setup(t, ordersSQL, `INSERT INTO orders VALUES (1, 'ann', 'new', 10, NULL)`,
		`SELECT pg2kafka.setup('orders', 'customer', include_old => true, topic => 'shop.orders.v1', snapshot => false)`,
		`UPDATE orders SET status = 'paid'`)
	batch := b.claimAll(t)
	if err := batch.Complete(b.ctx, nil, outbox.DeadLetter{ID: batch.Events[0].ID, Error: "too large", Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	var old, topic string
	if err := b.pool.QueryRow(b.ctx, `SELECT old::text, topic FROM pg2kafka.dead_letter_events`).Scan(&old, &topic); err != nil {
		t.Fatal(err)
	}
	if old != `{"status": "new"}` || topic != "shop.orders.v1" {
		t.Errorf("dead letter has old %s, topic %s", old, topic)
	}

	b.exec(t, `SELECT pg2kafka.requeue_dead_letters()`)

	b.requireEvents(t, event{ptr("ann"), "UPDATE", `{"status": "paid"}`, ptr(`{"status": "new"}`), ptr("shop.orders.v1")})
}
