package outbox_test

import (
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// TestStatusEstimatesALongQueue fills the queue past what ReadStatus counts
// exactly: the counts become estimates, near the truth, and the oldest event
// stays exact.
func TestStatusEstimatesALongQueue(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE orders (id int PRIMARY KEY)`,
		`CREATE TABLE products (sku text PRIMARY KEY)`,
		`SELECT pg2kafka.setup('orders', 'id')`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		// 300,000 events, three in four of orders, the oldest first.
		`INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, created_at)
		 SELECT g::text, 'public', CASE WHEN g % 4 = 0 THEN 'products' ELSE 'orders' END, 'INSERT', '{}', now() - interval '1 hour' + g * interval '1 ms'
		 FROM generate_series(1, 300000) g`,
	)
	s, err := outbox.ReadStatus(b.ctx, b.pool)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Queue.Estimated {
		t.Fatalf("a queue of 300,000 events was counted exactly: %+v", s.Queue)
	}
	near := func(got, want int64) bool { return got > want*8/10 && got < want*12/10 }
	if !near(s.Queue.Events, 300000) || len(s.Tables) != 2 || !near(s.Tables[0].Queued, 225000) || !near(s.Tables[1].Queued, 75000) {
		t.Errorf("estimated %d events, %+v; want about 300000: 225000 of orders, 75000 of products", s.Queue.Events, s.Tables)
	}
	if o := s.Queue.Oldest; o == nil || o.Table != "public.orders" || time.Duration(o.Age) < 59*time.Minute || time.Duration(o.Age) > 61*time.Minute {
		t.Errorf("oldest event %+v, want one of public.orders, an hour old", o)
	}
	for _, table := range s.Tables {
		if table.OldestAge == nil || time.Duration(*table.OldestAge) < 59*time.Minute {
			t.Errorf("%s: oldest age %v, want about an hour", table.Name, table.OldestAge)
		}
	}
}

// The shipper's role sees the queue, the tables and the shippers, not the
// backfills.
func TestStatusAsTheShipperRole(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE orders (id int PRIMARY KEY)`,
		`INSERT INTO orders VALUES (1), (2)`,
		`SELECT pg2kafka.setup('orders', 'id')`,
		`SELECT pg2kafka.backfill_chunk('orders', 1)`,
	)
	s, err := outbox.ReadStatus(b.ctx, b.shipperPool(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Tables) != 1 || !s.Tables[0].Tracked || s.Tables[0].Backfill != nil || s.Tables[0].Queued != 3 || s.Queue.Events != 3 || s.SchemaVersion != outbox.LatestVersion() {
		t.Errorf("status as pg2kafka_shipper: %+v", s)
	}
}
