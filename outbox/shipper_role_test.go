package outbox_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// shipperPrivileges is everything the role pg2kafka_shipper is granted once
// every migration is applied: all the shipper needs, and nothing more.
var shipperPrivileges = []string{
	"DELETE ON pg2kafka.outbound_event_queue",
	"EXECUTE ON FUNCTION pg2kafka.await_event_ids(bigint,integer,integer)",
	"EXECUTE ON FUNCTION pg2kafka.event_uuid(bigint,timestamp with time zone)",
	"INSERT ON pg2kafka.dead_letter_events",
	"SELECT (table_name) ON pg2kafka.dead_letter_events",
	"SELECT (table_name) ON pg2kafka.tracked_tables",
	"SELECT (table_schema) ON pg2kafka.dead_letter_events",
	"SELECT (table_schema) ON pg2kafka.tracked_tables",
	"SELECT ON pg2kafka.goose_db_version",
	"SELECT ON pg2kafka.installation",
	"SELECT ON pg2kafka.outbound_event_queue",
	"SELECT ON pg2kafka.outbound_event_queue_id_seq",
	"SELECT ON pg2kafka.tracked_tables",
	"UPDATE (id) ON pg2kafka.outbound_event_queue",
	"USAGE ON SCHEMA pg2kafka",
}

// grantedTo lists what role is granted in the database pool is connected
// to, from the catalogs: on the database, schemas, relations, columns and
// functions, and by default privileges.
func grantedTo(t *testing.T, pool *pgxpool.Pool, role string) []string {
	t.Helper()
	rows, _ := pool.Query(t.Context(), `
		WITH grantee AS (SELECT oid FROM pg_roles WHERE rolname = $1)
		SELECT p FROM (
			SELECT a.privilege_type || ' ON DATABASE' AS p
			FROM pg_database d, aclexplode(d.datacl) a
			WHERE d.datname = current_database() AND a.grantee = (SELECT oid FROM grantee)
			UNION ALL
			SELECT a.privilege_type || ' ON SCHEMA ' || n.nspname
			FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.grantee = (SELECT oid FROM grantee)
			UNION ALL
			SELECT a.privilege_type || ' ON ' || c.oid::regclass
			FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = (SELECT oid FROM grantee)
			UNION ALL
			SELECT a.privilege_type || ' (' || att.attname || ') ON ' || c.oid::regclass
			FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
			WHERE a.grantee = (SELECT oid FROM grantee)
			UNION ALL
			SELECT a.privilege_type || ' ON FUNCTION ' || f.oid::regprocedure
			FROM pg_proc f, aclexplode(f.proacl) a WHERE a.grantee = (SELECT oid FROM grantee)
			UNION ALL
			SELECT 'DEFAULT ' || a.privilege_type || ' ON ' || d.defaclobjtype::text
			FROM pg_default_acl d, aclexplode(d.defaclacl) a WHERE a.grantee = (SELECT oid FROM grantee)
		) AS privileges
		ORDER BY p COLLATE "C"`, role)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("list the privileges of %s: %v", role, err)
	}
	return got
}

