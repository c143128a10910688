package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// DeadLetter is an event its destination refused for good, and the story of
// that refusal, as pg2kafka.dead_letter_events keeps it.
type DeadLetter struct {
	// ID is the event's id in the queue.
	ID int64
	// Error is the destination's reason.
	Error string
	// Attempts is how many sends of the event failed.
	Attempts int
	// FirstFailedAt and LastFailedAt are when the first and the last of
	// those sends failed.
	FirstFailedAt, LastFailedAt time.Time
}

// moveToDeadLetterSQL takes events off the queue and into the dead-letter
// table in one statement, so that an event is in exactly one of the two at
// any moment. The event's columns are copied from the queue row itself:
// every column of the queue must be named here, and in
// requeue_dead_letters(), or it is lost on the way. An event queued without
// a uuid gets the one it was shipped with, for good: requeued, it has a new
// id, from which a different uuid would be derived.
const moveToDeadLetterSQL = `
WITH moved AS (
    DELETE FROM pg2kafka.outbound_event_queue AS q
    USING unnest($1::bigint[], $2::text[], $3::int[], $4::timestamptz[], $5::timestamptz[])
        AS f(id, error, attempts, first_failed_at, last_failed_at)
    WHERE q.id = ANY ($1::bigint[]) AND q.id = f.id
    RETURNING q.id, coalesce(q.uuid, pg2kafka.event_uuid(q.id, q.created_at)), q.external_id, q.table_schema, q.table_name, q.statement, q.data, q.created_at,
              q.old, q.topic, f.error, f.attempts, f.first_failed_at, f.last_failed_at
)
INSERT INTO pg2kafka.dead_letter_events
    (id, uuid, external_id, table_schema, table_name, statement, data, created_at,
     old, topic, error, attempts, first_failed_at, last_failed_at)
SELECT * FROM moved`

// completeWithDeadLetters settles a batch some of whose events go to the
// dead-letter table. The claim deleted every event of the batch, so the
// refused ones can no longer be moved with a DELETE … RETURNING inside it;
// the claim is undone instead, and one transaction deletes the acknowledged
// events and moves the refused ones. The lanes are still this claimer's, so
// no other claim can take those events in between.
func (b *Batch) completeWithDeadLetters(ctx context.Context, acknowledged []int64, letters []DeadLetter) error {
	if err := b.rollback(ctx); err != nil {
		return err
	}
	ids := make([]int64, len(letters))
	reasons := make([]string, len(letters))
	attempts := make([]int32, len(letters))
	first := make([]time.Time, len(letters))
	last := make([]time.Time, len(letters))
	for i, l := range letters {
		ids[i], reasons[i], attempts[i], first[i], last[i] = l.ID, l.Error, int32(l.Attempts), l.FirstFailedAt, l.LastFailedAt
	}
	// As the claim: by the id index, whatever plan the statement keeps.
	err := pgx.BeginTxFunc(ctx, b.conn, claimTx, func(tx pgx.Tx) error {
		if len(acknowledged) > 0 {
			if _, err := tx.Exec(ctx, deleteSQL, acknowledged); err != nil {
				return fmt.Errorf("delete acknowledged events: %w", err)
			}
		}
		tag, err := tx.Exec(ctx, moveToDeadLetterSQL, ids, reasons, attempts, first, last)
		if err != nil {
			return fmt.Errorf("move refused events to the dead-letter table: %w", err)
		}
		// Nothing else deletes the events of lanes this claimer owns; if
		// something did, sending the batch again is safe and committing
		// half of it is not.
		if n := tag.RowsAffected(); n != int64(len(letters)) {
			return fmt.Errorf("move refused events to the dead-letter table: %d of %d were no longer queued", len(letters)-int(n), len(letters))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}
