package outbox_test

import (
	"context"
	"log/slog"
	"reflect"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
	"github.com/pg2kafka/pg2kafka/outbox"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// migrationLog records what Migrate tells its operator, without the times
// that differ from run to run.
type migrationLog struct{ syncbuf.Buffer }

func (l *migrationLog) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "took" {
				return slog.Attr{}
			}
			return a
		},
	}))
}

// appliedAll is what Migrate logs when it installs pg2kafka from scratch.
const appliedAll = "level=INFO msg=\"applied migration\" version=1 file=00001_outbox.sql\n" +
	"level=INFO msg=\"applied migration\" version=2 file=00002_shipper_role.sql\n" +
	"level=INFO msg=\"applied migration\" version=3 file=00003_dead_letter.sql\n" +
	"level=INFO msg=\"applied migration\" version=4 file=00004_capture_options.sql\n" +
	"level=INFO msg=\"applied migration\" version=5 file=00005_truncate_guard.sql\n" +
	"level=INFO msg=\"applied migration\" version=6 file=00006_lean_trigger.sql\n" +
	"level=INFO msg=\"applied migration\" version=7 file=00007_status_reads.sql\n" +
	"level=INFO msg=\"applied migration\" version=8 file=00008_full_row.sql\n" +
	"level=INFO msg=\"applied migration\" version=9 file=00009_setup_notice.sql\n" +
	"level=INFO msg=\"applied migration\" version=10 file=00010_claim_sequence.sql\n" +
	"level=INFO msg=\"applied migration\" version=11 file=00011_emit.sql\n" +
	"level=INFO msg=\"applied migration\" version=12 file=00012_await_event_ids.sql\n"

type gooseVersion struct {
	VersionID int64 `db:"version_id"`
	IsApplied bool  `db:"is_applied"`
}

// allVersions is what Goose's version table holds once every migration is
// applied.
var allVersions = []gooseVersion{{0, true}, {1, true}, {2, true}, {3, true}, {4, true}, {5, true}, {6, true}, {7, true}, {8, true}, {9, true}, {10, true}, {11, true}, {12, true}}

// requireVersions fails the test unless Goose's version table holds want.
func requireVersions(t *testing.T, ctx context.Context, pool *pgxpool.Pool, want ...gooseVersion) {
	t.Helper()
	rows, _ := pool.Query(ctx, `SELECT version_id, is_applied FROM `+outbox.VersionTable+` ORDER BY id`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByName[gooseVersion])
	if err != nil {
		t.Fatalf("read %s: %v", outbox.VersionTable, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %+v, want %+v", outbox.VersionTable, got, want)
	}
}

// schemaObjects lists the relations (by pg_class.relkind: S sequence, i
// index, r table) and the functions in the pg2kafka schema, leaving out
// Goose's version table and its key and sequence, which stay whatever version
// is installed. (When two replicas create that table at once, Goose retries,
// and Postgres may name its sequence goose_db_version_id_seq1.)
func schemaObjects(t *testing.T, ctx context.Context, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, _ := pool.Query(ctx, `
		SELECT object FROM (
			SELECT c.relkind::text || ' ' || c.relname AS object FROM pg_class c
			WHERE c.relnamespace = 'pg2kafka'::regnamespace AND c.relname NOT LIKE 'goose\_db\_version%'
			UNION ALL
			SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p
			WHERE p.pronamespace = 'pg2kafka'::regnamespace
		) AS o
		ORDER BY object COLLATE "C"`)
	objects, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("list schema pg2kafka: %v", err)
	}
	return objects
}

var latestObjects = []string{
	"S outbound_event_queue_id_seq",
	"function pg2kafka.await_event_ids(bigint,integer,integer)",
	"function pg2kafka.backfill(regclass,integer)",
	"function pg2kafka.backfill_chunk(regclass,integer)",
	"function pg2kafka.emit(text,text,json,jsonb)",
	"function pg2kafka.emit(text,text,jsonb,jsonb)",
	"function pg2kafka.emit(text,text,text,jsonb)",
	"function pg2kafka.emittable(text,jsonb)",
	"function pg2kafka.enqueue_event()",
	"function pg2kafka.enqueue_snapshot(pg2kafka.tracked_tables,text[],jsonb,jsonb)",
	"function pg2kafka.event_uuid(bigint,timestamp with time zone)",
	"function pg2kafka.grant_emitter_privileges()",
	"function pg2kafka.grant_shipper_privileges()",
	"function pg2kafka.guard(regclass)",
	"function pg2kafka.refuse_emitted(text,integer,jsonb)",
	"function pg2kafka.refuse_truncate()",
	"function pg2kafka.requeue_dead_letters(bigint[])",
	"function pg2kafka.setup(regclass,text,text[],text[],boolean,text,text,boolean,boolean)",
	"function pg2kafka.teardown(regclass,boolean)",
	"function pg2kafka.teardown_capture(regclass,boolean)",
	"i backfills_pkey",
	"i dead_letter_events_pkey",
	"i installation_pkey",
	"i outbound_event_queue_pkey",
	"i settings_pkey",
	"i tracked_tables_pkey",
	"r backfills",
	"r dead_letter_events",
	"r installation",
	"r outbound_event_queue",
	"r settings",
	"r tracked_tables",
}