// mayExecute reports whether role may call the function.
func mayExecute(t *testing.T, pool *pgxpool.Pool, role, function string) bool {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(t.Context(), `SELECT has_function_privilege($1, $2, 'EXECUTE')`, role, function).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestShipperRoleHoldsExactlyWhatTheShipperNeeds(t *testing.T) {
	t.Parallel()
	b := setup(t)

	if got := grantedTo(t, b.pool, "pg2kafka_shipper"); !reflect.DeepEqual(got, shipperPrivileges) {
		t.Errorf("pg2kafka_shipper holds:\n got %q\nwant %q", got, shipperPrivileges)
	}
	var login, inherits bool
	var memberOf int
	if err := b.pool.QueryRow(b.ctx, `
		SELECT rolcanlogin, rolinherit, (SELECT count(*) FROM pg_auth_members WHERE member = r.oid)
		FROM pg_roles r WHERE rolname = 'pg2kafka_shipper'`).Scan(&login, &inherits, &memberOf); err != nil {
		t.Fatal(err)
	}
	if login || memberOf != 0 {
		t.Errorf("pg2kafka_shipper: can log in %v, member of %d roles; want neither", login, memberOf)
	}
	// Functions are executable by PUBLIC unless that is revoked, and the
	// shipper, with USAGE on the schema, would reach them; trigger functions
	// too, in triggers of its own.
	rows, _ := b.pool.Query(b.ctx, `
		SELECT oid::regprocedure::text FROM pg_proc
		WHERE pronamespace = 'pg2kafka'::regnamespace
		  AND has_function_privilege('pg2kafka_shipper', oid, 'EXECUTE')
		ORDER BY 1`)
	callable, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	// await_event_ids() is how an idle shipper waits for events;
	// event_uuid() gives a dead letter the uuid it was shipped with.
	if want := []string{"pg2kafka.await_event_ids(bigint,integer,integer)", "pg2kafka.event_uuid(bigint,timestamp with time zone)"}; !slices.Equal(callable, want) {
		t.Errorf("pg2kafka_shipper may call %q, want %q; REVOKE EXECUTE … FROM PUBLIC for functions the shipper does not call", callable, want)
	}
}

// TestShipperRoleShips claims and settles batches in every way the shipper
// does, as a login role holding nothing but pg2kafka_shipper: commit, roll
// back, delete the acknowledged part, move refused events to the
// dead-letter table.
func TestShipperRoleShips(t *testing.T) {
	t.Parallel()
	role := pgtest.NewRole(t)
	b := setup(t, productsSQL, `SELECT pg2kafka.setup('products', 'sku')`,
		`INSERT INTO products SELECT g, 'S' || g FROM generate_series(1, 5) g`,
		`GRANT pg2kafka_shipper TO `+role.Name)
	pool, err := pgxpool.New(b.ctx, role.ConnString(t, b.connString))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	c := outbox.NewQueue(pool).NewClaimer(slog.New(slog.DiscardHandler), 0)
	t.Cleanup(func() { c.Close(context.Background()) })
	rebalance(t, c)
	claim := func() *outbox.Batch {
		t.Helper()
		batch, err := c.Claim(b.ctx, 100, nil)
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		return batch
	}

	batch := claim()
	e := ids(batch.Events)
	if len(e) != 5 {
		t.Fatalf("claimed %d events, want 5", len(e))
	}
	if err := batch.Complete(b.ctx, nil); err != nil { // nothing acknowledged
		t.Fatalf("Complete: %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 5 {
		t.Fatalf("%d events queued after a batch rolled back, want 5", n)
	}
	now := time.Now()
	if err := claim().Complete(b.ctx, e[:1], outbox.DeadLetter{ID: e[1], Error: "too large", Attempts: 2, FirstFailedAt: now, LastFailedAt: now}); err != nil {
		t.Fatalf("Complete with a dead letter: %v", err)
	}
	if err := claim().Complete(b.ctx, e[2:3]); err != nil { // part acknowledged
		t.Fatalf("Complete: %v", err)
	}
	if err := claim().Complete(b.ctx, e[3:]); err != nil { // all acknowledged
		t.Fatalf("Complete: %v", err)
	}

	b.requireQueue(t)
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.dead_letter_events WHERE id = $1 AND error = 'too large'`, e[1]); n != 1 {
		t.Errorf("event %d is not in the dead-letter table", e[1])
	}
}

// TestShipperRoleCannot checks that a member of pg2kafka_shipper can do
// nothing with pg2kafka but ship, and nothing at all with the application's
// tables.
func TestShipperRoleCannot(t *testing.T) {
	t.Parallel()
	role := pgtest.NewRole(t)
	b := setup(t, productsSQL, `SELECT pg2kafka.setup('products', 'sku')`,
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`GRANT pg2kafka_shipper TO `+role.Name)
	conn, err := pgx.Connect(b.ctx, role.ConnString(t, b.connString))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })

	tests := []struct{ sql, want string }{
		{`INSERT INTO pg2kafka.outbound_event_queue (table_schema, table_name, statement, data) VALUES ('public', 'products', 'INSERT', '{}')`,
			"permission denied for table outbound_event_queue"},
		{`UPDATE pg2kafka.outbound_event_queue SET data = '{}'`, "permission denied for table outbound_event_queue"},
		{`TRUNCATE pg2kafka.outbound_event_queue`, "permission denied for table outbound_event_queue"},
		{`SELECT * FROM pg2kafka.dead_letter_events`, "permission denied for table dead_letter_events"},
		{`SELECT pg2kafka.requeue_dead_letters()`, "permission denied for function requeue_dead_letters"},
		// It reads the tables' options (for the event formats), never changes them.
		{`UPDATE pg2kafka.tracked_tables SET topic = 'elsewhere'`, "permission denied for table tracked_tables"},
		{`DELETE FROM pg2kafka.goose_db_version`, "permission denied for table goose_db_version"},
		{`UPDATE pg2kafka.installation SET id = gen_random_uuid()`, "permission denied for table installation"},
		{`SELECT pg2kafka.setup('products', 'sku')`, "permission denied for function setup"},
		// A trigger of its own would let it write events in any table's name.
		{`CREATE TEMP TABLE forged (sku text); CREATE TRIGGER forge AFTER INSERT ON forged FOR EACH ROW EXECUTE FUNCTION pg2kafka.enqueue_event('sku', 'public', 'products')`,
			"permission denied for function pg2kafka.enqueue_event"},
		{`SELECT pg2kafka.grant_shipper_privileges()`, "permission denied for function grant_shipper_privileges"},
		{`CREATE TABLE pg2kafka.mine (id int)`, "permission denied for schema pg2kafka"},
		{`SELECT * FROM products`, "permission denied for table products"},
		{`INSERT INTO products VALUES (2, 'B2', 'Gadget', 1)`, "permission denied for table products"},
	}
	for _, tt := range tests {
		_, err := conn.Exec(b.ctx, tt.sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" || pgErr.Message != tt.want {
			t.Errorf("%s: err = %v, want %q (42501)", tt.sql, err, tt.want)
		}
	}
	b.requireQueue(t, queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`})
}

