package outbox

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Status is a picture of pg2kafka in one database: its schema, its queue,
// the tables it tracks and the shippers connected. ReadStatus takes it
// cheaply whatever the length of the queue: where an exact count would
// read the whole queue, it estimates, and says so.
type Status struct {
	// SchemaVersion is the version of the installed schema, 0 when pg2kafka
	// is not installed; WantSchemaVersion is the one this pg2kafka needs.
	SchemaVersion     int64       `json:"schema_version"`
	WantSchemaVersion int64       `json:"want_schema_version"`
	Queue             QueueStatus `json:"queue"`
	// DeadLetters is how many events wait in the dead-letter table.
	DeadLetters int64         `json:"dead_letters"`
	Tables      []TableStatus `json:"tables"`
	// Shippers are the connections of the shippers of this database, each
	// with the lanes it owns.
	Shippers []ShipperConn `json:"shippers"`
	// Lanes is how many lanes the queue is divided into.
	Lanes int `json:"lanes"`
	// Horizon is what holds the queue's dead rows back the longest, and
	// how many there are.
	Horizon Horizon `json:"horizon"`
	// At is when the status was read, by Postgres' clock.
	At time.Time `json:"at"`
}

// QueueStatus is the state of pg2kafka.outbound_event_queue as a whole.
type QueueStatus struct {
	// Events is how many events are queued; an estimate when Estimated.
	Events    int64 `json:"events"`
	Estimated bool  `json:"estimated"`
	// Oldest is the event at the head of the queue, the first a shipper
	// claims; nil when the queue is empty.
	Oldest *QueuedEvent `json:"oldest,omitempty"`
}

// QueuedEvent names one event of the queue and how long it has waited.
type QueuedEvent struct {
	ID        int64     `json:"id"`
	Table     string    `json:"table"`
	CreatedAt time.Time `json:"created_at"`
	Age       Duration  `json:"age_seconds"`
}

// TableStatus is one table's part of the status: its options when it is
// tracked, its events queued and dead-lettered, its backfill. The events of
// pg2kafka.emit() to a topic count as a table of Schema "" and Name the
// topic, never Tracked.
type TableStatus struct {
	Schema  string `json:"schema"`
	Name    string `json:"name"`
	Tracked bool   `json:"tracked"`
	// Options are the table's setup() options; nil when it is not tracked
	// (torn down with events left), or when the role reading the status
	// may not see them (pg2kafka_shipper).
	Options *TrackedTable `json:"options,omitempty"`
	// Queued is how many of its events are queued; an estimate when the
	// queue's Estimated is.
	Queued int64 `json:"queued"`
	// OldestAge is how long its oldest queued event has waited; nil when
	// it has none queued, or when none is among the oldest events of a
	// queue too long to read whole.
	OldestAge   *Duration         `json:"oldest_age_seconds,omitempty"`
	DeadLetters int64             `json:"dead_letters"`
	Backfill    *BackfillProgress `json:"backfill,omitempty"`
}

// Duration is a time.Duration that JSON shows in seconds.
type Duration time.Duration

// MarshalJSON writes the duration in seconds, to the millisecond.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(math.Round(time.Duration(d).Seconds()*1000) / 1000)
}

// UnmarshalJSON reads a duration in seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s float64
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	*d = Duration(s * float64(time.Second))
	return nil
}

// exactCountPages is the size of queue, in pages, up to which ReadStatus
// counts the queue's events exactly (8 KiB pages: 16 MiB, some 100,000
// events). Above it, it counts those of samplePages pages chosen at random
// (TABLESAMPLE SYSTEM: some 60,000 events, enough for a count within a few
// percent), and reads the oldest event of each table from the head of the
// queue, its first headEvents events by the id index.
const (
	exactCountPages = 2000
	samplePages     = 1000
	headEvents      = 10000
)

// queueSizeSQL reads the queue's size from the catalog: pages, not rows,
// since pg_class.reltuples is only as fresh as the last VACUUM or ANALYZE.
const queueSizeSQL = `
SELECT pg_relation_size('pg2kafka.outbound_event_queue') / current_setting('block_size')::int, now()`

const oldestEventSQL = `
SELECT id, format('%s.%s', table_schema, table_name), created_at, now() - created_at
FROM pg2kafka.outbound_event_queue ORDER BY id LIMIT 1`

