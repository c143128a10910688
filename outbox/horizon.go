package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Horizon is what keeps the rows of shipped events from being vacuumed
// away: the oldest snapshot or transaction Postgres must still serve, for
// which it keeps every row deleted since it began. While it lasts the dead
// rows pile up; the claims walk past them only once (see lowwater.go), but
// they take space, and vacuum cannot reclaim it until the holder ends.
type Horizon struct {
	// DeadRows is Postgres' estimate of the dead rows in the queue
	// (pg_stat_user_tables.n_dead_tup).
	DeadRows int64 `json:"dead_rows"`
	// Holder says what holds the oldest snapshot: "session" (of this
	// database), "prepared transaction", "replication slot" or "standby"
	// (a walsender's hot_standby_feedback); "" if nothing holds one.
	Holder string `json:"holder,omitempty"`
	// XIDAge is how many transactions ago its snapshot was taken.
	XIDAge int64 `json:"xid_age,omitempty"`
	// Since is when its transaction began (a session's, or a prepared
	// transaction's preparation); zero when Postgres does not say, or the
	// role may not see it.
	Since time.Time `json:"since,omitzero"`
	// PID is the session's or the walsender's backend pid; 0 for others.
	PID int32 `json:"pid,omitempty"`
	// Name is the session's application_name, the slot's name, or the
	// prepared transaction's gid.
	Name string `json:"name,omitempty"`
	// State is the session's state ("idle in transaction", "active"); ""
	// when the role may not see it.
	State string `json:"state,omitempty"`
	// QueryStart is when the session's current or last query began.
	QueryStart time.Time `json:"query_start,omitzero"`
}

// Age is how long the holder's transaction has been open, or 0 when not
// known.
func (h Horizon) Age(now time.Time) time.Duration {
	if h.Since.IsZero() {
		return 0
	}
	return now.Sub(h.Since)
}

// horizonSQL lists what can hold the queue's horizon back, and keeps the
// oldest. Since Postgres 14 a table's horizon is held only by sessions of
// its own database, with replication slots, standbys' feedback and prepared
// transactions. A session holds it with its snapshot (backend_xmin) or, as a
// writer, with its transaction id (backend_xid). The asking session, whose
// own snapshot is new, is left out, and so is (auto)vacuum, which holds no
// one's rows back. A role that may not read another role's session stats
// (pg2kafka_shipper, unless a member of pg_read_all_stats) sees that
// session's snapshot but not its kind, state or start: such a session is
// counted all the same, since missing a pg_dump run by the owner is worse
// than taking another role's long vacuum for a session. A shipper's watcher,
// waiting in Postgres for events (Queue.Watch), is left out too: its
// snapshot lasts a second at most and is renewed, so it holds nothing back.
const horizonSQL = `
WITH holders AS (
    SELECT 'session' AS holder,
           CASE WHEN backend_xid IS NULL OR age(backend_xmin) > age(backend_xid) THEN backend_xmin ELSE backend_xid END AS xmin,
           xact_start AS since, pid, application_name AS name, coalesce(state, '') AS state, query_start
    FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND coalesce(backend_type, 'client backend') = 'client backend'
      AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
      AND NOT (state = 'active' AND backend_xid IS NULL AND starts_with(query, '` + awaitCall + `'))
    UNION ALL
    SELECT 'prepared transaction', transaction, prepared, 0, gid, '', NULL
    FROM pg_prepared_xacts WHERE database = current_database()
    UNION ALL
    SELECT 'replication slot', xmin, NULL, coalesce(active_pid, 0), slot_name::text, '', NULL
    FROM pg_replication_slots WHERE xmin IS NOT NULL
    UNION ALL
    SELECT 'standby', backend_xmin, NULL, pid, application_name, '', NULL
    FROM pg_stat_replication WHERE backend_xmin IS NOT NULL
)
SELECT coalesce((SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = 'pg2kafka.outbound_event_queue'::regclass), 0),
       h.holder, age(h.xmin), h.since, h.pid, h.name, h.state, h.query_start
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT * FROM holders ORDER BY age(xmin) DESC LIMIT 1) AS h ON true`

// OldestHorizon returns what holds the queue's dead rows back the longest,
// and how many there are.
func OldestHorizon(ctx context.Context, pool *pgxpool.Pool) (Horizon, error) {
	var h Horizon
	var holder, name, state *string
	var age *int64
	var pid *int32
	var since, queryStart *time.Time
	err := pool.QueryRow(ctx, horizonSQL).Scan(&h.DeadRows, &holder, &age, &since, &pid, &name, &state, &queryStart)
	if err != nil && err != pgx.ErrNoRows {
		return Horizon{}, fmt.Errorf("outbox: find the oldest snapshot: %w", err)
	}
	h.Holder, h.Name, h.State = deref(holder), deref(name), deref(state)
	h.XIDAge, h.PID = deref(age), deref(pid)
	h.Since, h.QueryStart = deref(since), deref(queryStart)
	return h, nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