// TestWritersNeedNoPrivilegeOnTheQueue writes to a tracked table as a role
// that may write to it and do nothing else: the trigger queues its changes
// as the owner of pg2kafka, while the role itself cannot see the queue.
func TestWritersNeedNoPrivilegeOnTheQueue(t *testing.T) {
	t.Parallel()
	role := pgtest.NewRole(t)
	b := setup(t, productsSQL, `SELECT pg2kafka.setup('products', 'sku')`,
		`GRANT INSERT, UPDATE, DELETE ON products TO `+role.Name)
	conn, err := pgx.Connect(b.ctx, role.ConnString(t, b.connString))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })

	// Without SELECT, a writer's UPDATE and DELETE cannot have a WHERE
	// clause that reads a column.
	for _, sql := range []string{
		`INSERT INTO products VALUES (1, 'A1', 'Widget', 9.5)`,
		`UPDATE products SET name = 'Big Widget'`,
		`DELETE FROM products`,
	} {
		if _, err := conn.Exec(b.ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	_, err = conn.Exec(b.ctx, `SELECT count(*) FROM pg2kafka.outbound_event_queue`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Message != "permission denied for schema pg2kafka" {
		t.Errorf("the writer reads the queue: err = %v, want permission denied for schema pg2kafka", err)
	}

	b.requireQueue(t,
		queued{ptr("A1"), "public", "products", "INSERT", `{"id": 1, "sku": "A1", "name": "Widget", "price": 9.5}`},
		queued{ptr("A1"), "public", "products", "UPDATE", `{"name": "Big Widget"}`},
		queued{ptr("A1"), "public", "products", "DELETE", `{}`},
	)
}

// TestMigrateDownRevokesShipperPrivileges rolls the shipper's role back
// and forth: down, it holds nothing in the database (the role itself, the
// cluster's, stays), and setup() is PUBLIC's again; up, all comes back.
func TestMigrateDownRevokesShipperPrivileges(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const setupFn = "pg2kafka.setup(regclass,text)"

	if err := outbox.MigrateDownTo(b.ctx, b.pool, 1); err != nil {
		t.Fatalf("MigrateDownTo(1): %v", err)
	}
	if got := grantedTo(t, b.pool, "pg2kafka_shipper"); len(got) != 0 {
		t.Errorf("after MigrateDownTo(1), pg2kafka_shipper holds %q, want nothing", got)
	}
	if !mayExecute(t, b.pool, "public", setupFn) {
		t.Errorf("after MigrateDownTo(1), PUBLIC may not call %s", setupFn)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_roles WHERE rolname = 'pg2kafka_shipper'`); n != 1 {
		t.Errorf("role pg2kafka_shipper dropped")
	}

	if err := outbox.Migrate(b.ctx, b.pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if got := grantedTo(t, b.pool, "pg2kafka_shipper"); !reflect.DeepEqual(got, shipperPrivileges) {
		t.Errorf("pg2kafka_shipper holds:\n got %q\nwant %q", got, shipperPrivileges)
	}
	// Migration 4 replaced setup() with one taking options, migration 7
	// with one taking full_row too.
	const latestSetupFn = "pg2kafka.setup(regclass,text,text[],text[],boolean,text,text,boolean,boolean)"
	if mayExecute(t, b.pool, "public", latestSetupFn) {
		t.Errorf("PUBLIC may call %s", latestSetupFn)
	}
}

// TestMigrateAsOwnerWithoutCreateRole installs pg2kafka as the owner of the
// database, a role that may not create roles, as on hosted Postgres. The
// shipper's role exists already, as it will once any database of the
// cluster has been migrated by a role that may create it, or once a DBA has
// created it.
func TestMigrateAsOwnerWithoutCreateRole(t *testing.T) {
	t.Parallel()
	owner := pgtest.NewRole(t)
	connString := pgtest.NewDatabase(t)
	admin, err := pgx.Connect(t.Context(), connString)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var database string
	if err := admin.QueryRow(t.Context(), `SELECT current_database()`).Scan(&database); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(t.Context(), `ALTER DATABASE `+pgx.Identifier{database}.Sanitize()+` OWNER TO `+pgx.Identifier{owner.Name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	ensureShipperRole(t, admin)

	pool, err := pgxpool.New(t.Context(), owner.ConnString(t, connString))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := outbox.Migrate(t.Context(), pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("Migrate as %s: %v", owner.Name, err)
	}
	if got := grantedTo(t, pool, "pg2kafka_shipper"); !reflect.DeepEqual(got, shipperPrivileges) {
		t.Errorf("pg2kafka_shipper holds:\n got %q\nwant %q", got, shipperPrivileges)
	}
	var granted bool
	if err := pool.QueryRow(t.Context(), `SELECT pg2kafka.grant_shipper_privileges()`).Scan(&granted); err != nil || !granted {
		t.Errorf("grant_shipper_privileges() as the owner: %v, %v; want true", granted, err)
	}
}

// ensureShipperRole creates pg2kafka_shipper unless it exists, as another
// test's migration may be doing at the same moment.
func ensureShipperRole(t *testing.T, admin *pgx.Conn) {
	t.Helper()
	_, err := admin.Exec(t.Context(), `
		DO $$
		BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
				CREATE ROLE pg2kafka_shipper NOLOGIN;
			END IF;
		EXCEPTION WHEN duplicate_object OR unique_violation THEN
			NULL;
		END
		$$`)
	if err != nil {
		t.Fatal(err)
	}
}

// TestConnectLogsPostgresWarnings checks that what Postgres tells a session
// in passing reaches the logs: a warning (a migration that could not create
// the shipper's role, say) as a warning, with its hint; a notice at debug
// level only.
func TestConnectLogsPostgresWarnings(t *testing.T) {
	t.Parallel()
	_, connString := pgtest.NewPool(t)
	var log bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	pool, err := outbox.Connect(t.Context(), connString, 0, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(t.Context(), `DO $$ BEGIN
		RAISE WARNING 'role % does not exist', 'x' USING HINT = 'Create it.';
		RAISE NOTICE 'nothing to do';
	END $$`); err != nil {
		t.Fatal(err)
	}
	want := "level=WARN msg=\"postgres warning\" message=\"role x does not exist\" hint=\"Create it.\"\n" +
		"level=DEBUG msg=\"postgres notice\" message=\"nothing to do\"\n"
	if got := log.String(); got != want {
		t.Errorf("logs:\n got %q\nwant %q", got, want)
	}
}
