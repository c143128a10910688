package shipper_test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// change is what a test expects one event to become.
type change struct {
	topic     string
	key       *string
	statement string
	data      string
}

// changeWithOld is a change whose event carries "old", from a table set up
// with include_old.
type changeWithOld struct {
	change
	old string // "" for none
}

// expect pairs the queued events, in id order, with the changes the test
// says they are, and returns the exact records a consumer must see, grouped
// by topic, partition and key, each group in the order the partition must
// hold it. Order is promised per key: different keys of a partition may
// interleave in any way.
func (b *bundle) expect(partitions int, changes ...change) map[string][]consumed {
	b.t.Helper()
	withOld := make([]changeWithOld, len(changes))
	for i, c := range changes {
		withOld[i] = changeWithOld{change: c}
	}
	return b.expectWithOld(partitions, withOld...)
}

// expectWithOld is expect for changes that may carry "old".
func (b *bundle) expectWithOld(partitions int, changes ...changeWithOld) map[string][]consumed {
	b.t.Helper()
	events := b.queuedEvents()
	if len(events) != len(changes) {
		b.t.Fatalf("queue holds %d events, the test expects %d", len(events), len(changes))
	}
	want := make(map[string][]consumed)
	for i, c := range changes {
		e := events[i]
		externalID := "null"
		partition := int32(-1) // a null key goes to any partition
		if c.key != nil {
			externalID = strconv.Quote(*c.key)
			partition = javaPartition(*c.key, partitions)
		}
		old := ""
		if c.old != "" {
			old = `,"old":` + c.old
		}
		value := fmt.Sprintf(`{"uuid":%q,"external_id":%s,"statement":%q,"data":%s%s,"created_at":%q}`,
			e.UUID, externalID, c.statement, c.data, old, e.CreatedAt.UTC().Format(time.RFC3339Nano))
		headers := fmt.Sprintf("pg2kafka-event-id:%s, pg2kafka-statement:%s, pg2kafka-table:%s", e.UUID, c.statement, e.Table)
		k := groupKey(c.topic, partition, c.key)
		// Kafka keeps record timestamps in milliseconds.
		want[k] = append(want[k], consumed{Topic: c.topic, Partition: partition, Offset: int64(len(want[k])), Key: c.key, Value: value,
			Headers: headers, Timestamp: e.CreatedAt.Truncate(time.Millisecond)})
	}
	return want
}

// byKey groups records as expect does. Records with a null key are grouped
// under partition -1, in the order they were consumed.
func byKey(records []consumed) map[string][]consumed {
	slices.SortFunc(records, func(a, b consumed) int {
		if c := strings.Compare(a.Topic, b.Topic); c != 0 {
			return c
		}
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	got := make(map[string][]consumed)
	for _, r := range records {
		r.Timestamp = r.Timestamp.UTC()
		if r.Key == nil {
			r.Partition = -1
		}
		k := groupKey(r.Topic, r.Partition, r.Key)
		r.Offset = int64(len(got[k]))
		got[k] = append(got[k], r)
	}
	return got
}

func groupKey(topic string, partition int32, key *string) string {
	if key == nil {
		return fmt.Sprintf("%s/%d/null", topic, partition)
	}
	return fmt.Sprintf("%s/%d/%q", topic, partition, *key)
}

func assertRecords(t *testing.T, got []consumed, want map[string][]consumed) {
	t.Helper()
	for k := range want {
		for i := range want[k] {
			want[k][i].Timestamp = want[k][i].Timestamp.UTC()
		}
	}
	if g := byKey(got); !reflect.DeepEqual(g, want) {
		t.Errorf("records differ\n got: %+v\nwant: %+v", g, want)
	}
}

// TestJavaPartition checks the test's own murmur2 against the values Kafka's
// UtilsTest.testMurmur2 expects.
func TestJavaPartition(t *testing.T) {
	t.Parallel()
	for key, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		if got := int32(murmur2([]byte(key))); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", key, got, want)
		}
	}
}

func TestShipsEveryStatementInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE products (sku text PRIMARY KEY, name text, price numeric(6,2), tags text[])`,
		`INSERT INTO products VALUES ('CM01-R', 'Red Mug', 9.50, '{kitchen}')`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`INSERT INTO products VALUES ('CM02-B', 'Blue Mug', NULL, NULL)`,
		`UPDATE products SET name = 'Big Red Coffee Mug' WHERE sku = 'CM01-R'`,
		`UPDATE products SET name = name`, // changes nothing: no event
		`UPDATE products SET price = 12, tags = '{kitchen,sale}' WHERE sku = 'CM01-R'`,
		`DELETE FROM products WHERE sku = 'CM02-B'`,
	)
	topic := b.topic("products")
	want := b.expect(3,
		change{topic, ptr("CM01-R"), "SNAPSHOT", `{"sku":"CM01-R","name":"Red Mug","tags":["kitchen"],"price":9.50}`},
		change{topic, ptr("CM02-B"), "INSERT", `{"sku":"CM02-B","name":"Blue Mug","tags":null,"price":null}`},
		change{topic, ptr("CM01-R"), "UPDATE", `{"name":"Big Red Coffee Mug"}`},
		change{topic, ptr("CM01-R"), "UPDATE", `{"tags":["kitchen","sale"],"price":12.00}`},
		change{topic, ptr("CM02-B"), "DELETE", `{}`},
	)
	b.createTopics(topic)
	// Batches of two: order must hold across batches too.
	b.start(shipper.Config{BatchSize: 2}, kafka.Config{})

	assertRecords(t, b.consume(5, topic), want)
	b.waitQueueEmpty()
}

func TestNullExternalIDHasNullKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE notes (id int PRIMARY KEY, owner text, body text)`,
		`SELECT pg2kafka.setup('notes', 'owner')`,
		`INSERT INTO notes VALUES (1, NULL, 'orphan'), (2, 'ann', 'hers')`,
	)
	topic := b.topic("notes")
	want := b.expect(3,
		change{topic, nil, "INSERT", `{"id":1,"body":"orphan","owner":null}`},
		change{topic, ptr("ann"), "INSERT", `{"id":2,"body":"hers","owner":"ann"}`},
	)
	b.createTopics(topic)
	b.start(shipper.Config{}, kafka.Config{})

	assertRecords(t, b.consume(2, topic), want)
}

func TestTopicNames(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales"."Order Items" ("SKU" text, qty int)`,
		`SELECT pg2kafka.setup('"Sales"."Order Items"', 'SKU')`,
		`INSERT INTO "Sales"."Order Items" VALUES ('A"1', 2)`,
	)
	topic := "pg2kafka.shop." + b.database + ".Sales.Order_Items"
	want := b.expect(3, change{topic, ptr(`A"1`), "INSERT", `{"SKU":"A\"1","qty":2}`})
	b.createTopics(topic)
	b.start(shipper.Config{TopicNamespace: "shop"}, kafka.Config{})

	assertRecords(t, b.consume(1, topic), want)
}

