package outbox_test

import (
	"context"
	"reflect"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// progress is a table's row of pg2kafka.backfills.
type progress struct {
	KeyColumns []string `db:"key_columns"`
	LastKey    string   `db:"last_key"` // "" for none
	RowsDone   int64    `db:"rows_done"`
	RowsTotal  int64    `db:"rows_total"`
	Events     int64    `db:"events"`
	ChunkSize  int32    `db:"chunk_size"`
	Finished   bool     `db:"finished"`
}

func (b *bundle) requireProgress(t *testing.T, table string, want progress) {
	t.Helper()
	rows, _ := b.pool.Query(b.ctx, `
		SELECT key_columns, coalesce(last_key::text, '') AS last_key, rows_done, rows_total, events, chunk_size,
		       finished_at IS NOT NULL AS finished
		FROM pg2kafka.backfills WHERE relation = $1::regclass`, table)
	got, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[progress])
	if err != nil {
		t.Fatalf("read the backfill of %s: %v", table, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("backfill of %s:\n got %+v\nwant %+v", table, got, want)
	}
}

// snapshots returns the number of SNAPSHOT events and of distinct external
// IDs among them.
func (b *bundle) snapshots(t *testing.T) (events, keys int) {
	t.Helper()
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*), count(DISTINCT external_id) FROM pg2kafka.outbound_event_queue
		WHERE statement = 'SNAPSHOT'`).Scan(&events, &keys); err != nil {
		t.Fatal(err)
	}
	return events, keys
}

// waitUntilBlocked waits until the session of conn waits for a lock. (By
// its pid: pg_stat_activity shows the sessions of every test's database.)
func (b *bundle) waitUntilBlocked(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	waitForCount(t, b, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid = `+
		strconv.Itoa(int(conn.PgConn().PID())), 1)
}

const itemsSQL = `CREATE TABLE items (id int PRIMARY KEY, v text)`

func TestBackfillSnapshotsInChunks(t *testing.T) {
	t.Parallel()
	b := setup(t, itemsSQL, `INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 1000) i`,
		`SELECT pg2kafka.setup('items', 'id', snapshot => false)`)

	b.exec(t, `CALL pg2kafka.backfill('items', 100)`)

	if events, keys := b.snapshots(t); events != 1000 || keys != 1000 {
		t.Errorf("%d SNAPSHOT events of %d rows, want one of each of 1000", events, keys)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue q JOIN items i ON q.external_id = i.id::text
		WHERE q.data = to_jsonb(i)`); n != 1000 {
		t.Errorf("%d events hold their row, want 1000", n)
	}
	// Each chunk its own transaction.
	if n := b.count(t, `SELECT count(DISTINCT xmin::text) FROM pg2kafka.outbound_event_queue`); n != 10 {
		t.Errorf("events written by %d transactions, want 10", n)
	}
	b.requireProgress(t, "items", progress{KeyColumns: []string{"id"}, LastKey: "[1000]",
		RowsDone: 1000, RowsTotal: 1000, Events: 1000, ChunkSize: 100, Finished: true})

	// Called again, it starts over.
	b.exec(t, `DELETE FROM pg2kafka.outbound_event_queue`, `CALL pg2kafka.backfill('items')`)
	if events, keys := b.snapshots(t); events != 1000 || keys != 1000 {
		t.Errorf("second backfill: %d SNAPSHOT events of %d rows, want one of each of 1000", events, keys)
	}
	b.requireProgress(t, "items", progress{KeyColumns: []string{"id"},
		RowsDone: 1000, RowsTotal: 1000, Events: 1000, ChunkSize: 10000, Finished: true})
}

func TestBackfillCompositeKeyAndOptions(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales"."Order Lines" ("Order" text, line int, status text, qty int, PRIMARY KEY ("Order", line))`,
		`INSERT INTO "Sales"."Order Lines" VALUES ('b', 1, 'new', 1), ('a', 2, 'draft', 2), ('a', 1, 'new', 3), ('a', 10, 'new', 4)`,
		`SELECT pg2kafka.setup('"Sales"."Order Lines"', 'Order', operations => '{INSERT,UPDATE}', columns => '{line,qty}',
			filter => $$NEW.status <> 'draft'$$, topic => 'sales.lines', snapshot => false)`)

	b.exec(t, `CALL pg2kafka.backfill('"Sales"."Order Lines"', 2)`)

	topic := ptr("sales.lines")
	b.requireEvents(t,
		event{ptr("a"), "SNAPSHOT", `{"qty": 3, "line": 1}`, nil, topic},
		event{ptr("a"), "SNAPSHOT", `{"qty": 4, "line": 10}`, nil, topic},
		event{ptr("b"), "SNAPSHOT", `{"qty": 1, "line": 1}`, nil, topic},
	)
	b.requireProgress(t, `"Sales"."Order Lines"`, progress{KeyColumns: []string{"Order", "line"}, LastKey: `["b", 1]`,
		RowsDone: 4, RowsTotal: 4, Events: 3, ChunkSize: 2, Finished: true})
}

