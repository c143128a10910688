package outbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TrackedTable is a table pg2kafka.setup() tracks, with its options, as
// pg2kafka.tracked_tables records them.
type TrackedTable struct {
	Schema    string `json:"schema"`
	Name      string `json:"name"`
	KeyColumn string `json:"key_column"`
	// Operations are the statements captured, of INSERT, UPDATE, DELETE.
	Operations []string `json:"operations"`
	// Columns are the columns kept in data; nil for all.
	Columns    []string `json:"columns,omitempty"`
	IncludeOld bool     `json:"include_old"`
	// Filter is the WHEN condition; "" for none.
	Filter string `json:"filter,omitempty"`
	// Topic is the table's own topic; "" for the default name.
	Topic string `json:"topic,omitempty"`
	// FullRow is whether UPDATE and DELETE events carry whole rows.
	FullRow      bool      `json:"full_row"`
	TrackedSince time.Time `json:"tracked_since"`
}

// Table returns the table as its events name it.
func (t *TrackedTable) Table() Table { return Table{Schema: t.Schema, Name: t.Name} }

// Captures reports whether the table's trigger captures statement (INSERT,
// UPDATE or DELETE).
func (t *TrackedTable) Captures(statement string) bool {
	return slices.Contains(t.Operations, statement)
}

// SetupOptions are setup()'s optional arguments; the zero value of each
// field leaves setup()'s default.
type SetupOptions struct {
	Operations []string // default INSERT, UPDATE, DELETE
	Columns    []string // default all
	IncludeOld bool
	Filter     string
	Topic      string
	FullRow    bool
	// Snapshot, when set, says whether to enqueue a SNAPSHOT event per row;
	// by default setup() does the first time a table is set up.
	Snapshot *bool
}

// SetupResult is what Setup did.
type SetupResult struct {
	Table TrackedTable
	// Snapshotted is how many SNAPSHOT events it queued.
	Snapshotted int64
}

// queueWritesSQL counts the rows the current transaction inserted into and
// deleted from the queue, without reading the queue.
const queueWritesSQL = `
SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_del), 0)
FROM pg_stat_xact_user_tables WHERE relid = 'pg2kafka.outbound_event_queue'::regclass`

const trackedTablesSQL = `
SELECT table_schema, table_name, external_id_column, operations, columns, include_old,
       coalesce(filter, ''), coalesce(topic, ''), full_row, tracked_since
FROM pg2kafka.tracked_tables`

func scanTrackedTable(row pgx.CollectableRow) (TrackedTable, error) {
	var t TrackedTable
	err := row.Scan(&t.Schema, &t.Name, &t.KeyColumn, &t.Operations, &t.Columns, &t.IncludeOld, &t.Filter, &t.Topic, &t.FullRow, &t.TrackedSince)
	return t, err
}

// ListTrackedTables returns the tracked tables with their options, ordered
// by schema and name.
func ListTrackedTables(ctx context.Context, pool *pgxpool.Pool) ([]TrackedTable, error) {
	rows, err := pool.Query(ctx, trackedTablesSQL+` ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("outbox: list tracked tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, scanTrackedTable)
	if err != nil {
		return nil, fmt.Errorf("outbox: list tracked tables: %w", err)
	}
	return tables, nil
}

// TrackedTables returns the tracked tables with their options, ordered by
// schema and name.
func (q *Queue) TrackedTables(ctx context.Context) ([]TrackedTable, error) {
	return ListTrackedTables(ctx, q.pool)
}

// Setup calls pg2kafka.setup(table, keyColumn, …) in a transaction of its
// own. table is SQL's name for it, quoted as needed: orders,
// "Sales"."Order Items". Postgres' errors are returned as they are.
func Setup(ctx context.Context, pool *pgxpool.Pool, table, keyColumn string, opts SetupOptions) (SetupResult, error) {
	var ops, cols, filter, topic any
	if opts.Operations != nil {
		ops = opts.Operations
	}
	if opts.Columns != nil {
		cols = opts.Columns
	}
	if opts.Filter != "" {
		filter = opts.Filter
	}
	if opts.Topic != "" {
		topic = opts.Topic
	}
	var res SetupResult
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			SELECT pg2kafka.setup($1::text::regclass, $2,
			    operations => coalesce($3::text[], '{INSERT,UPDATE,DELETE}'), columns => $4::text[],
			    include_old => $5, filter => $6::text, topic => $7::text, snapshot => $8::boolean,
			    full_row => $9)`,
			table, keyColumn, ops, cols, opts.IncludeOld, filter, topic, opts.Snapshot, opts.FullRow)
		if err != nil {
			return err
		}
		var deleted int64
		if err := tx.QueryRow(ctx, queueWritesSQL).Scan(&res.Snapshotted, &deleted); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, trackedTablesSQL+` WHERE relation = $1::text::regclass`, table)
		if err != nil {
			return err
		}
		res.Table, err = pgx.CollectExactlyOneRow(rows, scanTrackedTable)
		return err
	})
	return res, sqlError(err)
}

