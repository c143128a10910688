package shipper_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

func TestRecordsCarryHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales"."Order Items" ("SKU" text PRIMARY KEY, qty int)`,
		`SELECT pg2kafka.setup('"Sales"."Order Items"', 'SKU')`,
		`INSERT INTO "Sales"."Order Items" VALUES ('A1', 2)`,
	)
	topic := "pg2kafka." + b.database + ".Sales.Order_Items"
	uuid := b.queuedEvents()[0].UUID
	b.createTopics(topic)
	b.start(shipper.Config{}, kafka.Config{})

	records := b.consume(1, topic)
	if want := "pg2kafka-event-id:" + uuid + ", pg2kafka-statement:INSERT, pg2kafka-table:Sales.Order Items"; records[0].Headers != want {
		t.Errorf("headers %q, want %q", records[0].Headers, want)
	}
}

func TestShipsCaptureOptions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE orders (id int PRIMARY KEY, customer text, status text, total numeric(8,2), note text)`,
		`INSERT INTO orders VALUES (1, 'ann', 'new', 10, 'a'), (2, 'bob', 'draft', 20, 'b')`,
		`SELECT pg2kafka.setup('orders', 'customer',
			operations  => '{INSERT,UPDATE}',
			columns     => '{id,status,total}',
			include_old => true,
			filter      => $$NEW.status <> 'draft'$$,
			topic       => 'shop.orders.v1')`,
		`INSERT INTO orders VALUES (3, 'cy', 'new', 30, 'c')`,
		`UPDATE orders SET status = 'paid', total = 11, note = 'z' WHERE id = 1`,
		`UPDATE orders SET status = 'new' WHERE id = 2`, // no longer a draft
		`DELETE FROM orders WHERE id = 3`,               // not captured
	)
	const topic = "shop.orders.v1"
	want := b.expectWithOld(3,
		changeWithOld{change{topic, ptr("ann"), "SNAPSHOT", `{"id":1,"total":10.00,"status":"new"}`}, ""},
		changeWithOld{change{topic, ptr("cy"), "INSERT", `{"id":3,"total":30.00,"status":"new"}`}, ""},
		changeWithOld{change{topic, ptr("ann"), "UPDATE", `{"total":11.00,"status":"paid"}`}, `{"total":10.00,"status":"new"}`},
		changeWithOld{change{topic, ptr("bob"), "UPDATE", `{"status":"new"}`}, `{"status":"draft"}`},
	)
	b.createTopics(topic)
	b.start(shipper.Config{}, kafka.Config{})

	assertRecords(t, b.consume(4, topic), want)
	b.waitQueueEmpty()
}

func TestIncludeOldOnDelete(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		`INSERT INTO orders VALUES (1, 'new')`,
		`SELECT pg2kafka.setup('orders', 'id', include_old => true, snapshot => false)`,
		`DELETE FROM orders`,
	)
	topic := b.topic("orders")
	want := b.expectWithOld(3, changeWithOld{change{topic, ptr("1"), "DELETE", `{}`}, `{"id":1,"status":"new"}`})
	b.createTopics(topic)
	b.start(shipper.Config{}, kafka.Config{})

	assertRecords(t, b.consume(1, topic), want)
}

// TestChangedTopicLeavesQueuedEventsWhereTheyWere changes a table's topic
// twice while its events wait: each event goes where it was headed when it
// was written.
func TestChangedTopicLeavesQueuedEventsWhereTheyWere(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		`SELECT pg2kafka.setup('orders', 'id')`,
		`INSERT INTO orders VALUES (1, 'new')`,
		`SELECT pg2kafka.setup('orders', 'id', topic => 'orders.v2')`,
		`UPDATE orders SET status = 'paid'`,
		`SELECT pg2kafka.setup('orders', 'id')`,
		`DELETE FROM orders`,
	)
	v1 := b.topic("orders")
	want := b.expect(3,
		change{v1, ptr("1"), "INSERT", `{"id":1,"status":"new"}`},
		change{"orders.v2", ptr("1"), "UPDATE", `{"status":"paid"}`},
		change{v1, ptr("1"), "DELETE", `{}`},
	)
	b.createTopics(v1, "orders.v2")
	b.start(shipper.Config{BatchSize: 1}, kafka.Config{})

	assertRecords(t, b.consume(3, v1, "orders.v2"), want)
}

// TestBackfillWithConcurrentWriters backfills a table while writers update,
// delete and insert its rows, aiming at the rows the backfill is about to
// read, and the shipper ships: once all is shipped, each key's records on
// the topic, folded (UPDATE onto the SNAPSHOT or INSERT before it), must be
// the row as the table holds it, and a deleted row's last record a DELETE.
func TestBackfillWithConcurrentWriters(t *testing.T) {
	t.Parallel()
	const rows, chunk = 20000, 20
	b := setup(t)
	b.exec(
		`CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, note text)`,
		fmt.Sprintf(`INSERT INTO accounts SELECT i, 0, 'n' || i FROM generate_series(1, %d) i`, rows),
		`SELECT pg2kafka.setup('accounts', 'id', snapshot => false)`,
	)
	topic := b.topic("accounts")
	b.createTopics(topic)
	b.start(shipper.Config{}, kafka.Config{})

	ctx, stop := context.WithCancel(context.Background())
	var writers sync.WaitGroup
	var writes [8]int
	errs := make(chan error, len(writes))
	for w := range writes {
		writers.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for ctx.Err() == nil {
				var next int // the backfill's next key, or 0
				if err := b.pool.QueryRow(ctx, `SELECT coalesce((SELECT (last_key ->> 0)::int FROM pg2kafka.backfills), 0)`).Scan(&next); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				id := next + 1 + r.IntN(2*chunk)
				var sql string
				switch r.IntN(10) {
				case 0:
					sql = `DELETE FROM accounts WHERE id = $1`
				case 1:
					sql = `INSERT INTO accounts VALUES ($1, 0, 'new') ON CONFLICT (id) DO UPDATE SET note = 're-' || accounts.note`
				case 2, 3:
					sql = `UPDATE accounts SET note = note || '+' WHERE id = $1`
				default:
					sql = `UPDATE accounts SET balance = balance + 1 WHERE id = $1`
				}
				if _, err := b.pool.Exec(ctx, sql, id); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				writes[w]++
			}
		})
	}

	if _, err := b.pool.Exec(context.Background(), `CALL pg2kafka.backfill('accounts', $1)`, chunk); err != nil {
		t.Fatalf("backfill: %v", err)
	}
	stop()
	writers.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}
	t.Logf("writes during the backfill: %v", writes)

	b.waitQueueEmpty()
	final := make(map[string]map[string]any) // key → folded row, nil once deleted
	for _, records := range byKey(b.consume(int(b.recordCount(topic)), topic)) {
		for _, r := range records {
			var event struct {
				Statement string         `json:"statement"`
				Data      map[string]any `json:"data"`
			}
			if err := json.Unmarshal([]byte(r.Value), &event); err != nil {
				t.Fatal(err)
			}
			key := *r.Key
			switch event.Statement {
			case "SNAPSHOT", "INSERT":
				final[key] = event.Data
			case "UPDATE":
				// One before the key's SNAPSHOT starts a partial row, which
				// the SNAPSHOT replaces; if none came, the partial row
				// (never with the id, which no writer changes) will not
				// match the table's.
				if final[key] == nil {
					final[key] = make(map[string]any)
				}
				for c, v := range event.Data {
					final[key][c] = v
				}
			case "DELETE":
				final[key] = nil
			}
		}
	}

	table := make(map[string]map[string]any)
	rowsNow, err := b.pool.Query(context.Background(), `SELECT id::text, to_jsonb(a)::text FROM accounts a`)
	if err != nil {
		t.Fatal(err)
	}
	for rowsNow.Next() {
		var id, row string
		if err := rowsNow.Scan(&id, &row); err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(row), &m); err != nil {
			t.Fatal(err)
		}
		table[id] = m
	}
	if err := rowsNow.Err(); err != nil {
		t.Fatal(err)
	}
	for id, row := range table {
		if got := final[id]; !reflect.DeepEqual(got, row) {
			t.Errorf("key %s: the topic says %v, the table holds %v", id, got, row)
		}
	}
	for id, got := range final {
		if _, ok := table[id]; !ok && got != nil {
			t.Errorf("key %s: the topic says %v, the table has no such row", id, got)
		}
	}
	if len(table) < rows/2 {
		t.Fatalf("only %d rows left", len(table))
	}
	var done, total int
	if err := b.pool.QueryRow(context.Background(), `SELECT rows_done, rows_total FROM pg2kafka.backfills WHERE finished_at IS NOT NULL`).Scan(&done, &total); err != nil {
		t.Fatal(err)
	}
	t.Logf("backfill: %d rows walked of %d at the start; %d keys on the topic", done, total, len(final))
}