func TestMigrateTwiceIsNoOp(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, _ := pgtest.NewPool(t)
	var first, second migrationLog

	if err := outbox.Migrate(ctx, pool, first.logger()); err != nil {
		t.Fatalf("first Migrate: %v", err)
	}
	if err := outbox.Migrate(ctx, pool, second.logger()); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}

	if got := first.String(); got != appliedAll {
		t.Errorf("first Migrate logged %q, want %q", got, appliedAll)
	}
	if got := second.String(); got != "" {
		t.Errorf("second Migrate logged %q, want nothing", got)
	}
	if outbox.VersionTable != "pg2kafka.goose_db_version" {
		t.Errorf("VersionTable = %q", outbox.VersionTable)
	}
	requireVersions(t, ctx, pool, allVersions...)
	if got := schemaObjects(t, ctx, pool); !reflect.DeepEqual(got, latestObjects) {
		t.Errorf("schema pg2kafka:\n got %q\nwant %q", got, latestObjects)
	}
	// Nothing of pg2kafka's lands in the application's own Goose table.
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname = 'goose_db_version' AND relnamespace = 'public'::regnamespace`).Scan(&n); err != nil || n != 0 {
		t.Errorf("public.goose_db_version: count %d, err %v; want none", n, err)
	}
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	connString := pgtest.NewDatabase(t)
	// Two replicas starting together, each with its own pool. Both reach the
	// schema before either holds Goose's lock, so whatever they run there
	// must be safe against the other running it at the same moment (CREATE
	// SCHEMA IF NOT EXISTS is not: the slower one fails with 23505).
	var pools [2]*pgxpool.Pool
	for i := range pools {
		pool, err := pgxpool.New(ctx, connString)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		// Connected beforehand, so that the two start as close together as
		// replicas restarted at once.
		if err := pool.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		pools[i] = pool
	}

	var log migrationLog
	var errs [2]error
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, pool := range pools {
		wg.Go(func() {
			<-start
			errs[i] = outbox.Migrate(ctx, pool, log.logger())
		})
	}
	close(start)
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate %d: %v", i, err)
		}
	}
	if got := log.String(); got != appliedAll {
		t.Errorf("Migrate calls logged %q, want each migration applied once: %q", got, appliedAll)
	}
	requireVersions(t, ctx, pools[0], allVersions...)
	if got := schemaObjects(t, ctx, pools[0]); !reflect.DeepEqual(got, latestObjects) {
		t.Errorf("schema pg2kafka:\n got %q\nwant %q", got, latestObjects)
	}
}

func TestMigrateDownToZeroAndUpAgain(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE products (id int PRIMARY KEY, sku text)`,
		`CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales"."Order Items" ("SKU" text)`,
		`INSERT INTO products VALUES (1, 'A1')`,
		`INSERT INTO "Sales"."Order Items" VALUES ('S-1')`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`SELECT pg2kafka.setup('"Sales"."Order Items"', 'SKU')`,
		// A tracked table dropped since: the down migration must cope.
		`CREATE TABLE gone (k text)`,
		`SELECT pg2kafka.setup('gone', 'k')`,
		`DROP TABLE gone`,
	)

	if err := outbox.MigrateDownTo(b.ctx, b.pool, 0); err != nil {
		t.Fatalf("MigrateDownTo(0): %v", err)
	}

	if got := schemaObjects(t, b.ctx, b.pool); len(got) != 0 {
		t.Errorf("schema pg2kafka after MigrateDownTo(0) holds %q, want nothing but Goose's version table", got)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_trigger WHERE tgname = 'pg2kafka_enqueue_event'`); n != 0 {
		t.Errorf("%d pg2kafka triggers left, want 0", n)
	}
	requireVersions(t, b.ctx, b.pool, gooseVersion{0, true})
	// The user's tables and rows are untouched and writable.
	b.exec(t,
		`INSERT INTO products VALUES (2, 'B2')`,
		`UPDATE "Sales"."Order Items" SET "SKU" = 'S-2'`,
	)
	if n := b.count(t, `SELECT count(*) FROM products WHERE (id, sku) IN ((1, 'A1'), (2, 'B2'))`); n != 2 {
		t.Errorf("products holds %d of its 2 rows", n)
	}
	if n := b.count(t, `SELECT count(*) FROM "Sales"."Order Items" WHERE "SKU" = 'S-2'`); n != 1 {
		t.Errorf(`"Sales"."Order Items" holds %d of its 1 row`, n)
	}

	var log migrationLog
	if err := outbox.Migrate(b.ctx, b.pool, log.logger()); err != nil {
		t.Fatalf("Migrate after MigrateDownTo(0): %v", err)
	}
	if got := log.String(); got != appliedAll {
		t.Errorf("Migrate logged %q, want %q", got, appliedAll)
	}
	b.exec(t, `SELECT pg2kafka.setup('products', 'sku')`,
		`INSERT INTO products VALUES (3, 'C3')`)

	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "SNAPSHOT", `{"id": 1, "sku": "A1"}`},
		queued{ptr("B2"), "public", "products", "SNAPSHOT", `{"id": 2, "sku": "B2"}`},
		queued{ptr("C3"), "public", "products", "INSERT", `{"id": 3, "sku": "C3"}`},
	)
	if n := b.triggers(t, "products"); n != 1 {
		t.Errorf("products has %d pg2kafka triggers, want 1", n)
	}
}
