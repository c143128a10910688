package shipper_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// emitTx runs the statements in one transaction and returns its now(), the
// time its events carry.
func (b *bundle) emitTx(sql ...string) time.Time {
	b.t.Helper()
	var now time.Time
	err := pgx.BeginFunc(context.Background(), b.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(context.Background(), `SELECT now()`).Scan(&now); err != nil {
			return err
		}
		for _, s := range sql {
			if _, err := tx.Exec(context.Background(), s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return now
}

// An emitted event reaches its topic as the record the application wrote:
// its key, its payload as the value (byte for byte from json and text, as
// jsonb prints it from jsonb), its headers after pg2kafka's, and its
// transaction's time.
func TestEmittedEventsShipAsWritten(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const topic = "shop.order-events"
	first := b.emitTx(
		`SELECT pg2kafka.emit(topic => 'shop.order-events', key => '42', payload => '{"type":"OrderPaid",  "order":42}', headers => '{"event-type":"OrderPaid","trace":"a \"b\""}')`,
		`SELECT pg2kafka.emit('shop.order-events', '42', E'{"z": 1,\n "a": "\\u00e9\\n"}'::json)`,
	)
	second := b.emitTx(
		`SELECT pg2kafka.emit('shop.order-events', NULL, '{"z": 1, "a": [true,  null]}'::jsonb, '{}')`,
		`SELECT pg2kafka.emit('shop.order-events', '7', '"a \"quoted\" string"'::jsonb)`,
	)
	events := b.queuedEvents()
	b.createTopics(topic)
	b.start(shipper.Config{}, kafka.Config{})

	record := func(key *string, value string, at time.Time, uuid, headers string) consumed {
		partition := int32(-1)
		if key != nil {
			partition = javaPartition(*key, 3)
		}
		return consumed{Topic: topic, Partition: partition, Key: key, Value: value, Timestamp: at.Truncate(time.Millisecond),
			Headers: "pg2kafka-event-id:" + uuid + ", pg2kafka-statement:EVENT" + headers}
	}
	want := []consumed{
		record(ptr("42"), `{"type":"OrderPaid",  "order":42}`, first, events[0].UUID, `, trace:a "b", event-type:OrderPaid`),
		record(ptr("42"), "{\"z\": 1,\n \"a\": \"\\u00e9\\n\"}", first, events[1].UUID, ``),
		record(nil, `{"a":[true,null],"z":1}`, second, events[2].UUID, ``),
		record(ptr("7"), `"a \"quoted\" string"`, second, events[3].UUID, ``),
	}
	byKeyWant := make(map[string][]consumed)
	for _, r := range want {
		k := groupKey(r.Topic, r.Partition, r.Key)
		r.Offset = int64(len(byKeyWant[k]))
		byKeyWant[k] = append(byKeyWant[k], r)
	}
	assertRecords(t, b.consume(len(want), topic), byKeyWant)
	b.waitQueueEmpty()
}

// dryRunLine is a line of WriterSink's output.
type dryRunLine struct {
	Topic   string            `json:"topic"`
	Key     *string           `json:"key"`
	Value   json.RawMessage   `json:"value"`
	Headers map[string]string `json:"headers"`
}

// Emitted events and row changes of one key leave in the order their
// transactions wrote them, batches and workers notwithstanding: they share
// the key's lane. The sink sees them in the order the shipper sends them.
func TestEmittedEventsKeepTheirPlaceAmongRowChanges(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE orders (id text PRIMARY KEY, status text)`,
		`SELECT pg2kafka.setup('orders', 'id')`,
	)
	var want = map[string][]string{}
	note := func(key, what string) { want[key] = append(want[key], what) }
	for i := range 10 {
		for _, key := range []string{"42", "43", "44"} {
			status := fmt.Sprintf("s%d", i)
			if i == 0 {
				b.emitTx(
					`SELECT pg2kafka.emit('shop.order-events', '`+key+`', '{"type":"OrderPlaced"}')`,
					`INSERT INTO orders VALUES ('`+key+`', 'new')`,
				)
				note(key, `EVENT {"type":"OrderPlaced"}`)
				note(key, `INSERT`)
				continue
			}
			b.emitTx(
				`UPDATE orders SET status = '`+status+`' WHERE id = '`+key+`'`,
				`SELECT pg2kafka.emit('shop.order-events', '`+key+`', '{"status":"`+status+`"}'::jsonb)`,
			)
			note(key, `UPDATE`)
			note(key, `EVENT {"status":"`+status+`"}`)
		}
	}
	out := &syncBuffer{}
	b.startWith(shipper.Config{BatchSize: 4, Workers: 2}, shipper.NewWriterSink(out))
	b.waitQueueEmpty()

	got := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var l dryRunLine
		if err := json.Unmarshal([]byte(line), &l); err != nil || l.Key == nil {
			t.Fatalf("dry-run line %s: %v", line, err)
		}
		statement := l.Headers["pg2kafka-statement"]
		switch {
		case statement == "EVENT" && l.Topic == "shop.order-events":
			got[*l.Key] = append(got[*l.Key], "EVENT "+string(l.Value))
		case l.Topic == b.topic("orders"):
			got[*l.Key] = append(got[*l.Key], statement)
		default:
			t.Fatalf("unexpected line %s", line)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("per key, the sink got\n%q\nwant\n%q", got, want)
	}
}

// An emitted event the destination refuses for good is dead-lettered like a
// row change, and requeued, ships with its headers.
func TestEmittedEventTooLargeIsDeadLetteredAndRequeued(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const topic = "shop.docs"
	b.exec(
		`SELECT pg2kafka.emit('shop.docs', '1', '{"n":1}')`,
		`SELECT pg2kafka.emit('shop.docs', '1', json_build_object('body', `+hugeSQL+`), '{"kind":"huge"}')`,
		`SELECT pg2kafka.emit('shop.docs', '1', '{"n":3}')`,
	)
	events := b.queuedEvents()
	b.createTopics(topic)
	stop := b.start(shipper.Config{}, kafka.Config{}, kgo.ProducerBatchMaxBytes(sizeLimit))

	got := b.consume(2, topic)
	if got[0].Value != `{"n":1}` || got[1].Value != `{"n":3}` {
		t.Errorf("records %+v, want {\"n\":1} then {\"n\":3}", got)
	}
	b.waitQueueEmpty()
	dead := b.deadLetters()
	if len(dead) != 1 || dead[0].Statement != "EVENT" || dead[0].UUID != events[1].UUID {
		t.Fatalf("dead letters %+v, want the huge event %s", dead, events[1].UUID)
	}
	stop()

	b.exec(`SELECT pg2kafka.requeue_dead_letters()`)
	b.start(shipper.Config{}, kafka.Config{})
	got = b.consume(3, topic)
	if !strings.HasPrefix(got[2].Value, `{"body" : "`) || got[2].Headers != "pg2kafka-event-id:"+events[1].UUID+", pg2kafka-statement:EVENT, kind:huge" {
		t.Errorf("requeued record: value %.20s…, headers %s; want the huge event with its uuid and headers", got[2].Value, got[2].Headers)
	}
}

// An emitted event is the application's record in every EVENT_FORMAT: no
// other tool's envelope describes it.
func TestEmittedEventsIgnoreTheEventFormat(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`SELECT pg2kafka.emit('shop.order-events', '42', '{"type":"OrderPaid", "order":42}', '{"event-type":"OrderPaid"}')`)
	uuid := b.queuedEvents()[0].UUID
	out := &syncBuffer{}
	b.startWith(shipper.Config{Format: shipper.FormatDebezium}, shipper.NewWriterSink(out))
	b.waitQueueEmpty()
	want := `{"topic":"shop.order-events","key":"42","value":{"type":"OrderPaid", "order":42},"headers":{"pg2kafka-event-id":"` + uuid +
		`","pg2kafka-statement":"EVENT","event-type":"OrderPaid"}}` + "\n"
	if got := out.String(); got != want {
		t.Errorf("with EVENT_FORMAT=debezium, the sink got\n%s\nwant\n%s", got, want)
	}
}
