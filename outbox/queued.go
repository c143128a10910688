package outbox

import (
	"context"
	"fmt"
)

const queuedOfSQL = `
SELECT table_schema, table_name, count(*)
FROM pg2kafka.outbound_event_queue
WHERE (table_schema, table_name) IN (SELECT * FROM unnest($1::text[], $2::text[]))
GROUP BY table_schema, table_name`

// QueuedOf returns how many events of t wait in the queue. It reads the
// whole queue, which has no index by table: it is for the occasional log
// line, bounded by ctx, not for every batch.
func (q *Queue) QueuedOf(ctx context.Context, t Table) (int64, error) {
	n, err := q.QueuedOfEach(ctx, []Table{t})
	return n[t], err
}

// QueuedOfEach is QueuedOf for several tables in one read of the queue.
func (q *Queue) QueuedOfEach(ctx context.Context, tables []Table) (map[Table]int64, error) {
	schemas, names := make([]string, len(tables)), make([]string, len(tables))
	for i, t := range tables {
		schemas[i], names[i] = t.Schema, t.Name
	}
	rows, err := q.pool.Query(ctx, queuedOfSQL, schemas, names)
	if err != nil {
		return nil, fmt.Errorf("outbox: count the queued events of %d table(s): %w", len(tables), err)
	}
	defer rows.Close()
	out := make(map[Table]int64, len(tables))
	for _, t := range tables {
		out[t] = 0
	}
	for rows.Next() {
		var t Table
		var n int64
		if err := rows.Scan(&t.Schema, &t.Name, &n); err != nil {
			return nil, fmt.Errorf("outbox: count the queued events of %d table(s): %w", len(tables), err)
		}
		out[t] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: count the queued events of %d table(s): %w", len(tables), err)
	}
	return out, nil
}
