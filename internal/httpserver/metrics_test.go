package httpserver_test

import (
	"context"
	"testing"

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
				case "table", "node_id", "topic", "client_id", "version", "le", "quantile":
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
