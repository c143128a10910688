package outbox_test

import (
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// deadLetter is a row of pg2kafka.dead_letter_events.
type deadLetter struct {
	ID             int64     `db:"id"`
	UUID           string    `db:"uuid"`
	ExternalID     *string   `db:"external_id"`
	TableSchema    string    `db:"table_schema"`
	TableName      string    `db:"table_name"`
	Statement      string    `db:"statement"`
	Data           string    `db:"data"`
	CreatedAt      time.Time `db:"created_at"`
	Error          string    `db:"error"`
	Attempts       int       `db:"attempts"`
	FirstFailedAt  time.Time `db:"first_failed_at"`
	LastFailedAt   time.Time `db:"last_failed_at"`
	DeadLetteredAt time.Time `db:"dead_lettered_at"`
}

func (b *bundle) deadLetters(t *testing.T) []deadLetter {
	t.Helper()
	rows, _ := b.pool.Query(b.ctx, `
		SELECT id, uuid::text, external_id, table_schema, table_name, statement, data::text AS data, created_at,
		       error, attempts, first_failed_at, last_failed_at, dead_lettered_at
		FROM pg2kafka.dead_letter_events ORDER BY id`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByName[deadLetter])
	if err != nil {
		t.Fatalf("read dead letters: %v", err)
	}
	return got
}

// queuedRow is a queue row with its identity: what requeueing must keep and
// what it must change.
type queuedRow struct {
	ID        int64     `db:"id"`
	UUID      string    `db:"uuid"`
	Data      string    `db:"data"`
	CreatedAt time.Time `db:"created_at"`
}

func (b *bundle) queueRows(t *testing.T) []queuedRow {
	t.Helper()
	// The uuid an event is shipped with; before migration 6 the queue
	// stored every event's.
	uuid := "uuid::text"
	var derived bool
	if err := b.pool.QueryRow(b.ctx, `SELECT to_regproc('pg2kafka.event_uuid') IS NOT NULL`).Scan(&derived); err != nil {
		t.Fatal(err)
	}
	if derived {
		uuid = "coalesce(uuid, pg2kafka.event_uuid(id, created_at))::text"
	}
	rows, _ := b.pool.Query(b.ctx, `SELECT id, `+uuid+` AS uuid, data::text AS data, created_at FROM pg2kafka.outbound_event_queue ORDER BY id`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByName[queuedRow])
	if err != nil {
		t.Fatalf("read queue: %v", err)
	}
	return got
}

// claimAll claims every queued event with a claimer owning every lane.
func (b *bundle) claimAll(t *testing.T) *outbox.Batch {
	t.Helper()
	c := b.claimer(t)
	rebalance(t, c)
	batch, err := c.Claim(t.Context(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	return batch
}

func TestCompleteMovesRefusedEventsToTheDeadLetterTable(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		settled bool // every event acknowledged or refused, none back to the queue
	}{
		{"some events go back to the queue", false},
		{"every event settled", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t,
				`CREATE TABLE items (id int PRIMARY KEY, name text)`,
				`SELECT pg2kafka.setup('items', 'name')`,
				`INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, NULL), (4, 'd')`,
			)
			before := b.queueRows(t)
			batch := b.claimAll(t)
			all := ids(batch.Events)
			first := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			refused := []outbox.DeadLetter{
				{ID: all[1], Error: "too large", Attempts: 2, FirstFailedAt: first, LastFailedAt: first.Add(time.Second)},
				{ID: all[2], Error: "invalid", Attempts: 5, FirstFailedAt: first, LastFailedAt: first.Add(time.Minute)},
			}
			acked := []int64{all[0]}
			if tt.settled {
				acked = append(acked, all[3])
			}
			start := time.Now()
			if err := batch.Complete(t.Context(), acked, refused...); err != nil {
				t.Fatal(err)
			}

			var want []queuedRow
			if !tt.settled {
				want = before[3:]
			}
			if got := b.queueRows(t); len(got)+len(want) > 0 && !reflect.DeepEqual(got, want) {
				t.Errorf("queue holds %+v, want %+v", got, want)
			}
			got := b.deadLetters(t)
			if len(got) != 2 {
				t.Fatalf("dead letters: %+v, want 2", got)
			}
			for i := range got {
				if got[i].DeadLetteredAt.Before(start.Add(-time.Second)) {
					t.Errorf("dead letter %d: dead_lettered_at %v, before the move began at %v", got[i].ID, got[i].DeadLetteredAt, start)
				}
				got[i].DeadLetteredAt = time.Time{}
			}
			wantDead := []deadLetter{
				{ID: all[1], UUID: before[1].UUID, ExternalID: ptr("b"), TableSchema: "public", TableName: "items", Statement: "INSERT",
					Data: `{"id": 2, "name": "b"}`, CreatedAt: before[1].CreatedAt, Error: "too large", Attempts: 2, FirstFailedAt: first, LastFailedAt: first.Add(time.Second)},
				{ID: all[2], UUID: before[2].UUID, ExternalID: nil, TableSchema: "public", TableName: "items", Statement: "INSERT",
					Data: `{"id": 3, "name": null}`, CreatedAt: before[2].CreatedAt, Error: "invalid", Attempts: 5, FirstFailedAt: first, LastFailedAt: first.Add(time.Minute)},
			}
			for i := range got {
				got[i].CreatedAt, got[i].FirstFailedAt, got[i].LastFailedAt = got[i].CreatedAt.UTC(), got[i].FirstFailedAt.UTC(), got[i].LastFailedAt.UTC()
				wantDead[i].CreatedAt = wantDead[i].CreatedAt.UTC()
			}
			if !reflect.DeepEqual(got, wantDead) {
				t.Errorf("dead letters:\n got %+v\nwant %+v", got, wantDead)
			}
		})
	}
}