// Teardown calls pg2kafka.teardown(table, purge) in a transaction of its
// own, and returns whether the table was tracked and how many queued events
// purge dropped.
func Teardown(ctx context.Context, pool *pgxpool.Pool, table string, purge bool) (tracked bool, purged int64, err error) {
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg2kafka.tracked_tables WHERE relation = $1::text::regclass)`, table).Scan(&tracked); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg2kafka.teardown($1::text::regclass, $2)`, table, purge); err != nil {
			return err
		}
		var inserted int64
		return tx.QueryRow(ctx, queueWritesSQL).Scan(&inserted, &purged)
	})
	return tracked, purged, sqlError(err)
}

// RequeueDeadLetters calls pg2kafka.requeue_dead_letters(): it puts the
// dead letters with the given ids, or every one when ids is empty, back at
// the end of the queue, and returns how many it moved.
func RequeueDeadLetters(ctx context.Context, pool *pgxpool.Pool, ids []int64) (int64, error) {
	var arg any
	if len(ids) > 0 {
		arg = ids
	}
	var n int64
	err := pool.QueryRow(ctx, `SELECT pg2kafka.requeue_dead_letters($1::bigint[])`, arg).Scan(&n)
	return n, sqlError(err)
}

// BackfillProgress is how far a table's backfill got, as pg2kafka.backfills
// records it.
type BackfillProgress struct {
	RowsDone  int64 `json:"rows_done"`
	RowsTotal int64 `json:"rows_total"`
	// Events is how many SNAPSHOT events it queued (fewer than the rows
	// when a filter leaves some out).
	Events     int64      `json:"events"`
	ChunkSize  int        `json:"chunk_size"`
	StartedAt  time.Time  `json:"started_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

const backfillProgressSQL = `
SELECT rows_done, rows_total, events, chunk_size, started_at, updated_at, finished_at
FROM pg2kafka.backfills WHERE relation = $1::text::regclass`

func scanBackfillProgress(row pgx.CollectableRow) (BackfillProgress, error) {
	var p BackfillProgress
	err := row.Scan(&p.RowsDone, &p.RowsTotal, &p.Events, &p.ChunkSize, &p.StartedAt, &p.UpdatedAt, &p.FinishedAt)
	return p, err
}

// Backfill returns the progress of table's last backfill; false when it has
// none.
func Backfill(ctx context.Context, pool *pgxpool.Pool, table string) (BackfillProgress, bool, error) {
	rows, err := pool.Query(ctx, backfillProgressSQL, table)
	if err != nil {
		return BackfillProgress{}, false, sqlError(err)
	}
	p, err := pgx.CollectExactlyOneRow(rows, scanBackfillProgress)
	if errors.Is(err, pgx.ErrNoRows) {
		return BackfillProgress{}, false, nil
	}
	return p, err == nil, sqlError(err)
}

// BackfillChunk runs one chunk of pg2kafka.backfill(table, chunkSize) in a
// transaction of its own, as the procedure does: the first starts a
// backfill unless one is under way, each queues the SNAPSHOT events of the
// next chunkSize rows in primary-key order and records how far it got. A
// chunk that deadlocks with a writer is tried again, up to ten times, like
// the procedure's. It returns the progress after the chunk, finished once
// the table is done.
func BackfillChunk(ctx context.Context, pool *pgxpool.Pool, table string, chunkSize int) (BackfillProgress, error) {
	for deadlocks := 0; ; deadlocks++ {
		var p BackfillProgress
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg2kafka.backfill_chunk($1::text::regclass, $2)`, table, chunkSize); err != nil {
				return err
			}
			rows, err := tx.Query(ctx, backfillProgressSQL, table)
			if err != nil {
				return err
			}
			p, err = pgx.CollectExactlyOneRow(rows, scanBackfillProgress)
			return err
		})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "40P01" && deadlocks < 10 { // deadlock_detected
			select {
			case <-ctx.Done():
				return p, ctx.Err()
			case <-time.After(time.Duration(deadlocks+1) * 50 * time.Millisecond):
			}
			continue
		}
		return p, sqlError(err)
	}
}

// SQLError is an error Postgres raised, shown as Postgres says it, with its
// hint: pg2kafka's functions explain what went wrong and what to do.
type SQLError struct{ *pgconn.PgError }

func (e *SQLError) Error() string {
	s := e.Message + " (SQLSTATE " + e.Code + ")"
	if e.Hint != "" {
		s += "; hint: " + e.Hint
	}
	return s
}

func (e *SQLError) Unwrap() error { return e.PgError }

func sqlError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return &SQLError{pgErr}
	}
	return err
}
