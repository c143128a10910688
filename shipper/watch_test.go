package shipper_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// statementCounter counts the statements sent over the connections of a
// pool it traces: those waiting in Postgres for events apart.
type statementCounter struct {
	mu           sync.Mutex
	others, wait int
}

func (s *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if strings.Contains(d.SQL, "pg2kafka.await_event_ids(") {
		s.wait++
	} else {
		s.others++
	}
	return ctx
}

func (s *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (s *statementCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.others++
	return ctx
}

func (s *statementCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (s *statementCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

func (s *statementCounter) counts() (others, wait int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.others, s.wait
}

// tracedShipperPool makes the shippers b starts count their statements.
func (b *bundle) tracedShipperPool() *statementCounter {
	b.t.Helper()
	counter := &statementCounter{}
	cfg := b.pool.Config().Copy()
	cfg.ConnConfig.Tracer = counter
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(pool.Close)
	b.shipperPool = pool
	return counter
}

// An idle shipper says nothing to Postgres but its rebalances: it waits
// for its watcher, which waits in Postgres, to tell it of an event, and
// ships that event at once, not at its next rebalance.
func TestAnIdleShipperWaitsForNewsOfEventsInsteadOfPolling(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`CREATE TABLE items (id int PRIMARY KEY)`, `SELECT pg2kafka.setup('items', 'id')`)
	topic := b.topic("items")
	b.createTopics(topic)
	counter := b.tracedShipperPool()
	b.start(shipper.Config{Workers: 2, PollInterval: 5 * time.Millisecond, RebalanceInterval: time.Minute}, kafka.Config{})

	b.exec(`INSERT INTO items VALUES (1)`)
	b.consume(1, topic)
	b.waitQueueEmpty()
	// Polling every 5ms, two workers would send some 40 claims in 100ms.
	quiet := func() bool {
		before, _ := counter.counts()
		time.Sleep(100 * time.Millisecond)
		after, _ := counter.counts()
		return after-before <= 1
	}
	b.waitFor("the shipper idle and quiet", quiet)

	start := time.Now()
	b.exec(`INSERT INTO items VALUES (2)`)
	b.consume(2, topic)
	// Its workers' next rebalance is a minute away.
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("an event written to an idle shipper took %s to ship", took)
	}
	if _, wait := counter.counts(); wait == 0 {
		t.Fatal("the shipper never waited in Postgres for events")
	}
	b.waitQueueEmpty()
}
