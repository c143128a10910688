package outbox

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

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
