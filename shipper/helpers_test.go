package shipper_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitTimeout bounds every wait for a condition; a healthy run meets each
// in well under a second.
const waitTimeout = 30 * time.Second

// bundle is one test's world: its own database with pg2kafka installed, its
// own in-process Kafka, and a shipper between them once start is called.
type bundle struct {
	t        *testing.T
	pool     *pgxpool.Pool
	database string
	cluster  *kfake.Cluster
	admin    *kadm.Client
	logs     *syncBuffer
	shipper  *shipper.Shipper // the last one started
	// shipperPool, if set, is the pool shippers are started on, in place
	// of pool.
	shipperPool *pgxpool.Pool
}

func setup(t *testing.T, opts ...kfake.Opt) *bundle {
	t.Helper()
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	if err := outbox.Migrate(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	database, err := outbox.CurrentDatabase(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.DefaultNumPartitions(3)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	client, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	return &bundle{t: t, pool: pool, database: database, cluster: cluster, admin: kadm.NewClient(client), logs: &syncBuffer{}}
}

// exec runs SQL statements on the test database, failing the test on error.
func (b *bundle) exec(sql ...string) {
	b.t.Helper()
	for _, s := range sql {
		if _, err := b.pool.Exec(context.Background(), s); err != nil {
			b.t.Fatalf("%s: %v", s, err)
		}
	}
}

// createTopics creates topics with three partitions.
func (b *bundle) createTopics(topics ...string) {
	b.t.Helper()
	resp, err := b.admin.CreateTopics(context.Background(), 3, 1, nil, topics...)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		b.t.Fatal(err)
	}
}

// start runs a shipper to the bundle's Kafka until the test ends or the
// returned function stops it.
func (b *bundle) start(cfg shipper.Config, kcfg kafka.Config, opts ...kgo.Opt) (stop func()) {
	b.t.Helper()
	kcfg.Brokers = b.cluster.ListenAddrs()
	// lz4, the default, costs a batch of ten small records about 100ms
	// under the race detector, which made these tests crawl; what is
	// tested here does not depend on the codec.
	if kcfg.Compression == "" {
		kcfg.Compression = "none"
	}
	sink, err := kafka.New(kcfg, opts...)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.startWith(cfg, sink)
}

func (b *bundle) startWith(cfg shipper.Config, sink shipper.Sink) (stop func()) {
	cfg.Database = b.database
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 10 * time.Millisecond
	}
	if cfg.RebalanceInterval == 0 {
		cfg.RebalanceInterval = 20 * time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	pool := b.pool
	if b.shipperPool != nil {
		pool = b.shipperPool
	}
	s := shipper.New(cfg, outbox.NewQueue(pool), sink)
	b.shipper = s
	go func() { done <- s.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			b.t.Errorf("shipper: %v", err)
		}
		sink.Close()
	})
	b.t.Cleanup(stop)
	return stop
}

func (b *bundle) topic(table string) string { return "pg2kafka." + b.database + "." + table }

// consumed is a record as a consumer sees it.
type consumed struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       *string
	Value     string
	Headers   string // key:value, …
	Timestamp time.Time
}

// headersText is how consumed shows a record's headers.
func headersText(headers []kgo.RecordHeader) string {
	var parts []string
	for _, h := range headers {
		parts = append(parts, h.Key+":"+string(h.Value))
	}
	return strings.Join(parts, ", ")
}

// consume reads topics from the start until n records have arrived, then
// checks that the topics hold no more than n.
func (b *bundle) consume(n int, topics ...string) []consumed {
	b.t.Helper()
	client, err := kgo.NewClient(
		kgo.SeedBrokers(b.cluster.ListenAddrs()...),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		b.t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out []consumed
	for len(out) < n {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			b.t.Fatalf("got %d records on %v, want %d: %+v\nshipper logs:\n%s", len(out), topics, n, out, b.logs)
		}
		fetches.EachError(func(topic string, p int32, err error) { b.t.Logf("fetch %s/%d: %v", topic, p, err) })
		fetches.EachRecord(func(r *kgo.Record) {
			c := consumed{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Value: string(r.Value), Headers: headersText(r.Headers), Timestamp: r.Timestamp}
			if r.Key != nil {
				c.Key = ptr(string(r.Key))
			}
			if r.Value != nil && !json.Valid(r.Value) { // nil: a tombstone
				b.t.Fatalf("record value is not JSON: %s", r.Value)
			}
			out = append(out, c)
		})
	}
	if total := b.recordCount(topics...); total != int64(n) {
		b.t.Fatalf("topics %v hold %d records, want %d", topics, total, n)
	}
	return out
}

// recordCount is the number of records on topics, from the brokers' end
// offsets rather than anything the shipper counted.
func (b *bundle) recordCount(topics ...string) int64 {
	b.t.Helper()
	ends, err := b.admin.ListEndOffsets(context.Background(), topics...)
	if err != nil {
		b.t.Fatal(err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			total += o.Offset
		}
	})
	return total
}

// queued returns the statements of the events left in the queue, in id order.
func (b *bundle) queued() []string {
	b.t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT table_name || ' ' || statement FROM pg2kafka.outbound_event_queue ORDER BY id`)
	if err != nil {
		b.t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			b.t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		b.t.Fatal(err)
	}
	return out
}

// waitFor polls cond until it holds, failing the test after waitTimeout.
func (b *bundle) waitFor(what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s\nshipper logs:\n%s", what, b.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (b *bundle) waitQueueEmpty() {
	b.t.Helper()
	b.waitFor("an empty queue", func() bool { return len(b.queued()) == 0 })
}

type syncBuffer = syncbuf.Buffer

func ptr[T any](v T) *T { return &v }

// queuedEvent is what the queue holds for an event, read before shipping so
// that tests can predict the exact record.
type queuedEvent struct {
	UUID      string
	CreatedAt time.Time
	Table     string // schema.table
}

// queuedEvents returns the queue's events in id order.
func (b *bundle) queuedEvents() []queuedEvent {
	b.t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT coalesce(uuid, pg2kafka.event_uuid(id, created_at))::text AS uuid, created_at, table_schema || '.' || table_name FROM pg2kafka.outbound_event_queue ORDER BY id`)
	if err != nil {
		b.t.Fatal(err)
	}
	defer rows.Close()
	var out []queuedEvent
	for rows.Next() {
		var e queuedEvent
		if err := rows.Scan(&e.UUID, &e.CreatedAt, &e.Table); err != nil {
			b.t.Fatal(err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		b.t.Fatal(err)
	}
	return out
}

// javaPartition is the partition the Java client's default partitioner picks
// for a key: murmur2, sign bit cleared, modulo the partition count. Written
// out here, from Kafka's Utils.murmur2, so that the test does not take
// franz-go's word for it.
func javaPartition(key string, partitions int) int32 {
	return int32(int(murmur2([]byte(key))&0x7fffffff) % partitions)
}

func murmur2(data []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	length := len(data)
	h := seed ^ uint32(length)
	for i := 0; i+4 <= length; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[length&^3:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

func outboxTable(schema, name string) outbox.Table { return outbox.Table{Schema: schema, Name: name} }