const exactCountSQL = `
SELECT table_schema, table_name, count(*), now() - min(created_at)
FROM pg2kafka.outbound_event_queue GROUP BY 1, 2`

// sampleCountSQL estimates each table's events from a sample of $1 percent
// of the queue's pages; headSQL reads the age of each table's oldest event
// among the first events of the queue.
const (
	sampleCountSQL = `
SELECT table_schema, table_name, (count(*) * 100 / $1::float8)::bigint, NULL::interval
FROM pg2kafka.outbound_event_queue TABLESAMPLE SYSTEM ($1) GROUP BY 1, 2`
	headSQL = `
SELECT table_schema, table_name, count(*), now() - min(created_at)
FROM (SELECT table_schema, table_name, created_at FROM pg2kafka.outbound_event_queue ORDER BY id LIMIT $1) AS head
GROUP BY 1, 2`
)

const deadLetterCountSQL = `
SELECT table_schema, table_name, count(*) FROM pg2kafka.dead_letter_events GROUP BY 1, 2`

const backfillsSQL = `
SELECT t.table_schema, t.table_name, b.rows_done, b.rows_total, b.events, b.chunk_size, b.started_at, b.updated_at, b.finished_at
FROM pg2kafka.backfills AS b JOIN pg2kafka.tracked_tables AS t USING (relation)`

// ReadStatus reads the status of pg2kafka in the database. Its statements
// run in one read-only transaction, so that they agree with each other.
// Against a database without pg2kafka it returns a Status with
// SchemaVersion 0 and nothing else.
func ReadStatus(ctx context.Context, pool *pgxpool.Pool) (*Status, error) {
	s := &Status{WantSchemaVersion: LatestVersion(), Lanes: Lanes, Tables: []TableStatus{}, Shippers: []ShipperConn{}}
	var err error
	if s.SchemaVersion, err = SchemaVersion(ctx, pool); err != nil {
		return nil, err
	}
	if s.SchemaVersion == 0 {
		err := pool.QueryRow(ctx, `SELECT now()`).Scan(&s.At)
		return s, err
	}
	err = pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		return s.read(ctx, tx)
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: read status: %w", err)
	}
	shippers, err := Shippers(ctx, pool)
	if err != nil {
		return nil, err
	}
	s.Shippers = append(s.Shippers, shippers...)
	// After the status's own snapshot is gone, which would be the oldest.
	if s.Horizon, err = OldestHorizon(ctx, pool); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Status) read(ctx context.Context, tx pgx.Tx) error {
	index := make(map[Table]int)
	table := func(schema, name string) *TableStatus {
		k := Table{schema, name}
		i, ok := index[k]
		if !ok {
			i = len(s.Tables)
			index[k] = i
			s.Tables = append(s.Tables, TableStatus{Schema: schema, Name: name})
		}
		return &s.Tables[i]
	}
	// The shipper's role (pg2kafka_shipper) may read the names of the
	// tracked tables, not their options or backfills: as that role, the
	// status goes without them.
	var mayReadOptions, mayReadBackfills bool
	if err := tx.QueryRow(ctx, `SELECT has_table_privilege('pg2kafka.tracked_tables', 'SELECT'), has_table_privilege('pg2kafka.backfills', 'SELECT')`).Scan(&mayReadOptions, &mayReadBackfills); err != nil {
		return err
	}
	if mayReadOptions {
		rows, err := tx.Query(ctx, trackedTablesSQL)
		if err != nil {
			return err
		}
		tracked, err := pgx.CollectRows(rows, scanTrackedTable)
		if err != nil {
			return err
		}
		for i := range tracked {
			t := table(tracked[i].Schema, tracked[i].Name)
			t.Tracked, t.Options = true, &tracked[i]
		}
	} else {
		rows, err := tx.Query(ctx, `SELECT table_schema, table_name FROM pg2kafka.tracked_tables`)
		if err != nil {
			return err
		}
		names, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Table])
		if err != nil {
			return err
		}
		for _, n := range names {
			table(n.Schema, n.Name).Tracked = true
		}
	}

	var pages int64
	if err := tx.QueryRow(ctx, queueSizeSQL).Scan(&pages, &s.At); err != nil {
		return err
	}
	var oldest QueuedEvent
	var age time.Duration
	err := tx.QueryRow(ctx, oldestEventSQL).Scan(&oldest.ID, &oldest.Table, &oldest.CreatedAt, &age)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		err = nil // empty
	case err != nil:
		return err
	default:
		oldest.Age = Duration(age)
		s.Queue.Oldest = &oldest
	}

	type count struct {
		schema, name string
		n            int64
		age          *time.Duration
	}
	counts := func(sql string, args ...any) ([]count, error) {
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(row pgx.CollectableRow) (count, error) {
			var c count
			err := row.Scan(&c.schema, &c.name, &c.n, &c.age)
			return c, err
		})
	}
	var queued, head []count
	if s.Queue.Oldest == nil {
		// Empty.
	} else if pages <= exactCountPages {
		queued, err = counts(exactCountSQL)
	} else {
		s.Queue.Estimated = true
		percent := 100 * float64(samplePages) / float64(pages)
		if queued, err = counts(sampleCountSQL, percent); err == nil {
			head, err = counts(headSQL, headEvents)
		}
	}
	if err != nil {
		return err
	}
	for _, c := range append(queued, head...) {
		t := table(c.schema, c.name)
		// The head is counted exactly: a table the sample missed has at
		// least those.
		t.Queued = max(t.Queued, c.n)
		if c.age != nil {
			d := Duration(*c.age)
			t.OldestAge = &d
		}
	}

	rows, err := tx.Query(ctx, deadLetterCountSQL)
	if err != nil {
		return err
	}
	dead, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (count, error) {
		var c count
		err := row.Scan(&c.schema, &c.name, &c.n)
		return c, err
	})
	if err != nil {
		return err
	}
	for _, c := range dead {
		table(c.schema, c.name).DeadLetters = c.n
		s.DeadLetters += c.n
	}

	if mayReadBackfills {
		if err := s.readBackfills(ctx, tx, table); err != nil {
			return err
		}
	}
	for _, t := range s.Tables {
		s.Queue.Events += t.Queued
	}
	slices.SortFunc(s.Tables, func(a, b TableStatus) int {
		return cmp.Or(cmp.Compare(a.Schema, b.Schema), cmp.Compare(a.Name, b.Name))
	})
	return nil
}

