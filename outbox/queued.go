package outbox

import (
	"context"
	"fmt"
)

const queuedOfSQL = `SELECT count(*) FROM pg2kafka.outbound_event_queue WHERE table_schema = $1 AND table_name = $2`

// QueuedOf returns how many events of t wait in the queue. It reads the
// whole queue, which has no index by table: it is for the occasional log
// line, bounded by ctx, not for every batch.
func (q *Queue) QueuedOf(ctx context.Context, t Table) (int64, error) {
	var n int64
	if err := q.pool.QueryRow(ctx, queuedOfSQL, t.Schema, t.Name).Scan(&n); err != nil {
		return 0, fmt.Errorf("outbox: count queued events of %s.%s: %w", t.Schema, t.Name, err)
	}
	return n, nil
}
