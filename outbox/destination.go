package outbox

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Destination kinds a shipper registers when it joins. All shippers of one
// database share its queue, so they must ship to one kind: a queue split
// between Kafka and a webhook would send each event to only one of them.
const (
	DestinationKafka    = "Kafka"
	DestinationWebhook  = "a webhook"
	DestinationRabbitMQ = "RabbitMQ"
	DestinationStdout   = "stdout (DRY_RUN=true)"
	DestinationStream   = "the live stream only (STREAM_ONLY=true)"
)

// destinations numbers the kinds for their advisory locks; the numbers are
// what other versions of pg2kafka see, so they never change.
var destinations = []string{1: DestinationKafka, 2: DestinationWebhook, 3: DestinationRabbitMQ, 4: DestinationStdout, 5: DestinationStream}

// destinationLockKey, with a kind's number, is the shared advisory lock each
// claimer holds for its session to say which kind it ships to.
const destinationLockKey int32 = 0x70676b02

// SetDestination makes the queue's claimers register kind, one of the
// Destination constants, when they join, and refuse to join while
// shippers of another kind are connected. Without it they register
// nothing and check nothing.
func (q *Queue) SetDestination(kind string) {
	if !slices.Contains(destinations, kind) || kind == "" {
		panic("outbox: unknown destination kind " + kind)
	}
	q.destination = kind
}

// DestinationConflictError is a claimer's refusal to join shippers that
// ship the same queue to another kind of destination.
type DestinationConflictError struct {
	// Mine is the claimer's kind; Theirs the others'.
	Mine   string
	Theirs []string
}

func (e *DestinationConflictError) Error() string {
	return fmt.Sprintf("outbox: other shippers of this database ship to %s, this one to %s: they share one queue, so every shipper of a database must ship to the same destination; stop the others first, or give this one their destination",
		strings.Join(e.Theirs, " and "), e.Mine)
}

// otherDestinationsSQL lists the kinds registered by other sessions of this
// database than $2's.
const otherDestinationsSQL = `
SELECT DISTINCT objid::bigint::int4
FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted
  AND classid = $1::bigint::oid AND objid::bigint::int4 <> $2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY 1`

// registerDestination registers the queue's kind for the session and fails
// if another is registered. Both shippers of two kinds starting at once
// register first and look second, so at least one sees the other.
func (q *Queue) registerDestination(ctx context.Context, conn *pgx.Conn) error {
	if q.destination == "" {
		return nil
	}
	mine := int32(slices.Index(destinations, q.destination))
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock_shared($1, $2)`, destinationLockKey, mine); err != nil {
		return fmt.Errorf("outbox: register the destination: %w", err)
	}
	rows, err := conn.Query(ctx, otherDestinationsSQL, destinationLockKey, mine)
	if err != nil {
		return fmt.Errorf("outbox: look for shippers of other destinations: %w", err)
	}
	others, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("outbox: look for shippers of other destinations: %w", err)
	}
	if len(others) == 0 {
		return nil
	}
	conflict := &DestinationConflictError{Mine: q.destination}
	for _, k := range others {
		name := fmt.Sprintf("a destination this version does not know (kind %d)", k)
		if int(k) < len(destinations) && destinations[k] != "" {
			name = destinations[k]
		}
		conflict.Theirs = append(conflict.Theirs, name)
	}
	return conflict
}
