package httpserver_test

import (
	"context"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// recordCount returns how many records the topic holds.
func (b *bundle) recordCount(topic string) int64 {
	b.t.Helper()
	client, err := kgo.NewClient(kgo.SeedBrokers(b.cluster.ListenAddrs()...))
	if err != nil {
		b.t.Fatal(err)
	}
	defer client.Close()
	ends, err := kadm.NewClient(client).ListEndOffsets(context.Background(), topic)
	if err != nil {
		b.t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			n += o.Offset
		}
	})
	return n
}

func TestMetricsDuringADrain(t *testing.T) {
	t.Parallel()
	const products, notes = 600, 40
	b := setup(t,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`CREATE TABLE notes (id int PRIMARY KEY, body text)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`SELECT pg2kafka.setup('notes', 'id')`,
		`INSERT INTO products SELECT 'P' || g, 'product ' || g FROM generate_series(1, 600) g`,
		`INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 40) g`,
	)
	b.attach()
	before := b.scrape()
	for table, want := range map[string]float64{"public.products": products, "public.notes": notes} {
		if got, ok := value(before, "pg2kafka_queue_events", "table", table); !ok || got != want {
			t.Errorf("before shipping, pg2kafka_queue_events{table=%q} = %v (present %v), want %v", table, got, ok, want)
		}
		if age, _ := value(before, "pg2kafka_queue_oldest_event_age_seconds", "table", table); age <= 0 {
			t.Errorf("before shipping, the oldest %s event is %vs old, want more than 0", table, age)
		}
	}

	b.run()
	// Scraped while draining, the depth only falls, to 0.
	last := float64(products)
	b.waitFor("the products queue to drain", func() bool {
		mfs := b.scrape()
		depth, ok := value(mfs, "pg2kafka_queue_events", "table", "public.products")
		if !ok {
			t.Fatalf("pg2kafka_queue_events{table=\"public.products\"} missing during the drain")
		}
		if depth > last {
			t.Errorf("queue depth rose from %v to %v during the drain", last, depth)
		}
		last = depth
		return depth == 0
	})
	b.waitFor("the notes queue to drain", func() bool {
		d, _ := value(b.scrape(), "pg2kafka_queue_events", "table", "public.notes")
		return d == 0
	})

	mfs := b.scrape()
	for table, topic := range map[string]string{"public.products": "pg2kafka." + b.database + ".products", "public.notes": "pg2kafka." + b.database + ".notes"} {
		shipped, _ := value(mfs, "pg2kafka_events_shipped_total", "table", table)
		if records := b.recordCount(topic); shipped != float64(records) || records == 0 {
			t.Errorf("pg2kafka_events_shipped_total{table=%q} = %v, but the topic holds %d records", table, shipped, records)
		}
		if age, _ := value(mfs, "pg2kafka_queue_oldest_event_age_seconds", "table", table); age != 0 {
			t.Errorf("drained, the oldest %s event is %vs old, want 0", table, age)
		}
	}
	for _, m := range []struct {
		name string
		want func(float64) bool
		says string
	}{
		{"pg2kafka_event_ack_age_seconds", func(v float64) bool { return v == products+notes }, "one observation per event"},
		{"pg2kafka_batch_size_events", func(v float64) bool { return v >= 1 }, "observations"},
		{"pg2kafka_batch_duration_seconds", func(v float64) bool { return v >= 1 }, "observations"},
		{"pg2kafka_lanes_owned", func(v float64) bool { return v == 64 }, "all 64 lanes"},
		{"pg2kafka_shippers", func(v float64) bool { return v == 2 }, "two workers"},
		{"pg2kafka_shipper_joined", func(v float64) bool { return v == 1 }, "1"},
		{"pg2kafka_queue_count_up", func(v float64) bool { return v == 1 }, "1"},
		{"pg2kafka_stream_viewers", func(v float64) bool { return v == 0 }, "0"},
		{"go_goroutines", func(v float64) bool { return v > 0 }, "the Go runtime's"},
		{"process_resident_memory_bytes", func(v float64) bool { return v > 0 }, "the process's"},
		{"pg2kafka_kafka_produce_records_total", func(v float64) bool { return v == products+notes }, "franz-go's count of produced records"},
	} {
		v, ok := value(mfs, m.name)
		if m.name == "pg2kafka_kafka_produce_records_total" {
			v = sum(mfs, m.name) // by topic
		}
		if !ok || !m.want(v) {
			t.Errorf("%s = %v (present %v), want %s", m.name, v, ok, m.says)
		}
	}
	// No label carries a key: tables only (and franz-go's broker and topic).
	for name, mf := range mfs {
		for _, metric := range mf.Metric {
			for _, l := range metric.Label {
				switch l.GetName() {
				case "table", "holder", "node_id", "topic", "client_id", "version", "le", "quantile":
				default:
					t.Errorf("%s has label %s=%q", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}

// sum adds up the values of every metric of family name.
func sum(mfs map[string]*dto.MetricFamily, name string) float64 {
	total := 0.0
	if mf := mfs[name]; mf != nil {
		for _, m := range mf.Metric {
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return total
}

// TestMetricsShowTheSnapshotHoldingTheQueue holds a snapshot open beside
// the shipper, as pg_dump does, and follows the oldest snapshot's metrics
// while it is held and once it is released.
func TestMetricsShowTheSnapshotHoldingTheQueue(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	b.run()
	ctx := context.Background()
	holder := func(mfs map[string]*dto.MetricFamily, name string) (string, float64) {
		mf := mfs[name]
		if mf == nil || len(mf.Metric) != 1 {
			t.Fatalf("%s: %v, want one series", name, mf)
		}
		m := mf.Metric[0]
		if len(m.Label) != 1 || m.Label[0].GetName() != "holder" {
			t.Fatalf("%s has labels %v, want holder alone", name, m.Label)
		}
		return m.Label[0].GetValue(), m.GetGauge().GetValue()
	}
	b.waitFor("no snapshot held", func() bool {
		h, age := holder(b.scrape(), "pg2kafka_oldest_snapshot_age_seconds")
		return h == "none" && age == 0
	})

	conn, err := b.admin.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	beforeBegin := time.Now()
	if _, err := conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`); err != nil {
		t.Fatal(err)
	}
	// The first statement takes the snapshot.
	if _, err := conn.Exec(ctx, `SELECT count(*) FROM items`); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	b.exec(`INSERT INTO items SELECT generate_series(1, 300)`)
	b.waitFor("the events to ship", func() bool {
		n, ok := value(b.scrape(), "pg2kafka_queue_events", "table", "public.items")
		return ok && n == 0
	})

	// Its age grows with the time it is held; nothing newer is taken for it.
	b.waitFor("the held snapshot to be a second old", func() bool {
		from := time.Now()
		mfs := b.scrape()
		h, age := holder(mfs, "pg2kafka_oldest_snapshot_age_seconds")
		if h != "session" {
			t.Fatalf("pg2kafka_oldest_snapshot_age_seconds{holder=%q} while a session holds a snapshot", h)
		}
		if low, high := from.Sub(began).Seconds(), time.Since(beforeBegin).Seconds(); age < low-0.01 || age > high+0.01 {
			t.Fatalf("the held snapshot is %.3fs old, want between %.3fs and %.3fs", age, low, high)
		}
		if h, xids := holder(mfs, "pg2kafka_oldest_snapshot_xid_age"); h != "session" || xids < 2 {
			t.Fatalf("pg2kafka_oldest_snapshot_xid_age{holder=%q} = %v, want the session's, taken before the insert and the deletes", h, xids)
		}
		return age >= 1
	})
	b.waitFor("the 300 shipped events to count as dead rows", func() bool {
		n, _ := value(b.scrape(), "pg2kafka_queue_dead_rows")
		return n >= 300
	})

	if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the snapshot's metrics to go back once it is released", func() bool {
		mfs := b.scrape()
		h, age := holder(mfs, "pg2kafka_oldest_snapshot_age_seconds")
		_, xids := holder(mfs, "pg2kafka_oldest_snapshot_xid_age")
		return h == "none" && age == 0 && xids == 0
	})
}
