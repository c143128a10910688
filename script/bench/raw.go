package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
)

// rawDrainSQL hands out and deletes one batch in one statement: the least
// Postgres can do per batch for a shipper, and so the ceiling of any.
const rawDrainSQL = `
DELETE FROM pg2kafka.outbound_event_queue
WHERE id IN (
    SELECT id FROM pg2kafka.outbound_event_queue
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING id, uuid, external_id, table_schema, table_name, statement, data, created_at`

// queuedEvent is a queue row as a shipper must hold it in memory.
type queuedEvent struct {
	ID          int64
	UUID        pgtype.UUID // null unless the event was queued with its own
	ExternalID  *string
	TableSchema string
	TableName   string
	Statement   string
	Data        []byte
	CreatedAt   time.Time
}

// rawResult is one raw drain.
type rawResult struct {
	Workers      int     `json:"workers"`
	Events       int     `json:"events"`
	BatchSize    int     `json:"batch_size"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
}

// runRaw measures the raw drain limit with 1, 2 and 4 workers.
func (b *bench) runRaw(ctx context.Context) error {
	for _, workers := range []int{1, 2, 4} {
		r, err := b.rawDrain(ctx, b.cfg.Events, workers)
		if err != nil {
			return fmt.Errorf("%d worker(s): %w", workers, err)
		}
		b.report.Raw = append(b.report.Raw, r)
	}
	return nil
}

// rawDrain fills the queue with n events, then empties it with workers
// connections each running rawDrainSQL until it returns nothing.
func (b *bench) rawDrain(ctx context.Context, n, workers int) (rawResult, error) {
	batch := b.cfg.BatchSize
	took, err := fillQueue(ctx, b.pool, n, 200)
	if err != nil {
		return rawResult{}, err
	}
	b.log.Info("queue filled", "events", n, "took", took.Round(time.Millisecond))

	conns, release, err := acquire(ctx, b.pool, workers)
	if err != nil {
		return rawResult{}, err
	}
	defer release()

	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, conn := range conns {
		g.Go(func() error { return drainWith(gctx, conn, batch) })
	}
	if err := g.Wait(); err != nil {
		return rawResult{}, err
	}
	elapsed := time.Since(start)

	if empty, err := queueEmpty(ctx, b.pool); err != nil {
		return rawResult{}, err
	} else if !empty {
		return rawResult{}, errors.New("the queue is not empty after every worker found nothing left")
	}
	r := rawResult{Workers: workers, Events: n, BatchSize: batch, Seconds: elapsed.Seconds(), EventsPerSec: float64(n) / elapsed.Seconds()}
	b.log.Info("raw drain", "workers", workers, "events_per_sec", int(r.EventsPerSec))
	return r, nil
}

// drainWith deletes batches until a batch comes back empty.
func drainWith(ctx context.Context, conn *pgxpool.Conn, batch int) error {
	for {
		rows, err := conn.Query(ctx, rawDrainSQL, batch)
		if err != nil {
			return err
		}
		events, err := pgx.CollectRows(rows, pgx.RowToStructByPos[queuedEvent])
		if err != nil {
			return err
		}
		if len(events) == 0 {
			return nil
		}
	}
}

// acquire takes n connections of pool, one per client, and returns them with
// a function that releases them all.
func acquire(ctx context.Context, pool *pgxpool.Pool, n int) ([]*pgxpool.Conn, func(), error) {
	conns := make([]*pgxpool.Conn, 0, n)
	release := func() {
		for _, c := range conns {
			c.Release()
		}
	}
	for range n {
		c, err := pool.Acquire(ctx)
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("acquire a connection: %w", err)
		}
		conns = append(conns, c)
	}
	return conns, release, nil
}