func (s *Status) readBackfills(ctx context.Context, tx pgx.Tx, table func(schema, name string) *TableStatus) error {
	rows, err := tx.Query(ctx, backfillsSQL)
	if err != nil {
		return err
	}
	type backfill struct {
		schema, name string
		progress     BackfillProgress
	}
	backfills, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (backfill, error) {
		var b backfill
		p := &b.progress
		err := row.Scan(&b.schema, &b.name, &p.RowsDone, &p.RowsTotal, &p.Events, &p.ChunkSize, &p.StartedAt, &p.UpdatedAt, &p.FinishedAt)
		return b, err
	})
	if err != nil {
		return err
	}
	for _, b := range backfills {
		table(b.schema, b.name).Backfill = &b.progress
	}
	return nil
}

// Problems lists what needs someone's attention, worded for them: a schema
// of another version than this pg2kafka's, dead letters, and an oldest
// event that has waited longer than maxAge (0: no limit). None means
// healthy.
func (s *Status) Problems(maxAge time.Duration) []string {
	var problems []string
	switch {
	case s.SchemaVersion == 0:
		problems = append(problems, "pg2kafka is not installed in this database: run pg2kafka migrate (or start with PERFORM_MIGRATIONS=true)")
	case s.SchemaVersion < s.WantSchemaVersion:
		problems = append(problems, fmt.Sprintf("the schema is at version %d and this pg2kafka needs %d: run pg2kafka migrate (or start with PERFORM_MIGRATIONS=true)", s.SchemaVersion, s.WantSchemaVersion))
	case s.SchemaVersion > s.WantSchemaVersion:
		problems = append(problems, fmt.Sprintf("the schema is at version %d, newer than this pg2kafka knows (%d): use the release that installed it", s.SchemaVersion, s.WantSchemaVersion))
	}
	if s.DeadLetters > 0 {
		problems = append(problems, fmt.Sprintf("%d dead letters: events the destination refused; see SELECT * FROM pg2kafka.dead_letter_events, then pg2kafka requeue", s.DeadLetters))
	}
	if o := s.Queue.Oldest; o != nil && maxAge > 0 && time.Duration(o.Age) > maxAge {
		problems = append(problems, fmt.Sprintf("the oldest queued event (id %d, %s) has waited %s, longer than %s", o.ID, o.Table, time.Duration(o.Age).Round(time.Second), maxAge))
	}
	return problems
}