func TestBackfillResumesAfterCrash(t *testing.T) {
	t.Parallel()
	b := setup(t, itemsSQL, `INSERT INTO items SELECT i, 'v' FROM generate_series(1, 300) i`,
		`SELECT pg2kafka.setup('items', 'id', snapshot => false)`)
	// A writer holds row 175, in the fourth chunk of 50, so the backfill
	// stops there, waiting, until it is killed.
	writer, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Rollback(context.Background())
	if _, err := writer.Exec(b.ctx, `SELECT FROM items WHERE id = 175 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	conn, _ := b.connect(t)
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), `CALL pg2kafka.backfill('items', 50)`)
		done <- err
	}()
	b.waitUntilBlocked(t, conn)

	b.exec(t, `SELECT pg_terminate_backend(`+strconv.Itoa(int(conn.PgConn().PID()))+`)`)
	if err := <-done; err == nil {
		t.Fatal("the killed backfill returned no error")
	}
	if err := writer.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}

	// The three chunks it committed stay, and say so.
	b.requireProgress(t, "items", progress{KeyColumns: []string{"id"}, LastKey: "[150]",
		RowsDone: 150, RowsTotal: 300, Events: 150, ChunkSize: 50})
	if events, keys := b.snapshots(t); events != 150 || keys != 150 {
		t.Errorf("%d SNAPSHOT events of %d rows after the crash, want 150 of 150", events, keys)
	}

	b.exec(t, `CALL pg2kafka.backfill('items', 50)`)

	b.requireProgress(t, "items", progress{KeyColumns: []string{"id"}, LastKey: "[300]",
		RowsDone: 300, RowsTotal: 300, Events: 300, ChunkSize: 50, Finished: true})
	if events, keys := b.snapshots(t); events != 300 || keys != 300 {
		t.Errorf("%d SNAPSHOT events of %d rows, want one of each of 300", events, keys)
	}
}

// TestBackfillSnapshotIsNeverStale runs the race a backfill must not lose: a
// chunk reads a row while an UPDATE of it is in flight. The UPDATE's event
// is written before it commits, so a snapshot of the row as it was before
// would be written after it, and ship last: the row's final state on the
// topic would be stale. The chunk locks its rows instead, so it waits for
// the UPDATE and snapshots its result.
func TestBackfillSnapshotIsNeverStale(t *testing.T) {
	t.Parallel()
	b := setup(t, itemsSQL, `INSERT INTO items SELECT i, 'old' FROM generate_series(1, 10) i`,
		`SELECT pg2kafka.setup('items', 'id', snapshot => false)`)
	writer, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Rollback(context.Background())
	if _, err := writer.Exec(b.ctx, `UPDATE items SET v = 'new' WHERE id = 5`); err != nil {
		t.Fatal(err)
	}
	conn, _ := b.connect(t)
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), `CALL pg2kafka.backfill('items')`)
		done <- err
	}()
	b.waitUntilBlocked(t, conn)

	if err := writer.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("backfill: %v", err)
	}

	want := []event{{ptr("5"), "UPDATE", `{"v": "new"}`, nil, nil}}
	for i := 1; i <= 10; i++ {
		v := "old"
		if i == 5 {
			v = "new"
		}
		want = append(want, event{ptr(strconv.Itoa(i)), "SNAPSHOT", `{"v": "` + v + `", "id": ` + strconv.Itoa(i) + `}`, nil, nil})
	}
	b.requireEvents(t, want...)
}

// TestBackfillChunkHoldsWritersOfItsRows runs the other side of that race:
// an UPDATE of a row the chunk has snapshotted waits for the chunk to
// commit, so its event comes after the snapshot.
func TestBackfillChunkHoldsWritersOfItsRows(t *testing.T) {
	t.Parallel()
	b := setup(t, itemsSQL, `INSERT INTO items SELECT i, 'old' FROM generate_series(1, 3) i`,
		`SELECT pg2kafka.setup('items', 'id', snapshot => false)`)
	chunk, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer chunk.Rollback(context.Background())
	var done bool
	if err := chunk.QueryRow(b.ctx, `SELECT pg2kafka.backfill_chunk('items', 10)`).Scan(&done); err != nil || !done {
		t.Fatalf("backfill_chunk: done %v, err %v", done, err)
	}
	writer, _ := b.connect(t)
	updated := make(chan error, 1)
	go func() {
		_, err := writer.Exec(context.Background(), `UPDATE items SET v = 'new' WHERE id = 2`)
		updated <- err
	}()
	b.waitUntilBlocked(t, writer)

	if err := chunk.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-updated; err != nil {
		t.Fatal(err)
	}

	b.requireEvents(t,
		event{ptr("1"), "SNAPSHOT", `{"v": "old", "id": 1}`, nil, nil},
		event{ptr("2"), "SNAPSHOT", `{"v": "old", "id": 2}`, nil, nil},
		event{ptr("3"), "SNAPSHOT", `{"v": "old", "id": 3}`, nil, nil},
		event{ptr("2"), "UPDATE", `{"v": "new"}`, nil, nil},
	)
}

func TestBackfillErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, itemsSQL, `CREATE TABLE nokey (k text)`, `CREATE TABLE untracked (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`, `SELECT pg2kafka.setup('nokey', 'k')`)

	tests := []struct {
		name string
		sql  string
		want pgconn.PgError
	}{
		{"untracked", `CALL pg2kafka.backfill('untracked')`,
			pgconn.PgError{Code: "55000", Message: "pg2kafka.backfill: public.untracked is not tracked",
				Hint: "Call pg2kafka.setup(table, external_id_column, snapshot => false) first: its trigger captures the changes made while the backfill runs."}},
		{"no primary key", `CALL pg2kafka.backfill('nokey')`,
			pgconn.PgError{Code: "55000", Message: "pg2kafka.backfill: public.nokey has no primary key",
				Hint: "A backfill walks the table in primary-key order. Without one, snapshot it in one transaction: pg2kafka.setup(…, snapshot => true)."}},
		{"chunk size", `CALL pg2kafka.backfill('items', 0)`,
			pgconn.PgError{Code: "22023", Message: "pg2kafka.backfill: table_name must not be null and chunk_size must be at least 1"}},
		{"in a transaction block", `BEGIN; CALL pg2kafka.backfill('items'); COMMIT`,
			pgconn.PgError{Code: "2D000", Message: "invalid transaction termination"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := b.pool.Exec(b.ctx, tt.sql)
			requirePgError(t, err, tt.want)
		})
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.backfills`); n != 0 {
		t.Errorf("%d backfills recorded, want none", n)
	}
}