func TestTopicName(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 63)
	tests := []struct {
		name      string
		namespace string
		schema    string
		table     string
		want      string
	}{
		{"public table", "", "public", "products", "pg2kafka.shop.products"},
		{"namespace", "eu", "public", "products", "pg2kafka.eu.shop.products"},
		{"other schema", "", "sales", "orders", "pg2kafka.shop.sales.orders"},
		{"characters Kafka refuses", "", "Sales", "Order Items/ünï", "pg2kafka.shop.Sales.Order_Items__n_"},
		{"dots and dashes kept", "", "public", "a.b-c_d", "pg2kafka.shop.a.b-c_d"},
		{"too long", strings.Repeat("n", 150), long, long, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := shipper.TopicName(tt.namespace, "shop", outboxTable(tt.schema, tt.table))
			if tt.name == "too long" {
				if len(got) != 249 || !strings.HasPrefix(got, "pg2kafka."+strings.Repeat("n", 150)+".shop.") {
					t.Fatalf("TopicName = %q (%d bytes), want 249 bytes with the name's start", got, len(got))
				}
				other := shipper.TopicName(tt.namespace, "shop", outboxTable(tt.schema, long[:62]+"y"))
				if other == got {
					t.Fatalf("two long names that differ at the end share topic %q", got)
				}
				return
			}
			if got != tt.want {
				t.Fatalf("TopicName = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMissingTopicHoldsItsEventsWhileOthersFlow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE present (id int PRIMARY KEY)`,
		`CREATE TABLE absent (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('present', 'id')`,
		`SELECT pg2kafka.setup('absent', 'id')`,
		`INSERT INTO absent VALUES (1)`,
		`INSERT INTO present VALUES (1)`,
		`INSERT INTO absent VALUES (2)`,
		`INSERT INTO present VALUES (2)`,
	)
	present, absent := b.topic("present"), b.topic("absent")
	b.createTopics(present)
	b.start(shipper.Config{}, kafka.Config{})

	b.consume(2, present)
	b.waitFor("the missing topic's error", func() bool {
		return b.logs.Contains(fmt.Sprintf(`kafka: topic \"%s\" does not exist: create it (kafka-topics.sh --create --topic %s) or set KAFKA_CREATE_TOPICS=true`, absent, absent))
	})
	// The present table's events are acknowledged a moment before their
	// deletion commits; the absent table's stay.
	want := []string{"absent INSERT", "absent INSERT"}
	b.waitFor(fmt.Sprintf("the queue to hold just %q", want), func() bool { return slices.Equal(b.queued(), want) })

	// Events written while the topic is missing keep flowing for others.
	b.exec(`INSERT INTO present VALUES (3)`)
	b.consume(3, present)

	b.createTopics(absent)
	records := b.consume(2, absent)
	b.waitQueueEmpty()
	var keys []string
	for _, r := range records {
		keys = append(keys, *r.Key)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"1", "2"}) {
		t.Fatalf("keys on %s: %q, want 1 and 2", absent, keys)
	}
}

func TestCreatesMissingTopicsWhenAsked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE things (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('things', 'id')`,
		`INSERT INTO things SELECT generate_series(1, 10)`,
	)
	b.start(shipper.Config{}, kafka.Config{CreateTopics: true, TopicPartitions: 2, TopicReplicationFactor: 1})

	topic := b.topic("things")
	for _, r := range b.consume(10, topic) {
		if want := javaPartition(*r.Key, 2); r.Partition != want {
			t.Errorf("key %s on partition %d, want %d", *r.Key, r.Partition, want)
		}
	}
	details, err := b.admin.ListTopics(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(details[topic].Partitions); n != 2 {
		t.Fatalf("%s has %d partitions, want 2", topic, n)
	}
}

func TestBrokerFaultKeepsEventsUntilItClears(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE accounts (id int PRIMARY KEY, balance int)`,
		`SELECT pg2kafka.setup('accounts', 'id')`,
		`INSERT INTO accounts SELECT i, 0 FROM generate_series(1, 5) i`,
		`UPDATE accounts SET balance = 10`,
	)
	topic := b.topic("accounts")
	b.createTopics(topic)
	var changes []change
	for i := 1; i <= 5; i++ {
		changes = append(changes, change{topic, ptr(strconv.Itoa(i)), "INSERT", fmt.Sprintf(`{"id":%d,"balance":0}`, i)})
	}
	for i := 1; i <= 5; i++ {
		changes = append(changes, change{topic, ptr(strconv.Itoa(i)), "UPDATE", `{"balance":10}`})
	}
	want := b.expect(3, changes...)

	// Every produce fails until the fault is removed: not retriable by the
	// client, so each batch fails back to the shipper at once.
	fault := b.cluster.Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.Produce},
		Err:   kerr.CorruptMessage,
		Count: -1,
	})
	b.start(shipper.Config{BatchSize: 4}, kafka.Config{})

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := fault.Wait(ctx, 3); err != nil {
		t.Fatalf("the shipper did not retry the failed batch: %v", err)
	}
	if got := len(b.queued()); got != 10 {
		t.Fatalf("queue holds %d events during the fault, want all 10", got)
	}
	if n := b.recordCount(topic); n != 0 {
		t.Fatalf("%d records reached the topic through the fault", n)
	}

	fault.Remove()
	assertRecords(t, b.consume(10, topic), want)
	b.waitQueueEmpty()
}

func TestSendTimeoutBoundsTheClaim(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE slow (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('slow', 'id')`,
		`INSERT INTO slow VALUES (1), (2)`,
	)
	topic := b.topic("slow")
	b.createTopics(topic)
	// The broker answers every produce with a retriable error, so the
	// client would retry forever; the send timeout must end the attempt and
	// release the claim.
	fault := b.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotEnoughReplicas, Count: -1})
	b.start(shipper.Config{SendTimeout: 300 * time.Millisecond}, kafka.Config{})

	b.waitFor("the timed-out batch to be retried", func() bool {
		return strings.Count(b.logs.String(), "events not shipped") >= 2
	})
	// Released: another transaction can lock the rows for a moment between
	// attempts, and nothing was deleted.
	b.waitFor("the claim to be released", func() bool {
		var locked int
		err := b.pool.QueryRow(context.Background(),
			`SELECT count(*) FROM (SELECT FROM pg2kafka.outbound_event_queue FOR UPDATE SKIP LOCKED) s`).Scan(&locked)
		return err == nil && locked == 2
	})
	fault.Remove()
	b.consume(2, topic)
	b.waitQueueEmpty()
}
