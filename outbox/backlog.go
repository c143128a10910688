package outbox

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Backlog is one table's events waiting in the queue and in the dead-letter
// table.
type Backlog struct {
	Table
	// Tracked is false for a table whose events are queued although it is
	// no longer tracked (torn down with events left).
	Tracked bool
	// Queued is how many of its events wait in the queue.
	Queued int64
	// Oldest is when the oldest of them was written; zero when none wait.
	Oldest time.Time
	// DeadLetters is how many of its events are in the dead-letter table.
	DeadLetters int64
}

// backlogSQL counts in one pass over each table. The queue has no index by
// table, so the count reads the whole queue: cheap while the queue is as
// short as it should be, and bounded by the caller's timeout when it is not.
const backlogSQL = `
WITH queued AS (
    SELECT table_schema, table_name, count(*) AS n, min(created_at) AS oldest
    FROM pg2kafka.outbound_event_queue GROUP BY 1, 2
), dead AS (
    SELECT table_schema, table_name, count(*) AS n
    FROM pg2kafka.dead_letter_events GROUP BY 1, 2
)
SELECT table_schema, table_name, t.table_name IS NOT NULL AS tracked,
       coalesce(q.n, 0), q.oldest, coalesce(d.n, 0)
FROM (SELECT table_schema, table_name FROM pg2kafka.tracked_tables) AS t
FULL JOIN queued AS q USING (table_schema, table_name)
FULL JOIN dead AS d USING (table_schema, table_name)
ORDER BY 1, 2`

// Backlogs returns the backlog of every tracked table, and of any other
// table with events queued or dead-lettered, ordered by schema and name.
func Backlogs(ctx context.Context, pool *pgxpool.Pool) ([]Backlog, error) {
	rows, err := pool.Query(ctx, backlogSQL)
	if err != nil {
		return nil, fmt.Errorf("outbox: count queued events: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Backlog, error) {
		var b Backlog
		var oldest *time.Time
		err := row.Scan(&b.Schema, &b.Name, &b.Tracked, &b.Queued, &oldest, &b.DeadLetters)
		if oldest != nil {
			b.Oldest = *oldest
		}
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: count queued events: %w", err)
	}
	return out, nil
}

// TrackedTables returns the tables pg2kafka.setup() tracks, ordered by
// schema and name.
func TrackedTables(ctx context.Context, pool *pgxpool.Pool) ([]Table, error) {
	rows, err := pool.Query(ctx, `SELECT table_schema, table_name FROM pg2kafka.tracked_tables ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("outbox: list tracked tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Table])
	if err != nil {
		return nil, fmt.Errorf("outbox: list tracked tables: %w", err)
	}
	return tables, nil
}

// ShipperConn is one connection counted among the shippers: a worker of a
// pg2kafka process, connected to this database.
type ShipperConn struct {
	// PID is the connection's backend process id.
	PID int32 `json:"pid"`
	// ClientAddr is where the connection comes from, "local" for a Unix
	// socket, or "" when the role may not see it.
	ClientAddr string `json:"client_addr"`
	// Since is when the connection was opened.
	Since time.Time `json:"since"`
	// Lanes are the lanes it owns, ascending.
	Lanes []int32 `json:"lanes"`
}

// shippersSQL lists the claimers from their advisory locks (see
// lockCensusSQL), with what pg_stat_activity says of each connection.
const shippersSQL = `
SELECT m.pid,
       CASE WHEN a.client_addr IS NOT NULL THEN host(a.client_addr)
            WHEN a.backend_start IS NOT NULL AND a.client_port = -1 THEN 'local' ELSE '' END,
       coalesce(a.backend_start, 'epoch'),
       coalesce((SELECT array_agg(l.objid::bigint::int4 ORDER BY l.objid)
                 FROM pg_locks AS l
                 WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
                   AND l.database = m.database AND l.pid = m.pid AND l.classid = $2::bigint::oid), '{}')
FROM pg_locks AS m
LEFT JOIN pg_stat_activity AS a ON a.pid = m.pid
WHERE m.locktype = 'advisory' AND m.objsubid = 2 AND m.granted AND m.classid = $1::bigint::oid
  AND m.database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY 3, 1`

// Shippers returns the connections counted among the shippers of this
// database, oldest first, with the lanes each owns.
func Shippers(ctx context.Context, pool *pgxpool.Pool) ([]ShipperConn, error) {
	rows, err := pool.Query(ctx, shippersSQL, memberLockKey, laneLockKey)
	if err != nil {
		return nil, fmt.Errorf("outbox: list shippers: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ShipperConn, error) {
		var s ShipperConn
		err := row.Scan(&s.PID, &s.ClientAddr, &s.Since, &s.Lanes)
		slices.Sort(s.Lanes)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: list shippers: %w", err)
	}
	return out, nil
}