// Requeued events get new ids at the end of the queue, in the order of their
// old ones, and keep their uuid, data and created_at.
func TestRequeueDeadLetters(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY, name text)`,
		`SELECT pg2kafka.setup('items', 'name')`,
		`INSERT INTO items VALUES (1, 'a')`,
		`INSERT INTO items VALUES (2, 'a')`,
		`INSERT INTO items VALUES (3, 'a')`,
		`INSERT INTO items VALUES (4, 'a')`,
	)
	before := b.queueRows(t)
	batch := b.claimAll(t)
	all := ids(batch.Events)
	now := time.Now()
	var refused []outbox.DeadLetter
	for _, id := range all[:3] {
		refused = append(refused, outbox.DeadLetter{ID: id, Error: "too large", Attempts: 2, FirstFailedAt: now, LastFailedAt: now})
	}
	if err := batch.Complete(t.Context(), nil, refused...); err != nil {
		t.Fatal(err)
	}
	if got := b.queueRows(t); !reflect.DeepEqual(got, before[3:]) {
		t.Fatalf("queue holds %+v, want only the fourth event", got)
	}

	requeue := func(sql string, args ...any) int {
		t.Helper()
		return b.count(t, sql, args...)
	}
	if n := requeue(`SELECT pg2kafka.requeue_dead_letters(ARRAY[$1::bigint])`, all[3]); n != 0 {
		t.Errorf("requeueing an event that is not dead-lettered requeued %d", n)
	}
	// The second one first, on its own: it goes to the end of the queue,
	// behind the fourth event, which was written after it.
	if n := requeue(`SELECT pg2kafka.requeue_dead_letters(ARRAY[$1::bigint])`, all[1]); n != 1 {
		t.Errorf("requeue_dead_letters(ARRAY[%d]) = %d, want 1", all[1], n)
	}
	// Then all the others, in the order they were written.
	if n := requeue(`SELECT pg2kafka.requeue_dead_letters()`); n != 2 {
		t.Errorf("requeue_dead_letters() = %d, want 2", n)
	}
	if got := b.deadLetters(t); len(got) != 0 {
		t.Errorf("dead letters left after requeueing them all: %+v", got)
	}

	got := b.queueRows(t)
	want := []queuedRow{before[3], before[1], before[0], before[2]}
	if len(got) != len(want) {
		t.Fatalf("queue holds %+v, want %+v", got, want)
	}
	for i := range got {
		if i > 0 && got[i].ID <= max(got[i-1].ID, all[3]) {
			t.Errorf("requeued event %d has id %d, not after the queue's last", i, got[i].ID)
		}
		want[i].ID = got[i].ID // new ids, checked above
		got[i].CreatedAt, want[i].CreatedAt = got[i].CreatedAt.UTC(), want[i].CreatedAt.UTC()
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("queue:\n got %+v\nwant %+v", got, want)
	}
	if !slices.IsSortedFunc(got, func(a, b queuedRow) int { return int(a.ID - b.ID) }) {
		t.Errorf("queue ids not ascending: %+v", got)
	}
}

// Rolling the dead-letter table back puts its events back in the queue.
func TestMigrateDownRequeuesDeadLetters(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY, name text)`,
		`SELECT pg2kafka.setup('items', 'name')`,
		`INSERT INTO items VALUES (1, 'a'), (2, 'b')`,
	)
	before := b.queueRows(t)
	batch := b.claimAll(t)
	now := time.Now()
	if err := batch.Complete(t.Context(), nil, outbox.DeadLetter{ID: before[0].ID, Error: "too large", Attempts: 2, FirstFailedAt: now, LastFailedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.MigrateDownTo(b.ctx, b.pool, 2); err != nil {
		t.Fatalf("MigrateDownTo(2): %v", err)
	}
	got := b.queueRows(t)
	if len(got) != 2 || got[0].UUID != before[1].UUID || got[1].UUID != before[0].UUID {
		t.Fatalf("queue after rolling back the dead-letter table: %+v, want both events, the requeued one last", got)
	}
	if err := outbox.Migrate(b.ctx, b.pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	if got := b.deadLetters(t); len(got) != 0 {
		t.Errorf("dead letters after down and up: %+v", got)
	}
}

// The move of refused events to the dead-letter table is a prepared
// statement too, and keeps its plan: one made while the queue held a few
// rows must still find the refused events by id, not read the whole queue.
func TestAMovePlannedOnAnEmptyQueueStillFindsItsEventsById(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY, v text)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`ANALYZE pg2kafka.outbound_event_queue`,
	)
	c := b.claimer(t)
	rebalance(t, c)
	now := time.Now()
	for i := range 10 { // past the five runs after which Postgres may keep a generic plan
		b.exec(t, fmt.Sprintf(`INSERT INTO items VALUES (%d, 'refused')`, i+1))
		batch, err := c.Claim(t.Context(), 10, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(batch.Events) != 1 {
			t.Fatalf("claimed %d events, want 1", len(batch.Events))
		}
		letter := outbox.DeadLetter{ID: batch.Events[0].ID, Error: "refused", Attempts: 1, FirstFailedAt: now, LastFailedAt: now}
		if err := batch.Complete(t.Context(), nil, letter); err != nil {
			t.Fatal(err)
		}
	}
	b.exec(t, `INSERT INTO items SELECT i, repeat('x', 150) FROM generate_series(1001, 51000) i`)
	var pages, id int64
	if err := b.pool.QueryRow(t.Context(), `SELECT pg_relation_size('pg2kafka.outbound_event_queue') / current_setting('block_size')::int, max(id) FROM pg2kafka.outbound_event_queue`).Scan(&pages, &id); err != nil {
		t.Fatal(err)
	}
	args := fmt.Sprintf(`'{%d}', '{refused}', '{1}', '{%[2]s}', '{%[2]s}'`, id, now.UTC().Format(time.RFC3339))
	got, err := c.ExplainPrepared(t.Context(), outbox.MoveToDeadLetterSQL, args)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("moving one event of a queue of %d pages touches %d buffers", pages, got)
	if got > pages/10 {
		t.Fatalf("moving one event touches %d buffers of a queue of %d pages: its kept plan reads the whole queue", got, pages)
	}
}
