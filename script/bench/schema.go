package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
)

// schemaSQL creates the benchmark's tables, after pg2kafka's migrations.
//
// bench_events feeds the drains and bench_latency the latency run, both
// tracked by pg2kafka. bench_w_a, _b and _c are the write-path tables: the
// same columns, with no trigger, a minimal outbox trigger, and pg2kafka's;
// bench_w_d has the minimal trigger writing into a copy of pg2kafka's queue,
// which tells the cost of the queue's columns from that of the trigger;
// bench_w_e has pg2kafka's trigger with full_row.
const schemaSQL = `
CREATE TABLE bench_events (
    id       bigint PRIMARY KEY,
    customer text NOT NULL,
    status   text NOT NULL,
    payload  text NOT NULL
);
CREATE TABLE bench_latency (LIKE bench_events INCLUDING ALL);

CREATE TABLE bench_w_a (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer text NOT NULL,
    status   text NOT NULL,
    payload  text NOT NULL
);
CREATE TABLE bench_w_b (LIKE bench_w_a INCLUDING ALL);
CREATE TABLE bench_w_c (LIKE bench_w_a INCLUDING ALL);
CREATE TABLE bench_w_d (LIKE bench_w_a INCLUDING ALL);
CREATE TABLE bench_w_e (LIKE bench_w_a INCLUDING ALL);

CREATE TABLE bench_min_outbox (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    data jsonb NOT NULL
);
CREATE FUNCTION bench_min_outbox_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_min_outbox (data) VALUES (to_jsonb(NEW));
    RETURN NULL;
END
$$;
CREATE TRIGGER bench_min_outbox_enqueue AFTER INSERT ON bench_w_b
    FOR EACH ROW EXECUTE FUNCTION bench_min_outbox_enqueue();

CREATE TABLE bench_shaped_outbox (LIKE pg2kafka.outbound_event_queue INCLUDING ALL);
CREATE FUNCTION bench_shaped_outbox_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_shaped_outbox (table_schema, table_name, statement, data)
    VALUES ('public', 'bench_w_d', 'INSERT', to_jsonb(NEW));
    RETURN NULL;
END
$$;
CREATE TRIGGER bench_shaped_outbox_enqueue AFTER INSERT ON bench_w_d
    FOR EACH ROW EXECUTE FUNCTION bench_shaped_outbox_enqueue();

SELECT pg2kafka.setup('bench_events', 'id');
SELECT pg2kafka.setup('bench_latency', 'id');
SELECT pg2kafka.setup('bench_w_c', 'id');
SELECT pg2kafka.setup('bench_w_e', 'id', full_row => true);
`

// The tables whose events reach Kafka; their topics are
// pg2kafka.<database>.<table>, the schema being public.
const (
	eventsTable  = "bench_events"
	latencyTable = "bench_latency"
)

// fillSQL inserts rows $1..$2 into bench_events, each with a payload of $5
// characters cut at a varying offset out of $3, random ASCII text $4 bytes
// longer: every payload differs and none compresses, as real data would not.
// $3 is bytea because cutting text at a character offset walks the string
// from its start, which made filling a queue of big events take minutes.
const fillSQL = `
INSERT INTO bench_events (id, customer, status, payload)
SELECT g, 'customer-' || lpad((g % 10000)::text, 4, '0'), 'pending',
       convert_from(substring($3::bytea FROM 1 + (g * 7919 % $4)::int FOR $5), 'UTF8')
FROM generate_series($1::bigint, $2::bigint) AS g`

// fillChunk is the rows inserted per transaction while filling.
const fillChunk = 50_000

// payloadSpread is how many different offsets payloads are cut at.
const payloadSpread = 1 << 16

// dataTemplate is the event data of a row with an empty payload, as the
// shipper sends it (compact JSON, jsonb's key order), with a 7-digit id.
const dataTemplate = `{"id":1000000,"status":"pending","payload":"","customer":"customer-0000"}`

// payloadLen is the payload that makes a row's event data about size bytes.
func payloadLen(size int) int { return max(0, size-len(dataTemplate)) }

// randomText returns n random letters and digits, the same for every run.
func randomText(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

// fillQueue empties the queue and bench_events, then inserts n rows into
// bench_events, whose trigger queues one event of about eventSize bytes each.
// Chunks are inserted by a few connections at once; then the queue is
// analysed and checkpointed so the drain that follows starts from the same
// state every time.
func fillQueue(ctx context.Context, pool *pgxpool.Pool, n, eventSize int) (time.Duration, error) {
	start := time.Now()
	if err := truncate(ctx, pool, eventsTable, "pg2kafka.outbound_event_queue"); err != nil {
		return 0, err
	}
	pad := payloadLen(eventSize)
	text := []byte(randomText(pad + payloadSpread))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(min(4, runtime.NumCPU()))
	for lo := 1; lo <= n; lo += fillChunk {
		hi := min(lo+fillChunk-1, n)
		g.Go(func() error {
			if _, err := pool.Exec(gctx, fillSQL, lo, hi, text, payloadSpread, pad); err != nil {
				return fmt.Errorf("fill the queue: %w", err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	if err := settle(ctx, pool, eventsTable, "pg2kafka.outbound_event_queue"); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// truncate empties tables, which are the suite's own. pg2kafka refuses
// TRUNCATE of a tracked table, which would lose changes; the suite means it,
// so it lifts the guard for the moment of its TRUNCATE.
func truncate(ctx context.Context, pool *pgxpool.Pool, tables ...string) error {
	for _, t := range tables {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var guarded bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = 'pg2kafka_refuse_truncate')`, t).Scan(&guarded); err != nil {
				return err
			}
			if !guarded {
				_, err := tx.Exec(ctx, "TRUNCATE "+t)
				return err
			}
			_, err := tx.Exec(ctx, "ALTER TABLE "+t+" DISABLE TRIGGER pg2kafka_refuse_truncate; TRUNCATE "+t+"; ALTER TABLE "+t+" ENABLE ALWAYS TRIGGER pg2kafka_refuse_truncate")
			return err
		})
		if err != nil {
			return fmt.Errorf("truncate %s: %w", t, err)
		}
	}
	return nil
}

// settle analyses tables and checkpoints, so that the statistics are fresh
// and no checkpoint of the fill's writes lands in the middle of the next
// measurement.
func settle(ctx context.Context, pool *pgxpool.Pool, tables ...string) error {
	for _, t := range tables {
		if _, err := pool.Exec(ctx, "ANALYZE "+t); err != nil {
			return fmt.Errorf("analyze %s: %w", t, err)
		}
	}
	if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// queueDepth counts the queued events.
func queueDepth(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var n int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg2kafka.outbound_event_queue`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count queued events: %w", err)
	}
	return n, nil
}

// queueEmpty reports whether no event is queued, without counting them all.
func queueEmpty(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	var empty bool
	if err := pool.QueryRow(ctx, `SELECT NOT EXISTS (SELECT FROM pg2kafka.outbound_event_queue)`).Scan(&empty); err != nil {
		return false, fmt.Errorf("look at the queue: %w", err)
	}
	return empty, nil
}
